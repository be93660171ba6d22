import numpy as np
import pytest
from conftest import assert_matches_reference

from pyalexnet.gradcheck import assert_gradient_close, numeric_gradient
from pyalexnet.ops.bias import bias_add, bias_add_reference, bias_backward, bias_backward_reference

SHAPES = [(2, 96, 55, 55), (2, 4096), (5, 7), (3, 13, 5, 9), (1, 1, 1, 1), (2, 3, 300)]


def test_reference_gradient(rng):
    x = rng.standard_normal((3, 4, 5))
    b = rng.standard_normal(4)
    dy = rng.standard_normal(x.shape)
    numeric = numeric_gradient(lambda bb: bias_add_reference(x, bb), b, dy)
    assert_gradient_close(bias_backward_reference(dy), numeric, what="bias db")
    numeric_x = numeric_gradient(lambda xx: bias_add_reference(xx, b), x, dy)
    assert_gradient_close(dy, numeric_x, what="bias dx")


@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(kernel_backend, rng, shape):
    be = kernel_backend
    x = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    xd = be.asarray(x.copy())  # on numpy/emu asarray may alias x; bias_add is in place
    assert bias_add(be, xd, be.asarray(b)) is xd
    assert_matches_reference(be.to_numpy(xd), bias_add_reference(x.astype(np.float64), b))
    inner = int(np.prod(shape)) // shape[1]
    db = bias_backward(be, be.asarray(x))
    assert_matches_reference(be.to_numpy(db), bias_backward_reference(x.astype(np.float64)),
                             reduction=inner)


def test_backward_is_deterministic(kernel_backend, rng):
    be = kernel_backend
    dy = be.asarray(rng.standard_normal((4, 8, 31, 29)).astype(np.float32))
    first = be.to_numpy(bias_backward(be, dy))
    for _ in range(3):
        np.testing.assert_array_equal(be.to_numpy(bias_backward(be, dy)), first)


def test_channel_mismatch_is_reported():
    from pyalexnet.backends import get_backend
    with pytest.raises(ValueError, match="bias of 3 channels"):
        bias_add(get_backend("numpy"), np.zeros((2, 4, 5), np.float32), np.zeros(3, np.float32))
