"""Copies between tower slices, and in-place addition, as kernels (kernels/copy.cu).

A tower slice of (N, C, H, W) maps is channels [start, stop) of every image; the copies
move such slices between arrays without NumPy or CuPy doing it behind the kernels' back,
so a captured training step holds every launch.
"""
import numpy as np

from ._launch import ELEMENTWISE_BLOCK, elementwise_grid, i32, i64, require_float32
from .precision import storage_suffix

KERNELS = "copy.cu"


def _maps(a):
    """(N, C, H*W) view of a batch of maps or vectors."""
    return a.reshape(a.shape[0], a.shape[1], int(np.prod(a.shape[2:])))


def copy_channels(be, src, dst, src_start, dst_start, channels):
    """dst[:, dst_start:dst_start + channels] = src[:, src_start:src_start + channels]."""
    s, d = _maps(src), _maps(dst)
    if s.shape[0] != d.shape[0] or s.shape[2] != d.shape[2]:
        raise ValueError(f"copy_channels: {src.shape} and {dst.shape} differ beyond axis 1")
    if src_start < 0 or dst_start < 0 or src_start + channels > s.shape[1] or \
            dst_start + channels > d.shape[1]:
        raise ValueError(f"copy_channels: {channels} channels from {src_start} of "
                         f"{src.shape} to {dst_start} of {dst.shape} do not fit")
    if not be.runs_kernels:
        d[:, dst_start:dst_start + channels] = s[:, src_start:src_start + channels]
        return dst
    suffix = storage_suffix("copy_channels", src, "src", dst=dst)
    total = s.shape[0] * channels * s.shape[2]
    if total:
        be.launch(KERNELS, "copy_channels" + suffix, elementwise_grid(total), ELEMENTWISE_BLOCK,
                  [src, dst, i64(total), i32(channels), i32(s.shape[2]), i32(s.shape[1]),
                   i32(src_start), i32(d.shape[1]), i32(dst_start)])
    return dst


def swap_middle_axes(be, src, dst):
    """dst[a, c, b, p] = src[a, b, c, p]: src (A, B, C, P) into dst (A, C, B, P), fp32 or bf16."""
    if src.ndim != 4 or dst.shape != (src.shape[0], src.shape[2], src.shape[1], src.shape[3]):
        raise ValueError(f"swap_middle_axes: {src.shape} does not swap into {dst.shape}")
    if not be.runs_kernels:
        dst[...] = src.transpose(0, 2, 1, 3)
        return dst
    suffix = storage_suffix("swap_middle_axes", src, "src", dst=dst)
    if src.size:
        be.launch(KERNELS, "swap_middle_axes" + suffix, elementwise_grid(src.size),
                  ELEMENTWISE_BLOCK, [src, dst, i64(src.size), i32(src.shape[1]),
                                      i32(src.shape[2]), i32(src.shape[3])])
    return dst


def add_into(be, acc, x):
    """acc += x (same shape); returns acc."""
    if acc.shape != x.shape:
        raise ValueError(f"add_into: shapes {acc.shape} and {x.shape} differ")
    if not be.runs_kernels:
        np.add(acc, x, out=acc)
        return acc
    be.launch(KERNELS, "add_into", elementwise_grid(acc.size), ELEMENTWISE_BLOCK,
              [acc, x, i64(acc.size)])
    return acc
