"""Winograd convolution F(m x m, 3 x 3), m = 2 or 4, for 3x3 stride-1 layers (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", CVPR 2016).

Per alpha x alpha input tile d (alpha = m + 2), filter g and m x m output tile:

    forward          y  = AT [ (G g G^T) . (BT d BT^T) ] AT^T          (. elementwise)
    backward data    the forward of dy with each group's filters transposed and rotated
                     by 180 degrees, padding 2 - pad (so pad <= 2)
    backward filter  dw = G^T [ (A dy A^T) . (BT d BT^T) ] G,  A = AT^T (the transpose of
                     the forward's bilinear form), summed over tiles

Multiplications per output: 9 for direct convolution, alpha^2 / m^2 = 4 for F(2x2)
and 2.25 for F(4x4). The price is accuracy: the transforms' entries grow with the tile
(F(4x4)'s reach 8 and 1/24), and so does the rounding error (see
``winograd_error_magnitude``).

The references are NumPy (einsum; dtype-generic, so float64 checks the transforms against
direct convolution); the kernels (kernels/winograd.cu) transform into point-major buffers,
run the alpha^2 x groups products as one batched GEMM (gemm_tile) and transform back. The
filter gradient cuts the N x tiles reduction into S chunks (a plan from the shape only)
whose partial products the output transform adds in chunk order: deterministic, no atomics.
Buffers live in one workspace the caller may pass (``winograd_workspace_size``).
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import conv_plan
from . import linear as _linear
from ._launch import ceil_div, elementwise_grid, i32, i64, require_float32, waves

KERNELS = "winograd.cu"
TILE_SIZES = (2, 4)
THREADS = 256
PASSES = ("forward", "backward_data", "backward_filter")
# Resident blocks per SM of the batched products on sm_90 (tests/test_compile.py checks
# them against ptxas) and their tiles; time per K from the GEMM planner's measured
# figures scaled by occupancy (not measured for these kernels).
BGEMM_TILES = ("128", "64")
BGEMM_BLOCKS_PER_SM = {("nn", "128"): 2, ("nt", "128"): 2, ("nn", "64"): 4, ("nt", "64"): 4}
MIN_CHUNK = 32      # filter gradient: tiles per reduction chunk at least this many
MAX_CHUNKS = 64

_F = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}


def winograd_matrices(m):
    """(BT, G, AT) of F(m x m, 3 x 3) in float64: alpha x alpha, alpha x 3, m x alpha."""
    if m not in _F:
        raise ValueError(f"winograd: tile size m must be one of {TILE_SIZES}, got {m!r}")
    return tuple(np.array(a, dtype=np.float64) for a in _F[m])


def check_applicable(x_shape, w_shape, stride, pad, groups):
    """Validated output shape; raises ValueError unless a 3x3, stride-1, pad <= 2 layer."""
    out = conv_plan._geometry(tuple(x_shape), tuple(w_shape), stride, pad, groups)
    if tuple(w_shape[2:]) != (3, 3) or stride != 1 or pad > 2:
        raise ValueError(f"winograd: only 3x3 filters at stride 1 with pad <= 2, got "
                         f"{w_shape[2]}x{w_shape[3]} stride {stride} pad {pad}")
    return out


# ---- NumPy references (dtype-generic; the matrices may be replaced, see below) -------------
def _input_tiles(x, pad, m, th, tw):
    """(N, C, TH, TW, alpha, alpha): the alpha x alpha patches at (i m - pad, j m - pad)."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, th * m + 2, tw * m + 2), dtype=x.dtype)
    hh, ww = min(h, th * m + 2 - pad), min(w, tw * m + 2 - pad)
    xp[:, :, pad:pad + hh, pad:pad + ww] = x[:, :, :hh, :ww]
    return sliding_window_view(xp, (m + 2, m + 2), axis=(2, 3))[:, :, ::m, ::m]


def _forward(x, w, pad, groups, m, mats):
    bt, g_, at = mats
    n, _, h, wd = x.shape
    k, cg = w.shape[:2]
    kg, p, q = k // groups, h + 2 * pad - 2, wd + 2 * pad - 2
    th, tw = ceil_div(p, m), ceil_div(q, m)
    v = np.einsum("ij,nctwjk,lk->nctwil", bt, _input_tiles(x, pad, m, th, tw), bt)
    u = np.einsum("ij,kcjl,ml->kcim", g_, w, g_)
    prod = np.concatenate([
        np.einsum("kcil,nctwil->nktwil", u[i * kg:(i + 1) * kg], v[:, i * cg:(i + 1) * cg])
        for i in range(groups)], axis=1)
    y = np.einsum("ij,nktwjl,ml->nktwim", at, prod, at)
    return y.transpose(0, 1, 2, 4, 3, 5).reshape(n, k, th * m, tw * m)[:, :, :p, :q]


def _flipped_filters(w, groups):
    """Backward data as a forward: (C, K/groups, 3, 3), each group's filters transposed
    and rotated by 180 degrees."""
    k, cg = w.shape[:2]
    kg = k // groups
    return np.concatenate([w[i * kg:(i + 1) * kg].transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
                           for i in range(groups)], axis=0)


def _backward_filter(x, dy, pad, groups, m, mats):
    bt, g_, at = mats
    n, c, _, _ = x.shape
    k, p, q = dy.shape[1:]
    cg, kg = c // groups, k // groups
    th, tw = ceil_div(p, m), ceil_div(q, m)
    v = np.einsum("ij,nctwjk,lk->nctwil", bt, _input_tiles(x, pad, m, th, tw), bt)
    dyp = np.zeros((n, k, th * m, tw * m), dtype=dy.dtype)
    dyp[:, :, :p, :q] = dy
    e = dyp.reshape(n, k, th, m, tw, m).transpose(0, 1, 2, 4, 3, 5)
    z = np.einsum("ji,nktwjl,lm->nktwim", at, e, at)
    dw = np.concatenate([
        np.einsum("nktwil,nctwil->kcil", z[:, i * kg:(i + 1) * kg], v[:, i * cg:(i + 1) * cg])
        for i in range(groups)], axis=0)
    return np.einsum("ji,kcjl,lm->kcim", g_, dw, g_)


def winograd_forward_reference(x, w, b=None, pad=1, groups=1, relu=False, m=2):
    """conv2d_forward of a 3x3 stride-1 layer through F(m x m, 3 x 3), in x's dtype."""
    check_applicable(x.shape, w.shape, 1, pad, groups)
    mats = tuple(a.astype(np.result_type(x, w)) for a in winograd_matrices(m))
    y = _forward(x, w, pad, groups, m, mats)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return np.maximum(y, 0) if relu else np.ascontiguousarray(y)


def winograd_backward_data_reference(dy, w, x_shape, pad=1, groups=1, m=2):
    out = check_applicable(x_shape, w.shape, 1, pad, groups)
    conv_plan._check_dy(dy.shape, out)
    mats = tuple(a.astype(np.result_type(dy, w)) for a in winograd_matrices(m))
    return np.ascontiguousarray(_forward(dy, _flipped_filters(w, groups), 2 - pad, groups, m, mats))


def winograd_backward_filter_reference(x, dy, w_shape, pad=1, groups=1, m=2):
    out = check_applicable(x.shape, w_shape, 1, pad, groups)
    conv_plan._check_dy(dy.shape, out)
    mats = tuple(a.astype(np.result_type(x, dy)) for a in winograd_matrices(m))
    return _backward_filter(x, dy, pad, groups, m, mats)


def winograd_error_magnitude(pass_, a, b, shape, pad=1, groups=1, m=2):
    """The pass run in float64 on |a|, |b| with the transforms' absolute values.

    Every value the algorithm rounds (transformed tiles, products, partial sums, outputs)
    is bounded in magnitude by the matching entry of this run, so the float32 result's
    error is at most gamma_n = n u / (1 - n u) times it, n the number of roundings along
    the longest chain (Higham, Accuracy and Stability of Numerical Algorithms, 3.1).
    Because |BT|, |G|, |AT| grow with m, this magnitude, and with it the bound, grows with
    the tile. pass_ and (a, b, shape): "forward" (x, w, None), "backward_data" (dy, w,
    x_shape), "backward_filter" (x, dy, w_shape)."""
    mats = tuple(np.abs(t) for t in winograd_matrices(m))
    a, b = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))
    if pass_ == "forward":
        return _forward(a, b, pad, groups, m, mats)
    if pass_ == "backward_data":
        return _forward(a, _flipped_filters(b, groups), 2 - pad, groups, m, mats)
    if pass_ == "backward_filter":
        return _backward_filter(a, b, pad, groups, m, mats)
    raise ValueError(f"winograd: pass must be one of {PASSES}, got {pass_!r}")


# ---- plans ------------------------------------------------------------------------------
def _bgemm_us(ops, rows, cols, red, batch, tile):
    """Modelled microseconds of a batched product (waves of resident blocks x K)."""
    bm, bn, _ = _linear.TILES[tile]
    per_sm = BGEMM_BLOCKS_PER_SM[(ops, tile)]
    blocks = ceil_div(rows, bm) * ceil_div(cols, bn) * batch
    us_per_k = _linear.TILE_US_PER_K[tile] * per_sm / _linear.TILE_OCCUPANCY[tile]
    return waves(blocks, per_sm, conv_plan.TARGET_SMS) * red * us_per_k


def _bgemm_tile(ops, rows, cols, red, batch):
    return min(BGEMM_TILES, key=lambda t: _bgemm_us(ops, rows, cols, red, batch, t))


class Plan:
    """Everything a pass launches, from the shapes only (so every backend runs the same)."""

    def __init__(self, pass_, x_shape, w_shape, pad, groups, m, chunks=None):
        if pass_ not in PASSES:
            raise ValueError(f"winograd: pass must be one of {PASSES}, got {pass_!r}")
        winograd_matrices(m)  # validates m
        out = check_applicable(x_shape, w_shape, 1, pad, groups)
        n, c, h, w = x_shape
        k, p, q = out[1:]
        self.pass_, self.m, self.al2, self.groups = pass_, m, (m + 2) ** 2, groups
        self.cg, self.kg = c // groups, k // groups
        if pass_ == "backward_filter":
            self.th, self.tw = ceil_div(p, m), ceil_div(q, m)
            self.tiles = n * self.th * self.tw
            if chunks is None:
                most = max(1, min(MAX_CHUNKS, self.tiles // MIN_CHUNK))
                chunks = min(range(1, most + 1), key=self._filter_us)
            self.chunks = min(conv_plan._as_int("chunks", chunks, 1), self.tiles)
            self.pc = ceil_div(self.tiles, self.chunks)
            self.chunks = ceil_div(self.tiles, self.pc)  # no empty chunk
            batch = self.chunks * self.al2 * groups
            self.tile = _bgemm_tile("nt", self.kg, self.cg, self.pc, batch)
            self.sizes = {"V": batch * self.cg * self.pc, "Z": batch * self.kg * self.pc,
                          "dW": batch * self.kg * self.cg}
        else:
            # the output grid: y (forward) or dx (backward data)
            rows, oh, ow = (self.kg, p, q) if pass_ == "forward" else (self.cg, h, w)
            red = self.cg if pass_ == "forward" else self.kg
            self.th, self.tw = ceil_div(oh, m), ceil_div(ow, m)
            self.tiles, self.chunks = n * self.th * self.tw, 1
            self.pc = self.tiles
            self.rows, self.red = rows, red
            batch = self.al2 * groups
            self.tile = _bgemm_tile("nn", rows, self.tiles, red, batch)
            self.sizes = {"U": batch * rows * red, "V": batch * red * self.tiles,
                          "M": batch * rows * self.tiles}
        self.workspace = sum(self.sizes.values())

    def _filter_us(self, chunks):
        pc = ceil_div(self.tiles, chunks)
        chunks = ceil_div(self.tiles, pc)
        batch = chunks * self.al2 * self.groups
        gemm = min(_bgemm_us("nt", self.kg, self.cg, pc, batch, t) for t in BGEMM_TILES)
        return gemm + 2 * 4 * batch * self.kg * self.cg / conv_plan.HBM_BYTES_PER_US

    def cost_us(self):
        """Modelled microseconds: the batched product, every buffer written and read
        once, and the launches."""
        if self.pass_ == "backward_filter":
            gemm = _bgemm_us("nt", self.kg, self.cg, self.pc,
                             self.chunks * self.al2 * self.groups, self.tile)
        else:
            gemm = _bgemm_us("nn", self.rows, self.tiles, self.red, self.al2 * self.groups,
                             self.tile)
        return gemm + 2 * 4 * self.workspace / conv_plan.HBM_BYTES_PER_US + 4 * conv_plan.LAUNCH_US


def winograd_workspace_size(pass_, x_shape, w_shape, pad=1, groups=1, m=2):
    """float32 elements of the workspace a pass needs (allocate once, pass as workspace=)."""
    return Plan(pass_, tuple(x_shape), tuple(w_shape), pad, groups, m).workspace


# ---- launchers --------------------------------------------------------------------------
def _workspace(be, plan, workspace):
    need = plan.workspace
    if workspace is None:
        ws = be.empty((need,))
    else:
        require_float32("winograd workspace", workspace)
        if workspace.size < need or not workspace.flags.c_contiguous:
            raise ValueError(f"winograd: the workspace must be a C-contiguous float32 array of "
                             f"at least {need} elements, got shape {tuple(workspace.shape)}")
        ws = workspace.reshape(-1)
    views, start = {}, 0
    for name, size in plan.sizes.items():
        views[name] = ws[start:start + size]
        start += size
    return views


def _check(what, *arrays):
    for name, a in arrays:
        conv_plan._check_kernel_args(f"winograd {what}", (name, a))


def _bgemm(be, ops, plan, a, b, c, rows, cols, red, batch):
    bm, bn, _ = _linear.TILES[plan.tile]
    grid = (ceil_div(cols, bn), ceil_div(rows, bm), batch)
    if grid[1] > conv_plan.MAX_GRID_YZ or grid[2] > conv_plan.MAX_GRID_YZ:
        raise ValueError(f"winograd: batched product grid {grid} exceeds CUDA's y/z limit")
    be.launch(KERNELS, f"wino_bgemm_{ops}_{plan.tile}", grid, THREADS,
              [a, b, c, i32(rows), i32(cols), i32(red), i64(rows * red), i64(cols * red),
               i64(rows * cols)])


def _forward_kernels(be, plan, x, w, b, flip, pad, relu, out_shape, workspace):
    """The forward pipeline on input x (N, C', H', W') into out_shape (N, rows*groups, .,.)."""
    ws = _workspace(be, plan, workspace)
    m, g = plan.m, plan.groups
    n, c_in, h, wd = x.shape
    y = be.empty(out_shape)
    be.launch(KERNELS, f"wino{m}_filter_transform", elementwise_grid(g * plan.kg * plan.cg),
              THREADS, [w, ws["U"], i32(plan.kg), i32(plan.cg), i32(g), i32(flip)])
    be.launch(KERNELS, f"wino{m}_input_transform", elementwise_grid(c_in * plan.tiles), THREADS,
              [x, ws["V"], i32(n), i32(c_in), i32(h), i32(wd), i32(g), i32(pad), i32(plan.th),
               i32(plan.tw), i32(plan.tiles), i32(1)])
    _bgemm(be, "nn", plan, ws["U"], ws["V"], ws["M"], plan.rows, plan.tiles, plan.red,
           plan.al2 * g)
    rows_total = out_shape[1]
    be.launch(KERNELS, f"wino{m}_output_transform", elementwise_grid(rows_total * plan.tiles),
              THREADS, [ws["M"], y, w if b is None else b, i32(n), i32(rows_total),
                        i32(out_shape[2]), i32(out_shape[3]), i32(plan.th), i32(plan.tw),
                        i32(b is not None), i32(bool(relu))])
    return y


def winograd_forward(be, x, w, b=None, pad=1, groups=1, relu=False, m=2, workspace=None):
    """y = conv(x, w) + b (then ReLU) for a 3x3 stride-1 layer, through F(m x m, 3 x 3)."""
    out = check_applicable(x.shape, w.shape, 1, pad, groups)
    if b is not None and tuple(b.shape) != (out[1],):
        raise ValueError(f"conv2d: bias of shape {tuple(b.shape)} for {out[1]} filters")
    plan = Plan("forward", x.shape, w.shape, pad, groups, m)
    if not be.runs_kernels:
        return winograd_forward_reference(x, w, b, pad, groups, relu, m)
    _check("forward", ("x", x), ("w", w), *([("b", b)] if b is not None else []))
    return _forward_kernels(be, plan, x, w, b, 0, pad, relu, out, workspace)


def winograd_backward_data(be, dy, w, x_shape, pad=1, groups=1, m=2, workspace=None):
    """dx for a 3x3 stride-1 layer: the forward of dy with flipped filters, pad 2 - pad."""
    x_shape = tuple(int(v) for v in x_shape)
    out = check_applicable(x_shape, w.shape, 1, pad, groups)
    conv_plan._check_dy(dy.shape, out)
    plan = Plan("backward_data", x_shape, w.shape, pad, groups, m)
    if not be.runs_kernels:
        return winograd_backward_data_reference(dy, w, x_shape, pad, groups, m)
    _check("backward data", ("dy", dy), ("w", w))
    return _forward_kernels(be, plan, dy, w, None, 1, 2 - pad, False, x_shape, workspace)


def winograd_backward_filter(be, x, dy, w_shape, pad=1, groups=1, m=2, workspace=None,
                             chunks=None):
    """dw for a 3x3 stride-1 layer; the tile reduction in ``chunks`` (default planned)
    partial products summed in chunk order: deterministic."""
    w_shape = tuple(int(v) for v in w_shape)
    out = check_applicable(x.shape, w_shape, 1, pad, groups)
    conv_plan._check_dy(dy.shape, out)
    plan = Plan("backward_filter", x.shape, w_shape, pad, groups, m, chunks)
    if not be.runs_kernels:
        return winograd_backward_filter_reference(x, dy, w_shape, pad, groups, m)
    _check("backward filter", ("x", x), ("dy", dy))
    ws = _workspace(be, plan, workspace)
    n, c, h, wd = x.shape
    k, p, q = out[1:]
    g, mm = plan.groups, plan.m
    dw = be.empty(w_shape)
    args = [i32(plan.th), i32(plan.tw), i32(plan.pc), i32(plan.chunks)]
    be.launch(KERNELS, f"wino{mm}_input_transform", elementwise_grid(c * plan.chunks * plan.pc),
              THREADS, [x, ws["V"], i32(n), i32(c), i32(h), i32(wd), i32(g), i32(pad), *args])
    be.launch(KERNELS, f"wino{mm}_dy_transform", elementwise_grid(k * plan.chunks * plan.pc),
              THREADS, [dy, ws["Z"], i32(n), i32(k), i32(p), i32(q), i32(g), *args])
    _bgemm(be, "nt", plan, ws["Z"], ws["V"], ws["dW"], plan.kg, plan.cg, plan.pc,
           plan.chunks * plan.al2 * g)
    be.launch(KERNELS, f"wino{mm}_filter_grad_output", elementwise_grid(g * plan.kg * plan.cg),
              THREADS, [ws["dW"], dw, i32(plan.kg), i32(plan.cg), i32(g), i32(plan.chunks)])
    return dw
