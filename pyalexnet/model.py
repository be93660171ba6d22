"""Networks from readable config files, and `Net`: forward and backward composed from the ops.

Configs are TOML files (pyalexnet/configs/*.toml, or any path): a network name, the
number of towers, the input (crop size, resize size, mean, PCA colour noise, flips),
initialisation, default training hyper-parameters, and a list of ``[[layer]]`` tables
(conv, fc, relu, lrn, maxpool, dropout; see pyalexnet.layers for their keys).

    net = Net("alexnet", backend="numpy")          # one device: the grouped form
    net = Net("alexnet", backend="cuda", devices=2)  # one tower per device (pyalexnet.parallel)
    loss, logits = net.train_step_grads(x, labels, seed=step)
    net.sgd_step(lr=0.01)                          # momentum 0.9, weight decay 5e-4

A two-tower net on one device runs in its grouped form (grouped convolutions, per-tower
LRN windows and dropout masks); with ``devices=2`` each tower runs on its own device and
the parameters are stored per tower, but `Net.state_dict` always returns the grouped
single-device layout, so checkpoints and imported weights work with either.

Initialisation (``bias_init``): "paper" gives every bias the value of its layer's
``bias_init`` in the config (alexnet: 1 in conv2, conv4, conv5, fc6, fc7, else 0); "caffe"
puts 0.1 where the paper puts a non-zero bias (a bias of 1 often leaves the loss flat at
the start); a number puts that number there. Weights are N(0, std) with the layer's
``init_std`` or the config's ``[init] weight_std`` (the paper: 0.01), drawn in layer order
from ``numpy.random.default_rng(seed)`` in the grouped layout, so the one- and two-device
nets start from the same weights.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import layers as L
from .backends import Backend, get_backend
from .layers import ConfigError
from .ops import softmax as softmax_ops
from .ops.sgd import sgd_update

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TOP_KEYS = {"name", "description", "towers", "num_classes", "input", "init", "train", "layer"}
INPUT_DEFAULTS = {"channels": 3, "size": 227, "resize": 256, "mean": "dataset",
                  "pca_noise": 0.0, "flip": True}
INIT_DEFAULTS = {"weight_std": 0.01, "bias": "paper"}
TRAIN_DEFAULTS = {"batch_size": 128, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005,
                  "epochs": 90, "lr_decay": 0.1, "lr_schedule": "plateau"}
DROPOUT_MODES = ("inverted", "classic")


@dataclass(frozen=True)
class Config:
    """A parsed network definition. ``input``, ``init`` and ``train`` are the TOML tables
    with defaults filled in; ``layers`` the validated layers with their shapes."""

    name: str
    description: str
    towers: int
    num_classes: int
    input: dict = field(compare=False)
    init: dict = field(compare=False)
    train: dict = field(compare=False)
    layers: tuple = field(compare=False)
    tables: tuple = field(compare=False, repr=False)  # the raw [[layer]] tables
    path: str = ""

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of one input image (the crop)."""
        return (self.input["channels"], self.input["size"], self.input["size"])

    @property
    def crop_size(self) -> int:
        return self.input["size"]

    @property
    def resize_size(self) -> int:
        return self.input["resize"]

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    @property
    def macs(self) -> int:
        """Forward multiply-adds per image."""
        return sum(layer.macs for layer in self.layers)

    def with_num_classes(self, num_classes: int) -> "Config":
        """The same network with another number of classes (the last fc layer's outputs)."""
        if num_classes is None or num_classes == self.num_classes:
            return self
        layers = tuple(L.parse_layers(self.tables, self.input_shape, self.towers, num_classes))
        return replace(self, num_classes=int(num_classes), layers=layers)


def list_configs() -> list:
    """Names of the bundled configs (pyalexnet/configs/*.toml)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _table(raw, key, defaults, where):
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    if key != "train":  # [train] is read by the trainer and may hold more keys
        unknown = sorted(set(table) - set(defaults))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) in [{key}]: {', '.join(unknown)}; "
                              f"allowed: {', '.join(defaults)}")
    return {**defaults, **table}


def parse_config(raw: dict, where="config") -> Config:
    """A Config from the dict a TOML file holds; errors name the file and key."""
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(sorted(TOP_KEYS))}")
    towers = raw.get("towers", 1)
    if towers not in (1, 2):
        raise ConfigError(f"{where}: towers must be 1 or 2, got {towers!r}")
    inp = _table(raw, "input", INPUT_DEFAULTS, where)
    for key in ("channels", "size", "resize"):
        if isinstance(inp[key], bool) or not isinstance(inp[key], int) or inp[key] < 1:
            raise ConfigError(f"{where}: [input] {key} must be a positive integer")
    if inp["resize"] < inp["size"]:
        raise ConfigError(f"{where}: [input] resize ({inp['resize']}) is smaller than the "
                          f"crop size ({inp['size']})")
    init = _table(raw, "init", INIT_DEFAULTS, where)
    train = _table(raw, "train", TRAIN_DEFAULTS, where)
    tables = tuple(raw.get("layer", ()))
    try:
        layers = L.parse_layers(tables, (inp["channels"], inp["size"], inp["size"]), towers)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    num_classes = raw.get("num_classes", layers[-1]["outputs"])
    if num_classes != layers[-1]["outputs"]:
        raise ConfigError(f"{where}: num_classes = {num_classes} but the last layer "
                          f"({layers[-1].name}) has {layers[-1]['outputs']} outputs")
    return Config(name=raw.get("name", "unnamed"), description=raw.get("description", ""),
                  towers=towers, num_classes=num_classes, input=inp, init=init, train=train,
                  layers=tuple(layers), tables=tables, path=where)


def load_config(name_or_path, num_classes=None) -> Config:
    """A bundled config by name ("alexnet", "alexnet-owt", "cifar-small"), or a .toml path.

    A Config is returned as is (with ``num_classes`` applied)."""
    if isinstance(name_or_path, Config):
        return name_or_path.with_num_classes(num_classes)
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix == ".toml" or path.exists()):
        path = CONFIG_DIR / f"{text}.toml"
        if not path.exists():
            raise ConfigError(f"no config named {text!r}: choose one of "
                              f"{', '.join(list_configs())} or give a path to a .toml file")
    elif not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(raw, str(path)).with_num_classes(num_classes)


# ---- single-device execution ----------------------------------------------------------------

class GroupedEngine:
    """A net on one device, two-tower nets in their grouped form. Parameters are named
    "<layer>.w" and "<layer>.b" in the grouped layout."""

    def __init__(self, config, backend, dropout_mode, alpha_over_n):
        from .parallel import Device  # the device-placement helpers live with the 2-device code

        self.config, self.backend = config, backend
        self.devices = [Device(0, backend)]
        self.steps = L.build_steps(config.layers)
        self.dropout_mode, self.alpha_over_n = dropout_mode, alpha_over_n
        self.shapes = {f"{layer.name}.{k}": s for layer in config.layers
                       for k, s in layer.param_shapes.items()}
        self.params, self.grads = {}, {}
        self._caches = None

    def device_of(self, name):
        return self.devices[0]

    def from_grouped(self, grouped: dict, copy=True) -> dict:
        """Backend arrays of this engine's layout from grouped-layout NumPy arrays (copied,
        unless ``copy`` is False and the arrays are float32 already)."""
        return {k: self.backend.asarray(np.array(grouped[k], dtype=np.float32, copy=copy or None))
                for k in self.shapes}

    def to_grouped(self, arrays: dict) -> dict:
        return {k: np.array(self.backend.to_numpy(arrays[k]), dtype=np.float32)
                for k in self.shapes}

    def forward(self, x, train, seed):
        be, towers = self.backend, self.config.towers
        x = be.asarray(x)
        caches = []
        for step in self.steps:
            layer = step.layer
            w, b = self.params.get(f"{layer.name}.w"), self.params.get(f"{layer.name}.b")
            # One dropout mask per tower slice, as the two-device net draws them.
            seeds = ([L.dropout_seed(seed, layer.index, t) for t in range(towers)]
                     if layer.type == "dropout" else ())
            x, cache = L.step_forward(be, step, x, w, b, groups=layer.attrs.get("groups", 1),
                                      seeds=seeds, train=train, dropout_mode=self.dropout_mode,
                                      alpha_over_n=self.alpha_over_n)
            if train:
                caches.append(cache)
        self._caches = caches if train else None
        return x

    def backward(self, dy):
        if self._caches is None:
            raise RuntimeError("backward() needs the activations of a preceding "
                               "forward(x, train=True)")
        be = self.backend
        dy = be.asarray(dy)
        caches, self._caches = self._caches, None
        for i in reversed(range(len(self.steps))):
            step = self.steps[i]
            layer = step.layer
            w = self.params.get(f"{layer.name}.w")
            dy, dw, db = L.step_backward(be, step, dy, caches[i], w,
                                         groups=layer.attrs.get("groups", 1), need_dx=i > 0,
                                         dropout_mode=self.dropout_mode,
                                         alpha_over_n=self.alpha_over_n)
            caches[i] = None  # free activations as soon as they are used
            if dw is not None:
                self.grads[f"{layer.name}.w"], self.grads[f"{layer.name}.b"] = dw, db


# ---- the network ------------------------------------------------------------------------

def _bias_value(paper_value, bias_init):
    if bias_init == "paper" or paper_value == 0:
        return paper_value
    if bias_init == "caffe":
        return 0.1
    return float(bias_init)


def init_params(config: Config, seed=0, bias_init="paper") -> dict:
    """Initial parameters in the grouped layout, as NumPy float32 arrays (see module doc)."""
    if not (bias_init in ("paper", "caffe") or
            (isinstance(bias_init, (int, float)) and not isinstance(bias_init, bool))):
        raise ValueError(f"bias_init must be 'paper', 'caffe' or a number, got {bias_init!r}")
    rng = np.random.default_rng(seed)
    out = {}
    for layer in config.layers:
        shapes = layer.param_shapes
        if not shapes:
            continue
        std = layer["init_std"] if layer["init_std"] is not None else config.init["weight_std"]
        w = rng.standard_normal(shapes["w"], dtype=np.float32)
        w *= np.float32(std)
        out[f"{layer.name}.w"] = w
        out[f"{layer.name}.b"] = np.full(shapes["b"], _bias_value(layer["bias_init"], bias_init),
                                         dtype=np.float32)
    return out


class Net:
    """A network on a backend, on one device or (two-tower configs) two.

    Attributes: ``config``, ``backend`` (device 0's), ``devices`` (1 or 2), ``params`` and
    ``grads`` (dicts of backend arrays, same keys and shapes; one device: "<layer>.w",
    "<layer>.b" in the grouped layout; two devices: see pyalexnet.parallel),
    ``velocity`` (SGD momentum buffers, created by the first `sgd_step`).
    `backward` replaces the arrays in ``grads``; `sgd_step` updates ``params`` in place.

    Arguments: ``config`` a Config, bundled name or .toml path; ``backend`` a name or
    Backend (devices=2 also takes a pair, one per device); ``devices`` 1 (two-tower nets in
    their grouped form) or 2 (two-tower configs only: one tower per device); ``seed`` the
    initialisation seed; ``bias_init`` "paper", "caffe" or a number (default: the config's
    ``[init] bias``); ``dropout_mode`` "inverted" or "classic" (the paper: scale by 1-p at
    test time); ``num_classes`` overrides the config's; ``lrn_alpha_over_n`` overrides the
    LRN layers' ``alpha_over_n`` (default: the config's, false = the paper's formula).
    """

    def __init__(self, config, backend=None, devices=1, seed=0, bias_init=None,
                 dropout_mode="inverted", num_classes=None, lrn_alpha_over_n=None):
        self.config = load_config(config, num_classes)
        if dropout_mode not in DROPOUT_MODES:
            raise ValueError(f"dropout_mode must be one of {DROPOUT_MODES}, got {dropout_mode!r}")
        self.dropout_mode = dropout_mode
        self.lrn_alpha_over_n = lrn_alpha_over_n
        if devices == 1:
            if isinstance(backend, (list, tuple)):
                raise ValueError("devices=1 takes one backend, not a list")
            self.engine = GroupedEngine(self.config, get_backend(backend), dropout_mode,
                                        lrn_alpha_over_n)
        elif devices == 2:
            from .parallel import TwoDeviceEngine

            self.engine = TwoDeviceEngine(self.config, backend, dropout_mode, lrn_alpha_over_n)
        else:
            raise ValueError(f"devices must be 1 or 2, got {devices!r}")
        self.devices = devices
        self.backend = self.engine.devices[0].backend
        bias_init = self.config.init["bias"] if bias_init is None else bias_init
        self.engine.params.update(self.engine.from_grouped(
            init_params(self.config, seed, bias_init), copy=False))
        for name, w in self.engine.params.items():
            self.engine.grads[name] = self.engine.device_of(name).zeros(w.shape)
        self.velocity = {}

    # ---- state --------------------------------------------------------------------------
    @property
    def params(self) -> dict:
        return self.engine.params

    @property
    def grads(self) -> dict:
        return self.engine.grads

    def num_params(self) -> int:
        return self.config.num_params

    def param_backend(self, name) -> Backend:
        """The backend (device) that holds parameter ``name``."""
        return self.engine.device_of(name).backend

    def state_dict(self) -> dict:
        """Parameters as NumPy float32 copies, in the grouped single-device layout."""
        return self.engine.to_grouped(self.engine.params)

    def grad_state_dict(self) -> dict:
        """The gradients of the last `backward` as NumPy copies, in the grouped layout."""
        return self.engine.to_grouped(self.engine.grads)

    def load_state_dict(self, state: dict):
        """Load grouped-layout parameters (a `state_dict` of a net of the same config)."""
        self.engine.params.update(self.engine.from_grouped(self._check_grouped(state, "state")))

    def optimizer_state(self) -> dict:
        """The SGD momentum buffers in the grouped layout ({} before the first sgd_step)."""
        return self.engine.to_grouped(self.velocity) if self.velocity else {}

    def load_optimizer_state(self, state: dict):
        self.velocity = (self.engine.from_grouped(self._check_grouped(state, "optimizer state"))
                         if state else {})

    def _check_grouped(self, state, what):
        expected = {f"{layer.name}.{k}": s for layer in self.config.layers
                    for k, s in layer.param_shapes.items()}
        missing = [k for k in expected if k not in state]
        extra = [k for k in state if k not in expected]
        if missing or extra:
            raise ValueError(f"{what} does not match config {self.config.name}: "
                             f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'}")
        out = {}
        for k, shape in expected.items():
            a = np.asarray(state[k])
            if a.shape != tuple(shape):
                raise ValueError(f"{what}: {k} has shape {a.shape}, config {self.config.name} "
                                 f"needs {tuple(shape)}")
            if not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f"{what}: {k} has dtype {a.dtype}, expected floating point")
            out[k] = a
        return out

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
        return self.engine.forward(self._check_input(x), bool(train), int(seed))

    def backward(self, dlogits):
        """Fill ``grads`` from d(loss)/d(logits) of the preceding forward(train=True)."""
        self.engine.backward(dlogits)

    def __call__(self, x, train=False, seed=0):
        return self.forward(x, train=train, seed=seed)

    def loss(self, logits, labels):
        """(mean softmax cross-entropy, probs) of logits from `forward`."""
        dev = self.engine.devices[0]
        with dev.activate():
            return softmax_ops.softmax_cross_entropy_forward(dev.backend, logits, labels)

    def train_step_grads(self, x, labels, seed=0):
        """forward(train=True) + softmax cross-entropy + backward: (loss: float, logits)."""
        logits = self.forward(x, train=True, seed=seed)
        dev = self.engine.devices[0]
        with dev.activate():
            loss, probs = softmax_ops.softmax_cross_entropy_forward(dev.backend, logits, labels)
            dlogits = softmax_ops.softmax_cross_entropy_backward(dev.backend, probs, labels)
        self.backward(dlogits)
        return loss, logits

    def sgd_step(self, lr, momentum=0.9, weight_decay=5e-4):
        """One SGD step with momentum over every parameter (the paper's rule):
        v <- momentum v - weight_decay lr w - lr grad; w <- w + v."""
        for dev in self.engine.devices:
            dev.begin()
        for name, w in self.engine.params.items():
            dev = self.engine.device_of(name)
            with dev.activate():
                v = self.velocity.get(name)
                if v is None:
                    v = self.velocity[name] = dev.zeros(w.shape)
                sgd_update(dev.backend, w, self.engine.grads[name], v, lr, momentum=momentum,
                           weight_decay=weight_decay)
        for dev in self.engine.devices:
            dev.finish()

    def synchronize(self):
        for dev in self.engine.devices:
            dev.synchronize()

    def __repr__(self):
        return (f"<Net {self.config.name} {self.num_params():,} params on "
                f"{self.backend.name} x{self.devices}>")
