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
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import winograd
from ._launch import ELEMENTWISE_BLOCK, ceil_div, elementwise_grid, i32, i64
from .bias import bias_backward
from .conv_mma import _mma_backward_data, _mma_backward_filter, _mma_forward
from .conv_plan import (  # noqa: F401  (the planners are part of the op's interface)
    ALGOS, CHUNK, FILTER_V2_BLOCKS_PER_SM, FILTER_VERSIONS, GEMM_V2_TILE, GEMM_VERSIONS,
    HBM_BYTES_PER_US, LAUNCH_US, MIN_SPLIT, SM_FMA_PER_US, TARGET_SMS, TILES, TILE_SPEED,
    _as_int, auto_gemm_v2, _check_dy, _check_kernel_args, conv2d_backward_filter_workspace_size,
    conv2d_output_shape, conv2d_workspace_size, _dims, _filter_plan, filter_v2_cost_us,
    filter_v2_plan, _gemm_v2, _geometry, _grid, pick_algo, pick_splits, pick_tile,
    _resolve_algo, _tile)
from .precision import BF16, check_precision, fp32_operand, operand, to_bf16

KERNELS = "conv.cu"
THREADS = 256          # every conv kernel's block (CONV_THREADS)
DIRECT_CHANNELS = 4    # channels per thread of conv_bwd_data_direct (CONV_DIRECT_CB)
DIRECT_MAX_CHANNELS = 16  # backward data: below this many channels per group, a GEMM tile
                          # would be mostly padding; the direct kernel runs instead
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
                   algo="gemm", workspace=None, precision="fp32", out_dtype=np.float32,
                   version=None):
    """y = conv(x, w) + b, then ReLU if ``relu`` (fused in the kernel's epilogue).

    tile: force a kernel tile (tests, tuning): (BM, BN) for fp32, 128 or 64 for the
    tensor-core kernels; by default picked from the shape.
    algo: "gemm" (implicit GEMM), "winograd2" / "winograd4" (F(2x2, 3x3) / F(4x4, 3x3),
    3x3 stride-1 layers only, fp32) or "auto" (pick_algo). workspace: for Winograd, a
    float32 array of at least conv2d_workspace_size("forward", ...) elements.
    precision: see the module notes. out_dtype: float32, or with precision="bf16" the bf16
    bits (ops.precision.BF16) of bf16 training's activations, rounded in the epilogue.
    version: the fp32 implicit GEMM's kernel: 1 (a tile picked from the shape) or 2 (the
    128x128 tile at two resident blocks per SM; tile may only name it); None: 1, or with
    algo="auto" the choice of auto_gemm_v2. Both give the same bits; other algorithms and
    precisions ignore it.
    """
    check_precision(precision)
    v2 = _gemm_v2("forward", version, tile)
    auto = algo == "auto" and version is None and tile is None
    if np.dtype(out_dtype) not in (np.float32, BF16) or (np.dtype(out_dtype) == BF16
                                                         and precision != "bf16"):
        raise ValueError(f"conv2d: out_dtype must be float32, or bf16 (uint16) with "
                         f"precision='bf16'; got {np.dtype(out_dtype)} with {precision!r}")
    out = _geometry(x.shape, w.shape, stride, pad, groups)
    k = out[1]
    if b is not None and tuple(b.shape) != (k,):
        raise ValueError(f"conv2d: bias of shape {tuple(b.shape)} for {k} filters")
    algo = _choose_algo(precision, algo, "forward", x.shape, w.shape, stride, pad, groups, tile)
    if algo != "gemm":
        return winograd.winograd_forward(be, x, w, b, pad, groups, relu, int(algo[-1]),
                                         workspace)
    if not be.runs_kernels:
        y = conv2d_forward_reference(x, w, b, stride, pad, groups, relu, precision)
        return to_bf16(y) if np.dtype(out_dtype) == BF16 else y
    if precision != "fp32":
        return _mma_forward(be, x, w, b, stride, pad, groups, relu, precision, tile, out_dtype)
    _check_kernel_args("forward", ("x", x), ("w", w), *([("b", b)] if b is not None else []))
    n, _, p, q = out
    y = be.empty(out)
    _check_kernel_args("forward", ("y", y))
    if v2 or (auto and auto_gemm_v2(k // groups, n * p * q, groups)):
        kernel, tile = "conv_fwd_v2_%dx%d" % GEMM_V2_TILE, GEMM_V2_TILE
    else:
        tile = _tile(tile) if tile else pick_tile(k // groups, n * p * q, groups)
        kernel = "conv_fwd_%dx%d" % tile
    be.launch(KERNELS, kernel, _grid(n * p * q, k // groups, groups, tile),
              THREADS, [x, w, w if b is None else b, y,
                        *_dims(x.shape, w.shape, out, stride, pad, groups),
                        i32(b is not None), i32(bool(relu))])
    return y


def conv2d_backward_data(be, dy, w, x_shape, stride=1, pad=0, groups=1, tile=None,
                         algo="gemm", workspace=None, precision="fp32", version=None):
    """dx (N, C, H, W): the gradient of conv2d_forward with respect to its input.

    tile: a (BM, BN) GEMM tile or "direct"; by default the direct kernel for fewer than
    DIRECT_MAX_CHANNELS channels per group (conv1), else a tile picked from the shape.
    algo, workspace: as for conv2d_forward (pass "backward_data").
    tf32 / bf16: 128 or 64, the tensor-core kernel's tile; below DIRECT_MAX_CHANNELS (or
    with "direct") the fp32 direct kernel runs on float32 copies of the rounded operands.
    version: as for conv2d_forward, v2 at stride 1 only (asked for, it runs its GEMM tile
    at any channel count; algo="auto" keeps the direct kernel where it applies).
    """
    check_precision(precision)
    v2 = _gemm_v2("backward data", version, tile, stride)
    auto = algo == "auto" and version is None and tile is None and stride == 1
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
            tile, v2 = "direct", False  # version= is the fp32 GEMM's
        else:
            return _mma_backward_data(be, dy, w, x_shape, stride, pad, groups, precision, tile)
    _check_kernel_args("backward data", ("dy", dy), ("w", w))
    n, c, h, wd = x_shape
    dx = be.empty(x_shape)
    _check_kernel_args("backward data", ("dx", dx))
    dims = _dims(x_shape, w.shape, out, stride, pad, groups)
    direct = tile == "direct" or (tile is None and c // groups < DIRECT_MAX_CHANNELS)
    if v2 or (auto and not direct and auto_gemm_v2(c // groups, n * h * wd, groups)):
        be.launch(KERNELS, "conv_bwd_data_v2_%dx%d" % GEMM_V2_TILE,
                  _grid(n * h * wd, c // groups, groups, GEMM_V2_TILE), THREADS, [dy, w, dx, *dims])
        return dx
    if direct:
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

