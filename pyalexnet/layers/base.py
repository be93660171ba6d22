"""The layer protocol: what every layer type of a config provides.

A layer class is a frozen dataclass whose own fields are exactly the keys its
``[[layer]]`` table may hold (a field without a default is required). `Layer.parse`
turns a table into an instance, checking every key's type; `check` validates the layer
against its input and returns the output shape. A layer with parameters gives their
shapes and initial values; every layer runs `forward` (returning its output and what its
`backward` needs) and `backward` on one device, given a `Pass` that says how it runs
there. `note` is the layer's line in ``python -m pyalexnet.summary``.

See docs/ARCHITECTURE.md for how the engines compose layers into a training step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from ..schema import ConfigError, parse_fields


@dataclass(frozen=True)
class Pass:
    """How one forward or backward pass runs a layer on one device.

    ``towers``: the tower indices whose activations this device holds ((0, 1) for a
    two-tower net in its grouped single-device form, (t,) for tower t on its own device);
    ``split``: what a tower-local layer's ``groups`` are divided by here (1 on a single
    device; the tower count when each tower has its own device); ``sample_offset``: the
    index in the whole batch of this pass's first sample (data parallel: a rank's share
    starts there), so per-sample randomness (dropout) follows the sample, not the rank.
    """

    train: bool = True
    seed: int = 0
    towers: tuple = (0,)
    split: int = 1
    dropout_mode: str = "inverted"
    alpha_over_n: Optional[bool] = None
    sample_offset: int = 0
    precision: str = "fp32"     # of the conv and fc products: "fp32", "tf32" or "bf16"
    conv_algo: str = "gemm"     # the conv layers' algorithms: layers.conv.CONV_ALGOS


BASE_FIELDS = ("name", "index", "in_shape", "out_shape")


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One ``[[layer]]`` table with its per-image shapes (no batch axis)."""

    TYPE: ClassVar[str] = ""
    # A following ReLU runs inside this layer's forward (the kernel's epilogue).
    FUSES_RELU: ClassVar[bool] = False
    # Needs (C, H, W) maps as input (not the flat vector after an fc layer).
    SPATIAL: ClassVar[bool] = False
    # Its outputs can be split over towers, so a two-tower net may start with it.
    STARTS_TOWERS: ClassVar[bool] = False
    # May be the last layer: its outputs are the class scores (``outputs`` = classes).
    CLASSIFIER: ClassVar[bool] = False

    name: str
    index: int
    in_shape: tuple
    out_shape: tuple = ()

    # ---- parsing ----------------------------------------------------------------------
    @classmethod
    def config_fields(cls) -> list:
        return [f for f in dataclasses.fields(cls) if f.name not in BASE_FIELDS]

    @classmethod
    def parse(cls, table: dict, name: str, index: int, in_shape: tuple, towers: int) -> "Layer":
        """The layer a ``[[layer]]`` table (without name and type) describes."""
        values = parse_fields(cls, table, f"layer {name} ({cls.TYPE})", cls.config_fields())
        if cls.SPATIAL and len(in_shape) != 3:
            raise ConfigError(f"layer {name} ({cls.TYPE}) needs (C, H, W) maps but gets "
                              f"{tuple(in_shape)} (after an fc layer)")
        layer = cls(name=name, index=index, in_shape=tuple(in_shape), **values)
        return dataclasses.replace(layer, out_shape=tuple(layer.check(towers)))

    def check(self, towers: int) -> tuple:
        """Validate the layer in a ``towers``-tower net; returns its output shape."""
        return self.in_shape

    @property
    def type(self) -> str:
        return self.TYPE

    @property
    def attrs(self) -> dict:
        """The config keys and their values (defaults filled in)."""
        return {f.name: getattr(self, f.name) for f in self.config_fields()}

    def positive(self, **values):
        for key, v in values.items():
            if v is not None and v < 1:
                raise ConfigError(f"layer {self.name}: {key} must be at least 1, got {v}")

    # ---- parameters -------------------------------------------------------------------
    @property
    def param_shapes(self) -> dict:
        """{"w": shape, "b": shape} in the grouped single-device layout; {} if none."""
        return {}

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.param_shapes.values())

    @property
    def macs(self) -> int:
        """Forward multiply-adds per image."""
        return 0

    def init_params(self, rng, weight_std, bias_init) -> dict:
        """Initial parameters (NumPy float32), drawn from ``rng`` in the grouped layout."""
        return {}

    # ---- compute ----------------------------------------------------------------------
    def forward(self, be, x, params, ctx: Pass):
        """(y, cache) for input ``x`` (a backend array, batch first)."""
        raise NotImplementedError

    def backward(self, be, dy, cache, params, ctx: Pass, need_dx=True):
        """(dx, grads): dx is None when not ``need_dx``; grads a dict like params."""
        raise NotImplementedError

    # ---- two-device placement ---------------------------------------------------------
    def tower_kind(self, first: bool) -> str:
        """How the layer runs with one tower per device: 'local' (inside the tower),
        'whole' (reads the input every device holds) or 'blocks' (reads every tower)."""
        return "local"

    # ---- summary ----------------------------------------------------------------------
    def note(self, towers: int) -> str:
        return ""
