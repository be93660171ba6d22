"""Data parallelism across processes: every rank runs the whole net (an inner single- or
two-device engine) on its share of the global batch, and the gradients are summed over the
ranks with torch.distributed, in buckets that start while backward is still running.

- The loss is the mean over the global batch: each rank's d(loss)/d(logits) is scaled by
  local_n / global_n before backward (backward is linear in it), so the summed gradients
  are the one-process gradients of the whole batch.
- The inner engine's ``sample_offset`` is the rank's first sample in the global batch, so
  dropout masks follow the sample, not the rank (layers.Pass).
- Buckets: the parameters, in the order backward finishes them (last layer first), grouped
  per device into buckets of about ``bucket_bytes``. When every gradient of a bucket is
  done (the inner engine's ``on_grads`` callback), it is flattened and an async all-reduce
  starts; `backward` waits for all of them and copies the sums back.
- NumPy gradients reach torch without a copy (torch.from_numpy); CuPy ones through DLPack
  (torch.from_dlpack), for NCCL. The CuPy path is written but has not run on a GPU yet.
"""
from __future__ import annotations

import time

import numpy as np

from ..ops import softmax as softmax_ops
from .base import Engine

BUCKET_BYTES = 25 * 2**20  # PyTorch DDP's default bucket size


def _inner_attribute(name):
    """An attribute read from and written to the inner engine."""
    return property(lambda self: getattr(self.inner, name),
                    lambda self, v: setattr(self.inner, name, v))


class DataParallelEngine(Engine):
    """``inner`` (an Engine) on this rank, its gradients summed over ``world`` (a World)."""

    def __init__(self, inner: Engine, world, bucket_bytes=BUCKET_BYTES):
        # not Engine.__init__: params, grads and velocity are the inner engine's dicts
        self.inner, self.world = inner, world
        self.config, self.dropout_mode = inner.config, inner.dropout_mode
        self.alpha_over_n, self.on_grads = inner.alpha_over_n, None
        self.devices = inner.devices
        self.bucket_bytes = int(bucket_bytes)
        self.comm_wait = 0.0   # seconds backward spent waiting for all-reduces (total)
        self.global_n = None   # the global batch of the last train_step
        self._buckets = None

    # ---- state and layout: the inner engine's -------------------------------------------
    params = _inner_attribute("params")
    grads = _inner_attribute("grads")
    velocity = _inner_attribute("velocity")
    precision = _inner_attribute("precision")
    conv_algo = _inner_attribute("conv_algo")

    def device_of(self, name):
        return self.inner.device_of(name)

    def from_grouped(self, grouped, copy=True):
        return self.inner.from_grouped(grouped, copy)

    def to_grouped(self, arrays):
        return self.inner.to_grouped(arrays)

    # ---- compute --------------------------------------------------------------------------
    def forward(self, x, train, seed):
        return self.inner.forward(x, train, seed)

    def train_step(self, x, labels, seed=0, sync=True):  # always syncs: the ranks agree on it
        """forward + loss + backward on this rank's share ``x`` of the global batch; the
        gradients are then those of the whole batch, on every rank. Returns (this rank's
        mean loss, its logits)."""
        counts = self.world.counts(len(x))
        self.global_n = sum(counts)
        self.inner.sample_offset = sum(counts[:self.world.rank])
        logits = self.inner.forward(x, train=True, seed=seed)
        dev = self.devices[0]
        with dev.activate():
            loss, probs = softmax_ops.softmax_cross_entropy_forward(dev.backend, logits, labels)
            dlogits = softmax_ops.softmax_cross_entropy_backward(dev.backend, probs, labels)
            dlogits *= np.float32(len(x) / self.global_n)
        self.backward(dlogits)
        return loss, logits

    def backward(self, dlogits):
        self._reducer.run(lambda: self.inner.backward(dlogits), self.inner)
        self.comm_wait = self._reducer.wait_s

    @property
    def _reducer(self):
        if self._buckets is None:
            layers = [s.layer.name for s in self.inner.steps]
            self._buckets = GradientBuckets(self.world, self, sorted(
                self.params, key=lambda n: (-layers.index(n.split(".")[0]), n)),
                self.bucket_bytes)
        return self._buckets


class GradientBuckets:
    """Sums gradients over the ranks in buckets, each started as soon as backward has
    finished all of its gradients (reported through an engine's ``on_grads``).

    ``names``: the parameters, in the order backward finishes them; ``engine`` holds
    ``grads`` and says where each lives (``device_of``). Buckets are per device, of about
    ``bucket_bytes`` each.
    """

    def __init__(self, world, engine, names, bucket_bytes=BUCKET_BYTES):
        self.world, self.engine = world, engine
        self.wait_s = 0.0  # seconds spent waiting for the sums (total)
        self.buckets, open_ = [], {}
        for name in names:
            dev = engine.device_of(name)
            b = open_.get(dev.index)
            if b is None or b["bytes"] >= bucket_bytes:
                b = open_[dev.index] = {"device": dev, "names": [], "bytes": 0}
                self.buckets.append(b)
            b["names"].append(name)
            b["bytes"] += 4 * int(np.prod(engine.params[name].shape))
        self._pending = []

    def run(self, backward, reporter):
        """Run ``backward()`` with ``reporter.on_grads`` starting the buckets; then wait for
        every sum and write it back into the engine's gradients."""
        waiting = [set(b["names"]) for b in self.buckets]
        self._pending = []

        def done(names):
            for i, w in enumerate(waiting):
                if w and w.intersection(names):
                    w.difference_update(names)
                    if not w:
                        self._start(self.buckets[i])

        reporter.on_grads = done
        try:
            backward()
        finally:
            reporter.on_grads = None
        for i, w in enumerate(waiting):  # buckets of parameters backward did not touch
            if w:
                self._start(self.buckets[i])
        self._finish()

    def _start(self, bucket):
        """Flatten a bucket's gradients and start their async sum over the ranks."""
        dev, grads = bucket["device"], self.engine.grads
        with dev.activate():
            xp = dev.backend.xp
            flat = xp.concatenate([xp.ravel(grads[n]) for n in bucket["names"]])
            if dev.backend.name == "cuda":
                dev.synchronize()  # NCCL runs on torch's stream, not ours
            tensor = _as_tensor(flat)
            work = self.world.guard(lambda: self.world.dist.all_reduce(tensor, async_op=True))
        self._pending.append((bucket, flat, tensor, work))

    def _finish(self):
        t0 = time.perf_counter()
        grads = self.engine.grads
        for bucket, flat, tensor, work in self._pending:
            self.world.guard(work.wait)
            dev = bucket["device"]
            with dev.activate():
                if dev.backend.name == "cuda":
                    import torch
                    torch.cuda.current_stream().synchronize()
                i = 0
                for n in bucket["names"]:
                    g = grads[n]
                    g[...] = flat[i:i + g.size].reshape(g.shape)
                    i += g.size
        self._pending = []
        self.wait_s += time.perf_counter() - t0


def _as_tensor(a):
    """A torch tensor sharing ``a``'s memory (NumPy, or CuPy through DLPack)."""
    import torch

    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)
