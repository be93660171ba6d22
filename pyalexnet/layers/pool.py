"""Overlapping max-pooling (the paper's 3x3 windows at stride 2)."""
from __future__ import annotations

from dataclasses import dataclass

from ..ops import pool as pool_ops
from ..schema import ConfigError
from .base import Layer


@dataclass(frozen=True, kw_only=True)
class MaxPool(Layer):
    TYPE = "maxpool"
    SPATIAL = True

    size: int = 3
    stride: int = 2

    def check(self, towers):
        c, h, w = self.in_shape
        self.positive(size=self.size, stride=self.stride)
        ph, pw = (h - self.size) // self.stride + 1, (w - self.size) // self.stride + 1
        if ph < 1 or pw < 1:
            raise ConfigError(f"layer {self.name}: a {self.size}x{self.size} pool does not fit "
                              f"{h}x{w} maps")
        return (c, ph, pw)

    def forward(self, be, x, params, ctx):
        y = pool_ops.maxpool_forward(be, x, kernel=self.size, stride=self.stride)
        return y, (x, y)

    def backward(self, be, dy, cache, params, ctx, need_dx=True):
        x, y = cache
        return pool_ops.maxpool_backward(be, x, y, dy, kernel=self.size, stride=self.stride), {}

    def note(self, towers):
        return f"{self.size}x{self.size} s{self.stride}"
