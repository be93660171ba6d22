import numpy as np
import pytest
from conftest import assert_matches_reference, record_launches

from pyalexnet.backends import get_backend
from pyalexnet.gradcheck import assert_gradient_close, numeric_gradient
from pyalexnet.ops import lrn as lrn_mod
from pyalexnet.ops.lrn import (COMPILED_RINGS, lrn_backward, lrn_backward_reference,
                               lrn_forward, lrn_forward_reference)
from pyalexnet.ops.precision import BF16, to_bf16

# (shape, size, alpha_over_n): odd C, H != W, windows 1..7 and windows wider than C.
RANDOM_CASES = [
    ((1, 1, 1, 1), 5, False),
    ((1, 3, 5, 7), 7, False),    # n > C
    ((2, 7, 3, 11), 1, False),   # n = 1: y = x / (k + a x^2)^beta
    ((3, 13, 9, 5), 3, True),
    ((2, 37, 4, 6), 5, False),   # several channel chunks, the last one partial
    ((1, 9, 17, 13), 7, True),
    ((2, 2, 6, 3), 3, False),    # n > C, C even
    ((1, 97, 3, 2), 5, True),
    ((2, 5, 1, 29), 9, False),   # n > C
    ((1, 131, 2, 67), 7, False),  # more pixels than one block, partial last block
    ((3, 11, 7, 1), 5, True),
    ((1, 60, 3, 5), 101, False),  # wide ring: the launcher shrinks the block to fit
]
ALEXNET_SHAPES = [(2, 96, 55, 55), (2, 256, 27, 27)]


def _loop_reference(x, size, alpha, beta, k, alpha_over_n):
    """The paper's formula written out element by element (checks the vectorised one)."""
    n_, c_, h_, w_ = x.shape
    a = alpha / size if alpha_over_n else alpha
    scale = np.empty_like(x)
    for c in range(c_):
        lo, hi = max(0, c - size // 2), min(c_ - 1, c + size // 2)
        scale[:, c] = k + a * sum(x[:, j] ** 2 for j in range(lo, hi + 1))
    return x / scale ** beta, scale


@pytest.mark.parametrize("size,alpha_over_n", [(1, False), (3, True), (5, False), (5, True),
                                               (7, False)])
def test_reference_matches_formula(rng, size, alpha_over_n):
    x = rng.standard_normal((2, 6, 3, 4))
    y, scale = lrn_forward_reference(x, size, 0.5, 0.75, 2.0, alpha_over_n)
    y2, scale2 = _loop_reference(x, size, 0.5, 0.75, 2.0, alpha_over_n)
    np.testing.assert_allclose(scale, scale2, rtol=1e-14)
    np.testing.assert_allclose(y, y2, rtol=1e-14)


def test_paper_default_does_not_divide_alpha():
    x = np.zeros((1, 3, 1, 1))
    x[0, 1] = 10.0
    _, scale = lrn_forward_reference(x)  # k=2, n=5, alpha=1e-4, beta=0.75
    np.testing.assert_allclose(scale[0, :, 0, 0], 2 + 1e-4 * 100)
    _, scale_n = lrn_forward_reference(x, alpha_over_n=True)
    np.testing.assert_allclose(scale_n[0, :, 0, 0], 2 + 1e-4 / 5 * 100)


@pytest.mark.parametrize("shape,size,alpha_over_n", [
    ((2, 6, 3, 4), 5, False), ((1, 7, 2, 3), 3, True), ((2, 3, 2, 2), 7, False),
    ((1, 4, 3, 2), 1, False)])
def test_reference_gradient(rng, shape, size, alpha_over_n):
    # alpha = 0.5 on unit-scale data, so the normalisation term matters in the gradient.
    params = dict(size=size, alpha=0.5, beta=0.75, k=2.0, alpha_over_n=alpha_over_n)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    numeric = numeric_gradient(lambda xx: lrn_forward_reference(xx, **params)[0], x, dy)
    y, scale = lrn_forward_reference(x, **params)
    analytic = lrn_backward_reference(x, y, scale, dy, **params)
    assert_gradient_close(analytic, numeric, what="lrn dx")


def _versions(shape, size):
    """The kernel versions that serve this window: 1 always, 2 for the compiled lengths."""
    ring = 2 * min(size // 2, shape[1] - 1) + 1
    return (1, 2) if ring in COMPILED_RINGS else (1,)


def _same_bits_every_version(be, x, dy, **params):
    """Every version's y, scale and dx, bit for bit against the first's; its y and scale."""
    first = None
    for version in _versions(x.shape, params["size"]):
        y, scale = lrn_forward(be, be.asarray(x), **params, version=version)
        dx = lrn_backward(be, be.asarray(x), y, scale, be.asarray(dy), **params, version=version)
        got = [be.to_numpy(a) for a in (y, scale, dx)]
        if first is None:
            first = got
        for a, b, what in zip(got, first, ("y", "scale", "dx")):
            np.testing.assert_array_equal(a, b, err_msg=f"v{version} {what} differs from v1's")
    return y, scale


def _check_kernel(be, x, dy, **params):
    ref_y, ref_scale = lrn_forward_reference(x.astype(np.float64), **params)
    y, scale = _same_bits_every_version(be, x, dy, **params)
    window = min(params["size"], 2 * x.shape[1] - 1)
    assert_matches_reference(be.to_numpy(scale), ref_scale, reduction=window, what="scale")
    assert_matches_reference(be.to_numpy(y), ref_y, reduction=window, what="y")
    # The backward reference takes the kernel's own float32 forward results, so only the
    # backward arithmetic is compared.
    y32, scale32 = be.to_numpy(y), be.to_numpy(scale)
    ref_dx = lrn_backward_reference(x.astype(np.float64), y32.astype(np.float64),
                                    scale32.astype(np.float64), dy.astype(np.float64), **params)
    dx = lrn_backward(be, be.asarray(x), y, scale, be.asarray(dy), **params)
    assert_matches_reference(be.to_numpy(dx), ref_dx, reduction=window, what="dx")


@pytest.mark.parametrize("shape", ALEXNET_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("alpha_over_n", [False, True])
def test_kernel_alexnet_shapes(kernel_backend, rng, shape, alpha_over_n):
    # Post-ReLU activations large enough that alpha = 1e-4 changes the result noticeably.
    x = (30 * np.maximum(rng.standard_normal(shape), 0)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    _check_kernel(kernel_backend, x, dy, size=5, alpha=1e-4, beta=0.75, k=2.0,
                  alpha_over_n=alpha_over_n)


@pytest.mark.parametrize("shape,size,alpha_over_n", RANDOM_CASES,
                         ids=[f"{'x'.join(map(str, s))}-n{n}{'-over_n' if o else ''}"
                              for s, n, o in RANDOM_CASES])
def test_kernel_random_shapes(kernel_backend, rng, shape, size, alpha_over_n):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    _check_kernel(kernel_backend, x, dy, size=size, alpha=0.5, beta=0.75, k=2.0,
                  alpha_over_n=alpha_over_n)


@pytest.mark.parametrize("target,chunk", [(1, 32), (1 << 40, 8)])
def test_kernel_channel_chunks(kernel_backend, rng, monkeypatch, target, chunk):
    """Long and short channel chunks (the launcher picks them from the pixel count)."""
    monkeypatch.setattr(lrn_mod, "TARGET_THREADS", target)
    shape = (2, 70, 5, 3)
    assert lrn_mod._geometry(shape, 5, 1)[3][-1] == chunk
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    _check_kernel(kernel_backend, x, dy, size=5, alpha=0.5, beta=0.6, k=1.0, alpha_over_n=False)


def test_kernel_other_beta_and_k(kernel_backend, rng):
    x = (5 * rng.standard_normal((2, 19, 6, 7))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    _check_kernel(kernel_backend, x, dy, size=5, alpha=0.3, beta=1.3, k=0.5, alpha_over_n=True)


def test_numpy_backend_runs_reference(rng):
    be = get_backend("numpy")
    x = rng.standard_normal((1, 4, 2, 3))
    y, scale = lrn_forward(be, x, alpha=0.5)
    np.testing.assert_array_equal(y, lrn_forward_reference(x, alpha=0.5)[0])
    dx = lrn_backward(be, x, y, scale, np.ones_like(x), alpha=0.5)
    np.testing.assert_array_equal(
        dx, lrn_backward_reference(x, y, scale, np.ones_like(x), alpha=0.5))


@pytest.mark.parametrize("kwargs,match", [
    (dict(size=4), "positive odd integer"),
    (dict(size=0), "positive odd integer"),
    (dict(size=3.0), "positive odd integer"),
    (dict(k=0.0), "k must be > 0"),
    (dict(alpha=-1.0), "alpha must be >= 0"),
    (dict(beta=float("nan")), "beta must be finite"),
])
def test_bad_parameters_are_reported(kwargs, match):
    x = np.zeros((1, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match=match):
        lrn_forward(get_backend("emu"), x, **kwargs)


@pytest.mark.parametrize("shape,size", [((2, 37, 4, 6), 5), ((1, 70, 3, 5), 3), ((1, 3, 5, 7), 7)])
def test_bf16_storage_same_bits_every_version(rng, shape, size):
    x = to_bf16((3 * rng.standard_normal(shape)).astype(np.float32))
    assert x.dtype == BF16
    dy = rng.standard_normal(shape).astype(np.float32)
    assert _versions(shape, size) == (1, 2)
    _same_bits_every_version(get_backend("emu"), x, dy, size=size, alpha=0.5, beta=0.75, k=2.0)


@pytest.mark.parametrize("shape,size,name", [
    ((1, 96, 2, 2), 5, "_v2_r5"), ((1, 8, 2, 2), 3, "_v2_r3"),
    ((1, 2, 2, 2), 5, "_v2_r3"),   # a window of 5 over 2 channels: 3 after clipping
    ((1, 8, 2, 2), 7, ""), ((1, 8, 2, 2), 1, "")])
def test_default_version_follows_the_compiled_rings(monkeypatch, shape, size, name):
    be = get_backend("emu")
    x = be.asarray(np.ones(shape, np.float32))
    launched = record_launches(monkeypatch, be)
    y, scale = lrn_forward(be, x, size=size)
    lrn_backward(be, x, y, scale, x, size=size)
    assert launched == ["lrn_forward" + name, "lrn_backward" + name]


def test_bad_version_is_reported():
    be = get_backend("emu")
    x = np.zeros((1, 9, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"version must be one of \(1, 2\)"):
        lrn_forward(be, x, version=3)
    with pytest.raises(ValueError, match="v2 is compiled for windows of 3 or 5 channels, not 7"):
        lrn_backward(be, x, x, x, x, size=7, version=2)


def test_bad_arrays_are_reported():
    be = get_backend("emu")
    x = np.zeros((1, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="4-D"):
        lrn_forward(be, np.zeros((3, 2, 2), np.float32))
    with pytest.raises(TypeError, match="float32"):
        lrn_forward(be, x.astype(np.float64))
    with pytest.raises(ValueError, match="dy has shape"):
        lrn_backward(be, x, x, x + 1, np.zeros((1, 3, 2, 3), np.float32))
    with pytest.raises(ValueError, match="too large"):
        z = np.ones((1, 300, 1, 1), np.float32)
        lrn_backward(be, z, z, z, z, size=401)
