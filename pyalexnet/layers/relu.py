"""ReLU on its own (after a conv or fc layer it is fused into that layer instead)."""
from __future__ import annotations

from dataclasses import dataclass

from ..ops import relu as relu_ops
from .base import Layer


@dataclass(frozen=True, kw_only=True)
class ReLU(Layer):
    TYPE = "relu"

    def forward(self, be, x, params, ctx):
        y = relu_ops.relu_forward(be, x)  # not in place: x may be another layer's saved output
        return y, y

    def backward(self, be, dy, cache, params, ctx, need_dx=True):
        return relu_ops.relu_backward(be, cache, dy), {}
