"""Fully connected layers on our own tiled SGEMM (kernels/gemm.cu; no cuBLAS), plus bias.

    y  = x @ w.T + b        linear_forward          gemm(x, w, trans_b=True) + bias_add
    dx = dy @ w             linear_backward_data    gemm(dy, w)
    dw = dy.T @ x           linear_backward_weight  gemm(dy, x, trans_a=True)
    db = dy.sum(0)          linear_backward_bias    bias.bias_backward

x (N, in), w (out, in), b (out,), dy (N, out). All matrices row-major float32.

gemm() picks a tile configuration (128x128, 64x64, or 8x256 for the batch-2 layers) and a
split-K factor (partials summed in fixed order) from a small cost model of waves of blocks
on the GPU (``gemm_plan``), so that skinny products still fill every SM. Small products
whose op(B) is stored K-contiguous (fc8's forward, x @ w.T) plan with the 64x64 BK-32 tile
"64k" instead (see NT_SMALL_OUTPUTS).

precision="tf32" | "bf16" (gemm and every linear op): the tensor-core GEMM of
kernels/gemm_mma.cu with fp32 accumulation and fp32 results; tf32 takes float32 matrices
(rounded in the kernel), bf16 takes bf16 (uint16) matrices or float32 ones, converted
first. The references round their operands the same way and accumulate in float32.
"""
from dataclasses import dataclass

import numpy as np

from ._launch import (ELEMENTWISE_BLOCK, TARGET_SMS, ceil_div, elementwise_grid, f32, i32,
                      i64, require_float32, waves)
from .bias import bias_add, bias_backward
from .precision import check_precision, mma_operand, operand

KERNELS = "gemm.cu"
THREADS = 256
# name -> (BM, BN, BK); must match the GEMM_CFG_* instantiations in kernels/gemm.cu.
TILES = {"128": (128, 128, 8), "64": (64, 64, 16), "8": (8, 256, 16), "64k": (64, 64, 32)}
# Planner model, measured on an H200 (benchmarks sweep): resident blocks per SM (the
# __launch_bounds__ minimums in gemm.cu) and microseconds per unit of K for one full wave.
# "64k" does the 64 tile's arithmetic per K: its figure is the 64 tile's, not measured.
TILE_OCCUPANCY = {"128": 2, "64": 4, "8": 4, "64k": 4}
TILE_US_PER_K = {"128": 0.20, "64": 0.16, "8": 0.185, "64k": 0.16}
AUTO_TILES = ("128", "64", "8")  # what the cost model chooses among
# op(B) stored K-contiguous (trans_b), more than 8 rows, at most this many outputs: 64k. The H200
# run (benchmarks/results/h200-20261130) timed fc8's forward, gemm_nt_128 on a 128-block
# grid with 256 K per split, at 3.5x fc8's backward data, gemm_nn_128 on the same grid and
# K per split: the nt kernel reads each weight row in 32-byte runs, the nn one in 512-byte
# rows. 64k reads 128-byte runs. The larger nt products (fc6, fc7 forward: 1.1x, 1.4x their
# nn twins) keep the cost model's tile, whose arithmetic intensity is twice 64k's.
NT_SMALL_OUTPUTS = 128 * 1024
SPLIT_BYTES_PER_US = 3.0e6  # split-K partials: written once, read once by the reduction
DEFAULT_SMS = TARGET_SMS  # used to plan on backends that have no device to ask (emu)
MIN_SPLIT_K = 128  # at least this much K per split
MAX_SPLITS = 32
MAX_GRID_Y = 65535


# ---- references (dtype-generic: float64 for gradient checks) ------------------------------
def gemm_reference(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None,
                   precision="fp32"):
    """alpha * op(a) @ op(b) + beta * c (c ignored when beta == 0, as in BLAS)."""
    a, b = operand(a, precision), operand(b, precision)
    out = alpha * ((a.T if trans_a else a) @ (b.T if trans_b else b))
    if beta != 0:
        out = out + beta * c
    return out


def linear_forward_reference(x, w, b=None, precision="fp32"):
    y = operand(x, precision) @ operand(w, precision).T
    return y if b is None else y + b


def linear_backward_data_reference(dy, w, precision="fp32"):
    return operand(dy, precision) @ operand(w, precision)


def linear_backward_weight_reference(x, dy, precision="fp32"):
    return operand(dy, precision).T @ operand(x, precision)


def linear_backward_bias_reference(dy):
    return dy.sum(axis=0)


# ---- planning ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GemmPlan:
    tile: str
    splits: int
    k_chunk: int
    grid: tuple


def _sm_count(be):
    device = getattr(be, "device", None)
    if device is not None:
        return int(device.attributes["MultiProcessorCount"])
    return DEFAULT_SMS


def _split_chunk(k, splits, bk):
    """K per split (a whole number of BK tiles) and the split count with none empty."""
    k_chunk = max(bk, ceil_div(ceil_div(max(k, 1), splits), bk) * bk)
    return k_chunk, max(1, ceil_div(k, k_chunk))


def gemm_cost_us(m, n, k, tile, splits, sms=DEFAULT_SMS):
    """Modelled time: waves of resident blocks (``_launch.waves``: a last, partial wave
    costs in proportion to the blocks it puts on each SM) times K per split, plus the
    split-K reduction's traffic."""
    bm, bn, bk = TILES[tile]
    k_chunk, splits = _split_chunk(k, splits, bk)
    blocks = ceil_div(m, bm) * ceil_div(n, bn) * splits
    reduce = (splits + 1) * m * n * 4 / SPLIT_BYTES_PER_US if splits > 1 else 0.0
    return waves(blocks, TILE_OCCUPANCY[tile], sms) * k_chunk * TILE_US_PER_K[tile] + reduce


def gemm_plan(m, n, k, sms=DEFAULT_SMS, tile=None, splits=None, b_k_contiguous=False):
    """Tile configuration and split-K factor for an M x N x K product: the cheapest by
    gemm_cost_us, with the 64k tile when op(B) is K-contiguous (b_k_contiguous, i.e.
    trans_b) and the product has more than 8 rows (the 8-row tile's case) and at most
    NT_SMALL_OUTPUTS outputs. tile / splits force a
    choice (tests use this to cover every path)."""
    if tile is not None and tile not in TILES:
        raise ValueError(f"gemm tile must be one of {sorted(TILES)}, got {tile!r}")
    if tile is None and b_k_contiguous and TILES["8"][0] < m and m * n <= NT_SMALL_OUTPUTS:
        tile = "64k"
    tiles = [tile] if tile is not None else list(AUTO_TILES)
    if splits is not None:
        choices = [(t, max(1, int(splits))) for t in tiles]
    else:
        most = max(1, min(MAX_SPLITS, k // MIN_SPLIT_K))
        choices = [(t, s) for t in tiles for s in range(1, most + 1)]
    # ties go to the first: larger tiles and fewer splits come first
    tile, splits = min(choices, key=lambda c: gemm_cost_us(m, n, k, c[0], c[1], sms))
    bm, bn, bk = TILES[tile]
    k_chunk, splits = _split_chunk(k, splits, bk)
    if ceil_div(m, bm) > MAX_GRID_Y:
        raise ValueError(f"gemm: M = {m} rows exceed the grid limit ({MAX_GRID_Y} tiles of {bm})")
    return GemmPlan(tile, splits, k_chunk, (ceil_div(n, bn), ceil_div(m, bm), splits))


# ---- launchers --------------------------------------------------------------------------
def _check_matrix(a, what, precision="fp32"):
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D matrix, got shape {tuple(a.shape)}")
    if precision != "bf16" or a.dtype != np.uint16:  # bf16 operands may come as bits
        require_float32(what, a)


def _gemm_dims(a, b, trans_a, trans_b, precision="fp32"):
    _check_matrix(a, "gemm: a", precision)
    _check_matrix(b, "gemm: b", precision)
    m, ka = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if ka != kb:
        raise ValueError(f"gemm: op(a) is {m}x{ka} but op(b) is {kb}x{n} "
                         f"(trans_a={trans_a}, trans_b={trans_b}); inner dimensions differ")
    return int(m), int(n), int(ka)


def gemm(be, a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None, *,
         tile=None, splits=None, precision="fp32"):
    """c = alpha * op(a) @ op(b) + beta * c, where op(x) = x.T if trans_x else x; returns c.

    a, b: C-contiguous float32 matrices (pass trans_* rather than a transposed view). c:
    (M, N) output, written in place; allocated when None (then beta must be 0). With
    beta == 0, c is not read. Deterministic: split-K partials are summed in fixed order.
    tile ("128", "64", "8", "64k"; "128", "64" for tf32 / bf16) and splits override the
    automatic plan (for tests and benchmarks). precision: see the module notes (trans_a and
    trans_b both set has no tensor-core kernel).
    """
    check_precision(precision)
    m, n, k = _gemm_dims(a, b, trans_a, trans_b, precision)
    if c is None:
        if beta != 0:
            raise ValueError("gemm: beta != 0 needs an input c")
        c = be.empty((m, n))
    else:
        _check_matrix(c, "gemm: c")
        if tuple(c.shape) != (m, n):
            raise ValueError(f"gemm: c has shape {tuple(c.shape)}, the product is {(m, n)}")
        if c is a or c is b:
            raise ValueError("gemm: c must not be one of the inputs")
    if not be.runs_kernels:
        c[...] = gemm_reference(a, b, trans_a, trans_b, alpha, beta, c, precision)
        return c
    if precision != "fp32":
        return _gemm_mma(be, a, b, trans_a, trans_b, alpha, beta, c, m, n, k, precision,
                         tile, splits)
    for x, name in ((a, "a"), (b, "b"), (c, "c")):
        if not x.flags.c_contiguous:
            raise ValueError(f"gemm: {name} must be C-contiguous (for a transposed operand pass "
                             "the untransposed array and trans_a/trans_b)")
    if m == 0 or n == 0:
        return c
    plan = gemm_plan(m, n, k, _sm_count(be), tile, splits, b_k_contiguous=trans_b)
    kernel = f"gemm_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}_{plan.tile}"
    out = c if plan.splits == 1 else be.empty((plan.splits, m, n))
    be.launch(KERNELS, kernel, plan.grid, THREADS,
              [a, b, out, i32(m), i32(n), i32(k), f32(alpha), f32(beta), i32(plan.k_chunk)])
    if plan.splits > 1:
        be.launch(KERNELS, "gemm_splitk_reduce", elementwise_grid(m * n), ELEMENTWISE_BLOCK,
                  [out, c, i64(m * n), i32(plan.splits), f32(alpha), f32(beta)])
    return c


def _check_linear(precision="fp32", **named):
    check_precision(precision)
    for what, a in named.items():
        _check_matrix(a, f"linear: {what}", precision)


def linear_forward(be, x, w, b=None, precision="fp32"):
    """y = x @ w.T + b; x (N, in), w (out, in), b (out,) or None."""
    _check_linear(precision, x=x, w=w)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: x has {x.shape[1]} features, w expects {w.shape[1]} "
                         f"(w is (out, in) = {tuple(w.shape)})")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"linear: bias of shape {tuple(b.shape)} for {w.shape[0]} outputs")
    y = gemm(be, x, w, trans_b=True, precision=precision)
    if b is not None:
        bias_add(be, y, b)
    return y


def linear_backward_data(be, dy, w, precision="fp32"):
    """dx = dy @ w; dy (N, out), w (out, in) -> (N, in)."""
    _check_linear(precision, dy=dy, w=w)
    if dy.shape[1] != w.shape[0]:
        raise ValueError(f"linear: dy has {dy.shape[1]} outputs, w has {w.shape[0]}")
    return gemm(be, dy, w, precision=precision)


def linear_backward_weight(be, x, dy, precision="fp32"):
    """dw = dy.T @ x; x (N, in), dy (N, out) -> (out, in), float32 for every precision."""
    _check_linear(precision, x=x, dy=dy)
    if dy.shape[0] != x.shape[0]:
        raise ValueError(f"linear: dy has batch {dy.shape[0]}, x has batch {x.shape[0]}")
    return gemm(be, dy, x, trans_a=True, precision=precision)


def linear_backward_bias(be, dy):
    """db = dy.sum(0) (deterministic)."""
    return bias_backward(be, dy)


# ---- tensor-core GEMM (kernels/gemm_mma.cu) ------------------------------------------------
MMA_KERNELS = "gemm_mma.cu"
MMA_TILES = {"128": (128, 256), "64": (64, 128)}  # name -> (square tile edge, threads)
MMA_CHUNK = 16  # the kernels' reduction chunk (MT_BK)
MMA_MIN_SPLIT_K = 256


@dataclass(frozen=True)
class MmaPlan:
    tile: str
    splits: int
    k_chunk: int
    grid: tuple


def gemm_mma_plan(m, n, k, sms=DEFAULT_SMS, tile=None, splits=None):
    """Tensor-core GEMM plan: the 128 tile unless a side is under 128 (then 64), and enough
    K splits for about two blocks per SM (each split at least MMA_MIN_SPLIT_K long). An
    unmeasured rule of thumb; only speed depends on it."""
    if tile is None:
        tile = "128" if min(m, n) >= 128 else "64"
    if tile not in MMA_TILES:
        raise ValueError(f"gemm: tensor-core tile must be one of {sorted(MMA_TILES)}, got {tile!r}")
    edge = MMA_TILES[tile][0]
    blocks = ceil_div(m, edge) * ceil_div(n, edge)
    if splits is None:
        splits = min(MAX_SPLITS, max(1, k // MMA_MIN_SPLIT_K), ceil_div(2 * sms, blocks))
    k_chunk, splits = _split_chunk(k, max(1, int(splits)), MMA_CHUNK)
    if ceil_div(m, edge) > MAX_GRID_Y:
        raise ValueError(f"gemm: M = {m} rows exceed the grid limit ({MAX_GRID_Y} tiles of {edge})")
    return MmaPlan(tile, splits, k_chunk, (ceil_div(n, edge), ceil_div(m, edge), splits))


def _gemm_mma(be, a, b, trans_a, trans_b, alpha, beta, c, m, n, k, precision, tile, splits):
    if trans_a and trans_b:
        raise ValueError("gemm: no tensor-core kernel for op(a) = a.T and op(b) = b.T; "
                         "compute (b @ a).T instead")
    for x, name in ((a, "a"), (b, "b"), (c, "c")):
        if x.size >= 2**31:
            raise ValueError(f"gemm: {name} has {x.size} elements; the kernels index with "
                             "32-bit ints")
    if m == 0 or n == 0:
        return c
    ak = mma_operand(be, a, precision, "gemm: a")
    bk = mma_operand(be, b, precision, "gemm: b")
    plan = gemm_mma_plan(m, n, k, _sm_count(be), tile, splits)
    kernel = f"gemm_mma_{precision}_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}_{plan.tile}"
    direct = plan.splits == 1 and alpha == 1.0 and beta == 0.0
    out = c if direct else be.empty((plan.splits, m, n))
    be.launch(MMA_KERNELS, kernel, plan.grid, MMA_TILES[plan.tile][1],
              [ak, bk, out, i32(m), i32(n), i32(k), i32(plan.k_chunk)])
    if not direct:  # sums the partials in fixed order and applies alpha, beta
        be.launch(KERNELS, "gemm_splitk_reduce", elementwise_grid(m * n), ELEMENTWISE_BLOCK,
                  [out, c, i64(m * n), i32(plan.splits), f32(alpha), f32(beta)])
    return c
