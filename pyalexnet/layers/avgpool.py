"""Adaptive average pooling to a fixed output size (torchvision AlexNet's 6x6 avgpool)."""
from __future__ import annotations

from dataclasses import dataclass

from ..ops import avgpool as avgpool_ops
from ..ops.precision import float32_activations
from .base import Layer


@dataclass(frozen=True, kw_only=True)
class AvgPool(Layer):
    TYPE = "avgpool"
    SPATIAL = True

    output: int = 6

    def check(self, towers):
        self.positive(output=self.output)
        return (self.in_shape[0], self.output, self.output)

    def forward(self, be, x, params, ctx):
        return avgpool_ops.avgpool_forward(be, float32_activations(be, x), self.output), x.shape

    def backward(self, be, dy, cache, params, ctx, need_dx=True):
        return avgpool_ops.avgpool_backward(be, cache, dy, self.output), {}

    def note(self, towers):
        c, h, w = self.in_shape
        return f"adaptive {h}x{w} -> {self.output}x{self.output}"
