"""Two-device model parallelism as in the paper: tower A on device 0, tower B on device 1.

Each tower's layers run on its own device. Layers that stay inside a tower (conv2, conv4,
conv5 with their ReLUs, the LRN windows, the pools, dropout) need nothing from the other
device. conv3, fc6, fc7 and fc8 read both towers; they are computed block by block:

    y_t = conv(x_t, W_t<t) + conv(x_s, W_t<s) + b_t        (t = this tower, s = the other)

where W_t<s are the weights of tower t's filters (units) over tower s's input channels.
Forward, each device sends its activations x_s to the other device and computes its own
block while the copy is in flight; backward, it first computes the gradient block
dx_s += W_t<s^T dy_t that belongs to the other tower, sends it, and computes its own
blocks and weight gradients while that copy is in flight. The logits (fc8's two halves)
are gathered on device 0, where the loss is computed.

Parameter names: tower-local parameters are "<layer>.w@A", "<layer>.b@B"; the blocks of a
layer that reads both towers are "<layer>.w@A<B" (tower A's filters over tower B's
channels). conv1 reads the image, which both devices hold: "conv1.w@A". The engine owns
only these per-tower arrays; state dicts convert them to the grouped layout.

Devices: backend "cuda" gives one CuPy device per tower (with one GPU both towers share
it), each with its own compute and copy streams (pyalexnet.devices); numpy / emu give two
emulated devices on the same code path.
"""
from __future__ import annotations

import numpy as np

from ..backends import get_backend
from ..devices import (TOWER_NAMES, Device, Link, channel_copy, join_towers, tower_shape,
                       tower_slices)
from ..layers import Pass, build_steps
from ..layers.weights import output_gradient
from ..model import layer_params
from ..ops import relu as relu_ops
from ..ops.copy import add_into
from ..ops.bias import bias_add, bias_backward
from .base import Engine


class TwoDeviceEngine(Engine):
    """A two-tower net with one tower per device (see the module doc)."""

    def __init__(self, config, backend, dropout_mode="inverted", alpha_over_n=None):
        if config.towers != 2:
            raise ValueError(f"devices=2 needs a two-tower config (towers = 2); "
                             f"{config.name} has {config.towers} tower(s)")
        super().__init__(config, dropout_mode, alpha_over_n)
        self.towers = config.towers
        self.devices = [Device(i, be, streams=True) for i, be in enumerate(
            self._backends(backend, self.towers))]
        self.link = Link(self.devices)
        self.steps = build_steps(config.layers)
        self.kinds = [s.layer.tower_kind(i == 0) for i, s in enumerate(self.steps)]
        self._caches = None
        # name -> (tower, grouped name, (row slice, column slice))
        self.placement = {}
        for step, kind in zip(self.steps, self.kinds):
            layer = step.layer
            if not layer.param_shapes:
                continue
            rows = tower_slices(layer.param_shapes["w"][0], self.towers)
            cols = layer.input_slices(self.towers)
            for t in range(self.towers):
                tn = TOWER_NAMES[t]
                self.placement[f"{layer.name}.b@{tn}"] = (t, f"{layer.name}.b", (rows[t],))
                if kind == "blocks":
                    for s in range(self.towers):
                        self.placement[f"{layer.name}.w@{tn}<{TOWER_NAMES[s]}"] = (
                            t, f"{layer.name}.w", (rows[t], cols[s]))
                else:
                    self.placement[f"{layer.name}.w@{tn}"] = (t, f"{layer.name}.w", (rows[t],))

    @staticmethod
    def _backends(backend, towers):
        if isinstance(backend, (list, tuple)):
            if len(backend) != towers:
                raise ValueError(f"devices=2 takes {towers} backends, got {len(backend)}")
            bes = [get_backend(b) for b in backend]
        else:
            be = get_backend(backend)
            if be.name == "cuda":
                count = be.cupy.cuda.runtime.getDeviceCount()
                bes = [get_backend("cuda", device=i) if count >= towers else be
                       for i in range(towers)]
            else:
                bes = [be] * towers  # two emulated devices of the same kind
        if len({b.name for b in bes}) != 1:
            raise ValueError("both devices must use the same kind of backend")
        return bes

    # ---- parameters --------------------------------------------------------------------
    def device_of(self, name):
        return self.devices[self.placement[name][0]]

    def from_grouped(self, grouped, copy=True):
        out = {}
        for name, (t, gname, index) in self.placement.items():
            block = np.array(np.asarray(grouped[gname])[index], dtype=np.float32, order="C")
            out[name] = self.devices[t].asarray(block)  # a fresh copy: never the caller's
        return out

    def to_grouped(self, arrays):
        out = {name: np.empty(shape, dtype=np.float32)
               for name, shape in self.config.param_shapes.items()}
        for name, (t, gname, index) in self.placement.items():
            dev = self.devices[t]
            with dev.activate():
                out[gname][index] = dev.backend.to_numpy(arrays[name])
        return out

    def _w(self, layer, t, s):
        return self.params[f"{layer.name}.w@{TOWER_NAMES[t]}<{TOWER_NAMES[s]}"]

    def _b(self, layer, t):
        return self.params[f"{layer.name}.b@{TOWER_NAMES[t]}"]

    def _pass(self, kind, t, train, seed):
        """Tower t runs a 'whole' layer as written, a tower-local one with groups / towers."""
        return Pass(train=train, seed=seed, towers=(t,), split=1 if kind == "whole" else
                    self.towers, dropout_mode=self.dropout_mode, alpha_over_n=self.alpha_over_n,
                    sample_offset=self.sample_offset, precision=self.precision,
                    conv_algo=self.conv_algo)

    def _products(self):
        """How a layer that reads every tower computes its blocks (precision, algorithms)."""
        return Pass(precision=self.precision, conv_algo=self.conv_algo)

    # ---- forward -----------------------------------------------------------------------
    def forward(self, x, train, seed):
        devs, T = self.devices, self.towers
        for dev in devs:
            dev.begin()
        x0 = devs[0].asarray(x)
        inputs = [x0] + [self.link.send(x0, devs[0], devs[t]).get() for t in range(1, T)]
        acts = inputs  # per tower: the image (whole) at first, then the tower's slice
        caches = []
        for step, kind in zip(self.steps, self.kinds):
            if kind == "blocks":
                acts, cache = self._blocks_forward(step, acts)
            else:
                acts, cache = self._local_forward(step, kind, acts, train, seed)
            if train:
                caches.append(cache)
        self._caches = (seed, caches) if train else None
        # Gather the logits (the last layer's tower slices) on device 0.
        parts = [acts[0]] + [self.link.send(acts[t], devs[t], devs[0]).get()
                             for t in range(1, T)]
        with devs[0].activate():
            logits = join_towers(devs[0].backend, parts)
        self.link.settle()
        for dev in devs:
            dev.finish()
        return logits

    def _local_forward(self, step, kind, acts, train, seed):
        out, cache = [], []
        for t, dev in enumerate(self.devices):
            params = layer_params(self.params, step.layer, f"@{TOWER_NAMES[t]}")
            with dev.activate():
                y, c = step.forward(dev.backend, acts[t], params,
                                    self._pass(kind, t, train, seed))
            out.append(y)
            cache.append(c)
        return out, cache

    def _blocks_forward(self, step, acts):
        """A layer that reads every tower: own block first, while the others' inputs copy."""
        layer, devs, T = step.layer, self.devices, self.towers
        acts = [layer.block_input(a) for a in acts]
        sent = {(s, t): self.link.send(acts[s], devs[s], devs[t])
                for s in range(T) for t in range(T) if s != t}
        ys, seen = [], []
        for t, dev in enumerate(devs):
            with dev.activate():
                ys.append(layer.block_forward(dev.backend, acts[t], self._w(layer, t, t), None,
                                              self._products()))
        for t, dev in enumerate(devs):
            with dev.activate():
                inputs = {t: acts[t]}
                for s in range(T):
                    if s != t:
                        inputs[s] = sent[s, t].get()
                        ys[t] = layer.block_forward(dev.backend, inputs[s],
                                                    self._w(layer, t, s), ys[t], self._products())
                bias_add(dev.backend, ys[t], self._b(layer, t))
                if step.relu:
                    relu_ops.relu_forward(dev.backend, ys[t], out=ys[t])
                ys[t] = layer.stored(dev.backend, ys[t], self.precision)
            seen.append(inputs)
        return ys, (seen, ys if step.relu else None)

    # ---- backward ----------------------------------------------------------------------
    def backward(self, dlogits):
        seed, caches = self._take_caches()
        devs, T = self.devices, self.towers
        for dev in devs:
            dev.begin()
        # Scatter the logits' gradient to the towers that computed each slice.
        d0 = devs[0].asarray(dlogits)
        cols = tower_slices(d0.shape[1], T)
        with devs[0].activate():
            parts = [channel_copy(devs[0].backend, d0, c.start, c.stop) for c in cols]
        dys = [parts[0]] + [self.link.send(parts[t], devs[0], devs[t]).get()
                            for t in range(1, T)]
        for i in reversed(range(len(self.steps))):
            step, kind = self.steps[i], self.kinds[i]
            if kind == "blocks":
                dys = self._blocks_backward(step, dys, caches[i])
            else:
                dys = self._local_backward(step, kind, dys, caches[i], seed, need_dx=i > 0)
            caches[i] = None
        self.link.settle()
        for dev in devs:
            dev.finish()

    def _local_backward(self, step, kind, dys, cache, seed, need_dx):
        out, done = [], []
        for t, dev in enumerate(self.devices):
            tn = TOWER_NAMES[t]
            with dev.activate():
                dx, grads = step.backward(dev.backend, dys[t], cache[t],
                                          layer_params(self.params, step.layer, f"@{tn}"),
                                          self._pass(kind, t, True, seed), need_dx=need_dx)
            for k, g in grads.items():
                self.grads[f"{step.layer.name}.{k}@{tn}"] = g
                done.append(f"{step.layer.name}.{k}@{tn}")
            out.append(dx)
        self._grads_done(done)
        return out

    def _blocks_backward(self, step, dys, cache):
        """Gradient blocks for the other towers first (their copies overlap the rest)."""
        layer, devs, T = step.layer, self.devices, self.towers
        seen, ys = cache
        dys = list(dys)
        for t, dev in enumerate(devs):  # once per tower, not per block
            with dev.activate():
                y = ys[t] if step.relu else None
                dys[t] = output_gradient(dev.backend, dys[t], y, step.relu, self.precision)
        sent = {}
        for t, dev in enumerate(devs):
            with dev.activate():
                for s in range(T):
                    if s != t:
                        part = layer.block_backward_data(dev.backend, dys[t], self._w(layer, t, s),
                                                         seen[t][s], self._products())
                        sent[t, s] = self.link.send(part, dev, devs[s])
        dxs, done = [], []
        for t, dev in enumerate(devs):
            be, tn = dev.backend, TOWER_NAMES[t]
            with dev.activate():
                dxs.append(layer.block_backward_data(be, dys[t], self._w(layer, t, t),
                                                     seen[t][t], self._products()))
                for s in range(T):
                    self.grads[f"{layer.name}.w@{tn}<{TOWER_NAMES[s]}"] = \
                        layer.block_backward_weight(be, seen[t][s], dys[t],
                                                    self._w(layer, t, s).shape, self._products())
                    done.append(f"{layer.name}.w@{tn}<{TOWER_NAMES[s]}")
                self.grads[f"{layer.name}.b@{tn}"] = bias_backward(be, dys[t])
                done.append(f"{layer.name}.b@{tn}")
        self._grads_done(done)
        for s, dev in enumerate(devs):
            with dev.activate():
                for t in range(T):
                    if t != s:
                        add_into(dev.backend, dxs[s], sent[t, s].get())
        # back to the shape of the activations the towers hold ((N, C, H, W) maps before fc)
        return [dx.reshape((dx.shape[0],) + tower_shape(layer.in_shape, t, T))
                for t, dx in enumerate(dxs)]
