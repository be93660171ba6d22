"""Adaptive average pooling (torch.nn.AdaptiveAvgPool2d), and its gradient.

An (N, C, H, W) input becomes (N, C, P, Q): output row p averages input rows
[floor(p*H/P), ceil((p+1)*H/P)), output column q likewise. Windows overlap when P does not
divide H; with P > H rows repeat. The backward pass spreads each dy evenly over its window
(the kernel gathers per input, in ascending (p, q) order: deterministic, no atomics).
"""
import numpy as np

from ._launch import ELEMENTWISE_BLOCK, elementwise_grid, i32, require_float32

KERNELS = "avgpool.cu"


def adaptive_windows(size, out):
    """[(start, end)] of the ``out`` windows over ``size`` positions."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def avgpool_output_shape(x_shape, output):
    """(N, C, P, Q) for an (N, C, H, W) input and ``output`` = P = Q (an int) or (P, Q)."""
    p, q = (output, output) if np.isscalar(output) else tuple(output)
    for v in (p, q):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"average-pool output size must be a positive integer, got {v!r}")
    if len(x_shape) != 4:
        raise ValueError(f"average-pool input must be 4-D (N, C, H, W), got shape "
                         f"{tuple(x_shape)}")
    n, c, h, w = x_shape
    if h < 1 or w < 1:
        raise ValueError(f"average-pool input must be at least 1x1, got {h}x{w}")
    return n, c, int(p), int(q)


def avgpool_forward_reference(x, output):
    n, c, p, q = avgpool_output_shape(x.shape, output)
    h, w = x.shape[2:]
    y = np.empty((n, c, p, q), dtype=x.dtype)
    for i, (h0, h1) in enumerate(adaptive_windows(h, p)):
        for j, (w0, w1) in enumerate(adaptive_windows(w, q)):
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


def avgpool_backward_reference(x_shape, dy, output):
    n, c, p, q = avgpool_output_shape(x_shape, output)
    if tuple(dy.shape) != (n, c, p, q):
        raise ValueError(f"average-pool dy has shape {dy.shape}, expected {(n, c, p, q)}")
    h, w = x_shape[2:]
    dx = np.zeros(tuple(x_shape), dtype=dy.dtype)
    for i, (h0, h1) in enumerate(adaptive_windows(h, p)):
        for j, (w0, w1) in enumerate(adaptive_windows(w, q)):
            dx[:, :, h0:h1, w0:w1] += dy[:, :, i:i + 1, j:j + 1] / ((h1 - h0) * (w1 - w0))
    return dx


def _launch(be, name, a, out, h, w, p, q):
    be.launch(KERNELS, name, elementwise_grid(out.size), ELEMENTWISE_BLOCK,
              [a, out, i32(h), i32(w), i32(p), i32(q), i32(out.size)])


def avgpool_forward(be, x, output):
    """y[n, c, p, q] = mean of x over the adaptive window (p, q) (see module doc)."""
    shape = avgpool_output_shape(x.shape, output)
    if not be.runs_kernels:
        return avgpool_forward_reference(x, output)
    require_float32("average-pool x", x)
    y = be.empty(shape)
    if y.size:
        _launch(be, "avgpool_forward", x, y, x.shape[2], x.shape[3], shape[2], shape[3])
    return y


def avgpool_backward(be, x_shape, dy, output):
    """dx of shape ``x_shape``: each dy spread evenly over its window."""
    shape = avgpool_output_shape(x_shape, output)
    if not be.runs_kernels:
        return avgpool_backward_reference(x_shape, dy, output)
    if tuple(dy.shape) != shape:
        raise ValueError(f"average-pool dy has shape {dy.shape}, expected {shape}")
    require_float32("average-pool dy", dy)
    dx = be.empty(tuple(x_shape))
    if dx.size:
        _launch(be, "avgpool_backward", dy, dx, x_shape[2], x_shape[3], shape[2], shape[3])
    return dx
