import numpy as np
import pytest
from conftest import assert_matches_reference

from pyalexnet.backends import get_backend
from pyalexnet.gradcheck import assert_gradient_close, numeric_gradient
from pyalexnet.ops.linear import (TILES, gemm, gemm_plan, gemm_reference, linear_backward_bias,
                                  linear_backward_bias_reference, linear_backward_data,
                                  linear_backward_data_reference, linear_backward_weight,
                                  linear_backward_weight_reference, linear_forward,
                                  linear_forward_reference)

TRANS = [(False, False), (False, True), (True, False), (True, True)]
TRANS_IDS = ["nn", "nt", "tn", "tt"]

# AlexNet's fully connected layers at batch 2: (batch, in, out). fc6 and fc7 whole and as the
# two-tower halves (each tower computes 2048 of the 4096 outputs from all inputs).
ALEXNET_FC = [(2, 9216, 4096), (2, 4096, 4096), (2, 4096, 1000), (2, 9216, 2048), (2, 4096, 2048)]
ALEXNET_IDS = ["fc6", "fc7", "fc8", "fc6-tower", "fc7-tower"]


def _odd_shapes(count, seed=7):
    """(M, N, K) not multiples of any tile size (8, 16, 64, 128, 256); half of them have
    every dimension a multiple of 4 (float4 global loads with bounds), half odd (scalar)."""
    r = np.random.default_rng(seed)
    shapes = []
    while len(shapes) < count:
        mult4 = len(shapes) % 2 == 0
        dims = [int(r.integers(1, 90)) * (4 if mult4 else 1) for _ in range(2)]
        dims.append(int(r.integers(1, 150)) * (4 if mult4 else 1))
        if mult4 and any(d % 8 == 0 for d in dims) or not mult4 and any(d % 2 == 0 for d in dims):
            continue
        shapes.append(tuple(dims))
    return shapes


ODD_SHAPES = _odd_shapes(12) + [(1, 1, 1), (3, 517, 1500), (130, 35, 700), (128, 520, 1152)]


def _operands(rng, m, n, k, trans_a, trans_b):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    c = rng.standard_normal((m, n)).astype(np.float32)
    return a, b, c


def _check_gemm(be, rng, m, n, k, trans_a, trans_b, alpha=1.5, beta=-0.5, **plan):
    a, b, c = _operands(rng, m, n, k, trans_a, trans_b)
    cd = be.asarray(c.copy())  # asarray may alias; gemm writes c in place
    out = gemm(be, be.asarray(a), be.asarray(b), trans_a, trans_b, alpha, beta, cd, **plan)
    assert out is cd
    ref = gemm_reference(a.astype(np.float64), b.astype(np.float64), trans_a, trans_b, alpha,
                         beta, c.astype(np.float64))
    assert_matches_reference(be.to_numpy(cd), ref, reduction=k,
                             what=f"gemm {m}x{n}x{k} trans=({trans_a},{trans_b}) {plan}")


# ---- references ---------------------------------------------------------------------------
def test_reference_gradients(rng):
    x = rng.standard_normal((3, 5))
    w = rng.standard_normal((4, 5))
    b = rng.standard_normal(4)
    dy = rng.standard_normal((3, 4))
    num_x = numeric_gradient(lambda xx: linear_forward_reference(xx, w, b), x, dy)
    num_w = numeric_gradient(lambda ww: linear_forward_reference(x, ww, b), w, dy)
    num_b = numeric_gradient(lambda bb: linear_forward_reference(x, w, bb), b, dy)
    assert_gradient_close(linear_backward_data_reference(dy, w), num_x, what="linear dx")
    assert_gradient_close(linear_backward_weight_reference(x, dy), num_w, what="linear dW")
    assert_gradient_close(linear_backward_bias_reference(dy), num_b, what="linear db")


def test_gemm_reference_is_blas_gemm(rng):
    a, b, c = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((3, 5))
    np.testing.assert_allclose(gemm_reference(a, b, False, True, 2.0, 3.0, c), 2 * a @ b.T + 3 * c)
    np.testing.assert_allclose(gemm_reference(a.T.copy(), b.T.copy(), True, False), a @ b.T)
    # beta == 0: c is not read, not even NaN in it
    assert np.all(np.isfinite(gemm_reference(a, b, False, True, 1.0, 0.0, np.full((3, 5), np.nan))))


# ---- gemm kernels -------------------------------------------------------------------------
@pytest.mark.parametrize("trans", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_odd_shapes(kernel_backend, rng, shape, trans):
    _check_gemm(kernel_backend, rng, *shape, *trans)


@pytest.mark.parametrize("trans", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("tile", sorted(TILES))
@pytest.mark.parametrize("splits", [1, 3])
def test_gemm_every_tile_and_split(kernel_backend, rng, tile, splits, trans):
    """Each tile configuration and the split-K path, forced, with every transpose."""
    _check_gemm(kernel_backend, rng, 37, 301, 203, *trans, tile=tile, splits=splits)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25), (0.0, 1.0)])
def test_gemm_alpha_beta(kernel_backend, rng, alpha, beta):
    for trans in TRANS:
        _check_gemm(kernel_backend, rng, 67, 45, 33, *trans, alpha=alpha, beta=beta)
        _check_gemm(kernel_backend, rng, 67, 45, 900, *trans, alpha=alpha, beta=beta, splits=4)


def test_gemm_beta_zero_ignores_c(kernel_backend, rng):
    be = kernel_backend
    a, b, _ = _operands(rng, 19, 23, 50, False, False)
    for splits in (1, 2):
        c = be.asarray(np.full((19, 23), np.nan, np.float32))
        gemm(be, be.asarray(a), be.asarray(b), c=c, splits=splits)
        assert_matches_reference(be.to_numpy(c), a.astype(np.float64) @ b, reduction=50)


def test_gemm_unaligned_operands(kernel_backend, rng):
    """Views starting one float into a buffer: float4 loads/stores must fall back to scalar."""
    be = kernel_backend
    m, n, k = 36, 68, 44  # leading dimensions multiples of 4, pointers not 16-byte aligned

    def shifted(x):
        buf = be.asarray(np.zeros(x.size + 1, np.float32))
        buf[1:] = be.asarray(x.reshape(-1))
        return buf[1:].reshape(x.shape)

    for trans in TRANS:
        for tile in TILES:
            a, b, c = _operands(rng, m, n, k, *trans)
            cd = shifted(c)
            gemm(be, shifted(a), shifted(b), *trans, 1.0, 1.0, cd, tile=tile)
            ref = gemm_reference(a.astype(np.float64), b.astype(np.float64), *trans, 1.0, 1.0,
                                 c.astype(np.float64))
            assert_matches_reference(be.to_numpy(cd), ref, reduction=k, what=f"{trans} {tile}")


def test_gemm_split_k_is_deterministic(kernel_backend, rng):
    be = kernel_backend
    a, b, _ = _operands(rng, 5, 70, 3000, False, True)
    ad, bd = be.asarray(a), be.asarray(b)
    assert gemm_plan(5, 70, 3000).splits > 1
    first = be.to_numpy(gemm(be, ad, bd, trans_b=True))
    for _ in range(2):
        np.testing.assert_array_equal(be.to_numpy(gemm(be, ad, bd, trans_b=True)), first)


def test_gemm_empty_and_k_zero(kernel_backend):
    be = kernel_backend
    c = gemm(be, be.asarray(np.zeros((0, 5), np.float32)), be.asarray(np.zeros((5, 3), np.float32)))
    assert c.shape == (0, 3)
    c = be.asarray(np.full((2, 3), 4.0, np.float32))
    gemm(be, be.asarray(np.zeros((2, 0), np.float32)), be.asarray(np.zeros((0, 3), np.float32)),
         beta=0.5, c=c)
    np.testing.assert_array_equal(be.to_numpy(c), np.full((2, 3), 2.0))


def test_gemm_rejects_transposed_views(kernel_backend):
    be = kernel_backend
    a = be.asarray(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="C-contiguous.*trans_a"):
        gemm(be, a.T, be.asarray(np.zeros((3, 5), np.float32)))


def test_plan():
    # batch 2: the 8-row tile, split-K to fill the GPU
    p = gemm_plan(2, 4096, 9216)
    assert p.tile == "8" and p.splits > 1 and p.grid[0] * p.grid[2] >= 132
    # batch-128 fc6 forward and backward data: 128x128 tiles, split-K (only 32/72 tiles)
    assert gemm_plan(128, 4096, 9216).tile == "128" and gemm_plan(128, 4096, 9216).splits > 1
    assert gemm_plan(128, 9216, 4096).splits > 1
    # backward weight (K = batch): plenty of tiles, no split
    assert gemm_plan(4096, 9216, 128) == gemm_plan(4096, 9216, 128, splits=1)
    # every split gets a non-empty whole number of BK tiles
    for m, n, k in [(2, 10, 1000), (7, 7, 257), (300, 20, 4099)]:
        for s in (None, 2, 5, 31):
            p = gemm_plan(m, n, k, splits=s)
            assert p.k_chunk % TILES[p.tile][2] == 0 and (p.splits - 1) * p.k_chunk < k


def test_gemm_errors():
    be = get_backend("numpy")
    z = lambda *s, dt=np.float32: np.zeros(s, dt)  # noqa: E731
    with pytest.raises(ValueError, match="inner dimensions differ"):
        gemm(be, z(2, 3), z(4, 5))
    with pytest.raises(TypeError, match="float32"):
        gemm(be, z(2, 3, dt=np.float64), z(3, 5))
    with pytest.raises(ValueError, match="2-D"):
        gemm(be, z(2, 3, 1), z(3, 5))
    with pytest.raises(ValueError, match="beta != 0 needs"):
        gemm(be, z(2, 3), z(3, 5), beta=1.0)
    with pytest.raises(ValueError, match=r"c has shape \(5, 2\)"):
        gemm(be, z(2, 3), z(3, 5), c=z(5, 2))
    with pytest.raises(ValueError, match="tile must be"):
        gemm_plan(2, 3, 4, tile="32")
    with pytest.raises(ValueError, match="x has 3 features"):
        linear_forward(be, z(2, 3), z(4, 5))
    with pytest.raises(ValueError, match="bias of shape"):
        linear_forward(be, z(2, 5), z(4, 5), z(3))
    with pytest.raises(ValueError, match="dy has 3 outputs"):
        linear_backward_data(be, z(2, 3), z(4, 5))
    with pytest.raises(ValueError, match="dy has batch 3"):
        linear_backward_weight(be, z(2, 5), z(3, 4))


# ---- linear layers --------------------------------------------------------------------------
def _assert_rows_match(actual, reference, reduction, what):
    """assert_matches_reference over blocks of rows: fc6's dW has 37.7M entries, and a
    float64 comparison in one piece spends most of its time faulting in temporaries."""
    rows = max(1, (1 << 20) // max(1, reference.shape[1]))
    for r in range(0, max(1, reference.shape[0]), rows):
        assert_matches_reference(actual[r:r + rows], reference[r:r + rows], reduction=reduction,
                                 what=f"{what} rows {r}..")


def _check_linear(be, rng, batch, n_in, n_out, check_bias=True):
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    w = 0.01 * rng.standard_normal((n_out, n_in), dtype=np.float32)
    b = rng.standard_normal(n_out, dtype=np.float32)
    dy = rng.standard_normal((batch, n_out), dtype=np.float32)
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    xd, wd, dyd = be.asarray(x), be.asarray(w), be.asarray(dy)
    y = linear_forward(be, xd, wd, be.asarray(b))
    assert_matches_reference(be.to_numpy(y), linear_forward_reference(x64, w64, b), reduction=n_in,
                             what="linear forward")
    dx = linear_backward_data(be, dyd, wd)
    assert_matches_reference(be.to_numpy(dx), linear_backward_data_reference(dy64, w64),
                             reduction=n_out, what="linear backward data")
    del w64
    dw = linear_backward_weight(be, xd, dyd)
    _assert_rows_match(be.to_numpy(dw), linear_backward_weight_reference(x64, dy64),
                       reduction=batch, what="linear backward weight")
    if not check_bias:
        return
    db = linear_backward_bias(be, dyd)
    assert_matches_reference(be.to_numpy(db), linear_backward_bias_reference(dy64),
                             reduction=batch, what="linear backward bias")


@pytest.mark.parametrize("shape", ALEXNET_FC, ids=ALEXNET_IDS)
def test_linear_alexnet_shapes(kernel_backend, rng, shape):
    # fc7's dy has fc6's shape (and the towers likewise): bias_backward runs once per shape
    _check_linear(kernel_backend, rng, *shape, check_bias=shape not in ((2, 4096, 4096), (2, 4096, 2048)))


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 37, 11), (13, 301, 77), (130, 129, 67), (2, 300, 200)])
def test_linear_odd_shapes(backend, rng, shape):
    _check_linear(backend, rng, *shape)


def test_linear_without_bias(kernel_backend, rng):
    be = kernel_backend
    x = rng.standard_normal((3, 20)).astype(np.float32)
    w = rng.standard_normal((7, 20)).astype(np.float32)
    y = linear_forward(be, be.asarray(x), be.asarray(w))
    assert_matches_reference(be.to_numpy(y), x.astype(np.float64) @ w.T.astype(np.float64),
                             reduction=20)


def test_small_nt_products_plan_the_64k_tile():
    """fc8's forward (x @ w.T at batch 128) reads w K-contiguous: the BK-32 tile, split to
    fill the GPU; the fc6/fc7 forwards, batch 2 and non-transposed products keep theirs."""
    p = gemm_plan(128, 1000, 4096, b_k_contiguous=True)
    assert p.tile == "64k" and p.splits > 1
    assert p.grid[0] * p.grid[1] * p.grid[2] >= 132 * 3  # about a full wave of 4 per SM
    assert p.k_chunk % 32 == 0
    assert gemm_plan(128, 1000, 4096).tile == "128"
    assert gemm_plan(128, 4096, 4096, b_k_contiguous=True).tile == "128"
    assert gemm_plan(2, 1000, 4096, b_k_contiguous=True).tile == "8"


def test_fc8_forward_through_the_64k_tile(kernel_backend, rng):
    """fc8 at batch 16 (more than 8 rows: the 64k plan) against float64."""
    be = kernel_backend
    assert gemm_plan(16, 1000, 4096, b_k_contiguous=True).tile == "64k"
    x = rng.standard_normal((16, 4096)).astype(np.float32)
    w = (rng.standard_normal((1000, 4096)) * 0.01).astype(np.float32)
    b = rng.standard_normal(1000).astype(np.float32)
    y = be.to_numpy(linear_forward(be, be.asarray(x), be.asarray(w), be.asarray(b)))
    ref = linear_forward_reference(*(a.astype(np.float64) for a in (x, w, b)))
    assert_matches_reference(y, ref, reduction=4096, what="fc8 forward")
