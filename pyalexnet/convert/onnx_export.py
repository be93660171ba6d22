"""A config and its parameters as an ONNX model (opset 17), written with the onnx helper
API: input "images" (N, C, H, W) float32 (mean subtracted, as our loader gives it), output
"logits" (N, classes).

Two-tower layers are their grouped single-device form: grouped convs as Conv with
``group``, a grouped LRN as Split -> LRN per tower -> Concat. ONNX's LRN divides alpha by
the size, so the paper's formula (alpha_over_n false) exports alpha * size. The adaptive
average pool is a MatMul with its (H*W, P*Q) averaging matrix (exact for any sizes).
Dropout is inference-time: "inverted" nets need nothing (identity), "classic" nets (the
paper's) multiply by 1 - p.
"""
from __future__ import annotations

import numpy as np

from ..ops.avgpool import adaptive_windows
from .torchvision import ConvertError

OPSET = 17


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ConvertError("--to-onnx needs the onnx package: pip install 'pyalexnet[onnx]'") \
            from None
    return onnx


def _pool_matrix(h, w, out):
    m = np.zeros((h * w, out * out), np.float32)
    for i, (h0, h1) in enumerate(adaptive_windows(h, out)):
        for j, (w0, w1) in enumerate(adaptive_windows(w, out)):
            cell = np.zeros((h, w), np.float32)
            cell[h0:h1, w0:w1] = 1.0 / ((h1 - h0) * (w1 - w0))
            m[:, i * out + j] = cell.ravel()
    return m


def build_model(config, params: dict, dropout_mode="inverted", alpha_over_n=None):
    """The onnx.ModelProto of ``config`` with ``params`` (grouped layout, NumPy)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    x = "images"
    layers = list(config.layers)
    for i, layer in enumerate(layers):
        t, n = layer.type, layer.name
        if t == "conv":
            w = const(f"{n}.w", params[f"{n}.w"].astype(np.float32))
            b = const(f"{n}.b", params[f"{n}.b"].astype(np.float32))
            x = node("Conv", [x, w, b], n, kernel_shape=[layer.size] * 2,
                     strides=[layer.stride] * 2, pads=[layer.pad] * 4, group=layer.groups)
        elif t == "fc":
            if len(layer.in_shape) > 1:
                x = node("Flatten", [x], f"{n}.flatten", axis=1)
            w = const(f"{n}.w", params[f"{n}.w"].astype(np.float32))
            b = const(f"{n}.b", params[f"{n}.b"].astype(np.float32))
            x = node("Gemm", [x, w, b], n, transB=1)
        elif t == "relu":
            x = node("Relu", [x], n)
        elif t == "maxpool":
            x = node("MaxPool", [x], n, kernel_shape=[layer.size] * 2, strides=[layer.stride] * 2)
        elif t == "lrn":
            aon = layer.alpha_over_n if alpha_over_n is None else alpha_over_n
            alpha = layer.alpha if aon else layer.alpha * layer.size
            attrs = dict(size=layer.size, alpha=float(alpha), beta=float(layer.beta),
                         bias=float(layer.k))
            if layer.groups == 1:
                x = node("LRN", [x], n, **attrs)
            else:
                c = layer.in_shape[0]
                split = const(f"{n}.split", np.full(layer.groups, c // layer.groups, np.int64))
                parts = [f"{n}.part{g}" for g in range(layer.groups)]
                nodes.append(helper.make_node("Split", [x, split], parts, name=f"{n}.split",
                                              axis=1))
                outs = [node("LRN", [p], f"{p}.lrn", **attrs) for p in parts]
                x = node("Concat", outs, n, axis=1)
        elif t == "avgpool":
            c, h, w = layer.in_shape
            o = layer.output
            shape_in = const(f"{n}.shape_in", np.array([0, c, h * w], np.int64))
            shape_out = const(f"{n}.shape_out", np.array([0, c, o, o], np.int64))
            m = const(f"{n}.matrix", _pool_matrix(h, w, o))
            flat = node("Reshape", [x, shape_in], f"{n}.flat")
            x = node("Reshape", [node("MatMul", [flat, m], f"{n}.matmul"), shape_out], n)
        elif t == "dropout":
            if dropout_mode == "classic":
                x = node("Mul", [x, const(f"{n}.keep", np.float32(1.0 - layer.p))], n)
        else:
            raise ConvertError(f"layer {n}: type {t} has no ONNX export")
    nodes[-1].output[0] = "logits"
    c, h, w = config.input_shape
    graph = helper.make_graph(
        nodes, config.name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", config.num_classes])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="pyalexnet",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def export_onnx(path, config, params, dropout_mode="inverted", alpha_over_n=None):
    """Write the ONNX model atomically; returns the path."""
    from ..checkpoint import atomic_write_bytes

    model = build_model(config, params, dropout_mode, alpha_over_n)
    return atomic_write_bytes(path, lambda f: f.write(model.SerializeToString()))
