"""Tensor cores: the mma dialect (kernels/mma.cuh and its emulation), the TF32 / BF16
conversion rules, and the tensor-core conv and FC kernels against the references.

Tolerances come from the formats, not from a constant (ops/precision.py,
reduction_error_bound): a kernel result must lie within gamma_K sum|a||b| (fp32
accumulation of K exact products) of the float64 product of the *rounded* operands, and
within (1 + u)^2 (1 + gamma_K) - 1 of the float64 product of the unrounded ones, u being
the format's unit roundoff (tf32 2^-11, bf16 2^-8).

Every kernel test runs on the emulator in all three thread orders, each with bounds
checking, and on the GPU where there is one.
"""
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import _wanted
from emu_builds import selftest_build

from pyalexnet.backends import EmuBackend, get_backend
from pyalexnet.ops import conv, conv_mma, linear
from pyalexnet.ops.precision import (
    UNIT_ROUNDOFF, convert_from_bf16, convert_to_bf16, from_bf16, operand, reduction_error_bound,
    round_bf16, round_tf32, to_bf16)

SELFTEST = str(Path(__file__).resolve().parent / "kernels" / "mma_selftest.cu")  # test-only
MMA_PRECISIONS = ("tf32", "bf16")
SLOW_ON = os.environ.get("PYALEXNET_SLOW_TESTS", "0") not in ("", "0")
SLOW = pytest.mark.skipif(not SLOW_ON, reason="minutes on the emulator; set PYALEXNET_SLOW_TESTS=1")


@pytest.fixture
def be(checked_backend):
    return checked_backend


@pytest.fixture
def emu():
    if "emu" not in _wanted():
        pytest.skip("emu not in PYALEXNET_TEST_BACKENDS")
    return EmuBackend(order="random", seed=5, check_bounds=True, module=selftest_build())


@pytest.fixture
def rng():
    return np.random.default_rng(20260904)


def bits(a, dtype=np.uint32):
    return np.asarray(a, dtype=np.float32).view(dtype)


def f32(*patterns):
    return np.array(patterns, dtype=np.uint32).view(np.float32)


def assert_within(actual, exact, bound, what):
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == exact.shape, f"{what}: shape {actual.shape} != {exact.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    excess = np.abs(actual - exact) - bound
    if excess.max(initial=-1) > 0:
        i = np.unravel_index(np.argmax(excess), excess.shape)
        raise AssertionError(f"{what}: {int((excess > 0).sum())} of {excess.size} entries beyond "
                             f"the bound; worst at {i}: {actual[i]!r} vs exact {exact[i]!r}, "
                             f"bound {bound[i]:.3g}")


def check_product(actual, f, inputs, k, precision, what, extra_adds=0):
    """actual = f(*inputs) computed with operands rounded to `precision` and fp32
    accumulation of k products (plus extra_adds further fp32 additions, e.g. split-K)."""
    rounded = [operand(a, precision).astype(np.float64) for a in inputs]
    absprod = f(*[np.abs(a) for a in rounded])
    exact_rounded = f(*rounded)
    assert_within(actual, exact_rounded,
                  reduction_error_bound(absprod, k + extra_adds, precision, rounded_inputs=True),
                  f"{what} vs exact product of the rounded operands")
    exact = f(*[a.astype(np.float64) for a in inputs])
    assert_within(actual, exact,
                  reduction_error_bound(f(*[np.abs(a.astype(np.float64)) for a in inputs]),
                                        k + extra_adds, precision),
                  f"{what} vs exact product of the fp32 operands")
    return exact


# ---- rounding rules ----------------------------------------------------------------------
def test_tf32_rounding_known_values():
    # 1 + 2^-11 is a tie: away from zero (RNA) gives 1 + 2^-10, nearest-even would give 1
    x = f32(0x3F801000, 0xBF801000, 0x3F800FFF, 0x3F803000, 0x3F802FFF, 0x7F7FF000, 0x00001000,
            0x7F800000, 0xFF800000, 0x00000000, 0x80000000)
    want = [0x3F802000, 0xBF802000, 0x3F800000, 0x3F804000, 0x3F802000, 0x7F800000, 0x00002000,
            0x7F800000, 0xFF800000, 0x00000000, 0x80000000]
    assert bits(round_tf32(x)).tolist() == want
    assert np.isnan(round_tf32(f32(0x7FC00000, 0x7F800001))).all()


def test_bf16_rounding_known_values():
    x = f32(0x3F808000, 0x3F818000, 0x3F808001, 0xBF808000, 0x3F807FFF, 0x7F7F8000, 0x00008000,
            0x00018000, 0x7F800000, 0xFF800000)
    want = [0x3F80, 0x3F82, 0x3F81, 0xBF80, 0x3F80, 0x7F80, 0x0000, 0x0002, 0x7F80, 0xFF80]
    assert to_bf16(x).tolist() == want
    assert to_bf16(f32(0x7FC00000, 0xFF800001)).tolist() == [0x7FFF, 0x7FFF]
    np.testing.assert_array_equal(bits(from_bf16(np.array(want, np.uint16))),
                                  np.array(want, np.uint32) << 16)
    np.testing.assert_array_equal(round_bf16(x[:5]), from_bf16(to_bf16(x[:5])))


def _conversion_inputs(rng):
    ties = f32(0x3F801000, 0xBF801000, 0x3F803000, 0x3F808000, 0x3F818000, 0xBF808000,
               0x7F7FF000, 0x7F7F8000, 0x00001000, 0x00018000, 0x7F800000, 0xFF800000, 0, 0x80000000)
    rand = rng.standard_normal(1001).astype(np.float32) * np.float32(2.0) ** rng.integers(
        -60, 60, 1001).astype(np.float32)
    return np.concatenate([ties, rand, bits(rng.integers(0, 2**32, 200, dtype=np.uint64)
                                            .astype(np.uint32), np.float32)])


def test_conversion_kernels_match_references_bit_for_bit(be, rng):
    x = _conversion_inputs(rng)
    x = x[~np.isnan(x)]
    x = x[:x.size // 2 * 2]
    tf, bf = np.zeros(x.size, np.uint32), np.zeros(x.size, np.uint16)
    packed = np.zeros(x.size // 2, np.uint32)
    args = [be.asarray(x), be.asarray(tf, np.uint32), be.asarray(bf, np.uint16),
            be.asarray(packed, np.uint32), np.int32(x.size)]
    be.launch(SELFTEST, "mma_selftest_convert", 8, 128, args)
    tf, bf, packed = (be.to_numpy(a) for a in args[1:4])
    np.testing.assert_array_equal(tf, bits(round_tf32(x)))
    np.testing.assert_array_equal(bf, to_bf16(x))
    want = to_bf16(x).astype(np.uint32)
    np.testing.assert_array_equal(packed, want[0::2] | want[1::2] << 16)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 4097])
def test_convert_ops(be, rng, n):
    x = (rng.standard_normal(n) * 100).astype(np.float32)
    h = convert_to_bf16(be, be.asarray(x))
    assert h.dtype == np.uint16
    np.testing.assert_array_equal(be.to_numpy(h), to_bf16(x))
    np.testing.assert_array_equal(be.to_numpy(convert_from_bf16(be, h)), round_bf16(x))
    if n > 1:  # a view at an odd element offset (a slice of a larger buffer)
        np.testing.assert_array_equal(be.to_numpy(convert_to_bf16(be, be.asarray(x)[1:])),
                                      to_bf16(x[1:]))


def test_convert_ops_numpy_backend(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(convert_to_bf16(get_backend("numpy"), x), to_bf16(x))


# ---- one mma tile: the fragment layout -------------------------------------------------------
def _tile_inputs(rng, precision):
    k = 8 if precision == "tf32" else 16
    return (rng.standard_normal((16, k)).astype(np.float32),
            rng.standard_normal((k, 8)).astype(np.float32),
            rng.standard_normal((16, 8)).astype(np.float32))


def _run_tile(be, precision, a, b, c, mode=0):
    d = be.zeros((16, 8))
    if precision == "tf32":
        be.launch(SELFTEST, "mma_selftest_tf32", 1, 32,
                  [be.asarray(a), be.asarray(b), be.asarray(c), d, np.int32(mode)])
    else:
        be.launch(SELFTEST, "mma_selftest_bf16", 1, 32,
                  [be.asarray(to_bf16(a), np.uint16), be.asarray(to_bf16(b), np.uint16),
                   be.asarray(c), d, np.int32(mode)])
    return be.to_numpy(d)


@pytest.mark.parametrize("precision", MMA_PRECISIONS)
def test_mma_tile_documented_layout(be, rng, precision):
    a, b, c = _tile_inputs(rng, precision)
    d = _run_tile(be, precision, a, b, c)
    ra, rb = (operand(v, precision).astype(np.float64) for v in (a, b))
    # c (fp32, not rounded) is one more term of the sum
    bound = reduction_error_bound(np.abs(ra) @ np.abs(rb) + np.abs(c), a.shape[1] + 1, precision,
                                  rounded_inputs=True)
    assert_within(d, ra @ rb + c, bound, f"{precision} tile")


@pytest.mark.parametrize("mode", [1, 2, 3], ids=["wrong-A", "wrong-B", "wrong-D"])
@pytest.mark.parametrize("precision", MMA_PRECISIONS)
def test_wrong_lane_mapping_fails(be, rng, precision, mode):
    """A kernel that loads or stores a fragment with another lane mapping than the PTX
    table gets a wrong tile, on the emulator as on the GPU."""
    a, b, c = _tile_inputs(rng, precision)
    exact = operand(a, precision).astype(np.float64) @ operand(b, precision) + c
    d = _run_tile(be, precision, a, b, c, mode)
    assert np.abs(d - exact).max() > 0.5, "a wrong fragment layout gave the right tile"


def test_mma_rounds_operands_like_the_hardware(be):
    """tf32 ties go away from zero: a = 1 + 2^-11 becomes 1 + 2^-10 (nearest-even or
    truncation would give 1); a bf16 tie goes to even."""
    a = np.full((16, 8), f32(0x3F801000)[0], np.float32)
    d = _run_tile(be, "tf32", a, np.ones((8, 8), np.float32), np.zeros((16, 8), np.float32))
    np.testing.assert_array_equal(d, np.full((16, 8), 8 * (1 + 2.0 ** -10), np.float32))
    a = np.full((16, 16), f32(0x3F818000)[0], np.float32)  # tie between 0x3f81 and 0x3f82
    d = _run_tile(be, "bf16", a, np.ones((16, 8), np.float32), np.zeros((16, 8), np.float32))
    np.testing.assert_array_equal(d, np.full((16, 8), 16 * from_bf16(np.uint16(0x3F82)),
                                             np.float32))


def test_emulator_rejects_unrounded_tf32_operands(emu, rng):
    a, b, c = _tile_inputs(rng, "tf32")
    d = np.zeros((16, 8), np.float32)
    emu.launch(SELFTEST, "mma_selftest_tf32_unrounded", 1, 32, [a, b, c, d])
    assert np.isnan(d).all()


def test_emulator_rejects_a_divergent_mma(emu, rng):
    d = np.zeros(128, np.float32)
    emu.launch(SELFTEST, "mma_selftest_tf32_divergent", 1, 32,
               [rng.standard_normal(32).astype(np.float32), d])
    assert np.isnan(d).all()


def test_emulator_rejects_a_partial_warp(emu, rng):
    a, b, c = _tile_inputs(rng, "tf32")
    d = np.zeros((16, 8), np.float32)
    emu.launch(SELFTEST, "mma_selftest_tf32", 1, 16, [a, b, c, d, np.int32(0)])
    assert np.isnan(d[d != 0]).all() and np.isnan(d).any()


# ---- FC GEMMs --------------------------------------------------------------------------------
GEMM_SHAPES = [(37, 45, 53), (130, 129, 200), (1, 70, 17), (128, 64, 16)]
TRANS = {"nt": (False, True), "nn": (False, False), "tn": (True, False)}


def _gemm_f(ta, tb):
    return lambda a, b: (a.T if ta else a) @ (b.T if tb else b)


@pytest.mark.parametrize("tile, splits", [("128", 1), ("64", 3)], ids=["128", "64-split3"])
@pytest.mark.parametrize("trans", list(TRANS))
@pytest.mark.parametrize("precision", MMA_PRECISIONS)
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_kernels(be, rng, shape, precision, trans, tile, splits):
    m, n, k = shape
    ta, tb = TRANS[trans]
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    c = linear.gemm(be, be.asarray(a), be.asarray(b), ta, tb, precision=precision, tile=tile,
                    splits=splits)
    check_product(be.to_numpy(c), _gemm_f(ta, tb), [a, b], k, precision,
                  f"gemm {trans} {precision}", extra_adds=splits)


@pytest.mark.parametrize("precision", MMA_PRECISIONS)
def test_gemm_result_is_not_the_fp32_product(emu, rng, precision):
    """The bound vs the rounded operands is tight enough to see that the operands were
    rounded: the plain fp32 product lies outside it."""
    a, b = rng.standard_normal((37, 53)).astype(np.float32), rng.standard_normal((53, 45)).astype(np.float32)
    c = linear.gemm(emu, a, b, precision=precision)
    rounded = [operand(v, precision).astype(np.float64) for v in (a, b)]
    bound = reduction_error_bound(np.abs(rounded[0]) @ np.abs(rounded[1]), 53, precision,
                                  rounded_inputs=True)
    assert (np.abs(c - rounded[0] @ rounded[1]) <= bound).all()
    assert (np.abs(c - a.astype(np.float64) @ b) > bound).any()


def test_gemm_alpha_beta(be, rng):
    a, b = rng.standard_normal((20, 30)).astype(np.float32), rng.standard_normal((30, 10)).astype(np.float32)
    c0 = rng.standard_normal((20, 10)).astype(np.float32)
    c = linear.gemm(be, be.asarray(a), be.asarray(b), alpha=2.0, beta=-1.0,
                    c=be.asarray(c0.copy()), precision="tf32")
    ref = 2 * (round_tf32(a).astype(np.float64) @ round_tf32(b)) - c0
    np.testing.assert_allclose(be.to_numpy(c), ref, rtol=0, atol=1e-4)


# (batch, in, out): fc8 at batch 2, odd sizes, a full batch; fc6 and fc7 with SLOW
LINEAR = [(2, 4096, 1000), (3, 100, 37), (128, 64, 10),
          pytest.param((2, 9216, 4096), marks=[pytest.mark.slow, SLOW]),
          pytest.param((2, 4096, 4096), marks=[pytest.mark.slow, SLOW])]


@pytest.mark.parametrize("precision", MMA_PRECISIONS)
@pytest.mark.parametrize("dims", LINEAR, ids=lambda d: "x".join(map(str, d)))
def test_linear_ops(be, rng, precision, dims):
    """The three FC passes through the op API, fp32 inputs and (bf16) bf16 inputs, against
    the numpy backend's reference at the same precision."""
    batch, fin, fout = dims
    if fin * fout > 10**5 and getattr(be, "order", "random") != "random" and not SLOW_ON:
        pytest.skip("real FC shapes run in the random emulator order (PYALEXNET_SLOW_TESTS=1: all)")
    x = rng.standard_normal((batch, fin)).astype(np.float32)
    w = (rng.standard_normal((fout, fin)) / np.sqrt(fin)).astype(np.float32)
    b = rng.standard_normal(fout).astype(np.float32)
    dy = rng.standard_normal((batch, fout)).astype(np.float32)
    ref = get_backend("numpy")
    if precision == "bf16":  # the engine hands over bf16 copies
        X, W, DY = (be.asarray(to_bf16(v), np.uint16) for v in (x, w, dy))
    else:
        X, W, DY = (be.asarray(v) for v in (x, w, dy))
    cases = [
        (linear.linear_forward(be, X, W, be.asarray(b), precision=precision),
         linear.linear_forward(ref, x, w, b, precision=precision), fin),
        (linear.linear_backward_data(be, DY, W, precision=precision),
         linear.linear_backward_data(ref, dy, w, precision=precision), fout),
        (linear.linear_backward_weight(be, X, DY, precision=precision),
         linear.linear_backward_weight(ref, x, dy, precision=precision), batch),
    ]
    absx, absw, absdy = (np.abs(operand(v, precision)).astype(np.float64) for v in (x, w, dy))
    absprods = [absx @ absw.T + np.abs(b), absdy @ absw, absdy.T @ absx]
    for (got, want, k), absprod in zip(cases, absprods):
        assert want.dtype == np.float32 and got.dtype == np.float32
        # both sides accumulate the same rounded products in fp32 (in different orders,
        # the kernel's split-K partials adding up to MAX_SPLITS + 1 more additions)
        bound = 2 * reduction_error_bound(absprod, k + linear.MAX_SPLITS + 1, precision,
                                          rounded_inputs=True)
        assert_within(be.to_numpy(got), want.astype(np.float64), bound, f"linear k={k}")


# ---- convolutions ----------------------------------------------------------------------------
# (x shape, w shape, stride, pad, groups): sizes off the tile, groups, strides 1-4, pads 0-3
CONV_ODD = [
    ((2, 6, 9, 9), (10, 3, 3, 3), 2, 1, 2),
    ((3, 5, 7, 8), (7, 5, 1, 1), 1, 0, 1),
    ((2, 4, 11, 11), (6, 2, 5, 5), 1, 2, 2),
    ((1, 4, 23, 19), (6, 2, 7, 5), 3, 3, 2),
    ((2, 20, 12, 9), (129, 20, 3, 2), 4, 3, 1),
    ((1, 40, 9, 7), (130, 20, 4, 2), 1, 3, 2),
]
ALEXNET = {  # batch 1, the real layer shapes
    "conv1": ((1, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1),
    "conv2": ((1, 96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
    "conv3": ((1, 256, 13, 13), (384, 256, 3, 3), 1, 1, 1),
    "conv4": ((1, 384, 13, 13), (384, 192, 3, 3), 1, 1, 2),
    "conv5": ((1, 384, 13, 13), (256, 192, 3, 3), 1, 1, 2),
}


def _conv_data(rng, x_shape, w_shape, stride, pad):
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    dy = rng.standard_normal(conv.conv2d_output_shape(x_shape, w_shape, stride, pad)).astype(np.float32)
    return x, w, dy


def _check_conv(be, rng, case, precision, tile=None, splits=None, passes=("fwd", "data", "filter")):
    x_shape, w_shape, stride, pad, groups = case
    x, w, dy = _conv_data(rng, x_shape, w_shape, stride, pad)
    k, cg, r, s = w_shape
    geo = (stride, pad, groups)
    if "fwd" in passes:
        y = conv.conv2d_forward(be, be.asarray(x), be.asarray(w), None, *geo, tile=tile,
                                precision=precision)
        check_product(be.to_numpy(y), lambda a, b: conv.conv2d_forward_reference(a, b, None, *geo),
                      [x, w], cg * r * s, precision, "forward")
    if "data" in passes:
        dx = conv.conv2d_backward_data(be, be.asarray(dy), be.asarray(w), x_shape, *geo, tile=tile,
                                       precision=precision)
        check_product(be.to_numpy(dx),
                      lambda a, b: conv.conv2d_backward_data_reference(a, b, x_shape, *geo),
                      [dy, w], k // groups * r * s, precision, "backward data")
    if "filter" in passes:
        dw = conv.conv2d_backward_filter(be, be.asarray(x), be.asarray(dy), w_shape, *geo,
                                         tile=tile, splits=splits, precision=precision)
        nsplit = splits or max(1, dy.size // k // conv.MIN_SPLIT)
        check_product(be.to_numpy(dw),
                      lambda a, b: conv.conv2d_backward_filter_reference(a, b, w_shape, *geo),
                      [x, dy], dy.shape[0] * dy.shape[2] * dy.shape[3], precision,
                      "backward filter", extra_adds=nsplit)


@pytest.mark.parametrize("tile", [128, 64])
@pytest.mark.parametrize("precision", MMA_PRECISIONS)
@pytest.mark.parametrize("case", CONV_ODD, ids=[f"odd{i}" for i in range(len(CONV_ODD))])
def test_conv_kernels_odd_shapes(be, rng, case, precision, tile):
    _check_conv(be, rng, case, precision, tile=tile, splits=3)


def test_tile_plan_takes_128_for_alexnet_and_64_where_it_saves_a_wave():
    """A 64 tile block counts as 0.4 of a 128 one per padded output (MMA_TILE_SPEED, from
    the emulator's model: it reads twice the operands per product), so every AlexNet pass
    takes the 128 tile; 64 only where the 128 tile's padding or its last wave costs more."""
    from pyalexnet.ops.conv_mma import _mma_tile

    n = 128
    for c, k, h, p, r, g in [(3, 96, 227, 55, 11, 1), (96, 256, 27, 27, 5, 2),
                             (256, 384, 13, 13, 3, 1), (384, 384, 13, 13, 3, 2),
                             (384, 256, 13, 13, 3, 2)]:
        assert _mma_tile(k // g, n * p * p, g) == 128                       # forward
        assert _mma_tile(c // g, n * h * h, g) == 128                       # data gradient
        assert _mma_tile(k // g, (c // g) * r * r, g, split=True) == 128    # filter gradient
    assert _mma_tile(64, 64, 1, split=True) == 64  # one small block either way
    assert _mma_tile(64, 128 * 133, 1) == 64       # 133 blocks of 128: a second wave for one
    assert _mma_tile(64, 128 * 133, 1, speed={128: 1.0, 64: 0.3}) == 128


# Each layer in one emulator order (all three orders are covered across the layers; every
# order on every layer with PYALEXNET_SLOW_TESTS=1), and on the GPU.
LAYER_ORDER = dict(zip(ALEXNET, ["random", "forward", "reverse", "random", "forward"]))


@pytest.mark.parametrize("precision", MMA_PRECISIONS)
@pytest.mark.parametrize("layer", list(ALEXNET))
def test_conv_kernels_alexnet_layers(be, rng, layer, precision):
    if getattr(be, "order", LAYER_ORDER[layer]) != LAYER_ORDER[layer] and not SLOW_ON:
        pytest.skip(f"{layer} runs in emulator order {LAYER_ORDER[layer]} (PYALEXNET_SLOW_TESTS=1: all)")
    # conv1's input gradient is never needed (it is the network's input)
    passes = ("fwd", "filter") if layer == "conv1" else ("fwd", "data", "filter")
    _check_conv(be, rng, ALEXNET[layer], precision, passes=passes)


@pytest.mark.parametrize("precision", MMA_PRECISIONS)
def test_conv_ops_against_numpy_backend(be, rng, precision):
    """Forward with fused bias + ReLU, and bf16 tensors handed over as bf16 bits, against
    the numpy backend at the same precision."""
    case = CONV_ODD[0]
    x_shape, w_shape, stride, pad, groups = case
    x, w, dy = _conv_data(rng, x_shape, w_shape, stride, pad)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    ref = conv.conv2d_forward(get_backend("numpy"), x, w, b, stride, pad, groups, relu=True,
                              precision=precision)
    if precision == "bf16":
        X, W = be.asarray(to_bf16(x), np.uint16), be.asarray(to_bf16(w), np.uint16)
    else:
        X, W = be.asarray(x), be.asarray(w)
    y = be.to_numpy(conv.conv2d_forward(be, X, W, be.asarray(b), stride, pad, groups, relu=True,
                                        precision=precision))
    absprod = conv.conv2d_forward_reference(np.abs(operand(x, precision)).astype(np.float64),
                                            np.abs(operand(w, precision)).astype(np.float64),
                                            np.abs(b), stride, pad, groups)
    red = int(np.prod(w_shape[1:]))
    assert_within(y, ref.astype(np.float64),
                  2 * reduction_error_bound(absprod, red + 1, precision, rounded_inputs=True),
                  "forward + bias + relu")
    assert (y[ref == 0] == 0).all()


def test_conv_result_is_not_the_fp32_convolution(emu, rng):
    case = CONV_ODD[1]
    x, w, _ = _conv_data(rng, *case[:2], *case[2:4])
    y = conv.conv2d_forward(emu, x, w, None, *case[2:], precision="bf16")
    exact = conv.conv2d_forward_reference(x.astype(np.float64), w.astype(np.float64), None, *case[2:])
    assert np.abs(y - exact).max() > 1e-3  # bf16's 2^-8 is visible; fp32 kernels are 1e-7 close


def test_unit_roundoffs():
    assert UNIT_ROUNDOFF["tf32"] == 2.0 ** -11 and UNIT_ROUNDOFF["bf16"] == 2.0 ** -8
    # a random float32 rounds within u of itself, and some land near u
    x = np.random.default_rng(1).standard_normal(100000).astype(np.float32)
    for p, fn in (("tf32", round_tf32), ("bf16", round_bf16)):
        rel = np.abs(fn(x).astype(np.float64) - x) / np.abs(x)
        assert rel.max() <= UNIT_ROUNDOFF[p] and rel.max() > 0.9 * UNIT_ROUNDOFF[p]


# ---- argument checks -------------------------------------------------------------------------
def test_bad_precision_and_dtypes(emu):
    x, w = np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="precision must be one of"):
        conv.conv2d_forward(emu, x, w, precision="fp16")
    with pytest.raises(TypeError, match="float32"):
        conv.conv2d_forward(emu, to_bf16(x), w, precision="tf32")
    with pytest.raises(TypeError, match="float32 or bf16"):
        conv.conv2d_forward(emu, x.astype(np.float64), w, precision="bf16")
    with pytest.raises(ValueError, match="no tensor-core kernel for tile"):
        conv.conv2d_forward(emu, x, w, precision="tf32", tile=(128, 64))
    with pytest.raises(ValueError, match="no tensor-core kernel"):
        linear.gemm(emu, np.zeros((4, 3), np.float32), np.zeros((5, 4), np.float32), True, True,
                    precision="tf32")
    # bf16 bits are no fp32 numbers: the references refuse them outside precision="bf16"
    with pytest.raises(TypeError, match="cannot feed a fp32 product"):
        conv.conv2d_forward(get_backend("numpy"), to_bf16(x), w)
    with pytest.raises(TypeError, match="must be float32"):
        linear.linear_forward(get_backend("numpy"), to_bf16(np.ones((2, 3))), np.ones((4, 3), np.float32),
                              precision="tf32")


@pytest.mark.parametrize("precision", MMA_PRECISIONS)
def test_conv_backward_data_few_channels_runs_direct(be, rng, precision):
    """Under DIRECT_MAX_CHANNELS channels per group (conv1) a tensor-core tile would be
    mostly padding; the fp32 direct kernel runs, on bf16 inputs too, within the bound."""
    x_shape, w_shape, stride, pad, groups = CONV_ODD[0]
    assert x_shape[1] // groups < conv.DIRECT_MAX_CHANNELS
    _, w, dy = _conv_data(rng, x_shape, w_shape, stride, pad)
    if precision == "bf16":
        DY, W = be.asarray(to_bf16(dy), np.uint16), be.asarray(to_bf16(w), np.uint16)
    else:
        DY, W = be.asarray(dy), be.asarray(w)
    dx = conv.conv2d_backward_data(be, DY, W, x_shape, stride, pad, groups, precision=precision)
    check_product(be.to_numpy(dx),
                  lambda a, b: conv.conv2d_backward_data_reference(a, b, x_shape, stride, pad, groups),
                  [dy, w], w_shape[0] // groups * w_shape[2] * w_shape[3], precision,
                  "backward data (direct)")


# ---- the launchers agree with the kernel sources ----------------------------------------------
def test_launcher_constants_match_the_kernels():
    import re
    import subprocess
    from pyalexnet.backends import kernel_dir
    text = (kernel_dir() / "mma_tile.cuh").read_text()
    assert re.search(r"#define MT_BK\(PREC\) (\d+)", text).group(1) == str(conv_mma.MMA_CHUNK) == \
        str(linear.MMA_CHUNK)
    for file, tiles in (("conv_mma.cu", {str(t): n for t, n in conv_mma.MMA_TILES.items()}),
                        ("gemm_mma.cu", {t: n for t, (_, n) in linear.MMA_TILES.items()})):
        src = subprocess.run(["g++", "-E", "-P", "-x", "c++", "-nostdinc", f"-I{kernel_dir()}",
                              str(kernel_dir() / file)], capture_output=True, text=True,
                             check=True).stdout
        # MT_LAUNCH_BOUNDS expanded: threads, then the minimum blocks per SM
        found = re.findall(r"__launch_bounds__\(\(\((\d+) / (\d+)\) \* \((\d+) / (\d+)\) \* 32\), "
                           r"\d+\)\s*(\w+)\(", src)
        # three passes (conv) or transposes (gemm) x two precisions x the tiles, and the
        # conv's bf16 forward storing bf16 maps
        stored_bf16 = len(tiles) if file == "conv_mma.cu" else 0
        assert len(found) == 3 * 2 * len(tiles) + stored_bf16, (file, found)
        for bm, wm, bn, wn, name in found:
            tile = name.rsplit("_", 1)[1]
            assert bm == bn == tile, name
            assert (int(bm) // int(wm)) * (int(bn) // int(wn)) * 32 == tiles[tile], name


# ---- training through the ops in each precision (the pattern the engine follows) --------------
def _toy_step(be, p, v, x, labels, precision, lr=0.05):
    """One SGD step of conv(3x3, relu) -> linear -> softmax on fp32 master weights. bf16:
    each weight's bf16 working copy is made once per step, each activation and gradient is
    converted once and fed to every product that reads it; outputs and gradients are fp32."""
    from pyalexnet.ops import bias, relu, sgd, softmax
    bf = precision == "bf16"
    cast = (lambda a: convert_to_bf16(be, a)) if bf else (lambda a: a)
    n = x.shape[0]
    wc, wf, xin = cast(p["wc"]), cast(p["wf"]), cast(x)
    y = conv.conv2d_forward(be, xin, wc, p["bc"], 1, 1, 1, relu=True, precision=precision)
    h = y.reshape(n, -1)
    hin = cast(h)
    logits = linear.linear_forward(be, hin, wf, p["bf"], precision=precision)
    loss, probs = softmax.softmax_cross_entropy_forward(be, logits, labels)
    dlogits = softmax.softmax_cross_entropy_backward(be, probs, labels)
    dl = cast(dlogits)
    grads = {"wf": linear.linear_backward_weight(be, hin, dl, precision=precision),
             "bf": bias.bias_backward(be, dlogits)}
    dh = linear.linear_backward_data(be, dl, wf, precision=precision)
    dy = relu.relu_backward(be, y, dh.reshape(y.shape))
    grads["wc"] = conv.conv2d_backward_filter(be, xin, cast(dy), p["wc"].shape, 1, 1, 1,
                                              precision=precision)
    grads["bc"] = conv.conv2d_backward_bias(be, dy)
    for k in p:
        sgd.sgd_update(be, p[k], grads[k], v[k], lr, 0.9, 0.0)
    correct = int((be.to_numpy(logits).argmax(1) == be.to_numpy(labels)).sum())
    return loss, correct / n


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("backend_name", ["numpy", "emu"])
def test_training_through_the_ops(rng, backend_name, precision):
    """A toy problem (which quadrant of an 8x8 image is bright) trains in every precision."""
    if backend_name == "emu" and "emu" not in _wanted():
        pytest.skip("emu not in PYALEXNET_TEST_BACKENDS")
    be = get_backend("numpy") if backend_name == "numpy" else \
        get_backend("emu", order="random", seed=3, check_bounds=True)
    n = 32
    labels = np.arange(n, dtype=np.int32) % 4
    x = 0.3 * rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    for i, c in enumerate(labels):
        x[i, :, 4 * (c // 2):4 * (c // 2) + 4, 4 * (c % 2):4 * (c % 2) + 4] += 1.0
    init = np.random.default_rng(7)
    p = {"wc": (init.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32),
         "bc": np.zeros(8, np.float32),
         "wf": (init.standard_normal((4, 512)) * 0.02).astype(np.float32),
         "bf": np.zeros(4, np.float32)}
    p = {k: be.asarray(a) for k, a in p.items()}
    v = {k: be.zeros(a.shape) for k, a in p.items()}
    X, L = be.asarray(x), be.asarray(labels, dtype=np.int32)
    losses = [_toy_step(be, p, v, X, L, precision) for _ in range(10)]
    assert losses[-1][0] < 0.3 * losses[0][0], [round(l, 3) for l, _ in losses]
    assert losses[-1][1] == 1.0
