"""ReLU: y = max(x, 0); the backward pass takes the output y (ReLU may run in place)."""
import numpy as np

from ._launch import ELEMENTWISE_BLOCK, elementwise_grid, i64

KERNELS = "relu.cu"


def relu_forward_reference(x):
    return np.maximum(x, 0)


def relu_backward_reference(y, dy):
    return np.where(y > 0, dy, 0).astype(dy.dtype)


def relu_forward(be, x, out=None):
    """y = max(x, 0). ``out`` may be ``x`` itself (in place)."""
    if not be.runs_kernels:
        y = relu_forward_reference(x)
        if out is not None:
            out[...] = y
            return out
        return y
    y = be.empty(x.shape) if out is None else out
    be.launch(KERNELS, "relu_forward", elementwise_grid(x.size), ELEMENTWISE_BLOCK,
              [x, y, i64(x.size)])
    return y


def relu_backward(be, y, dy):
    """dx = dy where y > 0, else 0."""
    if not be.runs_kernels:
        return relu_backward_reference(y, dy)
    dx = be.empty(dy.shape)
    be.launch(KERNELS, "relu_backward", elementwise_grid(dy.size), ELEMENTWISE_BLOCK,
              [y, dy, dx, i64(dy.size)])
    return dx
