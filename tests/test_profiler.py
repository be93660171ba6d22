"""The emulator as a profiler: counters of kernels whose traffic is known exactly
(tests/kernels/profile_known.cu), on the test suite's profiling build (clang)."""
import numpy as np
import pytest

from emu_builds import selftest_build
from pyalexnet.backends import EmuBackend
from pyalexnet.ops import conv, linear

KNOWN = "profile_known.cu"


def profiled(kernel, grid, block, args, **options):
    be = EmuBackend(threads=2, profile=True, module=selftest_build("profile"), **options)
    be.launch(KNOWN, kernel, grid, block, args)
    return be.last_profile


@pytest.mark.parametrize("stride,sectors", [(1, 4), (32, 32)])
def test_unit_and_32_stride_float_loads(stride, sectors):
    warps = 4
    x = np.arange(32 * warps * stride, dtype=np.float32)
    y = np.zeros(32 * warps, np.float32)
    p = profiled("prof_strided_load", 1, 32 * warps, [x, y, np.int32(stride)])
    np.testing.assert_array_equal(y, x[::stride])  # the profiling build computes too
    assert p["global_load_requests"] == warps
    assert p["global_load_sectors"] == warps * sectors
    assert p["global_load_bytes"] == warps * 128
    assert (p["global_store_requests"], p["global_store_sectors"]) == (warps, warps * 4)
    assert p["shared_load_requests"] == p["shared_store_requests"] == 0
    assert p["arrays"][0]["unique_load_sectors"] == warps * sectors


def test_float4_load_is_one_request_of_16_sectors():
    x = np.arange(4 * 64, dtype=np.float32)
    y = np.zeros_like(x)
    p = profiled("prof_float4_copy", 1, 64, [x, y])
    np.testing.assert_array_equal(y, x)
    assert (p["global_load_requests"], p["global_load_sectors"], p["global_load_bytes"]) == (2, 32, 1024)
    assert (p["global_store_requests"], p["global_store_sectors"]) == (2, 32)


def test_int4_entry_used_field_by_field_is_one_request_of_16_sectors():
    tab = np.arange(4 * 64, dtype=np.int32)
    y = np.zeros(64, np.int32)
    p = profiled("prof_int4_fields", 1, 64, [tab, y])
    e = tab.reshape(64, 4)
    np.testing.assert_array_equal(y, e[:, 0] * 3 + e[:, 1] * 5 + e[:, 2] * 7)
    # the GPU reads the whole entry (w too) in one LDG.128 per thread
    assert (p["global_load_requests"], p["global_load_sectors"], p["global_load_bytes"]) == (2, 32, 1024)


@pytest.mark.parametrize("stride,wavefronts", [(1, 1), (2, 2), (32, 32), (0, 1)],
                         ids=["conflict-free", "2-way", "32-way", "broadcast"])
def test_shared_bank_conflicts(stride, wavefronts):
    y = np.zeros(64, np.float32)
    p = profiled("prof_shared_stride", 1, 64, [y, np.int32(stride)])
    np.testing.assert_array_equal(y, (np.arange(64) * stride) % 1024)
    assert p["shared_load_requests"] == 2  # one per warp
    assert p["shared_load_wavefronts"] == 2 * wavefronts
    assert p["shared_load_ideal_wavefronts"] == 2
    # the fill: 1024 words, 64 threads -> 16 conflict-free stores per thread
    assert p["shared_store_requests"] == p["shared_store_wavefronts"] == 2 * 16
    assert p["barriers"] == 1


def test_atomics_are_counted_once_and_not_as_loads():
    s = np.zeros(1, np.float32)
    p = profiled("prof_atomic", 3, 64, [s])
    assert s[0] == 192
    assert p["atomics_global"] == 192 and p["atomics_shared"] == 0
    assert p["global_load_requests"] == p["global_store_requests"] == 0


def test_sampled_grid_runs_some_blocks():
    x = np.arange(32 * 100, dtype=np.float32)
    y = np.zeros_like(x)
    p = profiled("prof_strided_load", 100, 32, [x, y, np.int32(1)], profile_blocks=10)
    assert (p["blocks_run"], p["blocks_total"]) == (10, 100)
    assert p["global_load_requests"] == 10
    assert np.count_nonzero(y[::32] == x[::32]) >= 10 and np.count_nonzero(y) < 100 * 32


def test_product_profiling_build_counts_a_real_kernel():
    """relu_forward on pyalexnet._emu_profile: every element read and written once."""
    try:
        be = EmuBackend(threads=2, profile=True)
    except Exception as e:  # built only where clang++ is installed
        pytest.skip(str(e))
    x = np.random.default_rng(0).standard_normal(1 << 12).astype(np.float32)
    y = np.zeros_like(x)
    be.launch("relu.cu", "relu_forward", 4, 1024, [x, y, np.int64(x.size)])
    p = be.last_profile
    assert p["global_load_bytes"] == p["global_store_bytes"] == x.nbytes
    assert p["global_load_sectors"] == x.nbytes // 32
    assert be.profiles == [p]


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_tensor_core_tiles_have_no_shared_memory_bank_conflicts(precision):
    """The mma kernels' padded tiles (kernels/mma_tile.cuh): every fragment read and every
    shared store needs only its ideal wavefronts, in both layouts ([row][k] and [k][row])
    and all three conv passes (tf32 [row][k] stores once took 1.5x: half-warps 20 banks
    apart). The exception by design: the filter gradient's window tile keeps adjacent taps
    in a warp (their sectors overlap), so in tf32 its stores, half the kernel's, are 2-way."""
    try:
        be = EmuBackend(threads=2, profile=True, profile_blocks=2)
    except Exception as e:  # built only where clang++ is installed
        pytest.skip(str(e))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    conv.conv2d_forward(be, x, w, None, 1, 1, precision=precision)
    conv.conv2d_backward_data(be, dy, w, x.shape, 1, 1, precision=precision, tile=64)
    conv.conv2d_backward_filter(be, x, dy, w.shape, 1, 1, precision=precision)
    a = rng.standard_normal((40, 72)).astype(np.float32)
    b = rng.standard_normal((24, 72)).astype(np.float32)
    linear.linear_forward(be, a, b, precision=precision)
    linear.linear_backward_weight(be, a, rng.standard_normal((40, 24)).astype(np.float32),
                                  precision=precision)
    mma = [p for p in be.profiles if p["kernel"].startswith(("conv_mma", "gemm_mma"))]
    assert len(mma) >= 4 and all(p[f"mma_{precision}"] > 0 for p in mma)
    for p in mma:
        assert p["shared_load_requests"] > 0 and p["shared_store_requests"] > 0, p["kernel"]
        assert p["shared_load_wavefronts"] == p["shared_load_ideal_wavefronts"], p["kernel"]
        ideal = p["shared_store_ideal_wavefronts"]
        if precision == "tf32" and p["kernel"].startswith("conv_mma_bwd_filter"):
            assert p["shared_store_wavefronts"] == ideal * 3 // 2, p["kernel"]
        else:
            assert p["shared_store_wavefronts"] == ideal, p["kernel"]


def test_profile_needs_a_profiling_build():
    with pytest.raises(ValueError, match="needs a profiling build"):
        EmuBackend(profile=True, module=selftest_build())


@pytest.mark.parametrize("n", [1, 7, 64])
def test_flops_are_counted_from_the_arithmetic(n):
    """fmaf = 2 FLOPs, a multiply and an add 1 each, plus the final add: 4n + 1 per thread."""
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(96, np.float32)
    p = profiled("prof_flops", 3, 32, [x, y, np.int32(n)])
    np.testing.assert_allclose(y, 2 * x.sum() + (x * x).sum())
    assert p["flops"] == 96 * (4 * n + 1)


def _loop(active, n, warps=2):
    x = np.ones(n, np.float32)
    y = np.zeros(32 * warps, np.float32)
    p = profiled("prof_divergent_loop", 1, 32 * warps, [x, y, np.int32(n), np.int32(active)])
    np.testing.assert_array_equal(y.reshape(warps, 32)[:, :active], n)
    return np.array([p["thread_instructions"], p["warp_instructions"]])


def test_a_warp_issues_a_block_as_often_as_its_busiest_lane():
    """No divergence: every lane runs every block equally often, so the lanes' instructions
    are exactly 32 times the warp's. With one busy lane per warp, 100 more loop passes add
    to the warp exactly what they add when all lanes are busy, and to the lanes 1/32 of it."""
    all_lanes = {n: _loop(32, n) for n in (50, 150)}
    one_lane = {n: _loop(1, n) for n in (50, 150)}
    for thread, warp in all_lanes.values():
        assert thread == 32 * warp > 0
    d_thread_all, d_warp_all = all_lanes[150] - all_lanes[50]
    d_thread_one, d_warp_one = one_lane[150] - one_lane[50]
    assert d_warp_all > 0 and d_warp_one == d_warp_all
    assert 32 * d_thread_one == d_thread_all
    thread, warp = one_lane[150]
    assert thread < 0.2 * 32 * warp  # SIMT efficiency near 1/32 once the loop dominates


def test_a_load_skipped_by_some_lanes_on_each_trip_is_one_request_a_trip():
    """Counting the k-th execution of the load in each lane would pair lane 0's trip 2k with
    lane 1's trip 2k + 1: half the requests, each over two trips' sectors."""
    trips = 12
    x = np.arange(32 * trips, dtype=np.float32)
    y = np.zeros_like(x)
    p = profiled("prof_masked_trips", 1, 32, [x, y, np.int32(x.size)])
    take = (np.arange(x.size) % 32 + np.arange(x.size) // 32) % 2 == 0
    np.testing.assert_array_equal(y, np.where(take, x, -1))
    assert p["global_load_requests"] == trips
    assert p["global_load_sectors"] == 4 * trips
    assert p["global_load_bytes"] == 16 * 4 * trips
    assert p["arrays"][0]["requested_load_sectors"] == 4 * trips


def test_lanes_whose_inner_loops_ran_different_trips_meet_on_the_outer_trip():
    trips = 10
    x = np.arange(64 * trips, dtype=np.float32)
    y = np.zeros(32, np.float32)
    lane = np.arange(32)
    inner = (1 + lane % 2).astype(np.int32)
    p = profiled("prof_uneven_inner_trips", 1, 32, [x, inner, y, np.int32(trips)])
    want = sum(x[64 * t + lane] + np.where(lane % 2, x[64 * t + 32 + lane], 0) for t in range(trips))
    np.testing.assert_array_equal(y, want)
    x_loads = p["global_load_requests"] - 1  # and one request for inner
    assert (x_loads, p["global_load_sectors"] - 4) == (2 * trips, 8 * trips)


def test_loop_heads_of_nested_loops_from_machine_code():
    """An outer loop (head H at 0x20, latch L) around an inner one-block loop B: blocks are
    named by the return address of their coverage call, as the profiler sees them."""
    from emu_builds import emu_build
    cov = "<__sanitizer_cov_trace_pc>"
    code = [(None, "", ""),
            (0x00, "call", "40 " + cov), (0x05, "jmp", "20 <f+0x20>"),       # entry
            (0x10, "call", "40 " + cov), (0x15, "jne", "10 <f+0x10>"),       # B: inner loop
            (0x17, "call", "40 " + cov), (0x1c, "jmp", "20 <f+0x20>"),       # L: outer latch
            (0x20, "call", "40 " + cov), (0x25, "jl", "10 <f+0x10>"),        # H: outer head
            (0x27, "call", "40 " + cov), (0x2c, "ret", "")]                  # exit
    targets = {0x10, 0x20}
    assert emu_build.loop_heads(code, emu_build._runs(code, targets)) == {
        0x15: (0x15, 0x25), 0x1c: (0x25, 0), 0x25: (0x25, 0)}


def _mma(n, fmt, warps=3):
    x = np.full(32, 0.5, np.float32)  # every product 1/4: d[0] = n * K / 4
    y = np.zeros(32 * warps, np.float32)
    p = profiled("prof_mma_chain", 1, 32 * warps, [x, y, np.int32(n), np.int32(fmt == "bf16")])
    np.testing.assert_array_equal(y, n * (16 if fmt == "bf16" else 8) / 4)
    return p


@pytest.mark.parametrize("fmt,k", [("tf32", 8), ("bf16", 16)])
def test_an_mma_counts_once_per_warp_as_tensor_core_work(fmt, k):
    """Each warp's mma is one instruction of 2*16*8*K FLOPs on the tensor cores; the
    emulation behind it (its slot table in thread-local storage, the tile arithmetic the last
    lane does, its instructions) is none of the kernel's: no shared memory, no FP32 FLOPs,
    no divergence, and a few instructions per mma at most."""
    warps, other = 3, {"tf32": "bf16", "bf16": "tf32"}[fmt]
    few, many = _mma(2, fmt), _mma(10, fmt)
    for n, p in ((2, few), (10, many)):
        assert p[f"mma_{fmt}"] == warps * n and p[f"mma_{other}"] == 0
        assert p[f"tensor_flops_{fmt}"] == warps * n * 2 * 16 * 8 * k
        assert p["tensor_flops_" + other] == 0
        assert p["shared_load_requests"] == p["shared_store_requests"] == 0
        assert p["flops"] == 0
        assert p["thread_instructions"] == 32 * p["warp_instructions"]
    per_mma = (many["warp_instructions"] - few["warp_instructions"]) / (warps * 8)
    assert 1 <= per_mma <= 16, per_mma


def test_distinct_sectors_per_block_and_over_the_launch():
    """Every warp of every block reads the same 32 floats (4 sectors): distinct over the
    launch 4, within each block 4 (summed over 3 blocks: 12), requested 4 per warp."""
    blocks, warps = 3, 2
    x = np.full(32, 0.5, np.float32)
    y = np.zeros(32 * warps * blocks, np.float32)
    p = profiled("prof_mma_chain", blocks, 32 * warps, [x, y, np.int32(1), np.int32(0)])
    a = p["arrays"][0]
    assert a["unique_load_sectors"] == 4
    assert a["block_unique_load_sectors"] == blocks * 4
    assert a["requested_load_sectors"] == blocks * warps * 4
    out = p["arrays"][1]  # each block writes its own 64 floats: 8 sectors
    assert out["unique_store_sectors"] == out["block_unique_store_sectors"] == blocks * 8


def test_reuse_distances_of_repeated_passes():
    """A warp reads 1024 floats (128 sectors) 3 times: the first pass's loads are its
    block's first; every later load finds the other 127 sectors loaded since its last
    (reuse distance 127: bucket 7, [64, 128)). The second block starts afresh."""
    x = np.arange(1024, dtype=np.float32)
    y = np.zeros(2 * 32, np.float32)
    p = profiled("prof_passes", 2, 32, [x, y, np.int32(1024), np.int32(3)])
    np.testing.assert_array_equal(y, np.tile(3 * x.reshape(32, 32).sum(axis=0), 2))
    assert p["global_load_sectors"] == 2 * 3 * 128
    assert p["load_first_sectors"] == 2 * 128
    reuse = p["load_reuse_sectors"]
    assert reuse[7] == 2 * 2 * 128 and sum(reuse) == reuse[7]


def test_partial_instruction_is_counted_at_the_barrier_after_it():
    """Lanes that skipped a load leave a partial warp instruction; it ends at the next
    barrier, in its place in the block's order of loads (it was counted at the block's end,
    after the loads that follow it, in an order that changed from run to run)."""
    x = np.arange(256, dtype=np.float32)
    y = np.zeros(32, np.float32)
    p = profiled("prof_partial_before_barrier", 1, 32, [x, y])
    np.testing.assert_array_equal(y, x[::8] * np.where(np.arange(32) < 16, 2, 1))
    assert (p["global_load_requests"], p["global_load_sectors"]) == (2, 16 + 32)
    assert p["load_first_sectors"] == 32
    reuse = p["load_reuse_sectors"]
    assert reuse[4] == 16 and sum(reuse) == 16  # distance 15: bucket [8, 16)


def test_product_build_is_not_instrumented():
    """Free when off: pyalexnet._emu has no coverage callbacks at all."""
    import pyalexnet._emu as product
    assert product.PROFILER is False
    assert b"__sanitizer_cov_load4" not in open(product.__file__, "rb").read()
    assert b"__sanitizer_cov_load4" in open(selftest_build("profile").__file__, "rb").read()
