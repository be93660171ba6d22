"""Per-channel bias over axis 1 of (N, C, ...) arrays, and its gradient.

Convolutions (N, K, P, Q) and fully connected layers (N, K) share it. The gradient's dy may
be bf16 bits (uint16, ops/precision.py): the rounded gradient a bf16 layer's products read.
"""
import numpy as np

from ._launch import ELEMENTWISE_BLOCK, elementwise_grid, i32, i64
from .precision import storage_suffix, widened

KERNELS = "bias.cu"
REDUCE_BLOCK = 256


def _inner(shape):
    return int(np.prod(shape[2:], dtype=np.int64))


def bias_add_reference(x, b):
    return x + b.reshape((1, -1) + (1,) * (x.ndim - 2))


def bias_backward_reference(dy):
    return widened(dy).sum(axis=(0,) + tuple(range(2, dy.ndim)))


def bias_add(be, x, b):
    """x += b[c] in place over axis 1; returns x."""
    if x.shape[1] != b.shape[0]:
        raise ValueError(f"bias of {b.shape[0]} channels for an input with {x.shape[1]}")
    if not be.runs_kernels:
        x += b.reshape((1, -1) + (1,) * (x.ndim - 2)).astype(x.dtype, copy=False)
        return x
    be.launch(KERNELS, "bias_add", elementwise_grid(x.size), ELEMENTWISE_BLOCK,
              [x, b, i32(x.shape[1]), i64(_inner(x.shape)), i64(x.size)])
    return x


def bias_backward(be, dy):
    """db[c] = sum of dy over every axis but 1 (deterministic)."""
    if not be.runs_kernels:
        return bias_backward_reference(dy)
    n, c = dy.shape[:2]
    db = be.empty((c,))
    be.launch(KERNELS, "bias_backward" + storage_suffix("bias backward: dy", dy), c, REDUCE_BLOCK,
              [dy, db, i32(n), i32(c), i64(_inner(dy.shape))])
    return db
