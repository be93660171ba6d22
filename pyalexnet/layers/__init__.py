"""Layers: one class per ``[[layer]]`` type, and the registry that maps a config's type
names to them.

Adding a layer type is one new module here with a `Layer` subclass (its config keys as
dataclass fields, `check`, parameters, `forward`, `backward`, `note`), one entry in
`LAYER_TYPES`, and its tests. Nothing else dispatches on the type.

Towers. A two-tower net (the paper's) is described in its single-device "grouped" form:
channels split into tower slices by `tower_slices` (tower A first), a conv with ``groups``
a multiple of the tower count stays inside its tower, a conv with ``groups = 1`` and every
fc read all towers, LRN windows stay inside a tower, and dropout draws one mask per tower.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..schema import ConfigError
from .avgpool import AvgPool
from .base import Layer, Pass
from .conv import Conv
from .dropout import Dropout
from .fc import FC
from .lrn import LRN
from .pool import MaxPool
from .relu import ReLU

LAYER_TYPES = {cls.TYPE: cls for cls in (Conv, FC, ReLU, LRN, MaxPool, Dropout, AvgPool)}

__all__ = ["LAYER_TYPES", "ConfigError", "Layer", "Pass", "Step", "build_steps", "parse_layers",
           "Conv", "FC", "ReLU", "LRN", "MaxPool", "Dropout", "AvgPool"]


def parse_layers(tables, input_shape, towers=1, num_classes=None) -> list:
    """Validate ``[[layer]]`` tables and infer shapes; returns a list of `Layer`.

    num_classes, if given, replaces the outputs of the last layer (the classifier).
    """
    if not tables:
        raise ConfigError("the network has no [[layer]] tables")
    layers, names, shape = [], set(), tuple(input_shape)
    for i, table in enumerate(tables):
        table = dict(table)
        name = table.pop("name", None) or f"layer{i + 1}"
        kind = table.pop("type", None)
        cls = LAYER_TYPES.get(kind)
        if cls is None:
            raise ConfigError(f"layer {name}: type must be one of {', '.join(LAYER_TYPES)}, "
                              f"got {kind!r}")
        if name in names:
            raise ConfigError(f"layer name {name!r} is used twice")
        names.add(name)
        if towers > 1 and i == 0 and not cls.STARTS_TOWERS:
            raise ConfigError(f"layer {name}: a {towers}-tower net must start with a conv or fc "
                              "layer (the towers begin there)")
        if cls.CLASSIFIER and i == len(tables) - 1 and num_classes is not None:
            table["outputs"] = int(num_classes)
        layer = cls.parse(table, name, i, shape, towers)
        layers.append(layer)
        shape = layer.out_shape
    last = layers[-1]
    if not last.CLASSIFIER:
        raise ConfigError(f"the last layer ({last.name}) must be an fc layer giving the "
                          f"class scores, not {last.type}")
    return layers


@dataclass(frozen=True)
class Step:
    """One unit of execution: a layer, with the ReLU after a conv/fc fused into it."""

    layer: Layer
    relu: bool = False

    @property
    def name(self):
        return self.layer.name

    def forward(self, be, x, params, ctx):
        if self.relu:
            return self.layer.forward(be, x, params, ctx, relu=True)
        return self.layer.forward(be, x, params, ctx)

    def backward(self, be, dy, cache, params, ctx, need_dx=True):
        if self.relu:
            return self.layer.backward(be, dy, cache, params, ctx, need_dx, relu=True)
        return self.layer.backward(be, dy, cache, params, ctx, need_dx)


def build_steps(layers) -> list:
    """The layers as steps: a ReLU right after a layer that can fuse it runs inside it."""
    steps, i = [], 0
    while i < len(layers):
        layer = layers[i]
        fuse = layer.FUSES_RELU and i + 1 < len(layers) and isinstance(layers[i + 1], ReLU)
        steps.append(Step(layer, fuse))
        i += 2 if fuse else 1
    return steps
