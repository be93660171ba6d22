"""The engine interface: one way of running a model's training step on devices.

An engine owns the parameters, their gradients and the SGD momentum buffers in its own
layout (one dict each, backend arrays, keyed by name) and converts them to and from the
grouped single-device layout for state dicts, so a checkpoint written by one engine loads
into any other. Subclasses say where each parameter lives (`device_of`, `from_grouped`,
`to_grouped`) and how the forward and backward passes run (`forward`, `backward`); the
loss, the SGD update and the state handling are the same for all.

A training step run inside `repeated_step` allocates nothing after its first run and
copies nothing back to the host (`train_step(sync=False)`): see pyalexnet.memory.
"""
from __future__ import annotations

import contextlib

from ..memory import StepMemory
from ..ops import softmax as softmax_ops
from ..ops.sgd import sgd_update


class Engine:
    devices: list  # devices[0] holds the input and the logits
    # The number format of the conv and fc products (ops.precision): "fp32" (CUDA cores),
    # "tf32" or "bf16" (tensor cores, fp32 accumulation; weights, momentum, SGD, softmax
    # and loss stay fp32).
    precision = "fp32"
    # The conv layers' algorithms (layers.conv.CONV_ALGOS): "gemm" or "auto".
    conv_algo = "gemm"

    def __init__(self, config, dropout_mode="inverted", alpha_over_n=None):
        self.config = config
        self.dropout_mode, self.alpha_over_n = dropout_mode, alpha_over_n
        self.params, self.grads, self.velocity = {}, {}, {}
        self._memories = {}  # step memory per input shape
        # Data parallel: index in the whole batch of this engine's first sample (see
        # layers.Pass), and a callback given the names of each layer's finished gradients
        # while backward is still running (engines.data_parallel starts all-reduces there).
        self.sample_offset = 0
        self.on_grads = None

    # ---- layout (subclasses) ----------------------------------------------------------
    def device_of(self, name):
        """The Device that holds parameter ``name`` of this engine's layout."""
        raise NotImplementedError

    def from_grouped(self, grouped: dict, copy=True) -> dict:
        """Backend arrays of this engine's layout from grouped-layout NumPy arrays (copied,
        unless ``copy`` is False and the arrays are float32 already)."""
        raise NotImplementedError

    def to_grouped(self, arrays: dict) -> dict:
        """Grouped-layout NumPy float32 copies of arrays in this engine's layout."""
        raise NotImplementedError

    # ---- compute (subclasses) ---------------------------------------------------------
    def forward(self, x, train, seed):
        """Logits (N, classes) on devices[0]; ``train`` keeps what `backward` needs."""
        raise NotImplementedError

    def backward(self, dlogits):
        """Fill ``grads`` from d(loss)/d(logits) of the preceding forward(train=True)."""
        raise NotImplementedError

    def _grads_done(self, names):
        if self.on_grads is not None and names:
            self.on_grads(names)

    def _take_caches(self):
        if self._caches is None:
            raise RuntimeError("backward() needs the activations of a preceding "
                               "forward(x, train=True)")
        caches, self._caches = self._caches, None
        return caches

    # ---- the training step ------------------------------------------------------------
    def init_params(self, grouped: dict):
        """Start from grouped-layout parameters, with zero gradients and no momentum."""
        self.params.update(self.from_grouped(grouped, copy=False))
        for name, w in self.params.items():
            self.grads[name] = self.device_of(name).zeros(w.shape)
        self.velocity = {}

    def loss(self, logits, labels):
        """(mean softmax cross-entropy, probs) of logits from `forward`."""
        dev = self.devices[0]
        with dev.activate():
            return softmax_ops.softmax_cross_entropy_forward(dev.backend, logits, labels)

    def train_step(self, x, labels, seed=0, sync=True):
        """forward(train=True) + softmax cross-entropy + backward: (loss, logits); the loss
        a float, or with ``sync=False`` a one-element array on devices[0]."""
        logits = self.forward(x, train=True, seed=seed)
        dev = self.devices[0]
        with dev.activate():
            loss, probs = softmax_ops.softmax_cross_entropy_forward(dev.backend, logits, labels,
                                                                    sync=sync)
            dlogits = softmax_ops.softmax_cross_entropy_backward(dev.backend, probs, labels)
        self.backward(dlogits)
        return loss, logits

    @contextlib.contextmanager
    def repeated_step(self, key):
        """Run one training step (``key``: what fixes its buffers, e.g. the input shape) on
        the buffers of the previous step with that key: no allocation after the first."""
        memory = self._memories.setdefault(key, StepMemory())
        with memory.active(dev.backend for dev in self.devices):
            yield memory

    def sgd_step(self, lr, momentum=0.9, weight_decay=5e-4):
        """One SGD step with momentum over every parameter (the paper's rule):
        v <- momentum v - weight_decay lr w - lr grad; w <- w + v."""
        for dev in self.devices:
            dev.begin()
        for name, w in self.params.items():
            dev = self.device_of(name)
            with dev.activate():
                v = self.velocity.get(name)
                if v is None:
                    with self._persistent(dev):
                        v = self.velocity[name] = dev.zeros(w.shape)
                sgd_update(dev.backend, w, self.grads[name], v, lr, momentum=momentum,
                           weight_decay=weight_decay)
        for dev in self.devices:
            dev.finish()

    @staticmethod
    def _persistent(dev):
        """Allocations that outlive the step, even inside `repeated_step`."""
        memory = dev.backend.memory
        return memory.persistent() if memory is not None else contextlib.nullcontext()

    def evaluate(self, x):
        """Test-time logits (no dropout, nothing kept for backward)."""
        return self.forward(x, train=False, seed=0)

    def synchronize(self):
        for dev in self.devices:
            dev.synchronize()

    # ---- state for checkpoints (grouped layout) ---------------------------------------
    def state_dict(self) -> dict:
        return self.to_grouped(self.params)

    def grad_state_dict(self) -> dict:
        return self.to_grouped(self.grads)

    def load_state_dict(self, grouped: dict):
        self.params.update(self.from_grouped(grouped))

    def optimizer_state(self) -> dict:
        return self.to_grouped(self.velocity) if self.velocity else {}

    def load_optimizer_state(self, grouped: dict):
        self.velocity = self.from_grouped(grouped) if grouped else {}
