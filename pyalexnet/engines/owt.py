"""Krizhevsky's "one weird trick" (2014) across ranks: the convolutional layers data
parallel, the fully connected layers model parallel.

Each rank runs the layers before the first fc layer on its share of the global batch (as
in data parallelism: full copies of their weights, gradients summed over the ranks in
buckets while backward runs). Each fc layer's output units are split over the ranks: rank r
holds rows r of its weights and bias (``tower_slices`` order) and computes those outputs
for the whole batch, so fc weights and their gradients never travel.

The paper's batching of fc work (its scheme (b)): rank j's last convolutional activations
are broadcast to every rank, and all ranks run the fc layers forward and backward on that
chunk of the batch while the next rank's chunk is in flight (all broadcasts start at once).
Within a chunk, each fc layer's output slices are all-gathered, so the layers between and
after (ReLU, dropout) run on the full width (dropout with the chunk's sample offset, so the
masks are the one-process ones); the gradient with respect to a fc layer's input is summed
over the ranks. The fc weight gradients add up over the chunks; rank j gets the gradient of
its own activations and back-propagates it through its convolutional layers.

Evaluation (every rank holds the same batch): convolutions on it, fc slices all-gathered.
The loss is the mean over the global batch, as in one process. Training runs through
`train_step` only: forward(train=True) + backward would undo the chunked schedule.
One device per rank (``devices = 1``); a two-tower config runs in its grouped form.
"""
from __future__ import annotations

import numpy as np

from ..devices import Device, tower_slices
from ..layers import Pass, build_steps
from ..layers.base import ConfigError
from ..layers.fc import FC
from ..model import layer_params
from ..ops import softmax as softmax_ops
from ..ops.precision import float32_activations
from .base import Engine
from .data_parallel import BUCKET_BYTES, GradientBuckets, _as_tensor


class OneWeirdTrickEngine(Engine):
    """Conv layers data parallel, fc layers model parallel over ``world``'s ranks."""

    def __init__(self, config, backend, world, dropout_mode="inverted", alpha_over_n=None,
                 bucket_bytes=BUCKET_BYTES):
        super().__init__(config, dropout_mode, alpha_over_n)
        self.backend, self.world = backend, world
        self.devices = [Device(0, backend)]
        steps = build_steps(config.layers)
        first = next((i for i, s in enumerate(steps) if isinstance(s.layer, FC)), None)
        if not first:
            raise ConfigError(f"--parallel owt needs convolutional layers followed by fc "
                              f"layers; {config.name} has none of one kind")
        self.conv_steps, self.fc_steps = steps[:first], steps[first:]
        self.steps = steps
        for s in self.fc_steps:
            if s.layer.param_shapes and not isinstance(s.layer, FC):
                raise ConfigError(f"--parallel owt: layer {s.layer.name} ({s.layer.TYPE}) has "
                                  "weights after the first fc layer; only fc layers may")
            if isinstance(s.layer, FC) and s.layer.outputs % world.size:
                raise ConfigError(f"--parallel owt: {s.layer.name}'s {s.layer.outputs} outputs "
                                  f"do not divide over {world.size} ranks")
        self.shapes = config.param_shapes
        self.fc_names = {f"{s.layer.name}.{k}" for s in self.fc_steps for k in s.layer.param_shapes}
        # this rank's output units of each fc layer
        self.rows = {s.layer.name: tower_slices(s.layer.outputs, world.size)[world.rank]
                     for s in self.fc_steps if isinstance(s.layer, FC)}
        layers = [s.layer.name for s in self.conv_steps]
        conv_names = [n for n in self.shapes if n not in self.fc_names]
        self.bucket_bytes = bucket_bytes
        self._conv_order = sorted(conv_names, key=lambda n: (-layers.index(n.split(".")[0]), n))
        self._reducer = None
        self.global_n = None

    # ---- layout -------------------------------------------------------------------------
    def device_of(self, name):
        return self.devices[0]

    def _part(self, name):
        return (self.rows[name.split(".")[0]],) if name in self.fc_names else ()

    def from_grouped(self, grouped, copy=True):
        return {k: self.backend.asarray(np.array(np.asarray(grouped[k])[self._part(k)],
                                                 dtype=np.float32, order="C"))
                for k in self.shapes}

    def to_grouped(self, arrays):
        """Every rank's fc rows summed into place (a collective: every rank calls it)."""
        import torch

        out = {}
        for k, shape in self.shapes.items():
            a = np.array(self.backend.to_numpy(arrays[k]), dtype=np.float32)
            if k in self.fc_names:
                full = np.zeros(shape, dtype=np.float32)
                full[self._part(k)] = a
                t = torch.from_numpy(full)
                self.world.guard(lambda: self.world.dist.all_reduce(t))
                a = full
            out[k] = a
        return out

    # ---- compute ------------------------------------------------------------------------
    def _pass(self, train, seed, offset=0):
        return Pass(train=train, seed=seed, towers=tuple(range(self.config.towers)),
                    dropout_mode=self.dropout_mode, alpha_over_n=self.alpha_over_n,
                    sample_offset=offset, precision=self.precision,
                    conv_algo=self.conv_algo)

    def _params(self, step):
        return layer_params(self.params, step.layer)

    def _gather_columns(self, y):
        """(n, out / ranks) slices of every rank -> (n, out), rank order."""
        be, K = self.backend, self.world.size
        parts = [be.empty(y.shape) for _ in range(K)]
        self.world.guard(lambda: self.world.dist.all_gather(
            [_as_tensor(p) for p in parts], _as_tensor(be.xp.ascontiguousarray(y))))
        return be.xp.concatenate(parts, axis=1)

    def _fc_forward(self, x, ctx, caches=None):
        be = self.backend
        for step in self.fc_steps:
            y, cache = step.forward(be, x, self._params(step), ctx)
            if isinstance(step.layer, FC):
                y = self._gather_columns(y)
            if caches is not None:
                caches.append(cache)
            x = y
        return x

    def _conv_forward(self, x, ctx, caches=None):
        be = self.backend
        for step in self.conv_steps:
            x, cache = step.forward(be, x, self._params(step), ctx)
            if caches is not None:
                caches.append(cache)
        return x

    def forward(self, x, train, seed):
        if train:
            raise NotImplementedError("the one-weird-trick engine trains through train_step "
                                      "(its fc work is chunked over the ranks' batches)")
        ctx = self._pass(False, seed)
        return self._fc_forward(self._conv_forward(self.backend.asarray(x), ctx), ctx)

    def backward(self, dlogits):
        raise NotImplementedError("the one-weird-trick engine trains through train_step")

    def train_step(self, x, labels, seed=0, sync=True):  # always syncs: the ranks agree on it
        """Conv forward on this rank's share, the fc layers chunk by chunk over the whole
        batch, conv backward: (the global batch's mean loss, this rank's logits)."""
        be, world, dist = self.backend, self.world, self.world.dist
        counts = world.counts(len(x))
        N, K, me = sum(counts), world.size, world.rank
        offsets = [sum(counts[:j]) for j in range(K)]
        self.global_n = N
        conv_ctx = self._pass(True, seed, offsets[me])
        conv_caches = []
        feats = self._conv_forward(be.asarray(x), conv_ctx, conv_caches)
        shape = feats.shape[1:]
        # float32 on the wire (bf16 training's maps widen exactly; the fc layer rounds back)
        feats = be.xp.ascontiguousarray(float32_activations(be, feats).reshape(len(x), -1))
        # every rank's labels, and every rank's activations (all broadcasts in flight at once)
        all_labels = np.zeros(N, np.int64)
        all_labels[offsets[me]:offsets[me] + len(x)] = be.to_numpy(labels)
        all_labels = world.all_sum(all_labels, np.int64).astype(np.int32)
        chunks = [feats if j == me else be.empty((counts[j], feats.shape[1])) for j in range(K)]
        works = [world.guard(lambda j=j: dist.broadcast(_as_tensor(chunks[j]), src=j,
                                                         async_op=True)) for j in range(K)]
        fc_grads, loss, own_logits, dfeats = {}, 0.0, None, None
        for j in range(K):
            world.guard(works[j].wait)
            ctx = self._pass(True, seed, offsets[j])
            caches = []
            logits = self._fc_forward(chunks[j], ctx, caches)
            lab = be.asarray(all_labels[offsets[j]:offsets[j] + counts[j]], dtype=np.int32)
            loss_j, probs = softmax_ops.softmax_cross_entropy_forward(be, logits, lab)
            dy = softmax_ops.softmax_cross_entropy_backward(be, probs, lab)
            dy *= np.float32(counts[j] / N)
            loss += loss_j * counts[j] / N
            if j == me:
                own_logits = logits
            dx = self._fc_backward(dy, caches, ctx, fc_grads)
            t = _as_tensor(dx)
            world.guard(lambda: dist.reduce(t, dst=j))
            if j == me:
                dfeats = dx
        for name, g in fc_grads.items():
            self.grads[name] = g
        if self._reducer is None:
            self._reducer = GradientBuckets(world, self, self._conv_order, self.bucket_bytes)
        self._reducer.run(lambda: self._conv_backward(dfeats.reshape((len(x),) + shape),
                                                      conv_caches, conv_ctx), self)
        return loss, own_logits

    def _fc_backward(self, dy, caches, ctx, fc_grads):
        """Back through the fc layers for one chunk; the weight gradients add up in
        ``fc_grads``; returns this rank's part of the gradient of the chunk's input."""
        be = self.backend
        for i in reversed(range(len(self.fc_steps))):
            step = self.fc_steps[i]
            if isinstance(step.layer, FC):
                cols = self.rows[step.layer.name]
                dy = be.xp.ascontiguousarray(dy[:, cols])
            dx, grads = step.backward(be, dy, caches[i], self._params(step), ctx)
            caches[i] = None
            if isinstance(step.layer, FC) and i > 0:  # the full input gradient: every rank's part
                t = _as_tensor(dx)
                self.world.guard(lambda: self.world.dist.all_reduce(t))
            for k, g in grads.items():
                name = f"{step.layer.name}.{k}"
                if name in fc_grads:
                    be.xp.add(fc_grads[name], g, out=fc_grads[name])
                else:
                    fc_grads[name] = g
            dy = dx
        return dy

    def _conv_backward(self, dy, caches, ctx):
        be = self.backend
        for i in reversed(range(len(self.conv_steps))):
            step = self.conv_steps[i]
            dy, grads = step.backward(be, dy, caches[i], self._params(step), ctx, need_dx=i > 0)
            caches[i] = None
            for k, g in grads.items():
                self.grads[f"{step.layer.name}.{k}"] = g
            self._grads_done([f"{step.layer.name}.{k}" for k in grads])

    @property
    def comm_wait(self):
        return 0.0 if self._reducer is None else self._reducer.wait_s
