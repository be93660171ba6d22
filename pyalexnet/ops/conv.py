"""2-D convolution over NCHW tensors: any stride, zero padding and number of groups.

x (N, C, H, W), w (K, C // groups, R, S), y (N, K, P, Q) with
P = (H + 2 pad - R) // stride + 1 and Q likewise. Group g's filters (K / groups of them)
see only input channels g C/groups ... (g+1) C/groups - 1: AlexNet's two towers.

The references are im2col + matrix product (a strided window view, then ``tensordot``, so
BLAS does the work): fast enough to train a small net on the ``numpy`` backend, and
dtype-generic so they run in float64 for gradient checks. The kernels (kernels/conv.cu) are
implicit GEMMs in four tile shapes; the launcher picks one from the problem size.

precision="tf32" | "bf16" (every pass): the tensor-core kernels of kernels/conv_mma.cu, fp32
accumulation and fp32 results. tf32 takes float32 tensors (rounded in the kernel, as
cvt.rna.tf32.f32 does); bf16 takes bf16 tensors (uint16 bit patterns, see ops/precision.py)
or float32 ones, which are converted first. The references take the same option: operands
rounded as the hardware rounds them, products accumulated in float32.
"""
import operator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import winograd
from ._launch import (ELEMENTWISE_BLOCK, ceil_div, elementwise_grid, i32, i64, require_float32,
                      waves)
from .bias import bias_backward
from .linear import SPLIT_BYTES_PER_US as HBM_BYTES_PER_US  # partials: written, read once
from .precision import check_precision, fp32_operand, mma_operand, operand

KERNELS = "conv.cu"
THREADS = 256          # every conv kernel's block (CONV_THREADS)
CHUNK = 8              # reduction chunk staged in shared memory (CONV_BK)
DIRECT_CHANNELS = 4    # channels per thread of conv_bwd_data_direct (CONV_DIRECT_CB)
TILES = ((128, 64), (128, 128), (64, 128), (64, 64))  # (rows BM, columns BN) per block
# Relative speed of one block of each tile shape, measured on an H200 over AlexNet's layers
# at batch 128 (128x64 ran as fast as 128x128; the first of equal-cost tiles wins). They
# only ever change speed.
TILE_SPEED = {(128, 64): 1.0, (128, 128): 1.0, (64, 128): 0.8, (64, 64): 0.7}
TARGET_SMS = 132       # H200. Kernel choices depend on shapes only, never on the device, so
                       # every backend runs (and tests) the same kernels and split counts.
SPLIT_BLOCKS = 4 * TARGET_SMS  # filter gradient: aim for this many blocks...
MIN_SPLIT = 512                # ...but give each split at least this much reduction
DIRECT_MAX_CHANNELS = 16  # backward data: below this many channels per group, a GEMM tile
                          # would be mostly padding; the direct kernel runs instead
MAX_GRID_YZ = 65535
INT32_LIMIT = 2**31
# Filter gradient, version 2 (version=2): tiles whose __launch_bounds__ guarantee these
# resident blocks per SM (no 128x128: capped to two blocks it spills), and a split count
# from a model of waves of resident blocks plus the split reduction's memory traffic.
FILTER_VERSIONS = (1, 2)
FILTER_V2_BLOCKS_PER_SM = {(128, 64): 3, (64, 128): 3, (64, 64): 5}
SM_FMA_PER_US = 1.27e5   # FP32 FMAs per microsecond per H200 SM: half the peak (the H200
                          # run measured our implicit GEMMs at 30-45% of it)
LAUNCH_US = 3.0           # one more kernel launch (a reduction), assumed
V2_MIN_SPLIT = 256        # reduction per split at least this long (amortises the epilogue)
V2_MAX_SPLITS = 64
MODEL_SLACK = 0.03        # cost differences below this fraction are noise in the model


# ---- shapes and validation ----------------------------------------------------------------
def _as_int(name, v, low):
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"conv2d: {name} must be an integer, got {v!r}") from None
    if v < low:
        raise ValueError(f"conv2d: {name} must be >= {low}, got {v}")
    return v


def conv2d_output_shape(x_shape, w_shape, stride=1, pad=0):
    """(N, K, P, Q) of a convolution of an (N, C, H, W) input with (K, C/g, R, S) filters."""
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    if len(x_shape) != 4:
        raise ValueError(f"conv2d: the input must be 4-D (N, C, H, W), got shape {x_shape}")
    if len(w_shape) != 4:
        raise ValueError(f"conv2d: the filters must be 4-D (K, C/groups, R, S), got shape {w_shape}")
    stride, pad = _as_int("stride", stride, 1), _as_int("pad", pad, 0)
    n, _, h, w = x_shape
    k, _, r, s = w_shape
    p, q = (h + 2 * pad - r) // stride + 1, (w + 2 * pad - s) // stride + 1
    if p < 1 or q < 1 or r < 1 or s < 1:
        raise ValueError(f"conv2d: a {r}x{s} filter with pad {pad} does not fit the {h}x{w} "
                         f"input (output would be {p}x{q})")
    return n, k, p, q


def _geometry(x_shape, w_shape, stride, pad, groups):
    """Validated output shape; checks that channels and groups agree."""
    out = conv2d_output_shape(x_shape, w_shape, stride, pad)
    groups = _as_int("groups", groups, 1)
    c, (k, cg) = x_shape[1], w_shape[:2]
    if c % groups or k % groups:
        raise ValueError(f"conv2d: groups={groups} must divide the input channels ({c}) and "
                         f"the filters ({k})")
    if cg * groups != c:
        raise ValueError(f"conv2d: channel mismatch: filters of {cg} channels x groups={groups} "
                         f"need {cg * groups} input channels, the input has {c}")
    return out


def _check_dy(dy_shape, expected):
    if tuple(dy_shape) != tuple(expected):
        raise ValueError(f"conv2d: the output gradient has shape {tuple(dy_shape)}, the "
                         f"convolution's output is {tuple(expected)}")


# ---- NumPy references -----------------------------------------------------------------------
def _windows(x, r, s, stride, pad):
    """(N, C, P, Q, R, S) view of every filter window (the im2col matrix, not copied)."""
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return sliding_window_view(x, (r, s), axis=(2, 3))[:, :, ::stride, ::stride]


def conv2d_forward_reference(x, w, b=None, stride=1, pad=0, groups=1, relu=False,
                             precision="fp32"):
    n, k, p, q = _geometry(x.shape, w.shape, stride, pad, groups)
    x, w = operand(x, precision), operand(w, precision)
    cg, kg = w.shape[1], k // groups
    cols = _windows(x, w.shape[2], w.shape[3], stride, pad)
    y = np.empty((n, k, p, q), dtype=np.result_type(x, w))
    for g in range(groups):
        yg = np.tensordot(w[g * kg:(g + 1) * kg], cols[:, g * cg:(g + 1) * cg],
                          axes=([1, 2, 3], [1, 4, 5]))  # (Kg, N, P, Q)
        y[:, g * kg:(g + 1) * kg] = yg.transpose(1, 0, 2, 3)
    if b is not None:
        if b.shape != (k,):
            raise ValueError(f"conv2d: bias of shape {b.shape} for {k} filters")
        y += b.reshape(1, k, 1, 1)
    if relu:
        np.maximum(y, 0, out=y)
    return y


def conv2d_backward_data_reference(dy, w, x_shape, stride=1, pad=0, groups=1, precision="fp32"):
    n, k, p, q = _geometry(x_shape, w.shape, stride, pad, groups)
    dy, w = operand(dy, precision), operand(w, precision)
    _check_dy(dy.shape, (n, k, p, q))
    _, c, h, wd = x_shape
    cg, kg, r, s = w.shape[1], k // groups, w.shape[2], w.shape[3]
    dxp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), dtype=np.result_type(dy, w))
    for g in range(groups):
        cols = np.tensordot(w[g * kg:(g + 1) * kg], dy[:, g * kg:(g + 1) * kg],
                            axes=([0], [1]))  # (Cg, R, S, N, P, Q)
        dst = dxp[:, g * cg:(g + 1) * cg]
        for i in range(r):  # col2im: one strided add per filter tap
            for j in range(s):
                dst[:, :, i:i + stride * (p - 1) + 1:stride, j:j + stride * (q - 1) + 1:stride] += \
                    cols[:, i, j].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(dxp[:, :, pad:pad + h, pad:pad + wd])


def conv2d_backward_filter_reference(x, dy, w_shape, stride=1, pad=0, groups=1,
                                     precision="fp32"):
    n, k, p, q = _geometry(x.shape, w_shape, stride, pad, groups)
    x, dy = operand(x, precision), operand(dy, precision)
    _check_dy(dy.shape, (n, k, p, q))
    cg, kg = w_shape[1], k // groups
    cols = _windows(x, w_shape[2], w_shape[3], stride, pad)
    dw = np.empty(tuple(w_shape), dtype=np.result_type(x, dy))
    for g in range(groups):
        # windows first: OpenBLAS takes a very slow path for the (Kg, NPQ) @ (NPQ, CgRS)
        # order with small CgRS (5-45x slower), and this is the numpy backend's training path
        t = np.tensordot(cols[:, g * cg:(g + 1) * cg], dy[:, g * kg:(g + 1) * kg],
                         axes=([0, 2, 3], [0, 2, 3]))  # (Cg, R, S, Kg)
        dw[g * kg:(g + 1) * kg] = t.transpose(3, 0, 1, 2)
    return dw


def conv2d_backward_bias_reference(dy):
    return dy.sum(axis=(0, 2, 3))


# ---- kernel launch geometry -----------------------------------------------------------------
def pick_tile(rows, cols, groups, fill=True):
    """The (BM, BN) tile for a rows x cols GEMM per group.

    fill=True (forward, backward data): minimise the busiest SM's work, counting padding
    and each tile's speed. fill=False (filter gradient, whose split reduction fills the
    GPU anyway): the least padded work per unit of speed.
    """
    def cost(tile):
        bm, bn = tile
        blocks = ceil_div(rows, bm) * ceil_div(cols, bn)
        per_block = bm * bn / TILE_SPEED[tile]
        return (ceil_div(blocks * groups, TARGET_SMS) if fill else blocks) * per_block
    return min(TILES, key=cost)


def pick_splits(npq, tiles):
    """How many reduction chunks the filter gradient uses, and each one's length."""
    splits = max(1, min(ceil_div(SPLIT_BLOCKS, tiles), npq // MIN_SPLIT))
    length = ceil_div(ceil_div(npq, splits), CHUNK) * CHUNK
    return ceil_div(npq, length), length


def filter_v2_cost_us(kg, ncol, groups, npq, tile, splits):
    """Modelled microseconds of the v2 filter gradient with this tile and split count."""
    bm, bn = tile
    per_sm = FILTER_V2_BLOCKS_PER_SM[tile]
    length = ceil_div(ceil_div(npq, splits), CHUNK) * CHUNK
    splits = ceil_div(npq, length)
    blocks = ceil_div(kg, bm) * ceil_div(ncol, bn) * groups * splits
    # a wave: per_sm blocks share an SM, each bm x bn x length FMAs at the tile's speed
    wave_us = per_sm * bm * bn * length / (TILE_SPEED[tile] * SM_FMA_PER_US)
    dw_bytes = 4 * kg * groups * ncol
    reduce_us = LAUNCH_US + (splits + 1) * dw_bytes / HBM_BYTES_PER_US if splits > 1 else 0.0
    return waves(blocks, per_sm, TARGET_SMS) * wave_us + reduce_us


def filter_v2_plan(kg, ncol, groups, npq, tile=None, splits=None):
    """(tile, splits, split length) of the v2 filter gradient: the cheapest by
    filter_v2_cost_us; tile / splits force a choice. Depends on the shape only."""
    tiles = [_tile(tile, FILTER_V2_BLOCKS_PER_SM)] if tile else list(FILTER_V2_BLOCKS_PER_SM)
    if splits is not None:
        counts = [min(_as_int("splits", splits, 1), npq)]
    else:
        counts = range(1, max(1, min(V2_MAX_SPLITS, npq // V2_MIN_SPLIT)) + 1)
    # Within the model's resolution, the fewest splits (the smallest workspace) win,
    # then the first tile.
    cost = {(t, c): filter_v2_cost_us(kg, ncol, groups, npq, t, c) for c in counts for t in tiles}
    best = min(cost.values())
    tile, splits = next(tc for tc, v in cost.items() if v <= best * (1 + MODEL_SLACK))
    length = ceil_div(ceil_div(npq, splits), CHUNK) * CHUNK
    return tile, ceil_div(npq, length), length


def _filter_plan(x_shape, w_shape, stride, pad, groups, version, tile, splits):
    """(kernel, tile, splits, split length) of the filter gradient; see conv2d_backward_filter."""
    if version not in FILTER_VERSIONS:
        raise ValueError(f"conv2d: backward filter version must be one of {FILTER_VERSIONS}, "
                         f"got {version!r}")
    n, k, p, q = _geometry(x_shape, w_shape, stride, pad, groups)
    kg, ncol, npq = k // groups, int(np.prod(w_shape[1:])), n * p * q
    if version == 2:
        tile, splits, length = filter_v2_plan(kg, ncol, groups, npq, tile, splits)
        return "conv_bwd_filter_v2_%dx%d" % tile, tile, splits, length
    tile = _tile(tile) if tile else pick_tile(kg, ncol, groups, fill=False)
    tiles = ceil_div(kg, tile[0]) * ceil_div(ncol, tile[1]) * groups
    if splits is None:
        splits, length = pick_splits(npq, tiles)
    else:
        splits = min(_as_int("splits", splits, 1), npq)
        length = ceil_div(npq, splits)
        splits = ceil_div(npq, length)  # no empty chunk
    return "conv_bwd_filter_%dx%d" % tile, tile, splits, length


ALGOS = ("gemm", "auto", "winograd2", "winograd4")


def pick_algo(pass_, x_shape, w_shape, stride=1, pad=0, groups=1):
    """"gemm", "winograd2" or "winograd4" for one pass ("forward", "backward_data",
    "backward_filter") of a layer: the cheapest by a model of the implicit GEMM (its FMAs
    at SM_FMA_PER_US on every SM) against winograd.Plan.cost_us (batched products, buffer
    traffic, launches). Winograd only for 3x3 stride-1 layers with pad <= 2. Not checked
    on a GPU: the ops default to "gemm"; pass algo="auto" to use this choice."""
    x_shape, w_shape = tuple(int(v) for v in x_shape), tuple(int(v) for v in w_shape)
    n, k, p, q = _geometry(x_shape, w_shape, stride, pad, groups)
    if tuple(w_shape[2:]) != (3, 3) or stride != 1 or pad > 2:
        return "gemm"
    fmas = n * k * p * q * int(np.prod(w_shape[1:]))
    cost = {"gemm": fmas / (TARGET_SMS * SM_FMA_PER_US)}
    for m in winograd.TILE_SIZES:
        cost[f"winograd{m}"] = winograd.Plan(pass_, x_shape, w_shape, pad, groups, m).cost_us()
    return min(cost, key=cost.get)  # ties: the first, gemm


def _resolve_algo(algo, pass_, x_shape, w_shape, stride, pad, groups, tile):
    if algo not in ALGOS:
        raise ValueError(f"conv2d: algo must be one of {ALGOS}, got {algo!r}")
    if algo == "auto":
        return "gemm" if tile is not None else pick_algo(pass_, x_shape, w_shape, stride, pad,
                                                         groups)
    if algo != "gemm":
        if tile is not None:
            raise ValueError(f"conv2d: tile= selects an implicit-GEMM kernel; algo={algo!r} "
                             "has none")
        winograd.check_applicable(x_shape, w_shape, stride, pad, groups)
    return algo


def conv2d_workspace_size(pass_, x_shape, w_shape, stride=1, pad=0, groups=1, algo="gemm",
                          version=1):
    """float32 elements of the workspace= one pass needs with this algo ("auto" resolved
    as the op resolves it); 0 for none. A model allocates the largest over its layers and
    passes once, then hands it to every call."""
    x_shape, w_shape = tuple(int(v) for v in x_shape), tuple(int(v) for v in w_shape)
    if pass_ not in winograd.PASSES:
        raise ValueError(f"conv2d: pass must be one of {winograd.PASSES}, got {pass_!r}")
    algo = _resolve_algo(algo, pass_, x_shape, w_shape, stride, pad, groups, None)
    if algo != "gemm":
        return winograd.winograd_workspace_size(pass_, x_shape, w_shape, pad, groups,
                                                int(algo[-1]))
    if pass_ == "backward_filter":
        return conv2d_backward_filter_workspace_size(x_shape, w_shape, stride, pad, groups,
                                                     version)
    return 0


def conv2d_backward_filter_workspace_size(x_shape, w_shape, stride=1, pad=0, groups=1,
                                          version=1):
    """float32 elements of the workspace conv2d_backward_filter needs for these shapes
    (0: it writes dw directly). Allocate the largest over a model's layers once and pass
    it as ``workspace=`` to every call; the plan depends on the shapes only."""
    x_shape, w_shape = tuple(int(v) for v in x_shape), tuple(int(v) for v in w_shape)
    _, _, splits, _ = _filter_plan(x_shape, w_shape, stride, pad, groups, version, None, None)
    return 0 if splits == 1 else splits * int(np.prod(w_shape))


def _tile(tile, tiles=TILES):
    tile = tuple(tile)
    if tile not in tiles:
        raise ValueError(f"conv2d: no kernel for tile {tile}; choose one of {tuple(tiles)}")
    return tile


def _check_kernel_args(what, *arrays, float32=True):
    for name, a in arrays:
        if float32:
            require_float32(f"conv2d {what}: {name}", a)
        if a.size >= INT32_LIMIT:
            raise ValueError(f"conv2d {what}: {name} has {a.size} elements; the kernels index "
                             f"with 32-bit ints (< 2**31)")


def _grid(cols, rows, z, tile):
    grid = (ceil_div(cols, tile[1]), ceil_div(rows, tile[0]), z)
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise ValueError(f"conv2d: launch grid {grid} exceeds CUDA's limit of {MAX_GRID_YZ} in y/z")
    return grid


def _dims(x_shape, w_shape, out_shape, stride, pad, groups):
    n, c, h, w = x_shape
    k, _, r, s = w_shape
    p, q = out_shape[2:]
    return [i32(v) for v in (n, c, h, w, k, r, s, p, q, stride, pad, groups)]


# ---- launchers -------------------------------------------------------------------------------
def _choose_algo(precision, algo, pass_, x_shape, w_shape, stride, pad, groups, tile):
    """The algorithm: Winograd runs in fp32 only, so tf32 and bf16 take the tensor-core
    implicit GEMM."""
    if precision == "fp32":
        return _resolve_algo(algo, pass_, x_shape, w_shape, stride, pad, groups, tile)
    if algo not in ("gemm", "auto"):
        raise ValueError(f"conv2d: algo {algo!r} runs in fp32 only; with precision "
                         f"{precision!r} use 'gemm' or 'auto'")
    return "gemm"


def conv2d_forward(be, x, w, b=None, stride=1, pad=0, groups=1, relu=False, tile=None,
                   algo="gemm", workspace=None, precision="fp32"):
    """y = conv(x, w) + b, then ReLU if ``relu`` (fused in the kernel's epilogue).

    tile: force a kernel tile (tests, tuning): (BM, BN) for fp32, 128 or 64 for the
    tensor-core kernels; by default picked from the shape.
    algo: "gemm" (implicit GEMM), "winograd2" / "winograd4" (F(2x2, 3x3) / F(4x4, 3x3),
    3x3 stride-1 layers only, fp32) or "auto" (pick_algo). workspace: for Winograd, a
    float32 array of at least conv2d_workspace_size("forward", ...) elements.
    precision: see the module notes.
    """
    check_precision(precision)
    out = _geometry(x.shape, w.shape, stride, pad, groups)
    k = out[1]
    if b is not None and tuple(b.shape) != (k,):
        raise ValueError(f"conv2d: bias of shape {tuple(b.shape)} for {k} filters")
    algo = _choose_algo(precision, algo, "forward", x.shape, w.shape, stride, pad, groups, tile)
    if algo != "gemm":
        return winograd.winograd_forward(be, x, w, b, pad, groups, relu, int(algo[-1]),
                                         workspace)
    if not be.runs_kernels:
        return conv2d_forward_reference(x, w, b, stride, pad, groups, relu, precision)
    if precision != "fp32":
        return _mma_forward(be, x, w, b, stride, pad, groups, relu, precision, tile)
    _check_kernel_args("forward", ("x", x), ("w", w), *([("b", b)] if b is not None else []))
    n, _, p, q = out
    y = be.empty(out)
    _check_kernel_args("forward", ("y", y))
    tile = _tile(tile) if tile else pick_tile(k // groups, n * p * q, groups)
    be.launch(KERNELS, "conv_fwd_%dx%d" % tile, _grid(n * p * q, k // groups, groups, tile),
              THREADS, [x, w, w if b is None else b, y,
                        *_dims(x.shape, w.shape, out, stride, pad, groups),
                        i32(b is not None), i32(bool(relu))])
    return y


def conv2d_backward_data(be, dy, w, x_shape, stride=1, pad=0, groups=1, tile=None,
                         algo="gemm", workspace=None, precision="fp32"):
    """dx (N, C, H, W): the gradient of conv2d_forward with respect to its input.

    tile: a (BM, BN) GEMM tile or "direct"; by default the direct kernel for fewer than
    DIRECT_MAX_CHANNELS channels per group (conv1), else a tile picked from the shape.
    algo, workspace: as for conv2d_forward (pass "backward_data").
    tf32 / bf16: 128 or 64, the tensor-core kernel's tile; below DIRECT_MAX_CHANNELS (or
    with "direct") the fp32 direct kernel runs on float32 copies of the rounded operands.
    """
    check_precision(precision)
    x_shape = tuple(int(v) for v in x_shape)
    out = _geometry(x_shape, w.shape, stride, pad, groups)
    _check_dy(dy.shape, out)
    algo = _choose_algo(precision, algo, "backward_data", x_shape, w.shape, stride, pad, groups,
                        tile)
    if algo != "gemm":
        return winograd.winograd_backward_data(be, dy, w, x_shape, pad, groups, int(algo[-1]),
                                               workspace)
    if not be.runs_kernels:
        return conv2d_backward_data_reference(dy, w, x_shape, stride, pad, groups, precision)
    if precision != "fp32":
        if tile == "direct" or (tile is None and x_shape[1] // groups < DIRECT_MAX_CHANNELS):
            # a tensor-core tile would be mostly padding (conv1): the fp32 direct kernel on
            # the operands rounded to the format, so the result is the same product
            dy = fp32_operand(be, dy, precision, "conv2d backward data: dy")
            w = fp32_operand(be, w, precision, "conv2d backward data: w")
            tile = "direct"
        else:
            return _mma_backward_data(be, dy, w, x_shape, stride, pad, groups, precision, tile)
    _check_kernel_args("backward data", ("dy", dy), ("w", w))
    n, c, h, wd = x_shape
    dx = be.empty(x_shape)
    _check_kernel_args("backward data", ("dx", dx))
    dims = _dims(x_shape, w.shape, out, stride, pad, groups)
    if tile == "direct" or (tile is None and c // groups < DIRECT_MAX_CHANNELS):
        blocks = ceil_div(c // groups, DIRECT_CHANNELS) * groups * n * h * wd
        be.launch(KERNELS, "conv_bwd_data_direct", elementwise_grid(blocks), ELEMENTWISE_BLOCK,
                  [dy, w, dx, *dims])
        return dx
    tile = _tile(tile) if tile else pick_tile(c // groups, n * h * wd, groups)
    be.launch(KERNELS, "conv_bwd_data_%dx%d" % tile,
              _grid(n * h * wd, c // groups, groups, tile), THREADS,
              [dy, w, dx, *dims])
    return dx


def conv2d_backward_filter(be, x, dy, w_shape, stride=1, pad=0, groups=1, tile=None,
                           splits=None, version=1, workspace=None, algo="gemm",
                           precision="fp32"):
    """dw (K, C/groups, R, S), deterministic: the (n, p, q) reduction is cut into a fixed
    number of chunks (from the shape; ``splits`` overrides it) whose partial sums are added
    in chunk order by a second kernel. No atomics, so every run gives the same bits.

    version: 1 (default: the earlier plan, pick_tile and pick_splits, so recorded training
    runs keep their bits) or 2 (tile and splits from filter_v2_cost_us, on register-capped
    kernels; not yet timed on a GPU). The two sum in different orders, so their results
    differ in the last bits. workspace: a
    float32 array of at least conv2d_backward_filter_workspace_size(...) elements (any
    shape, C-contiguous) for the partial sums; without it one is allocated per call.
    algo: as for conv2d_forward (pass "backward_filter"; size the workspace with
    conv2d_workspace_size); splits then counts Winograd's tile chunks. dw is float32 for
    every precision (the master weights' gradient); tf32 / bf16 run the tensor-core kernel
    (tile 128 or 64, version and workspace do not apply)."""
    check_precision(precision)
    w_shape = tuple(int(v) for v in w_shape)
    out = _geometry(x.shape, w_shape, stride, pad, groups)
    _check_dy(dy.shape, out)
    algo = _choose_algo(precision, algo, "backward_filter", x.shape, w_shape, stride, pad,
                        groups, tile)
    if algo != "gemm":
        return winograd.winograd_backward_filter(be, x, dy, w_shape, pad, groups, int(algo[-1]),
                                                 workspace, splits)
    if not be.runs_kernels and precision != "fp32":
        return conv2d_backward_filter_reference(x, dy, w_shape, stride, pad, groups, precision)
    if precision != "fp32":
        return _mma_backward_filter(be, x, dy, w_shape, stride, pad, groups, precision, tile,
                                    splits)
    kernel, tile, splits, length = _filter_plan(x.shape, w_shape, stride, pad, groups, version,
                                                tile, splits)
    if not be.runs_kernels:
        return conv2d_backward_filter_reference(x, dy, w_shape, stride, pad, groups)
    _check_kernel_args("backward filter", ("x", x), ("dy", dy))
    kg, ncol = out[1] // groups, int(np.prod(w_shape[1:]))
    dw = be.empty(w_shape)
    need = splits * dw.size
    if splits == 1:
        ws = dw
    elif workspace is None:
        ws = be.empty((splits,) + w_shape)
    else:
        _check_kernel_args("backward filter", ("workspace", workspace))
        if workspace.size < need or not workspace.flags.c_contiguous:
            raise ValueError(f"conv2d backward filter: the workspace must be a C-contiguous "
                             f"float32 array of at least {need} elements, got shape "
                             f"{tuple(workspace.shape)}")
        ws = workspace.reshape(-1)[:need]
    _check_kernel_args("backward filter", ("workspace", ws))
    be.launch(KERNELS, kernel, _grid(ncol, kg, splits * groups, tile),
              THREADS, [x, dy, ws, *_dims(x.shape, w_shape, out, stride, pad, groups),
                        i32(length)])
    if splits > 1:
        reduce = "conv_bwd_filter_reduce_v2" if version == 2 else "conv_bwd_filter_reduce"
        per_thread = 4 if version == 2 and dw.size % 4 == 0 else 1
        be.launch(KERNELS, reduce, elementwise_grid(ceil_div(dw.size, per_thread)),
                  ELEMENTWISE_BLOCK, [ws, dw, i32(splits), i64(dw.size)])
    return dw


def conv2d_backward_bias(be, dy):
    """db (K,) = sum of dy over N, P, Q (deterministic; the bias op's kernel)."""
    if len(dy.shape) != 4:
        raise ValueError(f"conv2d: the output gradient must be 4-D, got shape {tuple(dy.shape)}")
    return bias_backward(be, dy)


# ---- tensor-core kernels (kernels/conv_mma.cu) ---------------------------------------------
MMA_KERNELS = "conv_mma.cu"
MMA_TILES = {128: 256, 64: 128}  # square tile edge -> threads per block (8 or 4 warps)
# Relative speed of one block of each tile: a guess until an H200 run measures it; it
# only ever changes speed.
MMA_TILE_SPEED = {128: 1.0, 64: 0.7}
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


def _mma_tile(rows, cols, groups):
    """The square tile (128 or 64) that minimises the busiest SM's padded work."""
    def cost(t):
        blocks = ceil_div(rows, t) * ceil_div(cols, t) * groups
        return ceil_div(blocks, TARGET_SMS) * t * t / MMA_TILE_SPEED[t]
    return min(MMA_TILES, key=cost)


def _mma_tile_arg(tile, rows, cols, groups):
    if tile is None:
        return _mma_tile(rows, cols, groups)
    if tile not in MMA_TILES:
        raise ValueError(f"conv2d: no tensor-core kernel for tile {tile!r}; choose one of "
                         f"{tuple(MMA_TILES)}")
    return tile


def _mma_launch(be, kind, precision, tile, cols, rows, z, args):
    grid = (ceil_div(cols, tile), ceil_div(rows, tile), z)
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise ValueError(f"conv2d: launch grid {grid} exceeds CUDA's limit of {MAX_GRID_YZ} in y/z")
    be.launch(MMA_KERNELS, f"conv_mma_{kind}_{precision}_{tile}", grid, MMA_TILES[tile], args)


def _mma_forward(be, x, w, b, stride, pad, groups, relu, precision, tile):
    out = _geometry(x.shape, w.shape, stride, pad, groups)
    n, k, p, q = out
    _, c, h, wd = x.shape
    _, cg, r, s = w.shape
    xk = mma_operand(be, x, precision, "conv2d forward: x")
    wk = mma_operand(be, w, precision, "conv2d forward: w")
    if b is not None:
        require_float32("conv2d forward: b", b)
    y = be.empty(out)
    _check_kernel_args("forward", ("x", x), ("y", y), float32=False)
    tile = _mma_tile_arg(tile, k // groups, n * p * q, groups)
    _mma_launch(be, "fwd", precision, tile, n * p * q, k // groups, groups,
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
    _check_kernel_args("backward data", ("dy", dy), ("dx", dx), float32=False)
    kg = k // groups

    def pixels():  # (n, h, w): {n K P Q, h + pad, w + pad, dx offset}
        img, hh, ww = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(h), np.arange(wd),
                                                     indexing="ij"))
        return _int4_table(be, [img * k * p * q, hh + pad, ww + pad, img * c * h * wd + hh * wd + ww])

    def taps(for_w):  # (k, r, s): w offset, or {k P Q, -r, -s} on dy's output grid
        kk, rr, ss = (a.ravel() for a in np.meshgrid(np.arange(kg), np.arange(r), np.arange(s),
                                                     indexing="ij"))
        if for_w:
            z = np.zeros_like(kk)
            return _int4_table(be, [kk * cg * r * s + rr * s + ss, z, z, z])
        return _int4_table(be, [kk * p * q, -rr, -ss, np.zeros_like(kk)])

    geo = (n, c, h, wd, k, r, s, p, q, pad, groups)
    tile = _mma_tile_arg(tile, cg, n * h * wd, groups)
    _mma_launch(be, "bwd_data", precision, tile, n * h * wd, cg, groups,
                [dyk, wk, dx, _cached(be, ("bd_pixels",) + geo, pixels),
                 _cached(be, ("bd_taps_w",) + geo, lambda: taps(True)),
                 _cached(be, ("bd_taps_dy",) + geo, lambda: taps(False)),
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
    tile = _mma_tile_arg(tile, kg, ncol, groups)
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
        be.launch(KERNELS, "conv_bwd_filter_reduce", elementwise_grid(dw.size),
                  ELEMENTWISE_BLOCK, [ws, dw, i32(splits), i64(dw.size)])
    return dw
