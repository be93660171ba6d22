"""What convolutions and fully connected layers share: a weight and a bias, their
initialisation, and the arithmetic of reading several towers block by block."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..ops import relu as relu_ops
from ..ops.precision import BF16, mma_operand
from .base import Layer


def low_precision(be, a, precision, what):
    """``a`` as the tensor-core kernels read it: bf16 bits for bf16 (converted once, so a
    pass that reuses it converts nothing again), the float32 array itself otherwise."""
    return a if precision == "fp32" else mma_operand(be, a, precision, what)


def output_gradient(be, dy, y, relu, precision):
    """The gradient of a layer's output as its bias gradient and its products read it:
    through the fused ReLU (y: the output) if any, in bf16 stored as bf16 in the same pass,
    so the bias gradient sums the values the products see (as autocast does)."""
    if relu:
        return relu_ops.relu_backward(be, y, dy, BF16 if precision == "bf16" else np.float32)
    return low_precision(be, dy, precision, "output gradient")


def bias_value(paper_value, bias_init):
    """A layer's initial bias: the config's value ("paper"), 0.1 where the paper puts a
    non-zero bias ("caffe"), or a given number there."""
    if bias_init == "paper" or paper_value == 0:
        return paper_value
    if bias_init == "caffe":
        return 0.1
    return float(bias_init)


@dataclass(frozen=True, kw_only=True)
class WeightLayer(Layer):
    """A layer y = W x + b (a convolution or a matrix product), with ReLU fusion."""

    FUSES_RELU = True
    STARTS_TOWERS = True

    bias_init: float = 0.0
    init_std: Optional[float] = None

    @property
    def macs(self) -> int:
        return int(np.prod(self.out_shape)) * int(np.prod(self.param_shapes["w"][1:]))

    def init_params(self, rng, weight_std, bias_init) -> dict:
        """Weights N(0, std) (the layer's init_std, else the config's), then the bias."""
        shapes = self.param_shapes
        std = self.init_std if self.init_std is not None else weight_std
        w = rng.standard_normal(shapes["w"], dtype=np.float32)
        w *= np.float32(std)
        return {"w": w, "b": np.full(shapes["b"], bias_value(self.bias_init, bias_init),
                                     dtype=np.float32)}

    # ---- reading several towers, block by block (the two-device engine) -----------------
    def input_slices(self, towers) -> list:
        """Each tower's slice of the weight's input axis (axis 1)."""
        raise NotImplementedError

    def block_input(self, x):
        """The activations as this layer's blocks read them."""
        return x

    def block_forward(self, be, x, w, acc, precision="fp32"):
        """acc + (x's contribution through the weight block w); acc None starts the sum."""
        raise NotImplementedError

    def stored(self, be, y, precision):
        """The finished output y (bias and ReLU applied) as the layer's forward stores it."""
        return y

    def block_backward_data(self, be, dy, w, x, precision="fp32"):
        raise NotImplementedError

    def block_backward_weight(self, be, x, dy, w_shape, precision="fp32"):
        raise NotImplementedError
