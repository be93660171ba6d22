import numpy as np
import pytest
from conftest import assert_matches_reference

from pyalexnet.backends import get_backend
from pyalexnet.ops.sgd import sgd_update, sgd_update_reference

# Odd sizes (vector body + scalar tail, or scalar only) and real AlexNet parameter shapes.
SHAPES = [(1,), (3,), (7,), (1001,), (96, 3, 11, 11), (4096,), (1000, 4096), (5, 13, 3)]


def test_reference_is_the_papers_formula():
    """v <- 0.9 v - 5e-4 eps w - eps dL/dw; w <- w + v, written out by hand, eps = 0.01."""
    w = np.array([1.0, -2.0, 0.5])
    g = np.array([0.1, 0.2, -0.3])
    v = np.array([0.01, 0.0, -0.02])
    w1, v1 = sgd_update_reference(w, g, v, 0.01)
    # v0: 0.9*0.01 - 5e-4*0.01*1 - 0.01*0.1     = 0.009 - 0.000005 - 0.001
    # v1: 0.9*0   - 5e-4*0.01*(-2) - 0.01*0.2   = 0.00001 - 0.002
    # v2: 0.9*(-0.02) - 5e-4*0.01*0.5 + 0.003   = -0.018 - 0.0000025 + 0.003
    np.testing.assert_allclose(v1, [0.007995, -0.00199, -0.0150025], rtol=1e-12)
    np.testing.assert_allclose(w1, [1.007995, -2.00199, 0.4849975], rtol=1e-12)
    np.testing.assert_array_equal(w, [1.0, -2.0, 0.5])  # inputs untouched


def test_kernel_is_the_papers_formula(backend):
    be = backend
    w = be.asarray(np.array([1.0, -2.0, 0.5], np.float32))
    g = be.asarray(np.array([0.1, 0.2, -0.3], np.float32))
    v = be.asarray(np.array([0.01, 0.0, -0.02], np.float32))
    assert sgd_update(be, w, g, v, 0.01) is None
    np.testing.assert_allclose(be.to_numpy(v), [0.007995, -0.00199, -0.0150025], rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_allclose(be.to_numpy(w), [1.007995, -2.00199, 0.4849975], rtol=1e-6)


def _run_steps(be, rng, shape, steps, lr, momentum, weight_decay, offset=0):
    """`steps` updates on the backend vs the float64 reference; offset shifts every array
    by that many floats inside a larger buffer (unaligned pointers: scalar path)."""
    n = int(np.prod(shape))

    def place(a):
        buf = be.asarray(np.zeros(n + offset, np.float32))
        buf[offset:] = be.asarray(a.reshape(-1))
        return buf[offset:].reshape(shape)

    w = rng.standard_normal(shape, dtype=np.float32)
    v = 0.01 * rng.standard_normal(shape, dtype=np.float32)
    wd, vd = place(w), place(v)
    w64, v64 = w.astype(np.float64), v.astype(np.float64)
    for _ in range(steps):
        g = rng.standard_normal(shape, dtype=np.float32)
        sgd_update(be, wd, place(g), vd, lr, momentum, weight_decay)
        w64, v64 = sgd_update_reference(w64, g.astype(np.float64), v64, lr, momentum, weight_decay)
    assert_matches_reference(be.to_numpy(vd), v64, reduction=4 * steps, what="velocity")
    assert_matches_reference(be.to_numpy(wd), w64, reduction=4 * steps, what="weights")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference(backend, rng, shape):
    _run_steps(backend, rng, shape, steps=4, lr=0.01, momentum=0.9, weight_decay=5e-4)


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_unaligned_views(kernel_backend, rng, offset):
    _run_steps(kernel_backend, rng, (1003,), steps=3, lr=0.05, momentum=0.9, weight_decay=5e-4,
               offset=offset)


def test_zero_weight_decay_and_other_parameters(backend, rng):
    _run_steps(backend, rng, (257,), steps=3, lr=0.1, momentum=0.0, weight_decay=0.0)
    _run_steps(backend, rng, (257,), steps=3, lr=0.003, momentum=0.5, weight_decay=0.0)
    be = backend
    w0 = rng.standard_normal(9).astype(np.float32)
    g = rng.standard_normal(9).astype(np.float32)
    w, v = be.asarray(w0.copy()), be.zeros((9,))
    sgd_update(be, w, be.asarray(g), v, 0.1, momentum=0.9, weight_decay=0.0)
    # from rest, without decay, one step is plain gradient descent
    np.testing.assert_allclose(be.to_numpy(v), -0.1 * g, rtol=1e-6)
    np.testing.assert_allclose(be.to_numpy(w), w0 - 0.1 * g, rtol=1e-6, atol=1e-7)


def test_errors():
    be = get_backend("numpy")
    z = lambda *s, dt=np.float32: np.zeros(s, dt)  # noqa: E731
    with pytest.raises(ValueError, match="same shape"):
        sgd_update(be, z(3), z(4), z(3), 0.01)
    with pytest.raises(ValueError, match="same shape"):
        sgd_update(be, z(3), z(3), z(3, 1), 0.01)
    with pytest.raises(TypeError, match="grad must be float32"):
        sgd_update(be, z(3), z(3, dt=np.float64), z(3), 0.01)
    w = z(3)
    with pytest.raises(ValueError, match="different arrays"):
        sgd_update(be, w, z(3), w, 0.01)
