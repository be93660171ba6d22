"""`Net`: a network from a config on a backend, the public face of an engine.

    net = Net("alexnet", backend="numpy")            # one device: the grouped form
    net = Net("alexnet", backend="cuda", devices=2)  # one tower per device
    loss, logits = net.train_step_grads(x, labels, seed=step)
    net.sgd_step(lr=0.01)                            # momentum 0.9, weight decay 5e-4

`Net.state_dict` always returns the grouped single-device layout, so checkpoints and
imported weights work with every engine.
"""
from __future__ import annotations

import numpy as np

from .backends import Backend
from .config import load_config
from .engines import make_engine
from .layers.conv import check_conv_algo
from .model import check_state, init_params
from .ops.precision import check_precision

DROPOUT_MODES = ("inverted", "classic")


class Net:
    """A network on a backend, on one device or (two-tower configs) two.

    Attributes: ``config``, ``engine``, ``backend`` (device 0's), ``devices`` (1 or 2),
    ``params``, ``grads``, ``velocity`` (the engine's dicts of backend arrays, in its layout;
    `backward` replaces the arrays in ``grads``, `sgd_step` updates ``params`` in place).

    Arguments: ``config`` a Config, bundled name or .toml path; ``backend`` a name or
    Backend (devices=2 also takes a pair, one per device); ``devices`` 1 (two-tower nets in
    their grouped form) or 2 (two-tower configs only: one tower per device); ``seed`` the
    initialisation seed; ``bias_init`` "paper", "caffe" or a number (default: the config's
    ``[init] bias``); ``dropout_mode`` "inverted" or "classic" (the paper: scale by 1-p at
    test time); ``num_classes`` overrides the config's; ``lrn_alpha_over_n`` overrides the
    LRN layers' ``alpha_over_n`` (default: the config's, false = the paper's formula);
    ``world`` a pyalexnet.distributed.World: over its ranks, ``parallel`` "dp" (data
    parallel) or "owt" (conv layers data parallel, fc layers model parallel); ``precision``
    "fp32" (default), "tf32" or "bf16": the number format of the conv and fc products (tensor
    cores; the weights, momentum, update, softmax and loss stay fp32); ``conv_algo`` "gemm"
    (default) or "auto": the conv layers' algorithms (layers.conv.CONV_ALGOS: "auto" lets
    the cost models pick Winograd or implicit GEMM per pass).
    """

    def __init__(self, config, backend=None, devices=1, seed=0, bias_init=None,
                 dropout_mode="inverted", num_classes=None, lrn_alpha_over_n=None, world=None,
                 parallel="dp", precision="fp32", conv_algo="gemm"):
        self.config = load_config(config, num_classes)
        if dropout_mode not in DROPOUT_MODES:
            raise ValueError(f"dropout_mode must be one of {DROPOUT_MODES}, got {dropout_mode!r}")
        self.dropout_mode = dropout_mode
        self.lrn_alpha_over_n = lrn_alpha_over_n
        self.engine = make_engine(self.config, backend, devices, dropout_mode, lrn_alpha_over_n,
                                  world, parallel)
        self.precision = self.engine.precision = check_precision(precision)
        self.conv_algo = self.engine.conv_algo = check_conv_algo(conv_algo)
        self.devices = devices
        self.backend = self.engine.devices[0].backend
        bias_init = self.config.init.bias if bias_init is None else bias_init
        self.engine.init_params(init_params(self.config, seed, bias_init))

    # ---- state --------------------------------------------------------------------------
    @property
    def params(self) -> dict:
        return self.engine.params

    @property
    def grads(self) -> dict:
        return self.engine.grads

    @property
    def velocity(self) -> dict:
        return self.engine.velocity

    def num_params(self) -> int:
        return self.config.num_params

    def param_backend(self, name) -> Backend:
        """The backend (device) that holds parameter ``name``."""
        return self.engine.device_of(name).backend

    def state_dict(self) -> dict:
        """Parameters as NumPy float32 copies, in the grouped single-device layout."""
        return self.engine.state_dict()

    def grad_state_dict(self) -> dict:
        """The gradients of the last `backward` as NumPy copies, in the grouped layout."""
        return self.engine.grad_state_dict()

    def load_state_dict(self, state: dict):
        """Load grouped-layout parameters (a `state_dict` of a net of the same config)."""
        self.engine.load_state_dict(check_state(self.config, state, "state"))

    def optimizer_state(self) -> dict:
        """The SGD momentum buffers in the grouped layout ({} before the first sgd_step)."""
        return self.engine.optimizer_state()

    def load_optimizer_state(self, state: dict):
        self.engine.load_optimizer_state(check_state(self.config, state, "optimizer state")
                                         if state else {})

    # ---- compute ------------------------------------------------------------------------
    def _check_input(self, x):
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[1:] != self.config.input_shape:
            raise ValueError(f"{self.config.name} takes input (N, "
                             f"{', '.join(map(str, self.config.input_shape))}), got {shape}")
        if isinstance(x, np.ndarray) and x.dtype != np.float32:
            x = x.astype(np.float32)
        return x

    def forward(self, x, train=True, seed=0):
        """Logits (N, classes) on device 0's backend. ``train`` turns dropout on and keeps the
        activations for `backward`; ``seed`` selects the dropout masks."""
        return self.engine.forward(self._check_input(x), bool(train), _seed(seed))

    def backward(self, dlogits):
        """Fill ``grads`` from d(loss)/d(logits) of the preceding forward(train=True)."""
        self.engine.backward(dlogits)

    def __call__(self, x, train=False, seed=0):
        return self.forward(x, train=train, seed=seed)

    def loss(self, logits, labels):
        """(mean softmax cross-entropy, probs) of logits from `forward`."""
        return self.engine.loss(logits, labels)

    def train_step_grads(self, x, labels, seed=0, sync=True):
        """forward(train=True) + softmax cross-entropy + backward: (loss, logits); the loss a
        float, or with ``sync=False`` a one-element array on device 0 (nothing waits)."""
        return self.engine.train_step(self._check_input(x), labels, seed=_seed(seed), sync=sync)

    def repeated_step(self, key):
        """Context for one step of a loop: from the second step with the same ``key`` (the
        input shape, say) on, the step allocates nothing (pyalexnet.memory)."""
        return self.engine.repeated_step(key)

    def sgd_step(self, lr, momentum=0.9, weight_decay=5e-4):
        """One SGD step with momentum over every parameter (see Engine.sgd_step)."""
        self.engine.sgd_step(lr, momentum=momentum, weight_decay=weight_decay)

    def synchronize(self):
        self.engine.synchronize()

    def __repr__(self):
        return (f"<Net {self.config.name} {self.num_params():,} params on "
                f"{self.backend.name} x{self.devices}>")


def _seed(seed):
    """A step's dropout seed: an integer, or a one-element uint64 array on the device (read
    by the kernels, so a replayed graph draws each step's masks)."""
    return int(seed) if isinstance(seed, (int, np.integer)) else seed


def config_from_options(options: dict, num_classes=None):
    """The Config of a run's resolved options (those a checkpoint stores)."""
    return load_config(options["config"], num_classes).with_input(options.get("crop"),
                                                                  options.get("resize"))


def net_from_options(options: dict, backend, num_classes=None, devices=None, world=None) -> Net:
    """A Net made from a run's resolved options (those a checkpoint stores): the config,
    with the input size of --crop/--resize, and the initialisation and dropout choices."""
    config = config_from_options(options)
    return Net(config, backend=backend, devices=int(devices or options.get("devices", 1)),
               seed=int(options.get("seed", 0)), bias_init=options.get("bias_init", "paper"),
               dropout_mode=options.get("dropout_mode", "inverted"),
               num_classes=num_classes or options.get("num_classes"), world=world,
               parallel=options.get("parallel", "dp"),
               precision=options.get("precision", "fp32"),
               conv_algo=options.get("conv_algo", "gemm"))
