"""Per-channel bias over axis 1 of (N, C, ...) arrays, and its gradient.

Convolutions (N, K, P, Q) and fully connected layers (N, K) share it. The gradient's dy may
be bf16 bits (uint16, ops/precision.py): the rounded gradient a bf16 layer's products read.
"""
import numpy as np

from ._launch import ELEMENTWISE_BLOCK, TARGET_SMS, ceil_div, elementwise_grid, i32, i64
from .precision import storage_suffix, widened

KERNELS = "bias.cu"
REDUCE_BLOCK = 256
BACKWARD_VERSIONS = (1, 2)
SPLIT_BLOCKS = 4 * TARGET_SMS  # v2 cuts the images into chunks until about this many blocks


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


def backward_splits(shape):
    """How many chunks of images bias_backward v2 cuts a (N, C, ...) gradient into: enough
    blocks for the GPU (SPLIT_BLOCKS), from the shape alone (every backend the same)."""
    n, c = shape[:2]
    return max(1, min(n, ceil_div(SPLIT_BLOCKS, max(c, 1))))


def bias_backward(be, dy, version=None):
    """db[c] = sum of dy over every axis but 1 (deterministic).

    version 1: one block per channel; 2: blocks per channel and chunk of images, then their
    partial sums added in fixed order; None: 2 where the shape gives more than one chunk
    (backward_splits), else 1. v1's one block per channel leaves SMs idle or
    poorly occupied below a few blocks per SM (conv1's 96 channels: 96 of 132 SMs, 8 warps
    each); modeled on an H200, conv1's gradient takes 0.22 ms with v1, 0.05 with v2."""
    if version is not None and version not in BACKWARD_VERSIONS:
        raise ValueError(f"bias backward version must be one of {BACKWARD_VERSIONS}, "
                         f"got {version!r}")
    if not be.runs_kernels:
        return bias_backward_reference(dy)
    n, c = dy.shape[:2]
    suffix = storage_suffix("bias backward", dy, "dy")
    db = be.empty((c,))
    if version is None:
        version = 2 if backward_splits(dy.shape) > 1 else 1
    if version == 1:
        be.launch(KERNELS, "bias_backward" + suffix, c, REDUCE_BLOCK,
                  [dy, db, i32(n), i32(c), i64(_inner(dy.shape))])
        return db
    chunk = ceil_div(n, backward_splits(dy.shape))
    splits = ceil_div(n, chunk)  # no empty chunk
    partial = be.empty((splits * c,))
    be.launch(KERNELS, "bias_backward_v2" + suffix, (c, splits), REDUCE_BLOCK,
              [dy, partial, i32(n), i32(c), i64(_inner(dy.shape)), i32(chunk)])
    be.launch(KERNELS, "bias_backward_reduce", elementwise_grid(c), ELEMENTWISE_BLOCK,
              [partial, db, i32(c), i32(splits)])
    return db
