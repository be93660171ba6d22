"""The tensor-core convolutions (kernels/conv_mma.cu): tf32 and bf16 implicit GEMMs with
fp32 accumulation, launched by the conv ops for precision="tf32" | "bf16" (ops/conv.py).
"""
import numpy as np

from ._launch import ELEMENTWISE_BLOCK, ceil_div, elementwise_grid, i32, i64, require_float32
from .conv_plan import (INT32_LIMIT, MAX_GRID_YZ, MIN_SPLIT, SPLIT_BLOCKS, TARGET_SMS, _as_int,
                        _check_kernel_args, _dims, _geometry)
from .copy import swap_middle_axes
from .precision import BF16, mma_operand

MMA_KERNELS = "conv_mma.cu"
FP32_KERNELS = "conv.cu"  # the fp32 kernels' split-K reduction serves these too
MMA_TILES = {128: 256, 64: 128}  # square tile edge -> threads per block (8 or 4 warps)
# Relative speed of one block of each tile, per padded output. Not measured on a GPU yet;
# the emulator's H200 model (benchmarks/emu_model.py) puts a 64 tile at about 0.4 of a
# 128 one: it reads twice the operands per product, and the rows past a layer's end cost
# the 128 tile mma work, which is cheap, but no loads (conv4's forward and data gradient:
# 128 tiles modeled 1.8-2x faster than 64 ones in tf32 and bf16, 25% of them padding;
# conv2's data gradient, 48 of 128 rows used: 2.3x in tf32, 1.2x in bf16; but conv5's
# data gradient in bf16: 0.7x). It was 0.7, a guess. It only ever changes speed.
MMA_TILE_SPEED = {128: 1.0, 64: 0.4}
MMA_CHUNK = 16  # the kernels' reduction chunk (MT_BK)
_TABLES = {}
_TABLES_MAX = 64


def _int4_table(be, columns):
    """An (n, 4) int32 table on the backend, 16-byte aligned (the kernels read int4)."""
    tab = np.zeros((len(columns[0]), 4), dtype=np.int32)
    for i, col in enumerate(columns):
        tab[:, i] = col
    if tab.size and np.abs(tab).max() >= INT32_LIMIT:
        raise ValueError("conv2d: a gather offset exceeds 32 bits")
    if be.xp is np and tab.ctypes.data % 16:
        raw = np.zeros(tab.size + 4, dtype=np.int32)
        start = (-raw.ctypes.data % 16) // 4
        aligned = raw[start:start + tab.size].reshape(tab.shape)
        aligned[...] = tab
        return aligned
    return be.asarray(tab, dtype=np.int32)


def _cached(be, key, build):
    # NumPy tables serve every CPU backend; device tables are per device
    key = (be.xp.__name__, getattr(getattr(be, "device", None), "id", None)) + key
    tab = _TABLES.get(key)
    if tab is None:
        if len(_TABLES) >= _TABLES_MAX:
            _TABLES.pop(next(iter(_TABLES)))
        tab = _TABLES[key] = build()
    return tab


def _window_table(be, n, c, h, w, k, p, q, stride, pad):
    """Per output pixel (n, p, q): {input offset of the window origin, its row, its column,
    output offset}."""
    def build():
        img, pp, qq = np.meshgrid(np.arange(n), np.arange(p), np.arange(q), indexing="ij")
        ih, iw = pp.ravel() * stride - pad, qq.ravel() * stride - pad
        img = img.ravel()
        return _int4_table(be, [img * c * h * w + ih * w + iw, ih, iw,
                                img * k * p * q + pp.ravel() * q + qq.ravel()])
    return _cached(be, ("window", n, c, h, w, k, p, q, stride, pad), build)


def _tap_table(be, c, r, s, h, w):
    """Per filter tap (c, r, s): {c H W + r W + s, r, s, 0}."""
    def build():
        cc, rr, ss = (a.ravel() for a in np.meshgrid(np.arange(c), np.arange(r), np.arange(s),
                                                     indexing="ij"))
        return _int4_table(be, [cc * h * w + rr * w + ss, rr, ss, np.zeros_like(cc)])
    return _cached(be, ("tap", c, r, s, h, w), build)


def _mma_tile(rows, cols, groups, split=False, speed=None):
    """The square tile (128 or 64) that minimises the busiest SM's padded work, or with
    ``split`` (a split reduction makes the blocks that fill the SMs) the padded work alone,
    each block weighed by its tile's ``speed`` (default MMA_TILE_SPEED)."""
    speed = speed or MMA_TILE_SPEED

    def cost(t):
        blocks = ceil_div(rows, t) * ceil_div(cols, t) * groups
        waves = blocks / TARGET_SMS if split else ceil_div(blocks, TARGET_SMS)
        return waves * t * t / speed[t]
    return min(MMA_TILES, key=cost)


def _mma_tile_arg(tile, rows, cols, groups, split=False):
    if tile is None:
        return _mma_tile(rows, cols, groups, split)
    if tile not in MMA_TILES:
        raise ValueError(f"conv2d: no tensor-core kernel for tile {tile!r}; choose one of "
                         f"{tuple(MMA_TILES)}")
    return tile


def _mma_launch(be, kind, precision, tile, cols, rows, z, args):
    grid = (ceil_div(cols, tile), ceil_div(rows, tile), z)
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise ValueError(f"conv2d: launch grid {grid} exceeds CUDA's limit of {MAX_GRID_YZ} in y/z")
    be.launch(MMA_KERNELS, f"conv_mma_{kind}_{precision}_{tile}", grid, MMA_TILES[tile], args)


def _mma_forward(be, x, w, b, stride, pad, groups, relu, precision, tile, out_dtype=np.float32):
    out = _geometry(x.shape, w.shape, stride, pad, groups)
    n, k, p, q = out
    _, c, h, wd = x.shape
    _, cg, r, s = w.shape
    xk = mma_operand(be, x, precision, "conv2d forward: x")
    wk = mma_operand(be, w, precision, "conv2d forward: w")
    if b is not None:
        require_float32("conv2d forward: b", b)
    y = be.empty(out, dtype=out_dtype)
    _check_kernel_args("forward", ("x", x), ("y", y), float32=False)
    tile = _mma_tile_arg(tile, k // groups, n * p * q, groups)
    # conv_mma_fwd_bf16_to_bf16_*: the same product, its maps stored as bf16
    stored = precision + ("_to_bf16" if np.dtype(out_dtype) == BF16 else "")
    _mma_launch(be, "fwd", stored, tile, n * p * q, k // groups, groups,
                [xk, wk, y if b is None else b, y, _window_table(be, n, c, h, wd, k, p, q, stride, pad),
                 _tap_table(be, cg, r, s, h, wd),
                 *_dims(x.shape, w.shape, out, stride, pad, groups), i32(b is not None),
                 i32(bool(relu))])
    return y


def _mma_backward_data(be, dy, w, x_shape, stride, pad, groups, precision, tile):
    out = _geometry(x_shape, w.shape, stride, pad, groups)
    n, k, p, q = out
    _, c, h, wd = x_shape
    _, cg, r, s = w.shape
    dyk = mma_operand(be, dy, precision, "conv2d backward data: dy")
    wk = mma_operand(be, w, precision, "conv2d backward data: w")
    dx = be.empty(x_shape)
    kg = k // groups
    # channels first, so the kernel reads each channel's reduction run densely
    wt = swap_middle_axes(be, wk.reshape(groups, kg, cg, r * s),
                          be.empty((groups, cg, kg, r * s), dtype=wk.dtype))
    _check_kernel_args("backward data", ("dy", dy), ("dx", dx), ("wt", wt), float32=False)

    def pixels():  # (n, h, w): {n K P Q, h + pad, w + pad, dx offset}
        img, hh, ww = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(h), np.arange(wd),
                                                     indexing="ij"))
        return _int4_table(be, [img * k * p * q, hh + pad, ww + pad, img * c * h * wd + hh * wd + ww])

    def taps():  # (k, r, s): {k P Q, -r, -s} on dy's output grid
        kk, rr, ss = (a.ravel() for a in np.meshgrid(np.arange(kg), np.arange(r), np.arange(s),
                                                     indexing="ij"))
        return _int4_table(be, [kk * p * q, -rr, -ss, np.zeros_like(kk)])

    geo = (n, c, h, wd, k, r, s, p, q, pad, groups)
    tile = _mma_tile_arg(tile, cg, n * h * wd, groups)
    _mma_launch(be, "bwd_data", precision, tile, n * h * wd, cg, groups,
                [dyk, wt, dx, _cached(be, ("bd_pixels",) + geo, pixels),
                 _cached(be, ("bd_taps_dy",) + geo, taps),
                 *_dims(x_shape, w.shape, out, stride, pad, groups)])
    return dx


def _mma_backward_filter(be, x, dy, w_shape, stride, pad, groups, precision, tile, splits):
    out = _geometry(x.shape, w_shape, stride, pad, groups)
    n, k, p, q = out
    _, c, h, wd = x.shape
    _, cg, r, s = w_shape
    xk = mma_operand(be, x, precision, "conv2d backward filter: x")
    dyk = mma_operand(be, dy, precision, "conv2d backward filter: dy")
    kg, ncol, npq = k // groups, cg * r * s, n * p * q
    tile = _mma_tile_arg(tile, kg, ncol, groups, split=True)
    if splits is None:
        tiles = ceil_div(kg, tile) * ceil_div(ncol, tile) * groups
        splits = max(1, min(ceil_div(SPLIT_BLOCKS, tiles), npq // MIN_SPLIT))
    splits = min(_as_int("splits", splits, 1), npq)
    length = ceil_div(ceil_div(npq, splits), MMA_CHUNK) * MMA_CHUNK
    splits = ceil_div(npq, length)  # no empty chunk
    dw = be.empty(w_shape)
    ws = dw if splits == 1 else be.empty((splits,) + w_shape)
    _check_kernel_args("backward filter", ("x", x), ("dy", dy), ("workspace", ws), float32=False)

    def rows_of_dy():  # (n, p, q): dy offset {n K P Q + p Q + q}
        img, pq = np.divmod(np.arange(npq), p * q)
        z = np.zeros_like(img)
        return _int4_table(be, [img * k * p * q + pq, z, z, z])

    _mma_launch(be, "bwd_filter", precision, tile, ncol, kg, splits * groups,
                [xk, dyk, ws, _tap_table(be, cg, r, s, h, wd),
                 _cached(be, ("bf_dy", n, k, p, q), rows_of_dy),
                 _window_table(be, n, c, h, wd, k, p, q, stride, pad),
                 *_dims(x.shape, w_shape, out, stride, pad, groups), i32(length)])
    if splits > 1:
        be.launch(FP32_KERNELS, "conv_bwd_filter_reduce", elementwise_grid(dw.size),
                  ELEMENTWISE_BLOCK, [ws, dw, i32(splits), i64(dw.size)])
    return dw

