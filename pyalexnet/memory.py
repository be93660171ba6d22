"""Step memory: every buffer of a repeated training step allocated once.

A training step asks for the same buffers, in the same order, every time: activations,
gradients, split-K partial sums, staged inputs. While a `StepMemory` is active on a
backend, `Backend.empty`, `zeros` and `asarray` hand out the buffers the first step
allocated, slot by slot, instead of allocating; so steps 2, 3, ... allocate nothing (and
a CUDA graph captured from one step stays valid, since every address is fixed). A request
that differs from its slot's shape or dtype gets a new buffer for that slot (counted in
``misses``), so a step that changes shape is still correct.

Arrays that must outlive a step (parameters, momentum buffers) are allocated outside it,
or inside `StepMemory.persistent()`.
"""
from __future__ import annotations

import contextlib


class StepMemory:
    def __init__(self):
        self.slots = []        # the buffers, in the order the step asks for them
        self.next = 0
        self.allocations = 0   # buffers ever allocated (the first step's, and misses)
        self.misses = 0
        self._paused = 0

    @contextlib.contextmanager
    def active(self, backends):
        """Serve the allocations of ``backends`` from this memory for one step."""
        backends = list(dict.fromkeys(backends))  # one backend may serve two devices
        saved = [be.memory for be in backends]
        self.next = 0
        for be in backends:
            be.memory = self
        try:
            yield self
        finally:
            for be, old in zip(backends, saved):
                be.memory = old

    @contextlib.contextmanager
    def persistent(self):
        """Allocations in this block are ordinary ones that outlive the step."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @property
    def serving(self) -> bool:
        return self._paused == 0

    def take(self, allocate, shape, dtype):
        """The next slot's buffer (``allocate(shape, dtype)`` makes one if needed)."""
        shape = tuple(int(s) for s in shape) if not isinstance(shape, int) else (int(shape),)
        i = self.next
        self.next += 1
        if i < len(self.slots):
            buf = self.slots[i]
            if buf.shape == shape and buf.dtype == dtype:
                return buf
            self.misses += 1
            self.slots[i] = buf = allocate(shape, dtype)
        else:
            buf = allocate(shape, dtype)
            self.slots.append(buf)
        self.allocations += 1
        return buf
