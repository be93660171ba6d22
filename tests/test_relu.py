import numpy as np
import pytest
from conftest import assert_matches_reference

from pyalexnet.gradcheck import assert_gradient_close, numeric_gradient
from pyalexnet.ops.relu import (relu_backward, relu_backward_reference, relu_forward,
                                relu_forward_reference)

SHAPES = [(1,), (7,), (256,), (1000, 3), (2, 96, 55, 55), (3, 5, 7, 11)]


def test_reference_gradient(rng):
    x = rng.standard_normal((4, 5, 6))
    x[np.abs(x) < 1e-3] = 0.5  # away from the kink
    dy = rng.standard_normal(x.shape)
    numeric = numeric_gradient(relu_forward_reference, x, dy)
    analytic = relu_backward_reference(relu_forward_reference(x), dy)
    assert_gradient_close(analytic, numeric, what="relu dx")


@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(kernel_backend, rng, shape):
    be = kernel_backend
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y = relu_forward(be, be.asarray(x))
    assert_matches_reference(be.to_numpy(y), relu_forward_reference(x.astype(np.float64)))
    dx = relu_backward(be, y, be.asarray(dy))
    assert_matches_reference(be.to_numpy(dx), relu_backward_reference(x, dy))


def test_in_place(kernel_backend, rng):
    be = kernel_backend
    x = rng.standard_normal((3, 17)).astype(np.float32)
    xd = be.asarray(x)
    out = relu_forward(be, xd, out=xd)
    assert out is xd
    np.testing.assert_array_equal(be.to_numpy(xd), np.maximum(x, 0))


def test_nan_propagates(kernel_backend):
    be = kernel_backend
    y = be.to_numpy(relu_forward(be, be.asarray(np.array([np.nan, -1.0, 2.0]))))
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == 2
