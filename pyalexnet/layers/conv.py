"""Convolution, with an optional ReLU in the kernel's bias+ReLU epilogue."""
from __future__ import annotations

from dataclasses import dataclass

from ..devices import tower_slices
from ..ops import conv as conv_ops
from ..ops.copy import add_into
from ..ops.precision import BF16, activation_dtype, convert_to_bf16
from ..schema import ConfigError
from .base import Pass
from .weights import WeightLayer, low_precision, output_gradient

# The conv layers' algorithms. "gemm": implicit GEMM, with the filter gradient's first
# split-K plan (version 1): the kernels the H200 timed. "auto": each pass as the planning
# cost models choose from the shapes (ops.conv_plan.pick_algo: Winograd F(2x2) or F(4x4)
# or implicit GEMM; the filter gradient's planned split, version 2), faster as modeled but
# not yet timed on a GPU. Winograd runs in fp32 only: tf32 and bf16 take implicit GEMM.
CONV_ALGOS = ("gemm", "auto")
FILTER_VERSION = {"gemm": 1, "auto": 2}


def check_conv_algo(algo):
    if algo not in CONV_ALGOS:
        raise ValueError(f"conv_algo must be one of {CONV_ALGOS}, got {algo!r}")
    return algo


@dataclass(frozen=True, kw_only=True)
class Conv(WeightLayer):
    TYPE = "conv"
    SPATIAL = True

    filters: int
    size: int
    stride: int = 1
    pad: int = 0
    groups: int = 1

    def check(self, towers):
        c, h, w = self.in_shape
        k, r, s, p, g = self.filters, self.size, self.stride, self.pad, self.groups
        self.positive(filters=k, size=r, stride=s, groups=g)
        if p < 0:
            raise ConfigError(f"layer {self.name}: pad must be >= 0, got {p}")
        if towers > 1 and self.index == 0 and g != 1:
            raise ConfigError(f"layer {self.name}: the first layer of a {towers}-tower net reads "
                              f"the whole image, so its groups must be 1, got {g}")
        if c % g or k % g:
            raise ConfigError(f"layer {self.name}: groups={g} must divide both its {c} input "
                              f"channels and its {k} filters")
        if towers > 1 and g != 1 and g % towers:
            raise ConfigError(f"layer {self.name}: in a {towers}-tower net groups must be 1 "
                              f"(read every tower) or a multiple of {towers} (stay in the "
                              f"tower), got {g}")
        ph, pw = (h + 2 * p - r) // s + 1, (w + 2 * p - r) // s + 1
        if ph < 1 or pw < 1:
            raise ConfigError(f"layer {self.name}: a {r}x{r} filter does not fit a {h}x{w} "
                              f"input with pad {p}")
        if towers > 1 and k < towers:
            raise ConfigError(f"layer {self.name}: {k} filters cannot be split over {towers} "
                              "towers")
        return (k, ph, pw)

    @property
    def param_shapes(self):
        return {"w": (self.filters, self.in_shape[0] // self.groups, self.size, self.size),
                "b": (self.filters,)}

    def forward(self, be, x, params, ctx, relu=False):
        pr = ctx.precision
        # in bf16 the input and weight copies are made once and kept for the backward pass
        x, w = low_precision(be, x, pr, "conv input"), low_precision(be, params["w"], pr, "w")
        y = conv_ops.conv2d_forward(be, x, w, params["b"], stride=self.stride, pad=self.pad,
                                    groups=self.groups // ctx.split, relu=relu, precision=pr,
                                    out_dtype=activation_dtype(pr), algo=ctx.conv_algo)
        return y, (x, w, y)

    def backward(self, be, dy, cache, params, ctx, need_dx=True, relu=False):
        x, w, y = cache
        dy = output_gradient(be, dy, y, relu, ctx.precision)
        db = conv_ops.conv2d_backward_bias(be, dy)
        g = self.groups // ctx.split
        dw = self._filter_gradient(be, x, dy, w.shape, g, ctx)
        dx = self._data_gradient(be, dy, w, x.shape, g, ctx) if need_dx else None
        return dx, {"w": dw, "b": db}

    def _filter_gradient(self, be, x, dy, w_shape, groups, ctx):
        return conv_ops.conv2d_backward_filter(be, x, dy, w_shape, stride=self.stride,
                                               pad=self.pad, groups=groups,
                                               precision=ctx.precision, algo=ctx.conv_algo,
                                               version=FILTER_VERSION[ctx.conv_algo])

    def _data_gradient(self, be, dy, w, x_shape, groups, ctx):
        return conv_ops.conv2d_backward_data(be, dy, w, x_shape, stride=self.stride,
                                             pad=self.pad, groups=groups,
                                             precision=ctx.precision, algo=ctx.conv_algo)

    def tower_kind(self, first):
        if self.groups != 1:
            return "local"
        return "whole" if first else "blocks"

    def input_slices(self, towers):
        return tower_slices(self.in_shape[0], towers)

    def block_forward(self, be, x, w, acc, ctx=Pass()):
        y = conv_ops.conv2d_forward(be, x, w, stride=self.stride, pad=self.pad,
                                    precision=ctx.precision, algo=ctx.conv_algo)
        return y if acc is None else add_into(be, acc, y)

    def stored(self, be, y, precision):
        return convert_to_bf16(be, y) if activation_dtype(precision) == BF16 else y

    def block_backward_data(self, be, dy, w, x, ctx=Pass()):
        return self._data_gradient(be, dy, w, x.shape, 1, ctx)

    def block_backward_weight(self, be, x, dy, w_shape, ctx=Pass()):
        return self._filter_gradient(be, x, dy, w_shape, 1, ctx)

    def note(self, towers):
        s = f"{self.size}x{self.size}"
        s += f" s{self.stride}" if self.stride != 1 else ""
        s += f" p{self.pad}" if self.pad else ""
        if self.groups > 1:
            s += f" groups {self.groups}"
        elif towers > 1:
            s += " (reads both towers)"
        return s
