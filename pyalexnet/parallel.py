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
channels). conv1 reads the image, which both devices hold: "conv1.w@A". `state_dict` of
the Net always returns the grouped single-device layout (pyalexnet.model).

Devices. backend "cuda": one CuPy device per tower (with one GPU both towers share it),
each with its own non-blocking compute stream and a copy stream; peer access is enabled
between two GPUs; copies are cudaMemcpyPeerAsync on the receiving device's copy stream,
ordered with CUDA events (compute(src) -> copy -> compute(dst)), so copies overlap
compute. numpy / emu: two emulated devices, the same code path; a copy is an array copy
and streams and events are no-ops.
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import layers as L
from .backends import get_backend
from .layers import feature_slices, tower_slices
from .ops import conv as conv_ops
from .ops import linear as linear_ops
from .ops import relu as relu_ops
from .ops.bias import bias_add, bias_backward

TOWER_NAMES = "AB"


class Device:
    """Where one tower runs: a backend and, on CUDA, a compute and a copy stream.

    ``stream=None`` (the single-device net) means: the caller's current stream.
    """

    def __init__(self, index, backend, streams=False):
        self.index, self.backend = index, backend
        self.cuda = backend.name == "cuda"
        self.stream = self.copy_stream = None
        if self.cuda and streams:
            cupy = backend.cupy
            with backend.device:
                self.stream = cupy.cuda.Stream(non_blocking=True)
                self.copy_stream = cupy.cuda.Stream(non_blocking=True)

    @property
    def device_id(self):
        return self.backend.device.id if self.cuda else self.index

    def activate(self):
        """Context in which ops run on this device and stream (kernel launches, CuPy array
        operations and allocations all go to the current device's current stream)."""
        if self.stream is None:
            return self.backend.device if self.cuda else contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(self.backend.device)
        stack.enter_context(self.stream)
        return stack

    def record(self, stream=None):
        """An event marking the work queued so far on ``stream`` (default: compute)."""
        if self.stream is None:
            return None
        with self.backend.device:
            return (stream or self.stream).record()

    def wait(self, event, stream=None):
        if event is not None:
            with self.backend.device:
                (stream or self.stream).wait_event(event)

    def begin(self):
        """Order this device's streams after work the caller queued on its current stream."""
        if self.stream is not None:
            with self.backend.device:
                ev = self.backend.cupy.cuda.get_current_stream().record()
            self.wait(ev)

    def finish(self):
        """Order the caller's current stream after everything queued on this device."""
        if self.stream is not None:
            ev = self.record()
            with self.backend.device:
                self.backend.cupy.cuda.get_current_stream().wait_event(ev)

    def zeros(self, shape):
        with self.activate():
            return self.backend.zeros(shape)

    def asarray(self, a):
        with self.activate():
            return self.backend.asarray(a)

    def synchronize(self):
        if self.stream is not None:
            self.stream.synchronize()
            self.copy_stream.synchronize()
        else:
            self.backend.synchronize()


class Transfer:
    """An array being copied to another device; `get` returns it once it may be used there."""

    def __init__(self, array, device, event):
        self.array, self.device, self.event = array, device, event

    def get(self):
        self.device.wait(self.event)  # the compute stream waits; the host does not
        return self.array


class Link:
    """Copies arrays between devices: peer-to-peer on CUDA, an array copy on the CPU."""

    def __init__(self, devices):
        self.devices = devices
        self._in_flight = []  # (source array, source device, copy-done event)
        if devices[0].cuda:
            runtime = devices[0].backend.cupy.cuda.runtime
            ids = sorted({d.device_id for d in devices})
            for a in ids:
                for b in ids:
                    if a != b and runtime.deviceCanAccessPeer(a, b):
                        with devices[0].backend.cupy.cuda.Device(a):
                            try:
                                runtime.deviceEnablePeerAccess(b)
                            except runtime.CUDARuntimeError as e:
                                if "AlreadyEnabled" not in str(e):
                                    raise

    def send(self, src, source: Device, dest: Device) -> Transfer:
        """Start copying ``src`` (on ``source``) to ``dest``; returns at once."""
        if not dest.cuda:
            with dest.activate():
                return Transfer(dest.backend.xp.array(src, copy=True), dest, None)
        runtime = dest.backend.cupy.cuda.runtime
        ready = source.record()              # src has been computed
        with dest.activate():
            dst = dest.backend.empty(src.shape, src.dtype)  # from dest's compute-stream pool
        free = dest.record()                 # dest's earlier users of that memory are done
        dest.wait(ready, dest.copy_stream)
        dest.wait(free, dest.copy_stream)
        with dest.backend.device:
            runtime.memcpyPeerAsync(dst.data.ptr, dest.device_id, src.data.ptr,
                                    source.device_id, src.nbytes, dest.copy_stream.ptr)
        done = dest.record(dest.copy_stream)
        # src must outlive the copy: its stream may not reuse the memory before `done`.
        self._in_flight.append((src, source, done))
        return Transfer(dst, dest, done)

    def settle(self):
        """Let the sources of finished-or-queued copies go: each source stream waits for
        its copies before it can reuse their memory."""
        for _src, source, done in self._in_flight:
            source.wait(done)
        self._in_flight.clear()


def _cross_kind(step, first):
    """'local' (stays in the tower), 'whole' (reads the input every device holds) or
    'blocks' (reads every tower's slice of the previous layer)."""
    layer = step.layer
    if layer.type == "conv" and layer["groups"] != 1:
        return "local"
    if layer.type in ("conv", "fc"):
        return "whole" if first else "blocks"
    return "local"


class TwoDeviceEngine:
    """A two-tower net with one tower per device (see the module doc)."""

    def __init__(self, config, backend, dropout_mode, alpha_over_n):
        if config.towers != 2:
            raise ValueError(f"devices=2 needs a two-tower config (towers = 2); "
                             f"{config.name} has {config.towers} tower(s)")
        self.config = config
        self.towers = config.towers
        self.devices = [Device(i, be, streams=True) for i, be in enumerate(
            self._backends(backend, self.towers))]
        self.link = Link(self.devices)
        self.steps = L.build_steps(config.layers)
        self.kinds = [_cross_kind(s, i == 0) for i, s in enumerate(self.steps)]
        self.dropout_mode, self.alpha_over_n = dropout_mode, alpha_over_n
        self.params, self.grads = {}, {}
        self._caches = None
        # name -> (tower, grouped name, (row slice, column slice))
        self.placement = {}
        for step, kind in zip(self.steps, self.kinds):
            layer = step.layer
            if not layer.param_shapes:
                continue
            rows = tower_slices(layer.param_shapes["w"][0], self.towers)
            cols = (feature_slices(layer.in_shape, self.towers) if layer.type == "fc"
                    else tower_slices(layer.in_shape[0], self.towers))
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
        out = {}
        for layer in self.config.layers:
            for k, shape in layer.param_shapes.items():
                out[f"{layer.name}.{k}"] = np.empty(shape, dtype=np.float32)
        for name, (t, gname, index) in self.placement.items():
            dev = self.devices[t]
            with dev.activate():
                out[gname][index] = dev.backend.to_numpy(arrays[name])
        return out

    def _w(self, layer, t, s=None):
        tn = TOWER_NAMES[t]
        return self.params[f"{layer.name}.w@{tn}" + ("" if s is None else f"<{TOWER_NAMES[s]}")]

    def _b(self, layer, t):
        return self.params[f"{layer.name}.b@{TOWER_NAMES[t]}"]

    def _set_grads(self, layer, t, dw, db):
        tn = TOWER_NAMES[t]
        if isinstance(dw, dict):
            for s, g in dw.items():
                self.grads[f"{layer.name}.w@{tn}<{TOWER_NAMES[s]}"] = g
        else:
            self.grads[f"{layer.name}.w@{tn}"] = dw
        self.grads[f"{layer.name}.b@{tn}"] = db

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
        self._caches = caches if train else None
        # Gather the logits (the last layer's tower slices) on device 0.
        parts = [acts[0]] + [self.link.send(acts[t], devs[t], devs[0]).get()
                             for t in range(1, T)]
        with devs[0].activate():
            logits = devs[0].backend.xp.concatenate(parts, axis=1)
        self.link.settle()
        for dev in devs:
            dev.finish()
        return logits

    def _local_forward(self, step, kind, acts, train, seed):
        layer, out, cache = step.layer, [], []
        groups = layer.attrs.get("groups", 1)
        for t, dev in enumerate(self.devices):
            w = b = None
            if layer.param_shapes:
                w, b = self._w(layer, t), self._b(layer, t)
            with dev.activate():
                y, c = L.step_forward(dev.backend, step, acts[t], w, b,
                                      groups=groups if kind == "whole" else groups // self.towers,
                                      seeds=[L.dropout_seed(seed, layer.index, t)], train=train,
                                      dropout_mode=self.dropout_mode,
                                      alpha_over_n=self.alpha_over_n)
            out.append(y)
            cache.append(c)
        return out, cache

    def _blocks_forward(self, step, acts):
        """A layer that reads every tower: own block first, while the others' inputs copy."""
        layer, devs, T = step.layer, self.devices, self.towers
        fc = layer.type == "fc"
        if fc:
            acts = [a.reshape(a.shape[0], -1) for a in acts]
        sent = {(s, t): self.link.send(acts[s], devs[s], devs[t])
                for s in range(T) for t in range(T) if s != t}
        ys, seen = [], []
        for t, dev in enumerate(devs):
            with dev.activate():
                ys.append(self._block(dev.backend, layer, acts[t], self._w(layer, t, t), None))
        for t, dev in enumerate(devs):
            with dev.activate():
                inputs = {t: acts[t]}
                for s in range(T):
                    if s != t:
                        inputs[s] = sent[s, t].get()
                        ys[t] = self._block(dev.backend, layer, inputs[s], self._w(layer, t, s),
                                            ys[t])
                bias_add(dev.backend, ys[t], self._b(layer, t))
                if step.relu:
                    relu_ops.relu_forward(dev.backend, ys[t], out=ys[t])
            seen.append(inputs)
        return ys, (seen, ys if step.relu else None)

    @staticmethod
    def _block(be, layer, x, w, acc):
        """acc + (x's contribution through w); acc None starts the sum."""
        if layer.type == "fc":
            return linear_ops.gemm(be, x, w, trans_b=True, beta=0.0 if acc is None else 1.0,
                                   c=acc)
        y = conv_ops.conv2d_forward(be, x, w, stride=layer["stride"], pad=layer["pad"])
        if acc is None:
            return y
        be.xp.add(acc, y, out=acc)
        return acc

    # ---- backward ----------------------------------------------------------------------
    def backward(self, dlogits):
        if self._caches is None:
            raise RuntimeError("backward() needs the activations of a preceding "
                               "forward(x, train=True)")
        devs, T = self.devices, self.towers
        for dev in devs:
            dev.begin()
        caches, self._caches = self._caches, None
        # Scatter the logits' gradient to the towers that computed each slice.
        d0 = devs[0].asarray(dlogits)
        cols = tower_slices(d0.shape[1], T)
        with devs[0].activate():
            parts = [devs[0].backend.xp.ascontiguousarray(d0[:, c]) for c in cols]
        dys = [parts[0]] + [self.link.send(parts[t], devs[0], devs[t]).get()
                            for t in range(1, T)]
        for i in reversed(range(len(self.steps))):
            step, kind = self.steps[i], self.kinds[i]
            if kind == "blocks":
                dys = self._blocks_backward(step, dys, caches[i])
            else:
                dys = self._local_backward(step, kind, dys, caches[i], need_dx=i > 0)
            caches[i] = None
        self.link.settle()
        for dev in devs:
            dev.finish()

    def _local_backward(self, step, kind, dys, cache, need_dx):
        layer, out = step.layer, []
        groups = layer.attrs.get("groups", 1)
        for t, dev in enumerate(self.devices):
            w = self._w(layer, t) if layer.param_shapes else None
            with dev.activate():
                dx, dw, db = L.step_backward(
                    dev.backend, step, dys[t], cache[t], w,
                    groups=groups if kind == "whole" else groups // self.towers,
                    need_dx=need_dx, dropout_mode=self.dropout_mode,
                    alpha_over_n=self.alpha_over_n)
            if dw is not None:
                self._set_grads(layer, t, dw, db)
            out.append(dx)
        return out

    def _blocks_backward(self, step, dys, cache):
        """Gradient blocks for the other towers first (their copies overlap the rest)."""
        layer, devs, T = step.layer, self.devices, self.towers
        seen, ys = cache
        dys = list(dys)
        if step.relu:
            for t, dev in enumerate(devs):
                with dev.activate():
                    dys[t] = relu_ops.relu_backward(dev.backend, ys[t], dys[t])
        sent = {}
        for t, dev in enumerate(devs):
            with dev.activate():
                for s in range(T):
                    if s != t:
                        part = self._block_dx(dev.backend, layer, dys[t], self._w(layer, t, s),
                                              seen[t][s])
                        sent[t, s] = self.link.send(part, dev, devs[s])
        dxs = []
        for t, dev in enumerate(devs):
            be = dev.backend
            with dev.activate():
                dxs.append(self._block_dx(be, layer, dys[t], self._w(layer, t, t), seen[t][t]))
                dw = {s: self._block_dw(be, layer, seen[t][s], dys[t], self._w(layer, t, s).shape)
                      for s in range(T)}
                self._set_grads(layer, t, dw, bias_backward(be, dys[t]))
        for s, dev in enumerate(devs):
            with dev.activate():
                for t in range(T):
                    if t != s:
                        dev.backend.xp.add(dxs[s], sent[t, s].get(), out=dxs[s])
        if layer.type == "fc":  # back to the (N, C, H, W) maps the towers hold
            dxs = [dx.reshape((dx.shape[0],) + tuple(_slice_shape(layer.in_shape, t, T)))
                   for t, dx in enumerate(dxs)]
        return dxs

    @staticmethod
    def _block_dx(be, layer, dy, w, x):
        if layer.type == "fc":
            return linear_ops.linear_backward_data(be, dy, w)
        return conv_ops.conv2d_backward_data(be, dy, w, x.shape, stride=layer["stride"],
                                             pad=layer["pad"])

    @staticmethod
    def _block_dw(be, layer, x, dy, w_shape):
        if layer.type == "fc":
            return linear_ops.linear_backward_weight(be, x, dy)
        return conv_ops.conv2d_backward_filter(be, x, dy, w_shape, stride=layer["stride"],
                                               pad=layer["pad"])


def _slice_shape(in_shape, t, towers):
    """Tower t's share of a per-image activation shape (channels split, the rest whole)."""
    s = tower_slices(in_shape[0], towers)[t]
    return (s.stop - s.start,) + tuple(in_shape[1:])
