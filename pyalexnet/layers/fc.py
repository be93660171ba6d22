"""Fully connected layer (flattens (C, H, W) maps), with an optional ReLU in place."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..devices import feature_slices
from ..ops import linear as linear_ops
from ..ops import relu as relu_ops
from ..schema import ConfigError
from .base import Pass
from .weights import WeightLayer, low_precision, output_gradient


@dataclass(frozen=True, kw_only=True)
class FC(WeightLayer):
    TYPE = "fc"
    CLASSIFIER = True

    outputs: int

    def check(self, towers):
        self.positive(outputs=self.outputs)
        if towers > 1 and self.outputs < towers:
            raise ConfigError(f"layer {self.name}: {self.outputs} outputs cannot be split over "
                              f"{towers} towers")
        return (self.outputs,)

    @property
    def param_shapes(self):
        return {"w": (self.outputs, int(np.prod(self.in_shape))), "b": (self.outputs,)}

    def forward(self, be, x, params, ctx, relu=False):
        pr = ctx.precision
        x2 = low_precision(be, self.block_input(x), pr, "fc input")
        w = low_precision(be, params["w"], pr, "w")
        y = linear_ops.linear_forward(be, x2, w, params["b"], precision=pr)
        if relu:
            relu_ops.relu_forward(be, y, out=y)  # y is not needed by the backward pass
        return y, (x.shape, x2, w, y if relu else None)

    def backward(self, be, dy, cache, params, ctx, need_dx=True, relu=False):
        x_shape, x2, w, y = cache
        pr = ctx.precision
        dy = output_gradient(be, dy, y, relu, pr)
        db = linear_ops.linear_backward_bias(be, dy)
        dw = linear_ops.linear_backward_weight(be, x2, dy, precision=pr)
        dx = (linear_ops.linear_backward_data(be, dy, w, precision=pr).reshape(x_shape)
              if need_dx else None)
        return dx, {"w": dw, "b": db}

    def tower_kind(self, first):
        return "whole" if first else "blocks"

    def input_slices(self, towers):
        return feature_slices(self.in_shape, towers)

    def block_input(self, x):
        return x.reshape(x.shape[0], -1)  # a view of a C-contiguous array

    def block_forward(self, be, x, w, acc, ctx=Pass()):
        return linear_ops.gemm(be, x, w, trans_b=True, beta=0.0 if acc is None else 1.0, c=acc,
                               precision=ctx.precision)

    def block_backward_data(self, be, dy, w, x, ctx=Pass()):
        return linear_ops.linear_backward_data(be, dy, w, precision=ctx.precision)

    def block_backward_weight(self, be, x, dy, w_shape, ctx=Pass()):
        return linear_ops.linear_backward_weight(be, x, dy, precision=ctx.precision)

    def note(self, towers):
        return "(reads both towers)" if towers > 1 else ""
