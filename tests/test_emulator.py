"""The CUDA host emulator proves itself: barriers, warp operations, shared memory,
atomics across OS threads, thread orders, both context switches, and faults that become
errors. The kernels of tests/kernels/ run on the test suite's own build of the emulator
(tests/emu_builds.py), in the variant PYALEXNET_EMU_TEST_BUILD names."""
import numpy as np
import pytest

from emu_builds import emu_build, selftest_build
from pyalexnet.backends import EmuBackend, KernelError

SELFTEST = "selftest.cu"
ORDERS = ["forward", "reverse", "random"]


@pytest.fixture(scope="module")
def emu_module():
    return selftest_build()


def emu(order="forward", seed=7, threads=2, **options):
    return EmuBackend(threads=threads, order=order, seed=seed, module=selftest_build(), **options)


def matmul(be, kernel, a, b):
    n = a.shape[0]
    c = np.full((n, n), np.nan, np.float32)
    g = (n + 15) // 16
    be.launch(SELFTEST, kernel, (g, g), (16, 16), [a, b, c, np.int32(n)])
    return c


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("n", [16, 45, 70])
def test_tiled_matmul_with_barriers_is_correct(order, n):
    rng = np.random.default_rng(n)
    a, b = rng.standard_normal((2, n, n)).astype(np.float32)
    np.testing.assert_allclose(matmul(emu(order), "selftest_tiled_matmul", a, b), a @ b,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", ["reverse", "random"])
def test_missing_barrier_gives_wrong_result(order):
    """Without the barrier after the tile load, some threads read a tile that other threads
    have not written yet (or have already overwritten)."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 64, 64)).astype(np.float32)
    be = emu(order)
    good = matmul(be, "selftest_tiled_matmul", a, b)
    bad = matmul(be, "selftest_tiled_matmul_missing_barrier", a, b)
    np.testing.assert_allclose(good, a @ b, rtol=1e-4, atol=1e-4)
    assert np.abs(bad - a @ b).max() > 1.0


def test_random_order_depends_on_seed():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 32, 32)).astype(np.float32)
    zero = np.zeros_like(a)

    def racy(seed):
        # One OS thread, and shared memory first filled with zeros by a clean launch: what a
        # racing read sees then depends only on the thread order.
        matmul(emu(threads=1), "selftest_tiled_matmul_missing_barrier", zero, zero)
        return matmul(emu("random", seed=seed, threads=1), "selftest_tiled_matmul_missing_barrier",
                      a, b)

    runs = [racy(s) for s in (1, 1, 2)]
    np.testing.assert_array_equal(runs[0], runs[1])  # same seed: same interleaving
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("order", ORDERS)
def test_shuffle_reduction_in_some_warps_only(order):
    rng = np.random.default_rng(3)
    blocks, threads = 3, 256
    x = rng.integers(-50, 50, blocks * threads).astype(np.float32)
    out = np.full(blocks * threads // 32, np.nan, np.float32)
    emu(order).launch(SELFTEST, "selftest_some_warps_shuffle", blocks, threads, [x, out])
    np.testing.assert_array_equal(out, x.reshape(-1, 32).sum(axis=1))


def warp_ops_reference(x, delta, width):
    out = np.zeros((x.size, 7), np.int64)
    for i in range(x.size):
        w0, lane = i - i % 32, i % 32
        seg = lane - lane % width
        src_idx = seg + delta % width
        up = lane - delta if lane - delta >= seg else lane
        down = lane + delta if lane + delta < seg + width else lane
        xr = lane ^ delta if seg <= (lane ^ delta) < seg + width else lane
        warp = x[w0:w0 + 32]
        ballot = sum(1 << j for j in range(32) if warp[j] & 1)
        out[i] = [x[w0 + src_idx], x[w0 + up], x[w0 + down], x[w0 + xr],
                  np.int32(np.uint32(ballot).view(np.int32)), int(np.any(warp > 1000)),
                  int(np.all(warp >= 0))]
    return out


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("delta,width", [(1, 32), (5, 32), (3, 16), (2, 8), (17, 32), (1, 4)])
def test_warp_operations_match_their_definitions(order, delta, width):
    rng = np.random.default_rng(delta * 100 + width)
    x = rng.integers(0, 1200, 128).astype(np.int32)
    out = np.zeros(128 * 7, np.int32)
    emu(order).launch(SELFTEST, "selftest_warp_ops", 2, 64, [x, out, np.int32(delta), np.int32(width)])
    np.testing.assert_array_equal(out.reshape(-1, 7), warp_ops_reference(x, delta, width))


def test_divergent_barrier_raises_with_file_and_lines():
    with pytest.raises(KernelError) as e:
        emu().launch(SELFTEST, "selftest_divergent_barrier", 1, 32, [np.zeros(32, np.float32)])
    msg = str(e.value)
    assert "divergent __syncthreads" in msg and "selftest_divergent_barrier" in msg
    lines = [int(part.split(":")[1].split()[0]) for part in msg.split("selftest.cu")[1:]]
    assert len(lines) == 2 and lines[0] != lines[1], msg


def test_early_exit_before_barrier_is_allowed():
    x = np.arange(256, dtype=np.float32)
    y = np.full(256, -1, np.float32)
    emu("random").launch(SELFTEST, "selftest_early_exit_barrier", 1, 256, [x, y, np.int32(100)])
    np.testing.assert_array_equal(y[:100], x[:100][::-1])
    assert np.all(y[100:] == -1)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_atomics_across_parallel_blocks(threads):
    blocks, per = 97, 192
    counter, fsum = np.zeros(1, np.int32), np.zeros(1, np.float32)
    per_block = np.zeros(blocks, np.int32)
    emu(threads=threads).launch(SELFTEST, "selftest_atomics", blocks, per, [counter, fsum, per_block])
    assert counter[0] == blocks * per
    assert fsum[0] == blocks * per  # integers below 2**24: exact in any order
    np.testing.assert_array_equal(per_block, np.arange(blocks) * 7 + 3)


def test_parallel_blocks_match_one_thread():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, 93, 93)).astype(np.float32)
    one = matmul(emu(threads=1), "selftest_tiled_matmul", a, b)
    many = matmul(emu(threads=4), "selftest_tiled_matmul", a, b)
    np.testing.assert_array_equal(one, many)


@pytest.mark.parametrize("order", ORDERS)
def test_dynamic_shared_memory_and_block_sum(order):
    rng = np.random.default_rng(5)
    n, block = 1000, 128
    x = rng.integers(-9, 9, n).astype(np.float32)
    y = np.zeros(n, np.float32)
    blocks = (n + block - 1) // block
    sums = np.zeros(blocks, np.float32)
    emu(order).launch(SELFTEST, "selftest_dynamic_shared", blocks, block, [x, y, sums, np.int32(n)],
                      shared_mem=(block + 32) * 4)
    xp = np.concatenate([x, np.zeros(blocks * block - n, np.float32)]).reshape(blocks, block)
    np.testing.assert_array_equal(y, xp[:, ::-1].reshape(-1)[:n])
    np.testing.assert_array_equal(sums, xp.sum(axis=1))


@pytest.mark.parametrize("order", ORDERS)
def test_dynamic_shared_memory_declared_in_a_template(order):
    n, block = 300, 64
    x = np.arange(n, dtype=np.int32)
    y = np.full(n, -1, np.int32)
    blocks = (n + block - 1) // block
    emu(order).launch(SELFTEST, "selftest_dynamic_shared_in_template", blocks, block,
                      [x, y, np.int32(n)], shared_mem=block * 4)
    xp = np.concatenate([x, np.zeros(blocks * block - n, np.int32)]).reshape(blocks, block)
    np.testing.assert_array_equal(y, xp[:, ::-1].reshape(-1)[:n])


def test_geometry_of_3d_grids_and_blocks():
    grid, block = (3, 2, 2), (4, 3, 2)
    nthreads = np.prod(grid) * np.prod(block)
    out = np.zeros(nthreads * 6, np.int32)
    emu().launch(SELFTEST, "selftest_geometry", grid, block, [out])
    got = {tuple(r) for r in out.reshape(-1, 6)}
    want = {(bx, by, bz, tx, ty, tz) for bx in range(3) for by in range(2) for bz in range(2)
            for tx in range(4) for ty in range(3) for tz in range(2)}
    assert got == want


def test_plain_loop_fast_path_uses_one_stack_per_block():
    be = emu()
    x = np.ones(1 << 14, np.float32)
    y = np.zeros_like(x)
    be.launch("relu.cu", "relu_forward", 16, 1024, [x, y, np.int64(x.size)])
    assert be.last_fibers == 1  # no barrier: each thread ran straight through on one stack
    a = np.ones((32, 32), np.float32)
    matmul(be, "selftest_tiled_matmul", a, a)
    assert be.last_fibers == 256  # every thread of the 16x16 block parked at a barrier


@pytest.mark.parametrize("switch", ["asm", "ucontext"])
def test_both_context_switches(emu_module, switch):
    before = emu_module.get_switch()
    try:
        emu_module.set_switch(switch)
        assert emu_module.get_switch() == switch
        test_tiled_matmul_with_barriers_is_correct("random", 45)
        test_shuffle_reduction_in_some_warps_only("reverse")
        test_divergent_barrier_raises_with_file_and_lines()
        test_segmentation_fault_is_a_kernel_error()
        test_fiber_stack_overflow_is_a_kernel_error()
    finally:
        emu_module.set_switch(before)


def test_unknown_switch_is_rejected(emu_module):
    with pytest.raises(ValueError, match="unknown context switch"):
        emu_module.set_switch("setjmp")


def test_launch_errors_are_clear():
    be = emu()
    x = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="NumPy scalar"):
        be.launch("relu.cu", "relu_forward", 1, 8, [x, x, 8])  # a Python int
    with pytest.raises(ValueError, match="C-contiguous"):
        be.launch("relu.cu", "relu_forward", 1, 8, [x[::2], x[::2], np.int64(4)])
    with pytest.raises(ValueError, match="more than 1024"):
        be.launch("relu.cu", "relu_forward", 1, (32, 33), [x, x, np.int64(8)])
    with pytest.raises(KernelError, match="no kernel named"):
        be.launch("relu.cu", "relu_sideways", 1, 8, [x])
    with pytest.raises(KernelError, match="lives in"):
        be.launch("bias.cu", "relu_forward", 1, 8, [x, x, np.int64(8)])
    with pytest.raises(TypeError, match="takes 3 arguments"):
        be.launch("relu.cu", "relu_forward", 1, 8, [x, x])
    with pytest.raises(TypeError, match="8-byte elements, the kernel expects 4"):
        be.launch("relu.cu", "relu_forward", 1, 8, [x.astype(np.float64), x, np.int64(8)])
    with pytest.raises(ValueError, match="dynamic shared memory"):
        be.launch(SELFTEST, "selftest_dynamic_shared", 1, 32, [x, x, x, np.int32(8)],
                  shared_mem=10**6)


def test_bounds_check_reports_writes_outside_an_array():
    y = np.zeros(100, np.float32)
    checked = emu(check_bounds=True)
    checked.launch(SELFTEST, "selftest_write_past_end", 4, 32, [y, np.int32(100), np.int32(0)])
    assert np.all(y == 1.0)  # results come back to the caller's array
    with pytest.raises(KernelError, match=r"wrote outside array argument 0 .*12 bytes past its end"):
        checked.launch(SELFTEST, "selftest_write_past_end", 4, 32, [np.zeros(100, np.float32),
                                                                   np.int32(100), np.int32(3)])


def test_bounds_check_keeps_aliases_and_alignment():
    be = emu(check_bounds=True)
    x = np.array([-1.0, 2.0, -3.0, 4.0, 5.0], np.float32)
    be.launch("relu.cu", "relu_forward", 1, 32, [x, x, np.int64(5)])  # in place: one copy
    np.testing.assert_array_equal(x, [0, 2, 0, 4, 5])
    from pyalexnet.backends import GuardedArgs
    g = GuardedArgs([x, x, np.int32(1)])
    assert g.args[0] is g.args[1] and g.args[0].ctypes.data % 256 == 0


def test_segmentation_fault_is_a_kernel_error():
    """A wild write faults on the CPU: the launch raises, the process lives on, and the
    emulator keeps working."""
    y = np.zeros(32, np.float32)
    with pytest.raises(KernelError, match=r"selftest_segfault, block \(0,0,0\): thread \(5,0,0\): "
                                          r"segmentation fault at address"):
        emu().launch(SELFTEST, "selftest_segfault", 1, 32, [y, np.int64(1 << 40)])
    emu().launch(SELFTEST, "selftest_segfault", 1, 32, [y, np.int64(3)])
    assert y[3] == 1.0


def test_fiber_stack_overflow_is_a_kernel_error():
    out = np.zeros(64, np.int32)
    emu().launch(SELFTEST, "selftest_deep_recursion", 1, 64, [out, np.int32(20)])
    assert np.all(out == 21)
    with pytest.raises(KernelError, match="stack .* overflowed"):
        emu().launch(SELFTEST, "selftest_deep_recursion", 1, 64, [out, np.int32(100000)])


def test_product_build_has_no_selftest_kernels():
    import pyalexnet._emu as product
    assert "relu_forward" in product.kernel_names()
    assert not [k for k in product.kernel_names() if k.startswith(("selftest_", "prof_"))]
    assert "selftest_tiled_matmul" in selftest_build().kernel_names()


def test_build_records_its_compiler():
    info = selftest_build().BUILD_INFO
    assert info["compiler"].split()[0] in ("g++", "clang") and "-O" in info["flags"]


@pytest.mark.parametrize("path", sorted(emu_build.TEST_KERNELS.glob("*.cu")), ids=lambda p: p.name)
def test_test_kernels_are_plain_cuda(path, monkeypatch):
    """The test kernels compile with nvcc too (spills allowed: one recurses on purpose)."""
    import re

    from pyalexnet.compile_check import find_nvcc, nvcc_check
    if find_nvcc() is None:
        pytest.skip("nvcc not installed")
    monkeypatch.delenv("LD_PRELOAD", raising=False)  # the ASan run's runtime is not nvcc's
    r = nvcc_check(path, "sm_90")
    assert r.kernels and not re.search(r"\berror\b", r.log, re.I), r.log
