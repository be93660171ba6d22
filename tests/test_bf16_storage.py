"""Memory-bound kernels on bf16 activations (kernels/storage.cuh): outputs stored as bf16
bits, compared with the references on the same bits. ReLU rounds nothing, so it must agree
bit for bit."""
import numpy as np

from pyalexnet.ops import relu
from pyalexnet.ops.precision import BF16, to_bf16


def _bits(rng, shape):
    return to_bf16(rng.standard_normal(shape, dtype=np.float32))


def test_relu_bf16(kernel_backend, rng):
    be = kernel_backend
    x = _bits(rng, (3, 5, 7, 9))
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    y = relu.relu_forward(be, be.asarray(x, dtype=BF16))
    assert y.dtype == BF16
    np.testing.assert_array_equal(be.to_numpy(y), relu.relu_forward_reference(x))
    np.testing.assert_array_equal(be.to_numpy(relu.relu_backward(be, y, be.asarray(dy))),
                                  relu.relu_backward_reference(relu.relu_forward_reference(x), dy))
