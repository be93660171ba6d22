"""A net on one device. A two-tower net runs in its grouped form: grouped convolutions,
LRN windows inside each tower, and one dropout mask per tower slice."""
from __future__ import annotations

import numpy as np

from ..devices import Device
from ..layers import Pass, build_steps
from ..model import layer_params
from .base import Engine


class SingleDeviceEngine(Engine):
    """Parameters are named "<layer>.w" and "<layer>.b" in the grouped layout."""

    def __init__(self, config, backend, dropout_mode="inverted", alpha_over_n=None):
        super().__init__(config, dropout_mode, alpha_over_n)
        self.backend = backend
        self.devices = [Device(0, backend)]
        self.steps = build_steps(config.layers)
        self.shapes = config.param_shapes
        self._caches = None

    def device_of(self, name):
        return self.devices[0]

    def from_grouped(self, grouped, copy=True):
        return {k: self.backend.asarray(np.array(grouped[k], dtype=np.float32, copy=copy or None))
                for k in self.shapes}

    def to_grouped(self, arrays):
        return {k: np.array(self.backend.to_numpy(arrays[k]), dtype=np.float32)
                for k in self.shapes}

    def _pass(self, train, seed):
        return Pass(train=train, seed=seed, towers=tuple(range(self.config.towers)),
                    dropout_mode=self.dropout_mode, alpha_over_n=self.alpha_over_n,
                    sample_offset=self.sample_offset, precision=self.precision,
                    conv_algo=self.conv_algo)

    def forward(self, x, train, seed):
        be, ctx = self.backend, self._pass(train, seed)
        x = be.asarray(x)
        caches = []
        for step in self.steps:
            x, cache = step.forward(be, x, layer_params(self.params, step.layer), ctx)
            if train:
                caches.append(cache)
        self._caches = (ctx, caches) if train else None
        return x

    def backward(self, dy):
        ctx, caches = self._take_caches()
        be = self.backend
        dy = be.asarray(dy)
        for i in reversed(range(len(self.steps))):
            layer = self.steps[i].layer
            dy, grads = self.steps[i].backward(be, dy, caches[i], layer_params(self.params, layer),
                                               ctx, need_dx=i > 0)
            caches[i] = None  # free activations as soon as they are used
            for k, g in grads.items():
                self.grads[f"{layer.name}.{k}"] = g
            self._grads_done([f"{layer.name}.{k}" for k in grads])
