"""Planning a convolution's launch from its shapes alone: which implicit-GEMM tile, how many
split-K chunks for the filter gradient (versions 1 and 2), which algorithm (implicit GEMM or
Winograd), and how large a workspace. Choices depend on the shapes only, never on the
device, so every backend runs, and tests, the same kernels and split counts. The cost
models are waves of resident blocks on the H200's SMs plus memory traffic.
"""
import operator

import numpy as np

from . import winograd
from ._launch import TARGET_SMS, ceil_div, i32, require_float32, waves
from .linear import SPLIT_BYTES_PER_US as HBM_BYTES_PER_US  # partials: written, read once

MAX_GRID_YZ = 65535
INT32_LIMIT = 2**31
CHUNK = 8              # reduction chunk staged in shared memory (CONV_BK)
TILES = ((128, 64), (128, 128), (64, 128), (64, 64))  # (rows BM, columns BN) per block
# Relative speed of one block of each tile shape, measured on an H200 over AlexNet's layers
# at batch 128 (128x64 ran as fast as 128x128; the first of equal-cost tiles wins). They
# only ever change speed.
TILE_SPEED = {(128, 64): 1.0, (128, 128): 1.0, (64, 128): 0.8, (64, 64): 0.7}
SPLIT_BLOCKS = 4 * TARGET_SMS  # filter gradient: aim for this many blocks...
MIN_SPLIT = 512                # ...but give each split at least this much reduction
# Filter gradient, version 2 (version=2): tiles whose __launch_bounds__ guarantee these
# resident blocks per SM (no 128x128: capped to two blocks it spills), and a split count
# from a model of waves of resident blocks plus the split reduction's memory traffic.
FILTER_VERSIONS = (1, 2)
# Forward and backward data, version 2 (version=2): the 128x128 tile held to 128
# registers, so two blocks stay resident per SM (kernels/conv.cu, conv_fwd_v2_128x128 and
# the unit-stride conv_bwd_data_v2_128x128); version 1 picks one of the four tiles above.
# Under algo="auto" only (auto_gemm_v2) until a GPU has timed it.
GEMM_VERSIONS = (1, 2)
GEMM_V2_TILE = (128, 128)
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


def _gemm_v2(what, version, tile, stride=1):
    """Whether a forward / backward-data call asks for v2 (see GEMM_VERSIONS; None: the
    default), after checking that the request is one v2 can run (backward data passes its
    stride)."""
    if version is not None and version not in GEMM_VERSIONS:
        raise ValueError(f"conv2d: {what} version must be one of {GEMM_VERSIONS}, got {version!r}")
    if version == 2 and tile is not None and (isinstance(tile, str) or tuple(tile) != GEMM_V2_TILE):
        raise ValueError(f"conv2d: {what} version 2 runs the tile {GEMM_V2_TILE} only, got {tile!r}")
    if version == 2 and stride != 1:
        raise ValueError(f"conv2d: {what} version 2 runs stride 1 only, got stride {stride}")
    return version == 2


def auto_gemm_v2(rows, cols, groups):
    """algo="auto"'s implicit-GEMM version for a rows x cols GEMM per group: v2 where its
    tile pads the GEMM no more than the tile pick_tile plans. The emulator's model times v2
    at 0.67-0.70x of the planned tile there (AlexNet's forward of conv1, conv2, conv3,
    conv5 and conv3's data gradient), and at 1.0-1.33x where it pads more (the 192 and 48
    rows per group of the others)."""
    def padded(tile):
        return ceil_div(rows, tile[0]) * tile[0] * ceil_div(cols, tile[1]) * tile[1]
    return padded(GEMM_V2_TILE) <= padded(pick_tile(rows, cols, groups))


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
