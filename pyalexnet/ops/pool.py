"""Max-pooling over square windows (AlexNet's overlapping 3x3 stride 2), and its gradient.

Output size P = (H - kernel) // stride + 1 (floor; no padding, so the last rows/columns
that do not fill a window are dropped, and with kernel < stride some inputs are in no
window at all and get zero gradient).

Winner rule: the FIRST maximum in row-major window order gets the whole gradient of its
window (numpy.argmax's rule). NaN counts as larger than every number: a window holding a
NaN outputs NaN and its first NaN gets the gradient. An input that wins several
overlapping windows gets the sum of their gradients; the kernel adds them in ascending
(p, q) order, one thread per input, so the backward pass is deterministic (no atomics).

The backward pass takes x, the forward output y and dy: the kernel uses y as the window
maximum and rescans the window from x only where an input equals it (ties), so y must be
``maxpool_forward(x)``; the reference recomputes the winner from x alone.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._launch import ELEMENTWISE_BLOCK, elementwise_grid, i32, require_float32

KERNELS = "pool.cu"


def maxpool_output_shape(x_shape, kernel=3, stride=2):
    """(N, C, P, Q) for an (N, C, H, W) input; raises ValueError for impossible arguments."""
    for what, v in (("kernel", kernel), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"max-pool {what} must be a positive integer, got {v!r}")
    if len(x_shape) != 4:
        raise ValueError(f"max-pool input must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    n, c, h, w = x_shape
    if kernel > h or kernel > w:
        raise ValueError(f"max-pool kernel {kernel} is larger than the {h}x{w} input")
    return n, c, (h - kernel) // stride + 1, (w - kernel) // stride + 1


def _winners(x, kernel, stride):
    """Row-major index (0 .. kernel^2-1) of each window's winner, shape (N, C, P, Q)."""
    n, c, p, q = maxpool_output_shape(x.shape, kernel, stride)
    win = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.argmax(win.reshape(n, c, p, q, kernel * kernel), axis=-1)


def maxpool_forward_reference(x, kernel=3, stride=2):
    n, c, p, q = maxpool_output_shape(x.shape, kernel, stride)
    win = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    idx = _winners(x, kernel, stride)
    return np.take_along_axis(win.reshape(n, c, p, q, -1), idx[..., None], axis=-1)[..., 0]


def maxpool_backward_reference(x, y, dy, kernel=3, stride=2):
    """dx: each window's dy goes to its winner (recomputed from x; y is not used)."""
    n, c, p, q = maxpool_output_shape(x.shape, kernel, stride)
    if tuple(dy.shape) != (n, c, p, q):
        raise ValueError(f"max-pool dy has shape {dy.shape}, expected {(n, c, p, q)}")
    h, w = x.shape[2:]
    idx = _winners(x, kernel, stride)
    rows = np.arange(p)[:, None] * stride + idx // kernel
    cols = np.arange(q)[None, :] * stride + idx % kernel
    planes = np.arange(n * c).reshape(n, c, 1, 1)
    flat = (planes * h + rows) * w + cols
    dx = np.zeros(x.size, dtype=dy.dtype)
    np.add.at(dx, flat.ravel(), dy.ravel())
    return dx.reshape(x.shape)


def _check_array(what, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"max-pool {what} has shape {a.shape}, expected {tuple(shape)}")
    require_float32(f"max-pool {what}", a)


def maxpool_forward(be, x, kernel=3, stride=2):
    """y[n, c, p, q] = max of x[n, c, p*stride : p*stride+kernel, q*stride : q*stride+kernel]."""
    shape = maxpool_output_shape(x.shape, kernel, stride)
    if not be.runs_kernels:
        return maxpool_forward_reference(x, kernel, stride)
    _check_array("x", x, x.shape)
    y = be.empty(shape)
    if y.size:
        n, c, h, w = x.shape
        be.launch(KERNELS, "pool_max_forward", elementwise_grid(y.size), ELEMENTWISE_BLOCK,
                  [x, y, i32(h), i32(w), i32(shape[2]), i32(shape[3]), i32(kernel),
                   i32(stride), i32(y.size)])
    return y


def maxpool_backward(be, x, y, dy, kernel=3, stride=2):
    """dx: each window's dy goes to its first maximum; deterministic (see module doc)."""
    shape = maxpool_output_shape(x.shape, kernel, stride)
    if not be.runs_kernels:
        return maxpool_backward_reference(x, y, dy, kernel, stride)
    _check_array("x", x, x.shape)
    _check_array("y", y, shape)
    _check_array("dy", dy, shape)
    dx = be.empty(x.shape)
    if dx.size:
        n, c, h, w = x.shape
        be.launch(KERNELS, "pool_max_backward", elementwise_grid(dx.size), ELEMENTWISE_BLOCK,
                  [x, y, dy, dx, i32(h), i32(w), i32(shape[2]), i32(shape[3]), i32(kernel),
                   i32(stride), i32(dx.size)])
    return dx
