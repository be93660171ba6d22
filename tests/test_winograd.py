"""Winograd F(2x2, 3x3) and F(4x4, 3x3): the references against direct convolution in
float64, the kernels against float64 within an error bound that grows with the tile.

The bound (``_bound``): every quantity the float32 pipeline rounds is at most the matching
entry of the same pipeline run in float64 on absolute values with the transforms' absolute
values (``winograd_error_magnitude``, T). A chain of n roundings, each of relative error
u = 2^-24, errs by at most gamma_n = n u / (1 - n u) times T (Higham, Accuracy and
Stability of Numerical Algorithms, ch. 3), n counted along the longest chain below. This is
the worst-case form of the analysis behind Lavin & Gray's observation that accuracy falls
as the tile grows: T carries the transforms' growth (F(2x2)'s entries are 0, 1/2, 1;
F(4x4)'s reach 5 in BT, 8 in AT and need 1/6, 1/24 in G, which float32 rounds), so T, and
the bound, are far larger for F(4x4) relative to the result than for F(2x2).
"""
import numpy as np
import pytest

from conftest import assert_matches_reference
from pyalexnet.backends import get_backend
from pyalexnet.ops import conv
from pyalexnet.ops import winograd as wg

U32 = 2.0 ** -24
# (x shape, w shape, pad, groups): AlexNet's 3x3 layers at batch 2, then odd shapes (sizes
# not multiples of either tile, H != W, pads 0-2, 1-3 groups, one-pixel images).
ALEXNET = {
    "conv3": ((2, 256, 13, 13), (384, 256, 3, 3), 1, 1),
    "conv4": ((2, 384, 13, 13), (384, 192, 3, 3), 1, 2),
    "conv5": ((2, 384, 13, 13), (256, 192, 3, 3), 1, 2),
}
ODD = [
    ((3, 5, 11, 13), (7, 5, 3, 3), 1, 1),
    ((2, 6, 9, 7), (9, 2, 3, 3), 0, 3),
    ((1, 4, 6, 10), (6, 2, 3, 3), 2, 2),
    ((2, 3, 3, 5), (5, 3, 3, 3), 0, 1),   # one output row
    ((1, 2, 1, 1), (3, 2, 3, 3), 1, 1),   # one pixel
    ((4, 17, 7, 9), (66, 17, 3, 3), 1, 1),
]
# one real shape (conv4: two groups, 192 channels each) for every kernel, then odd shapes;
# conv3's shape runs in test_error_grows_with_the_tile
CASES = [pytest.param(ALEXNET["conv4"], id="conv4")] + \
        [pytest.param(c, id=f"odd{i}") for i, c in enumerate(ODD)]
TILES = pytest.mark.parametrize("m", wg.TILE_SIZES, ids=lambda m: f"F{m}")


def _data(rng, x_shape, w_shape, pad, groups):
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    dy = rng.standard_normal(conv.conv2d_output_shape(x_shape, w_shape, 1, pad)).astype(np.float32)
    return x, w, dy


def _chain(pass_, m, plan):
    """Roundings along the longest chain of one output (see the module doc)."""
    alpha = m + 2
    transforms = 2 * alpha + 2 * alpha + 2 * 3 + 4  # input, output, filter; G's entries
    if pass_ == "backward_filter":  # input and dy transforms, products over a chunk, chunk sum
        return transforms + 2 * m + 1 + plan.pc + plan.chunks
    return transforms + 1 + plan.red


def _bound(pass_, m, a, b, shape, pad, groups, chunks=None):
    plan = wg.Plan(pass_, *((a.shape, b.shape) if pass_ == "forward" else
                            (shape, b.shape) if pass_ == "backward_data" else
                            (a.shape, shape)), pad, groups, m, chunks)
    n = _chain(pass_, m, plan)
    magnitude = wg.winograd_error_magnitude(pass_, a, b, shape, pad, groups, m)
    return n * U32 / (1 - n * U32) * magnitude


def _direct(pass_, a, b, shape, pad, groups):
    a, b = a.astype(np.float64), b.astype(np.float64)
    if pass_ == "forward":
        return conv.conv2d_forward_reference(a, b, None, 1, pad, groups)
    if pass_ == "backward_data":
        return conv.conv2d_backward_data_reference(a, b, shape, 1, pad, groups)
    return conv.conv2d_backward_filter_reference(a, b, shape, 1, pad, groups)


def _run(be, pass_, m, a, b, shape, pad, groups, **kw):
    A, B = be.asarray(a), be.asarray(b)
    if pass_ == "forward":
        out = wg.winograd_forward(be, A, B, None, pad, groups, m=m, **kw)
    elif pass_ == "backward_data":
        out = wg.winograd_backward_data(be, A, B, shape, pad, groups, m, **kw)
    else:
        out = wg.winograd_backward_filter(be, A, B, shape, pad, groups, m, **kw)
    return be.to_numpy(out)


def _operands(pass_, x, w, dy):
    """(a, b, shape) of a pass, as winograd_error_magnitude takes them."""
    return {"forward": (x, w, None), "backward_data": (dy, w, x.shape),
            "backward_filter": (x, dy, w.shape)}[pass_]


def _assert_within_bound(actual, pass_, m, a, b, shape, pad, groups, chunks=None):
    ref = _direct(pass_, a, b, shape, pad, groups)
    bound = _bound(pass_, m, a, b, shape, pad, groups, chunks)
    assert actual.shape == ref.shape
    # Not vacuous: below a quarter of the result's scale, so any structural slip (a wrong
    # tap, tile, channel or transform entry) errs by the result's own order and fails.
    # (F(4x4)'s worst case reaches about 7% of it for conv3's backward data.)
    assert bound.max() < 0.25 * np.abs(ref).max(), "bound too loose to test anything"
    err = np.abs(actual - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{pass_} F({m}): error {err[worst]:.3g} > bound "
                                  f"{bound[worst]:.3g} at {worst}")
    return err.max()


# ---- references -------------------------------------------------------------------------
@TILES
@pytest.mark.parametrize("case", [pytest.param(c, id=f"odd{i}") for i, c in enumerate(ODD)])
@pytest.mark.parametrize("pass_", wg.PASSES)
def test_reference_is_the_convolution(rng, pass_, case, m):
    """In float64 the transforms reproduce direct convolution to rounding level."""
    x, w, dy = (a.astype(np.float64) for a in _data(rng, *case))
    x_shape, w_shape, pad, groups = case
    a, b, shape = _operands(pass_, x, w, dy)
    ref = {"forward": lambda: wg.winograd_forward_reference(a, b, None, pad, groups, m=m),
           "backward_data": lambda: wg.winograd_backward_data_reference(a, b, shape, pad,
                                                                        groups, m),
           "backward_filter": lambda: wg.winograd_backward_filter_reference(a, b, shape, pad,
                                                                            groups, m)}[pass_]()
    direct = _direct(pass_, a, b, shape, pad, groups)
    np.testing.assert_allclose(ref, direct, rtol=0, atol=1e-12 * max(1, np.abs(direct).max()))


def test_matrices_reconstruct_one_dimensional_correlation():
    """F(m, 3) in 1-D: AT [(G g) . (BT d)] = the m outputs of correlating d with g."""
    rng = np.random.default_rng(5)
    for m in wg.TILE_SIZES:
        bt, g_, at = wg.winograd_matrices(m)
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        want = [d[i:i + 3] @ g for i in range(m)]
        np.testing.assert_allclose(at @ ((g_ @ g) * (bt @ d)), want, rtol=1e-12)
    with pytest.raises(ValueError, match="tile size m must be one of"):
        wg.winograd_matrices(3)


# ---- kernels ------------------------------------------------------------------------------
@TILES
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("pass_", wg.PASSES)
def test_kernels_within_the_error_bound(kernel_backend, rng, pass_, case, m):
    x, w, dy = _data(rng, *case)
    _, _, pad, groups = case
    a, b, shape = _operands(pass_, x, w, dy)
    _assert_within_bound(_run(kernel_backend, pass_, m, a, b, shape, pad, groups),
                         pass_, m, a, b, shape, pad, groups)


@pytest.mark.parametrize("pass_", wg.PASSES)
def test_error_grows_with_the_tile(rng, pass_):
    """On conv3's shape: F(4x4)'s bound and its measured error both exceed F(2x2)'s."""
    be = get_backend("emu")
    x, w, dy = _data(rng, *ALEXNET["conv3"])
    _, _, pad, groups = ALEXNET["conv3"]
    a, b, shape = _operands(pass_, x, w, dy)
    errors, bounds = {}, {}
    for m in wg.TILE_SIZES:
        errors[m] = _assert_within_bound(_run(be, pass_, m, a, b, shape, pad, groups),
                                         pass_, m, a, b, shape, pad, groups)
        bounds[m] = _bound(pass_, m, a, b, shape, pad, groups).max()
    assert bounds[4] > 4 * bounds[2] and errors[4] > 2 * errors[2], (errors, bounds)


def test_fused_bias_and_relu(kernel_backend, rng):
    be = kernel_backend
    x, w, _ = _data(rng, *ODD[0])
    b = rng.standard_normal(w.shape[0]).astype(np.float32)
    for m in wg.TILE_SIZES:
        y = be.to_numpy(wg.winograd_forward(be, be.asarray(x), be.asarray(w), be.asarray(b), 1,
                                            relu=True, m=m))
        ref = conv.conv2d_forward_reference(*(a.astype(np.float64) for a in (x, w, b)), 1, 1,
                                            relu=True)
        assert_matches_reference(y, ref, reduction=4 * 45, what=f"F({m}) + bias + ReLU")
        assert np.all(y[ref == 0] == 0)


@TILES
def test_filter_gradient_chunks_and_determinism(kernel_backend, rng, m):
    """Any chunk count stays within the bound; repeated runs give identical bits."""
    be = kernel_backend
    case = ((3, 6, 11, 9), (8, 3, 3, 3), 1, 2)
    x, w, dy = _data(rng, *case)
    for chunks in (1, 2, 5, 1000):
        out = _run(be, "backward_filter", m, x, dy, w.shape, 1, 2, chunks=chunks)
        _assert_within_bound(out, "backward_filter", m, x, dy, w.shape, 1, 2, chunks)
    first = _run(be, "backward_filter", m, x, dy, w.shape, 1, 2)
    np.testing.assert_array_equal(_run(be, "backward_filter", m, x, dy, w.shape, 1, 2), first)


@pytest.mark.parametrize("pass_", wg.PASSES)
def test_callers_workspace(kernel_backend, rng, pass_):
    be = kernel_backend
    x, w, dy = _data(rng, *ODD[1])
    _, _, pad, groups = ODD[1]
    a, b, shape = _operands(pass_, x, w, dy)
    need = conv.conv2d_workspace_size(pass_, x.shape, w.shape, 1, pad, groups, algo="winograd4")
    assert need == wg.winograd_workspace_size(pass_, x.shape, w.shape, pad, groups, 4) > 0
    ws = be.asarray(np.full(need + 3, np.nan, np.float32))
    own = _run(be, pass_, 4, a, b, shape, pad, groups)
    np.testing.assert_array_equal(_run(be, pass_, 4, a, b, shape, pad, groups, workspace=ws), own)
    assert np.all(np.isnan(be.to_numpy(ws)[need:]))  # nothing written past its size
    with pytest.raises(ValueError, match=f"at least {need} elements"):
        _run(be, pass_, 4, a, b, shape, pad, groups, workspace=ws[:need - 1])


# ---- through the conv ops ----------------------------------------------------------------
def test_conv_ops_dispatch_on_algo(kernel_backend, rng):
    be = kernel_backend
    case = ODD[1]
    x, w, dy = _data(rng, *case)
    _, _, pad, groups = case
    X, W, DY = be.asarray(x), be.asarray(w), be.asarray(dy)
    for m in wg.TILE_SIZES:
        algo = f"winograd{m}"
        np.testing.assert_array_equal(
            be.to_numpy(conv.conv2d_forward(be, X, W, None, 1, pad, groups, algo=algo)),
            be.to_numpy(wg.winograd_forward(be, X, W, None, pad, groups, m=m)))
        np.testing.assert_array_equal(
            be.to_numpy(conv.conv2d_backward_data(be, DY, W, x.shape, 1, pad, groups, algo=algo)),
            be.to_numpy(wg.winograd_backward_data(be, DY, W, x.shape, pad, groups, m)))
        np.testing.assert_array_equal(
            be.to_numpy(conv.conv2d_backward_filter(be, X, DY, w.shape, 1, pad, groups,
                                                    algo=algo)),
            be.to_numpy(wg.winograd_backward_filter(be, X, DY, w.shape, pad, groups, m)))


def test_numpy_backend_runs_the_winograd_reference(rng):
    be = get_backend("numpy")
    x, w, _ = _data(rng, *ODD[0])
    y = conv.conv2d_forward(be, x, w, None, 1, 1, algo="winograd4")
    np.testing.assert_array_equal(y, wg.winograd_forward_reference(x, w, None, 1, m=4))
    _assert_within_bound(y, "forward", 4, x, w, None, 1, 1)  # float32 NumPy, same bound


def test_auto_choice():
    """Winograd only where it applies; at batch 128 the model prefers F(4x4) for conv3-5,
    at batch 2 (transforms dominate) the implicit GEMM."""
    big = {k: ((128,) + v[0][1:],) + v[1:] for k, v in ALEXNET.items()}
    for pass_ in wg.PASSES:
        assert conv.pick_algo(pass_, (128, 96, 27, 27), (256, 48, 5, 5), 1, 2, 2) == "gemm"
        assert conv.pick_algo(pass_, (2, 8, 9, 9), (4, 8, 3, 3), 2, 1, 1) == "gemm"  # stride 2
        for x_shape, w_shape, pad, groups in big.values():
            assert conv.pick_algo(pass_, x_shape, w_shape, 1, pad, groups) == "winograd4"
        x_shape, w_shape, pad, groups = ALEXNET["conv3"]
        assert conv.pick_algo(pass_, x_shape, w_shape, 1, pad, groups) == "gemm"
    assert conv.conv2d_workspace_size("forward", *big["conv3"][:2], 1, 1, 1, algo="auto") == \
        wg.winograd_workspace_size("forward", *big["conv3"][:2], 1, 1, 4)


def test_bad_arguments():
    be = get_backend("emu")
    x, w = np.zeros((1, 3, 8, 8), np.float32), np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="only 3x3 filters at stride 1"):
        conv.conv2d_forward(be, x, w, stride=2, pad=1, algo="winograd2")
    with pytest.raises(ValueError, match="only 3x3 filters at stride 1"):
        conv.conv2d_forward(be, x, np.zeros((4, 3, 5, 5), np.float32), pad=2, algo="winograd4")
    with pytest.raises(ValueError, match="only 3x3 filters at stride 1"):
        conv.conv2d_forward(be, x, w, pad=3, algo="winograd2")
    with pytest.raises(ValueError, match="algo must be one of"):
        conv.conv2d_forward(be, x, w, algo="fft")
    with pytest.raises(ValueError, match="tile= selects an implicit-GEMM kernel"):
        conv.conv2d_forward(be, x, w, algo="winograd2", tile=(64, 64))
    with pytest.raises(ValueError, match="pass must be one of"):
        conv.conv2d_workspace_size("sideways", x.shape, w.shape)
