"""A training step as captured graphs: recorded once, replayed without Python.

On cuda the step is captured with CuPy's stream capture into CUDA graphs; the emulator
records the same launches and replays them in order, so the code path and its result are
tested on the CPU. A step is two graphs: forward, loss, backward and the top-k ranks; then
the SGD update (one graph per (lr, momentum, weight decay): a schedule change captures a
new one). Between them the host reads the loss, so a NaN loss never reaches the weights.

Replays need fixed addresses and no host work: the step runs on `StepMemory` buffers
(pyalexnet.memory), its inputs are copied into buffers of its own before each replay, and
the dropout seed of each step is read by the kernels from a device buffer the host writes
before the replay (every other launch argument is the same from step to step).
"""
from __future__ import annotations

import numpy as np

from .ops.softmax import Labels, check_labels, topk_ranks


class GraphedStep:
    """``run(x, labels, seed, lr, momentum, weight_decay)`` for one input shape."""

    def __init__(self, net, x_shape):
        self.net = net
        self.key = ("graph", tuple(x_shape))
        dev = net.engine.devices[0]
        self.backend = dev.backend
        backends = list(dict.fromkeys(d.backend for d in net.engine.devices))
        if self.backend.name == "cuda":
            backends = backends[:1]  # other devices' streams join its capture through events
        elif len(backends) > 1:
            raise ValueError("graph capture on the emulator needs one backend for all devices")
        self.capturing = backends
        with dev.activate():
            self.x = self.backend.zeros(tuple(x_shape))
            self.labels = self.backend.zeros((x_shape[0],), dtype=np.int32)
            self.seed = self.backend.zeros((1,), dtype=np.uint64)
        self.graph = None
        self.updates = {}
        self.loss = self.ranks = None

    def _stage(self, x, labels, seed):
        be = self.backend
        host = np.asarray(labels)
        check_labels(self.net.config.num_classes, host, self.x.shape[0])
        for buf, value in ((self.x, np.asarray(x, np.float32)), (self.labels, host.astype(np.int32)),
                           (self.seed, np.array([seed], np.uint64))):
            be.copy_from_host(buf, value)
        return Labels(host, self.labels)

    def _forward(self, labels):
        loss, logits = self.net.train_step_grads(self.x, labels, seed=self.seed, sync=False)
        return loss, topk_ranks(self.backend, logits, labels)

    def _capture(self, fn):
        for be in self.capturing:
            be.begin_capture()
        try:
            out = fn()
        finally:
            graphs = [be.end_capture() for be in self.capturing]
        return graphs, out

    def _replay(self, graphs):
        for be, g in zip(self.capturing, graphs):
            be.replay(g)

    def run(self, x, labels, seed, lr, momentum=0.9, weight_decay=5e-4):
        """One step; returns (loss: float, ranks: host int32 array)."""
        be, net = self.backend, self.net
        lab = self._stage(x, labels, seed)
        sgd = (float(lr), float(momentum), float(weight_decay))
        update = lambda: net.sgd_step(*sgd)  # noqa: E731
        if self.graph is None:
            # The first step runs eagerly (it allocates the step's buffers and momentum),
            # then the same step is captured on those buffers.
            with net.repeated_step(self.key):
                self.loss, self.ranks = self._forward(lab)
                loss = float(be.to_numpy(self.loss)[0])
                if np.isfinite(loss):
                    update()
            with net.repeated_step(self.key):
                self.graph, (loss_c, ranks_c) = self._capture(lambda: self._forward(lab))
                self.updates[sgd], _ = self._capture(update)
            if loss_c is not self.loss or ranks_c is not self.ranks:
                raise RuntimeError("the captured step did not run on the first step's buffers")
            return loss, be.to_numpy(self.ranks)
        self._replay(self.graph)
        loss = float(be.to_numpy(self.loss)[0])
        if np.isfinite(loss):
            if sgd not in self.updates:
                with net.repeated_step(self.key):
                    self.updates[sgd], _ = self._capture(update)
            self._replay(self.updates[sgd])
        return loss, be.to_numpy(self.ranks)
