import numpy as np
import pytest
from conftest import assert_matches_reference, record_launches

from pyalexnet.backends import get_backend
from pyalexnet.gradcheck import assert_gradient_close, numeric_gradient
from pyalexnet.ops import conv
from pyalexnet.ops.conv import (
    FILTER_V2_BLOCKS_PER_SM, FILTER_VERSIONS, TARGET_SMS, TILES, conv2d_backward_bias,
    conv2d_backward_bias_reference, conv2d_backward_data, conv2d_backward_data_reference,
    conv2d_backward_filter, conv2d_backward_filter_reference,
    conv2d_backward_filter_workspace_size, conv2d_forward, conv2d_forward_reference,
    conv2d_output_shape, pick_splits)

# (x shape, w shape, stride, pad, groups)
ALEXNET = {
    "conv1": ((2, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1),
    "conv2": ((2, 96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
    "conv3": ((2, 256, 13, 13), (384, 256, 3, 3), 1, 1, 1),
    "conv4": ((2, 384, 13, 13), (384, 192, 3, 3), 1, 1, 2),
    "conv5": ((2, 384, 13, 13), (256, 192, 3, 3), 1, 1, 2),
}
# Odd shapes: no size a multiple of a tile, H != W, R != S, strides 1-4, pads 0-3, 1-3 groups.
ODD = [
    ((3, 5, 11, 13), (7, 5, 5, 3), 1, 2, 1),
    ((2, 6, 17, 9), (9, 2, 3, 4), 2, 1, 3),
    ((1, 4, 23, 19), (6, 2, 7, 5), 3, 3, 2),
    ((5, 3, 15, 21), (5, 3, 2, 6), 4, 0, 1),
    ((2, 18, 10, 12), (69, 6, 3, 1), 1, 1, 3),
    ((3, 34, 9, 7), (66, 17, 1, 3), 2, 0, 2),
    ((2, 40, 14, 11), (130, 20, 4, 2), 1, 3, 2),
    ((7, 21, 6, 8), (33, 7, 3, 5), 1, 2, 3),
    ((1, 17, 31, 29), (67, 17, 5, 4), 3, 1, 1),
    ((4, 66, 5, 6), (10, 33, 2, 3), 2, 2, 2),
    ((3, 2, 8, 5), (4, 1, 8, 1), 1, 0, 2),
    ((2, 20, 12, 9), (129, 20, 3, 2), 4, 3, 1),
]


def _data(rng, x_shape, w_shape, stride, pad, groups):
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    dy = rng.standard_normal(conv2d_output_shape(x_shape, w_shape, stride, pad)).astype(np.float32)
    return x, w, b, dy


def _f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


def _check_all_passes(be, rng, x_shape, w_shape, stride, pad, groups, tile=None):
    """Forward (plain and with fused bias + ReLU), backward data, filter and bias.

    tile="direct" checks only backward data, through conv_bwd_data_direct.
    """
    x, w, b, dy = _data(rng, x_shape, w_shape, stride, pad, groups)
    x64, w64, b64, dy64 = _f64(x, w, b, dy)
    X, W, B, DY = (be.asarray(a) for a in (x, w, b, dy))
    dx = conv2d_backward_data(be, DY, W, x_shape, stride, pad, groups, tile=tile)
    assert_matches_reference(be.to_numpy(dx),
                             conv2d_backward_data_reference(dy64, w64, x_shape, stride, pad, groups),
                             reduction=w_shape[0] // groups * w_shape[2] * w_shape[3],
                             what="backward data")
    if tile == "direct":
        return
    red_fwd = int(np.prod(w_shape[1:]))
    y = conv2d_forward(be, X, W, None, stride, pad, groups, tile=tile)
    assert_matches_reference(be.to_numpy(y),
                             conv2d_forward_reference(x64, w64, None, stride, pad, groups),
                             reduction=red_fwd, what="forward")
    y = be.to_numpy(conv2d_forward(be, X, W, B, stride, pad, groups, relu=True, tile=tile))
    ref = conv2d_forward_reference(x64, w64, b64, stride, pad, groups, relu=True)
    assert_matches_reference(y, ref, reduction=red_fwd, what="forward+bias+relu")
    assert np.all(y[ref == 0] == 0), "fused ReLU let a negative through"
    red_filter = dy.shape[0] * dy.shape[2] * dy.shape[3]
    ref = conv2d_backward_filter_reference(x64, dy64, w_shape, stride, pad, groups)
    for version in FILTER_VERSIONS:
        if version == 2 and tile is not None and tile not in FILTER_V2_BLOCKS_PER_SM:
            continue  # v2 has no such tile
        dw = conv2d_backward_filter(be, X, DY, w_shape, stride, pad, groups, tile=tile,
                                    version=version)
        assert_matches_reference(be.to_numpy(dw), ref, reduction=red_filter,
                                 what=f"backward filter v{version}")
    db = conv2d_backward_bias(be, DY)
    assert_matches_reference(be.to_numpy(db), conv2d_backward_bias_reference(dy64),
                             reduction=red_filter, what="backward bias")


# ---- the NumPy reference ---------------------------------------------------------------------
def _naive_forward(x, w, b, stride, pad, groups):
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    _, _, p, q = conv2d_output_shape(x.shape, w.shape, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = np.zeros((n, k, p, q))
    kg = k // groups
    for ki in range(k):
        g = ki // kg
        for i in range(p):
            for j in range(q):
                win = xp[:, g * cg:(g + 1) * cg, i * stride:i * stride + r, j * stride:j * stride + s]
                y[:, ki, i, j] = np.tensordot(win, w[ki], axes=3) + b[ki]
    return y


@pytest.mark.parametrize("case", ODD[:6])
def test_reference_matches_definition(rng, case):
    x, w, b, _ = _data(rng, *case)
    x, w, b = _f64(x, w, b)
    np.testing.assert_allclose(conv2d_forward_reference(x, w, b, *case[2:]),
                               _naive_forward(x, w, b, *case[2:]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [
    ((2, 4, 7, 6), (6, 2, 3, 2), 2, 1, 2),
    ((1, 3, 6, 8), (2, 3, 4, 3), 1, 2, 1),
    ((2, 3, 9, 7), (3, 1, 5, 4), 3, 3, 3),
])
def test_reference_gradients(rng, case):
    x_shape, w_shape, stride, pad, groups = case
    x, w, b, dy = _f64(*_data(rng, *case))
    fwd = lambda xx, ww, bb: conv2d_forward_reference(xx, ww, bb, stride, pad, groups)  # noqa: E731
    assert_gradient_close(conv2d_backward_data_reference(dy, w, x_shape, stride, pad, groups),
                          numeric_gradient(lambda v: fwd(v, w, b), x, dy), what="dx")
    assert_gradient_close(conv2d_backward_filter_reference(x, dy, w_shape, stride, pad, groups),
                          numeric_gradient(lambda v: fwd(x, v, b), w, dy), what="dw")
    assert_gradient_close(conv2d_backward_bias_reference(dy),
                          numeric_gradient(lambda v: fwd(x, w, v), b, dy), what="db")


def test_reference_keeps_dtype(rng):
    x, w, b, dy = _data(rng, *ODD[0])
    assert conv2d_forward_reference(x, w, b, 1, 2).dtype == np.float32
    assert conv2d_backward_data_reference(dy, w, x.shape, 1, 2).dtype == np.float32
    assert conv2d_backward_filter_reference(x, dy, w.shape, 1, 2).dtype == np.float32


# ---- kernels against the reference ------------------------------------------------------------
@pytest.mark.parametrize("layer", list(ALEXNET))
def test_alexnet_layers(kernel_backend, rng, layer):
    _check_all_passes(kernel_backend, rng, *ALEXNET[layer])


@pytest.mark.parametrize("case", ODD, ids=[f"odd{i}" for i in range(len(ODD))])
def test_odd_shapes(kernel_backend, rng, case):
    _check_all_passes(kernel_backend, rng, *case)


# Every kernel (each tile shape, the direct backward-data kernel) on shapes that leave
# partial tiles in both GEMM dimensions and in the reduction.
@pytest.mark.parametrize("tile", list(TILES) + ["direct"], ids=lambda t: "x".join(map(str, t))
                         if isinstance(t, tuple) else t)
@pytest.mark.parametrize("case", [ODD[6], ODD[8]], ids=["odd6", "odd8"])
def test_every_kernel(kernel_backend, rng, tile, case):
    _check_all_passes(kernel_backend, rng, *case, tile=tile)


# Forward and backward data v2 (the 128x128 tile at two resident blocks per SM; backward
# data at stride 1) on shapes with partial tiles in rows (129, 130 filters or channels),
# columns and the reduction, strides 1-4, groups: the reference, and the bits of every v1
# tile (all accumulate in the same kk order).
V2_CASES = {"odd0": ODD[0], "odd2": ODD[2], "odd6": ODD[6], "odd8": ODD[8], "odd11": ODD[11],
            "c130": ((2, 130, 9, 7), (5, 130, 3, 2), 1, 1, 1)}


@pytest.mark.parametrize("name", list(V2_CASES))
def test_gemm_v2(kernel_backend, rng, name):
    be = kernel_backend
    x_shape, w_shape, stride, pad, groups = case = V2_CASES[name]
    x, w, b, dy = _data(rng, *case)
    x64, w64, b64, dy64 = _f64(x, w, b, dy)
    X, W, B, DY = (be.asarray(a) for a in (x, w, b, dy))
    y = be.to_numpy(conv2d_forward(be, X, W, B, stride, pad, groups, relu=True, version=2))
    assert_matches_reference(y, conv2d_forward_reference(x64, w64, b64, stride, pad, groups, True),
                             reduction=int(np.prod(w_shape[1:])), what="forward v2")
    passes = [("forward", y, lambda tile: conv2d_forward(be, X, W, B, stride, pad, groups,
                                                         relu=True, tile=tile))]
    if stride == 1:
        dx = be.to_numpy(conv2d_backward_data(be, DY, W, x_shape, stride, pad, groups, version=2))
        assert_matches_reference(dx, conv2d_backward_data_reference(dy64, w64, x_shape, stride,
                                                                    pad, groups),
                                 reduction=w_shape[0] // groups * w_shape[2] * w_shape[3],
                                 what="backward data v2")
        passes.append(("backward data", dx, lambda tile: conv2d_backward_data(
            be, DY, W, x_shape, stride, pad, groups, tile=tile)))
    for what, v2, v1 in passes:
        for tile in TILES:
            np.testing.assert_array_equal(v2, be.to_numpy(v1(tile)),
                                          err_msg=f"{what} v2 against v1 tile {tile}")


# algo="auto" runs v2 where auto_gemm_v2 says, only when no version or tile is given; at
# AlexNet's batch-128 shapes that is where v2 pads no more than the planned tile.
def test_auto_gemm_v2_at_alexnet_shapes():
    n = 128
    passes = {  # rows, columns, groups of the GEMM per group; v2 or not
        "conv1 forward": (96, n * 55 * 55, 1, True), "conv2 forward": (128, n * 27 * 27, 2, True),
        "conv3 forward": (384, n * 13 * 13, 1, True), "conv4 forward": (192, n * 13 * 13, 2, False),
        "conv5 forward": (128, n * 13 * 13, 2, True), "conv2 data": (48, n * 27 * 27, 2, False),
        "conv3 data": (256, n * 13 * 13, 1, True), "conv4 data": (192, n * 13 * 13, 2, False)}
    for name, (rows, cols, groups, v2) in passes.items():
        assert conv.auto_gemm_v2(rows, cols, groups) == v2, name


@pytest.mark.parametrize("planned", [True, False], ids=["v2", "v1"])
def test_auto_runs_the_planned_version(kernel_backend, rng, monkeypatch, planned):
    be = kernel_backend
    case = ((2, 20, 12, 9), (40, 20, 5, 3), 1, 1, 1)  # 5x3: implicit GEMM under "auto"
    x_shape, w_shape, stride, pad, groups = case
    x, w, b, dy = (be.asarray(a) for a in _data(rng, *case))
    monkeypatch.setattr(conv, "auto_gemm_v2", lambda rows, cols, groups: planned)
    launched = record_launches(monkeypatch, be)
    runs = {
        "forward": lambda **kw: conv2d_forward(be, x, w, b, stride, pad, groups, **kw),
        "backward data": lambda **kw: conv2d_backward_data(be, dy, w, x_shape, stride, pad,
                                                           groups, **kw)}
    for what, run in runs.items():
        launched.clear()
        auto = be.to_numpy(run(algo="auto"))
        assert ("_v2_" in launched[0]) == planned, (what, launched)
        for kw, v2 in (({"algo": "auto", "version": 1}, False), ({"version": 2}, True)):
            launched.clear()
            np.testing.assert_array_equal(be.to_numpy(run(**kw)), auto, err_msg=f"{what} {kw}")
            assert ("_v2_" in launched[0]) == v2, (what, kw, launched)


@pytest.mark.parametrize("kwargs, message", [
    ({"version": 0}, "backward data version must be one of"),
    ({"version": 2, "tile": "direct"}, "runs the tile"),
    ({"version": 2, "stride": 2}, "runs stride 1 only"),
])
def test_bad_backward_data_version(kwargs, message):
    be = get_backend("numpy")
    kwargs = dict(kwargs)  # the parameter's own dict stays as pytest holds it
    stride = kwargs.pop("stride", 1)
    x_shape, w = (2, 4, 9, 9), np.zeros((6, 4, 3, 3), np.float32)
    dy = np.zeros(conv2d_output_shape(x_shape, w.shape, stride), np.float32)
    with pytest.raises(ValueError, match=message):
        conv2d_backward_data(be, dy, w, x_shape, stride, **kwargs)


def test_numpy_backend_runs_the_reference(rng):
    be = get_backend("numpy")
    x, w, b, dy = _data(rng, *ODD[1])
    np.testing.assert_array_equal(conv2d_forward(be, x, w, b, *ODD[1][2:], relu=True),
                                  conv2d_forward_reference(x, w, b, *ODD[1][2:], relu=True))


@pytest.mark.parametrize("version", FILTER_VERSIONS, ids=lambda v: f"v{v}")
def test_filter_gradient_splits(kernel_backend, rng, version):
    """Any split count gives the reference; repeated runs give identical bits."""
    be = kernel_backend
    case = ((4, 6, 19, 17), (10, 3, 3, 4), 1, 1, 2)
    x, _, _, dy = _data(rng, *case)
    ref = conv2d_backward_filter_reference(*_f64(x, dy), *case[1:])
    X, DY = be.asarray(x), be.asarray(dy)
    for splits in (1, 2, 7, 64):
        dw = conv2d_backward_filter(be, X, DY, *case[1:], splits=splits, version=version)
        assert_matches_reference(be.to_numpy(dw), ref, reduction=dy.size // 10, what=f"{splits} splits")
    first = be.to_numpy(conv2d_backward_filter(be, X, DY, *case[1:], version=version))
    for _ in range(2):
        again = conv2d_backward_filter(be, X, DY, *case[1:], version=version)
        np.testing.assert_array_equal(be.to_numpy(again), first)


@pytest.mark.parametrize("version", FILTER_VERSIONS, ids=lambda v: f"v{v}")
def test_filter_gradient_uses_the_callers_workspace(kernel_backend, rng, version):
    be = kernel_backend
    case = ((3, 8, 21, 19), (12, 4, 3, 3), 1, 1, 2)  # 3*21*19 = 1197 pixels: v2 splits it
    x, _, _, dy = _data(rng, *case)
    need = conv2d_backward_filter_workspace_size(x.shape, *case[1:], version=version)
    assert need and need % int(np.prod(case[1])) == 0  # whole partial sums
    ws = be.asarray(np.full(need + 5, np.nan, np.float32))  # larger than needed is fine
    dw = conv2d_backward_filter(be, be.asarray(x), be.asarray(dy), *case[1:], version=version,
                                workspace=ws)
    assert_matches_reference(be.to_numpy(dw),
                             conv2d_backward_filter_reference(*_f64(x, dy), *case[1:]),
                             reduction=dy.size // 12, what="dw through the workspace")
    used = be.to_numpy(ws)
    assert np.all(np.isfinite(used[:need])) and np.all(np.isnan(used[need:]))  # its partials
    with pytest.raises(ValueError, match=f"at least {need} elements"):
        conv2d_backward_filter(be, be.asarray(x), be.asarray(dy), *case[1:], version=version,
                               workspace=ws[:need - 1])


def test_workspace_is_zero_without_splits():
    # one image of 4x4 outputs: too short a reduction to split
    for version in FILTER_VERSIONS:
        assert conv2d_backward_filter_workspace_size((1, 2, 4, 4), (3, 2, 1, 1),
                                                     version=version) == 0
    with pytest.raises(ValueError, match="version must be one of"):
        conv2d_backward_filter_workspace_size((1, 2, 4, 4), (3, 2, 1, 1), version=3)


@pytest.mark.parametrize("layer", ["conv2", "conv3", "conv4"])
def test_filter_v2_plan_fills_the_gpu(layer):
    """At batch 128 the v2 plan's blocks fill their waves of resident blocks (>= 90%)."""
    x_shape, w_shape, stride, pad, groups = ALEXNET[layer]
    x_shape = (128,) + x_shape[1:]
    _, tile, splits, _ = conv._filter_plan(x_shape, w_shape, stride, pad, groups, 2, None, None)
    kg, ncol = w_shape[0] // groups, int(np.prod(w_shape[1:]))
    blocks = -(-kg // tile[0]) * -(-ncol // tile[1]) * groups * splits
    slots = TARGET_SMS * FILTER_V2_BLOCKS_PER_SM[tile]
    assert blocks / (-(-blocks // slots) * slots) >= 0.9
    assert conv2d_backward_filter_workspace_size(x_shape, w_shape, stride, pad, groups,
                                                 version=2) == splits * int(np.prod(w_shape))


def test_split_choice():
    splits, length = pick_splits(128 * 55 * 55, 3)  # conv1 at batch 128: split wide
    assert splits > 100 and length % 8 == 0 and (splits - 1) * length < 128 * 55 * 55
    assert pick_splits(300, 100) == (1, 304)  # too short to split


# ---- shapes and errors ----------------------------------------------------------------------
def test_output_shape():
    for layer, out in zip(ALEXNET, [(2, 96, 55, 55), (2, 256, 27, 27), (2, 384, 13, 13),
                                    (2, 384, 13, 13), (2, 256, 13, 13)]):
        x_shape, w_shape, stride, pad, _ = ALEXNET[layer]
        assert conv2d_output_shape(x_shape, w_shape, stride, pad) == out
    assert conv2d_output_shape((1, 1, 8, 8), (1, 1, 3, 3), 3, 0) == (1, 1, 2, 2)  # floor


@pytest.mark.parametrize("x_shape, w_shape, kwargs, message", [
    ((2, 6, 8, 8), (4, 4, 3, 3), {}, "channel mismatch"),
    ((2, 6, 8, 8), (4, 3, 3, 3), {"groups": 3}, "groups=3 must divide"),
    ((2, 6, 8, 8), (6, 2, 3, 3), {"groups": 4}, "groups=4 must divide"),
    ((2, 6, 4, 8), (4, 6, 5, 3), {}, "does not fit"),
    ((6, 8, 8), (4, 6, 3, 3), {}, "must be 4-D"),
    ((2, 6, 8, 8), (4, 6, 3), {}, "must be 4-D"),
    ((2, 6, 8, 8), (4, 6, 3, 3), {"stride": 0}, "stride must be >= 1"),
    ((2, 6, 8, 8), (4, 6, 3, 3), {"pad": -1}, "pad must be >= 0"),
    ((2, 6, 8, 8), (4, 6, 3, 3), {"version": 3}, "forward version must be one of"),
    ((2, 6, 8, 8), (4, 6, 3, 3), {"version": 2, "tile": (64, 64)}, "runs the tile"),
])
def test_bad_arguments(backend, x_shape, w_shape, kwargs, message):
    x, w = np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32)
    with pytest.raises(ValueError, match=message):
        conv2d_forward(backend, backend.asarray(x), backend.asarray(w), **kwargs)


def test_bad_bias_and_gradient_shapes(backend):
    x, w = backend.asarray(np.zeros((2, 6, 8, 8))), backend.asarray(np.zeros((4, 6, 3, 3)))
    with pytest.raises(ValueError, match="bias of shape"):
        conv2d_forward(backend, x, w, backend.asarray(np.zeros(5)))
    dy = backend.asarray(np.zeros((2, 4, 7, 6)))
    with pytest.raises(ValueError, match="output gradient has shape"):
        conv2d_backward_data(backend, dy, w, (2, 6, 8, 8))
    with pytest.raises(ValueError, match="output gradient has shape"):
        conv2d_backward_filter(backend, x, dy, (4, 6, 3, 3))


def test_kernels_want_float32(kernel_backend):
    be = kernel_backend
    x = be.asarray(np.zeros((2, 6, 8, 8)), dtype=np.float64)
    w = be.asarray(np.zeros((4, 6, 3, 3)))
    with pytest.raises(TypeError, match="x must be float32"):
        conv2d_forward(be, x, w)
