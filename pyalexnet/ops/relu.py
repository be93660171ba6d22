"""ReLU: y = max(x, 0); the backward pass takes the output y (ReLU may run in place).

x and y may be float32 or bf16 bits (uint16; ops/precision.py): y has x's storage. dy is
float32; dx float32, or bf16 (``out_dtype``) for a bf16 product that reads it next.

Kernel versions (``version=``, the same results): 1 moves one element a thread a step; 2
(the default) four, as one 16-byte (fp32) or 8-byte (bf16) access per array where the
arrays are aligned to it, so a warp has four times the bytes in flight.
"""
import numpy as np

from ._launch import ELEMENTWISE_BLOCK, ceil_div, elementwise_grid, i64
from .precision import BF16, storage_suffix, stored_like, to_bf16, widened

KERNELS = "relu.cu"
VERSIONS = (1, 2)


def _kernel(name, version, n):
    """The entry name and grid of ``version`` over n elements."""
    if version not in VERSIONS:
        raise ValueError(f"relu version must be one of {VERSIONS}, got {version!r}")
    if version == 2:
        return f"{name}_v2", elementwise_grid(ceil_div(n, 4))
    return name, elementwise_grid(n)


def relu_forward_reference(x):
    return stored_like(np.maximum(widened(x), 0), x)


def relu_backward_reference(y, dy, out_dtype=None):
    dx = np.where(widened(y) > 0, dy, 0).astype(dy.dtype)
    return to_bf16(dx) if out_dtype is not None and np.dtype(out_dtype) == BF16 else dx


def relu_forward(be, x, out=None, version=2):
    """y = max(x, 0). ``out`` may be ``x`` itself (in place)."""
    name, grid = _kernel("relu_forward", version, x.size)
    if not be.runs_kernels:
        y = relu_forward_reference(x)
        if out is not None:
            out[...] = y
            return out
        return y
    y = be.empty(x.shape, dtype=x.dtype) if out is None else out
    suffix = storage_suffix("relu", x, out=y)
    be.launch(KERNELS, name + suffix, grid, ELEMENTWISE_BLOCK, [x, y, i64(x.size)])
    return y


def relu_backward(be, y, dy, out_dtype=np.float32, version=2):
    """dx = dy where y > 0, else 0; stored as ``out_dtype`` (float32, or bf16 rounded to
    nearest even)."""
    to = {np.dtype(np.float32): "", np.dtype(BF16): "_to_bf16"}.get(np.dtype(out_dtype))
    if to is None:
        raise ValueError(f"relu backward: out_dtype must be float32 or bf16 (uint16), "
                         f"got {np.dtype(out_dtype)}")
    name, grid = _kernel("relu_backward", version, dy.size)
    if not be.runs_kernels:
        return relu_backward_reference(y, dy, out_dtype)
    dx = be.empty(dy.shape, dtype=out_dtype)
    be.launch(KERNELS, name + storage_suffix("relu backward", y, "y") + to, grid,
              ELEMENTWISE_BLOCK, [y, dy, dx, i64(dy.size)])
    return dx
