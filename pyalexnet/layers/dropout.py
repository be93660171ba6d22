"""Dropout with one mask per tower slice, each from its own Philox seed.

Every tower draws its mask from `dropout_seed(step seed, layer index, tower)`, so a tower on
its own device draws exactly the mask that the grouped single-device net draws for it.
Within a tower slice, the Philox counter starts at the pass's first sample (``sample_offset``
x features), so a rank holding part of a batch draws that part of the whole batch's mask.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..devices import channel_copy, join_towers, tower_slices
from ..ops import dropout as dropout_ops
from ..ops.precision import float32_activations
from ..rng import dropout_seed
from ..schema import ConfigError
from .base import Layer


@dataclass(frozen=True, kw_only=True)
class Dropout(Layer):
    TYPE = "dropout"

    p: float = 0.5

    def check(self, towers):
        if not 0.0 <= self.p < 1.0:
            raise ConfigError(f"layer {self.name}: dropout p must be in [0, 1), got {self.p}")
        return self.in_shape

    def _seeds(self, ctx):
        if not isinstance(ctx.seed, int):  # the step's seed in device memory
            return [dropout_ops.StepSeed(ctx.seed, (self.index << 8) | t) for t in ctx.towers]
        return [dropout_seed(ctx.seed, self.index, t) for t in ctx.towers]

    def forward(self, be, x, params, ctx):
        x = float32_activations(be, x)
        seeds = self._seeds(ctx)
        parts = [dropout_ops.dropout_forward(be, part, p=self.p, seed=seed, mode=ctx.dropout_mode,
                                             train=ctx.train, offset=_offset(part, ctx))
                 for part, seed in zip(_pieces(be, x, len(seeds)), seeds)]
        return join_towers(be, parts), tuple(seeds)

    def backward(self, be, dy, cache, params, ctx, need_dx=True):
        parts = [dropout_ops.dropout_backward(be, part, p=self.p, seed=seed, mode=ctx.dropout_mode,
                                              offset=_offset(part, ctx))
                 for part, seed in zip(_pieces(be, dy, len(cache)), cache)]
        return join_towers(be, parts), {}

    def note(self, towers):
        return f"p={self.p:g}"


def _pieces(be, x, n):
    """x split along axis 1 into n tower slices (contiguous copies; x itself when n == 1)."""
    if n == 1:
        return [x]
    return [channel_copy(be, x, s.start, s.stop) for s in tower_slices(x.shape[1], n)]


def _offset(part, ctx):
    """Counter index of the slice's first element: samples before it x features."""
    return ctx.sample_offset * (part.size // part.shape[0]) if part.shape[0] else 0
