import numpy as np
import pytest
from conftest import assert_matches_reference, record_launches

from pyalexnet.backends import get_backend
from pyalexnet.gradcheck import assert_gradient_close, numeric_gradient
from pyalexnet.ops import pool
from pyalexnet.ops.pool import (BACKWARD_VERSIONS, COMPILED_WINDOWS, FORWARD_VERSIONS,
                                backward_v2_tiles, maxpool_backward,
                                maxpool_backward_reference, maxpool_forward,
                                maxpool_forward_reference, maxpool_output_shape)

ALEXNET_CASES = [((2, 96, 55, 55), 27), ((2, 256, 27, 27), 13), ((2, 256, 13, 13), 6)]
# (shape, kernel, stride): odd C, H != W, overlapping, kernel = stride, kernel < stride,
# kernel = H, windows that do not reach the last rows/columns.
RANDOM_CASES = [
    ((1, 1, 1, 1), 1, 1),
    ((2, 3, 7, 9), 3, 2),
    ((1, 5, 8, 11), 2, 2),
    ((3, 7, 10, 6), 2, 3),   # kernel < stride: some inputs are in no window
    ((1, 9, 13, 17), 5, 3),
    ((2, 11, 5, 5), 5, 1),   # kernel = H = W: one window
    ((1, 13, 12, 9), 3, 1),  # stride 1: an input is in up to 9 windows
    ((2, 1, 31, 4), 4, 4),
    ((1, 17, 9, 14), 1, 2),  # kernel 1 < stride: a subsampling
    ((1, 6, 19, 23), 7, 5),
    ((3, 2, 6, 16), 3, 4),
    ((1, 33, 7, 8), 4, 3),
]


def _case_id(case):
    shape, k, s = case
    return f"{'x'.join(map(str, shape))}-k{k}s{s}"


def _distinct(rng, shape):
    """Values spaced by 0.01 in a random order: no ties, so central differences are safe."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01


@pytest.mark.parametrize("case", [((2, 3, 7, 9), 3, 2), ((1, 2, 8, 6), 2, 2),
                                  ((1, 2, 9, 10), 2, 3), ((1, 2, 6, 7), 3, 1)], ids=_case_id)
def test_reference_gradient(rng, case):
    shape, kernel, stride = case
    x = _distinct(rng, shape)
    y = maxpool_forward_reference(x, kernel, stride)
    dy = rng.standard_normal(y.shape)
    numeric = numeric_gradient(lambda xx: maxpool_forward_reference(xx, kernel, stride), x, dy)
    analytic = maxpool_backward_reference(x, y, dy, kernel, stride)
    assert_gradient_close(analytic, numeric, what="maxpool dx")


def test_reference_forward_is_the_window_max(rng):
    x = rng.standard_normal((2, 3, 11, 8))
    y = maxpool_forward_reference(x, 3, 2)
    for p in range(y.shape[2]):
        for q in range(y.shape[3]):
            np.testing.assert_array_equal(
                y[:, :, p, q], x[:, :, 2 * p:2 * p + 3, 2 * q:2 * q + 3].max(axis=(2, 3)))


def _runs(version, kernel, compiled):
    """Whether ``version`` serves windows of ``kernel`` (the compiled-in version does not
    serve every size)."""
    return version != compiled or kernel in COMPILED_WINDOWS


def _check_kernel(be, x, dy_seed, kernel, stride, version=None):
    # max is exact: every forward version must give the reference's values bit for bit.
    for v in [v for v in FORWARD_VERSIONS if _runs(v, kernel, 2)]:
        y = maxpool_forward(be, be.asarray(x), kernel, stride, version=v)
        np.testing.assert_array_equal(be.to_numpy(y), maxpool_forward_reference(x, kernel, stride))
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(np.float32)
    dx = maxpool_backward(be, be.asarray(x), y, be.asarray(dy), kernel, stride, version)
    ref = maxpool_backward_reference(x.astype(np.float64), None, dy.astype(np.float64),
                                     kernel, stride)
    overlap = -(-kernel // stride) ** 2  # windows one input can win
    assert_matches_reference(be.to_numpy(dx), ref, reduction=overlap, what="dx")
    return be.to_numpy(dx)


VERSIONS = pytest.mark.parametrize("version", BACKWARD_VERSIONS, ids=lambda v: f"v{v}")


def _with_versions(cases):
    """(case, backward version) for every version that serves the case's window size."""
    return pytest.mark.parametrize("case,version", [
        pytest.param(case, v, id=f"{_case_id(case)}-v{v}") for case in cases
        for v in BACKWARD_VERSIONS if _runs(v, case[1], 3)])


@VERSIONS
@pytest.mark.parametrize("shape,out", ALEXNET_CASES,
                         ids=[f"{'x'.join(map(str, s))}to{o}" for s, o in ALEXNET_CASES])
def test_kernel_alexnet_shapes(kernel_backend, rng, shape, out, version):
    assert maxpool_output_shape(shape, 3, 2)[2:] == (out, out)
    # After ReLU: many zeros, so ties in whole windows are common.
    x = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    _check_kernel(kernel_backend, x, 1, 3, 2, version)


@_with_versions(RANDOM_CASES)
def test_kernel_random_shapes(kernel_backend, rng, case, version):
    shape, kernel, stride = case
    _check_kernel(kernel_backend, rng.standard_normal(shape).astype(np.float32), 2, kernel,
                  stride, version)


@_with_versions(RANDOM_CASES[1:7])
def test_kernel_many_ties(kernel_backend, rng, case, version):
    shape, kernel, stride = case
    x = rng.integers(0, 3, shape).astype(np.float32)  # three values: ties everywhere
    _check_kernel(kernel_backend, x, 3, kernel, stride, version)


def test_v2_tiles_cover_alexnet_layouts():
    # pool1: two bands of rows per plane; pool3: 12 whole planes per block, the last partial.
    assert backward_v2_tiles((2, 96, 55, 55)) == (28, 1, 14 * 27, 2 * 192)
    rows, planes, cap, blocks = backward_v2_tiles((2, 256, 13, 13))
    assert (rows, planes, cap, blocks) == (13, 12, 12 * 6 * 6, 43)


@pytest.mark.parametrize("case", RANDOM_CASES[1:], ids=_case_id)
def test_v2_many_bands(kernel_backend, rng, monkeypatch, case):
    """Tiny tiles: several bands per plane, so windows straddle bands and are found twice."""
    monkeypatch.setattr(pool, "V2_TILE_ELEMS", 24)
    shape, kernel, stride = case
    assert backward_v2_tiles(shape, kernel, stride)[3] >= 2 * shape[0] * shape[1]  # >= 2 bands
    x = rng.integers(0, 3, shape).astype(np.float32)
    ties = _check_kernel(kernel_backend, x, 4, kernel, stride, 2)
    np.testing.assert_array_equal(
        ties, _check_kernel(kernel_backend, x, 4, kernel, stride, 1))  # the same bits as v1
    if _runs(3, kernel, 3):
        np.testing.assert_array_equal(ties, _check_kernel(kernel_backend, x, 4, kernel, stride, 3))


def test_v2_falls_back_to_v1_on_wide_rows(kernel_backend, rng):
    shape = (1, 1, 2, 6200)  # 6200 windows in one row: 49.6 kB of winners and gradients
    assert backward_v2_tiles(shape, 1, 1) is None
    _check_kernel(kernel_backend, rng.standard_normal(shape).astype(np.float32), 5, 1, 1)
    be = kernel_backend
    x = be.asarray(np.zeros(shape, np.float32))
    assert backward_v2_tiles(shape, 2, 1) is None  # 6199 windows
    y = maxpool_forward(be, x, 2, 1)
    for version in (2, 3):
        with pytest.raises(ValueError, match="use version=1"):
            maxpool_backward(be, x, y, y, 2, 1, version=version)


@VERSIONS
def test_tie_rule_constant_input(backend, version):
    """The first maximum in row-major window order gets the whole gradient."""
    be = backend
    x = np.ones((1, 1, 5, 5), np.float32)
    dy = np.array([[[[1, 2], [4, 8]]]], np.float32)
    y = maxpool_forward(be, be.asarray(x), 3, 2)
    dx = be.to_numpy(maxpool_backward(be, be.asarray(x), y, be.asarray(dy), 3, 2, version))
    want = np.zeros((5, 5), np.float32)
    want[0, 0], want[0, 2], want[2, 0], want[2, 2] = 1, 2, 4, 8  # each window's top-left
    np.testing.assert_array_equal(dx[0, 0], want)


@VERSIONS
def test_tie_rule_later_and_shared_maxima(backend, version):
    be = backend
    x = np.zeros((1, 1, 3, 5), np.float32)
    x[0, 0, 1, 2] = 5.0  # the shared column: wins both windows
    x[0, 0, 2, 1] = 5.0  # a later tie in window 0: loses
    x[0, 0, 0, 4] = 5.0  # a tie before (1, 2) in window 1's row-major order: wins window 1
    dy = np.array([[[[3, 7]]]], np.float32)
    y = maxpool_forward(be, be.asarray(x), 3, 2)
    dx = be.to_numpy(maxpool_backward(be, be.asarray(x), y, be.asarray(dy), 3, 2, version))
    want = np.zeros((3, 5), np.float32)
    want[1, 2], want[0, 4] = 3, 7
    np.testing.assert_array_equal(dx[0, 0], want)


@VERSIONS
def test_signed_zeros_tie(backend, version):
    be = backend
    x = np.array([[[[-0.0, 0.0]]]], np.float32)
    y = be.to_numpy(maxpool_forward(be, be.asarray(x), 1, 1))
    np.testing.assert_array_equal(np.signbit(y), np.signbit(x))  # copied, sign and all
    x2 = be.asarray(np.array([[[[-0.0, 0.0], [0.0, 0.0]]]], np.float32))
    y2 = maxpool_forward(be, x2, 2, 2)
    assert np.signbit(be.to_numpy(y2)[0, 0, 0, 0])  # the first zero, -0, is the output
    ones = be.asarray(np.ones((1, 1, 1, 1)))
    dx = be.to_numpy(maxpool_backward(be, x2, y2, ones, 2, 2, version))
    np.testing.assert_array_equal(dx[0, 0], [[1, 0], [0, 0]])


@VERSIONS
def test_nan_wins_its_windows(backend, version):
    be = backend
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    x[0, 0, 1, 1] = np.nan  # in window (0, 0) only
    x[0, 0, 2, 3] = np.nan  # in windows (0, 1) and (1, 1)
    x[0, 0, 2, 4] = np.nan  # later NaN in the same windows: loses
    y = be.to_numpy(maxpool_forward(be, be.asarray(x), 3, 2))
    np.testing.assert_array_equal(np.isnan(y[0, 0]), [[True, True], [False, True]])
    assert y[0, 0, 1, 0] == 22
    dy = np.array([[[[1, 2], [4, 8]]]], np.float32)
    dx = be.to_numpy(maxpool_backward(be, be.asarray(x), be.asarray(y), be.asarray(dy), 3, 2,
                                      version))
    want = np.zeros((5, 5), np.float32)
    want[1, 1], want[2, 3], want[4, 2] = 1, 2 + 8, 4
    np.testing.assert_array_equal(dx[0, 0], want)


@VERSIONS
def test_backward_is_deterministic(kernel_backend, rng, version):
    be = kernel_backend
    x = be.asarray(rng.integers(0, 2, (2, 5, 15, 13)).astype(np.float32))
    y = maxpool_forward(be, x, 3, 1)
    dy = be.asarray(rng.standard_normal(y.shape).astype(np.float32))
    first = be.to_numpy(maxpool_backward(be, x, y, dy, 3, 1, version))
    for _ in range(3):
        np.testing.assert_array_equal(be.to_numpy(maxpool_backward(be, x, y, dy, 3, 1, version)),
                                      first)


@pytest.mark.parametrize("args,error,match", [
    (((1, 1, 5, 5), 0, 2), ValueError, "kernel must be a positive integer"),
    (((1, 1, 5, 5), 3, 0), ValueError, "stride must be a positive integer"),
    (((1, 1, 5, 5), 2.0, 1), ValueError, "kernel must be a positive integer"),
    (((1, 1, 5, 2), 3, 1), ValueError, "larger than the 5x2 input"),
    (((1, 5, 5), 3, 1), ValueError, "4-D"),
])
def test_bad_arguments_are_reported(args, error, match):
    shape, kernel, stride = args
    with pytest.raises(error, match=match):
        maxpool_forward(get_backend("emu"), np.zeros(shape, np.float32), kernel, stride)


def test_bad_arrays_are_reported():
    be = get_backend("emu")
    x = np.zeros((1, 2, 5, 5), np.float32)
    y = maxpool_forward(be, x)
    with pytest.raises(TypeError, match="float32"):
        maxpool_forward(be, x.astype(np.float64))
    with pytest.raises(ValueError, match="dy has shape"):
        maxpool_backward(be, x, y, np.zeros((1, 2, 3, 2), np.float32))
    with pytest.raises(ValueError, match="y has shape"):
        maxpool_backward(be, x, np.zeros((1, 2, 2, 3), np.float32), y)
    with pytest.raises(ValueError, match="version must be one of"):
        maxpool_backward(be, x, y, y, version=4)
    with pytest.raises(ValueError, match="version must be one of"):
        maxpool_forward(be, x, version=3)
    with pytest.raises(ValueError, match="forward v2 is compiled for windows of 2 or 3, not 4"):
        maxpool_forward(be, x, 4, 1, version=2)
    with pytest.raises(ValueError, match="backward v3 is compiled for windows of 2 or 3, not 4"):
        maxpool_backward(be, x, y, y, 4, 1, version=3)  # the version is checked first


@pytest.mark.parametrize("kernel,forward,backward", [(3, 2, 3), (2, 2, 3), (4, 1, 2), (1, 1, 2)])
def test_default_versions_follow_the_compiled_windows(monkeypatch, rng, kernel, forward, backward):
    be = get_backend("emu")
    x = be.asarray(rng.standard_normal((1, 2, 9, 9)).astype(np.float32))
    launched = record_launches(monkeypatch, be)
    y = maxpool_forward(be, x, kernel, 1)
    maxpool_backward(be, x, y, y, kernel, 1)
    want = [f"pool_max_forward_v2_k{kernel}" if forward == 2 else "pool_max_forward",
            f"pool_max_backward_v3_k{kernel}" if backward == 3 else "pool_max_backward_v2"]
    assert launched == want
