"""Devices and placement: where a tower runs, how arrays move between devices, and how
channels split into towers. The single-device model and every engine import this module;
it imports neither.

Device. backend "cuda": a CuPy device with, for the two-device engine, its own
non-blocking compute stream and a copy stream; copies are cudaMemcpyPeerAsync on the
receiving device's copy stream, ordered with CUDA events (compute(src) -> copy ->
compute(dst)), so copies overlap compute. numpy / emu: emulated devices on the same code
path; a copy is an array copy and streams and events are no-ops.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .ops import copy as copy_ops

TOWER_NAMES = "AB"


def tower_slices(n: int, towers: int) -> list:
    """How ``n`` channels (or units) split into towers: contiguous, tower A first, sizes
    differing by at most one (the first towers get the extra units)."""
    base, extra = divmod(n, towers)
    out, start = [], 0
    for t in range(towers):
        stop = start + base + (1 if t < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out


def feature_slices(in_shape, towers: int) -> list:
    """Tower slices of a flattened (C, H, W) input: each tower's channels times H*W."""
    if len(in_shape) == 1:
        return tower_slices(in_shape[0], towers)
    hw = int(np.prod(in_shape[1:]))
    return [slice(s.start * hw, s.stop * hw) for s in tower_slices(in_shape[0], towers)]


def channel_copy(be, x, start=0, stop=None):
    """A new array holding channels [start, stop) of ``x`` (axis 1), from ``be``'s
    allocator, copied by a kernel on the kernel backends."""
    stop = x.shape[1] if stop is None else stop
    out = be.empty((x.shape[0], stop - start) + tuple(x.shape[2:]), x.dtype)
    return copy_ops.copy_channels(be, x, out, start, 0, stop - start)


def join_towers(be, parts):
    """The tower slices ``parts`` joined along axis 1, in an array from ``be``'s allocator."""
    if len(parts) == 1:
        return parts[0]
    out = be.empty((parts[0].shape[0], sum(p.shape[1] for p in parts)) +
                   tuple(parts[0].shape[2:]), parts[0].dtype)
    start = 0
    for p in parts:
        copy_ops.copy_channels(be, p, out, 0, start, p.shape[1])
        start += p.shape[1]
    return out


def tower_shape(in_shape, t, towers) -> tuple:
    """Tower t's share of a per-image activation shape (channels split, the rest whole)."""
    s = tower_slices(in_shape[0], towers)[t]
    return (s.stop - s.start,) + tuple(in_shape[1:])


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
                return Transfer(channel_copy(dest.backend, src), dest, None)
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
