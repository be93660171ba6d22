"""Local response normalisation across channels, each window inside its group (tower)."""
from __future__ import annotations

from dataclasses import dataclass

from ..ops import lrn as lrn_ops
from ..schema import ConfigError
from .base import Layer


@dataclass(frozen=True, kw_only=True)
class LRN(Layer):
    TYPE = "lrn"
    SPATIAL = True

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0
    groups: int = 1
    alpha_over_n: bool = False

    def check(self, towers):
        c = self.in_shape[0]
        self.positive(size=self.size, groups=self.groups)
        if self.size % 2 == 0:
            raise ConfigError(f"layer {self.name}: the LRN size must be odd, got {self.size}")
        if c % self.groups:
            raise ConfigError(f"layer {self.name}: groups={self.groups} must divide its {c} "
                              "channels")
        if towers > 1 and self.groups % towers:
            raise ConfigError(f"layer {self.name}: in a {towers}-tower net the LRN window must "
                              f"stay inside a tower: groups must be a multiple of {towers}, got "
                              f"{self.groups}")
        if self.k <= 0 or self.alpha < 0:
            raise ConfigError(f"layer {self.name}: LRN needs k > 0 and alpha >= 0")
        return self.in_shape

    def _args(self, ctx):
        aon = self.alpha_over_n if ctx.alpha_over_n is None else ctx.alpha_over_n
        return dict(size=self.size, alpha=self.alpha, beta=self.beta, k=self.k, alpha_over_n=aon)

    def forward(self, be, x, params, ctx):
        # Per-group LRN without copies: (N, C, H, W) -> (N*G, C/G, H, W) is a view in NCHW.
        groups = self.groups // ctx.split
        n, c, h, w = x.shape
        xg = x.reshape(n * groups, c // groups, h, w)
        yg, scale = lrn_ops.lrn_forward(be, xg, **self._args(ctx))
        return yg.reshape(x.shape), (xg, yg, scale)

    def backward(self, be, dy, cache, params, ctx, need_dx=True):
        xg, yg, scale = cache
        dx = lrn_ops.lrn_backward(be, xg, yg, scale, dy.reshape(xg.shape), **self._args(ctx))
        return dx.reshape(dy.shape), {}

    def note(self, towers):
        s = f"n={self.size} k={self.k:g} alpha={self.alpha:g} beta={self.beta:g}"
        return s + (f" groups {self.groups}" if self.groups > 1 else "")
