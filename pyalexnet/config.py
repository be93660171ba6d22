"""Network configs: a TOML file parsed once into typed, validated dataclasses.

Configs are TOML files (pyalexnet/configs/*.toml, or any path): a network name, the number
of towers, the input (crop size, resize size, mean, PCA colour noise, flips), the
initialisation, default training hyper-parameters, and a list of ``[[layer]]`` tables
(one per layer; their keys are the fields of the layer classes in pyalexnet.layers).
Every consumer (the model, the trainer, the evaluator, the summary) takes the `Config`
that `load_config` returns; errors name the file, the table and the key, and say what is
allowed.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from .layers import parse_layers
from .schema import ConfigError, parse_fields

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TOP_KEYS = {"name", "description", "towers", "num_classes", "input", "init", "train", "layer"}


@dataclass(frozen=True)
class InputConfig:
    channels: int = 3
    size: int = 227          # the crop
    resize: int = 256        # images are rescaled to this square first
    mean: object = "dataset"  # "dataset" (the training images' mean), "none", or 3 numbers
    pca_noise: float = 0.0   # std of the paper's PCA colour noise
    flip: bool = True


@dataclass(frozen=True)
class InitConfig:
    weight_std: float = 0.01
    bias: object = "paper"   # "paper", "caffe" or a number


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005
    epochs: int = 90
    lr_decay: float = 0.1
    lr_schedule: str = "plateau"
    lr_step_epochs: tuple = ()
    plateau_patience: int = 1
    max_lr_drops: int = 3


SCHEDULES = ("plateau", "step")


@dataclass(frozen=True)
class Config:
    """A parsed network definition: its tables typed, its layers with their shapes."""

    name: str
    description: str
    towers: int
    num_classes: int
    input: InputConfig
    init: InitConfig
    train: TrainConfig
    layers: tuple = field(compare=False)
    tables: tuple = field(compare=False, repr=False)  # the raw [[layer]] tables
    path: str = ""

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of one input image (the crop)."""
        return (self.input.channels, self.input.size, self.input.size)

    @property
    def crop_size(self) -> int:
        return self.input.size

    @property
    def resize_size(self) -> int:
        return self.input.resize

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    @property
    def macs(self) -> int:
        """Forward multiply-adds per image."""
        return sum(layer.macs for layer in self.layers)

    @property
    def param_shapes(self) -> dict:
        """{"<layer>.w": shape, "<layer>.b": shape} in the grouped single-device layout."""
        return {f"{layer.name}.{k}": s for layer in self.layers
                for k, s in layer.param_shapes.items()}

    def with_num_classes(self, num_classes) -> "Config":
        """The same network with another number of classes (the last layer's outputs)."""
        if num_classes is None or num_classes == self.num_classes:
            return self
        layers = tuple(parse_layers(self.tables, self.input_shape, self.towers, num_classes))
        return replace(self, num_classes=int(num_classes), layers=layers)

    def with_input(self, size=None, resize=None) -> "Config":
        """The same network for another crop and resize size. The layer shapes follow from
        the input size, so a different crop is a different network (the fc layers change)."""
        size = self.input.size if size is None else int(size)
        resize = self.input.resize if resize is None else int(resize)
        if (size, resize) == (self.input.size, self.input.resize):
            return self
        where = f"{self.path} (input {size}, resize {resize})"
        inp = replace(self.input, size=size, resize=resize)
        _check_input(inp, where)
        try:
            layers = parse_layers(self.tables, (inp.channels, size, size), self.towers,
                                  self.num_classes)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        return replace(self, input=inp, layers=tuple(layers), path=where)


def list_configs() -> list:
    """Names of the bundled configs (pyalexnet/configs/*.toml)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _section(raw, cls, key, where):
    """A typed [key] table: unknown keys and wrong types are errors naming the key."""
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return cls(**parse_fields(cls, table, f"{where} [{key}]"))


def _check_input(inp, where):
    for key in ("channels", "size", "resize"):
        v = getattr(inp, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{where}: [input] {key} must be a positive integer")
    if inp.resize < inp.size:
        raise ConfigError(f"{where}: [input] resize ({inp.resize}) is smaller than the "
                          f"crop size ({inp.size})")
    mean = inp.mean
    if not (mean in ("dataset", "none") or (isinstance(mean, list) and len(mean) == inp.channels
                                             and all(isinstance(v, (int, float)) for v in mean))):
        raise ConfigError(f"{where}: [input] mean must be \"dataset\", \"none\" or a list of "
                          f"{inp.channels} numbers, got {mean!r}")


def _check_init(init, where):
    bias = init.bias
    if not (bias in ("paper", "caffe") or
            (isinstance(bias, (int, float)) and not isinstance(bias, bool))):
        raise ConfigError(f"{where}: [init] bias must be \"paper\", \"caffe\" or a number, "
                          f"got {bias!r}")


def _check_train(train, where):
    if train.lr_schedule not in SCHEDULES:
        raise ConfigError(f"{where}: [train] lr_schedule must be one of {', '.join(SCHEDULES)}, "
                          f"got {train.lr_schedule!r}")
    for key in ("batch_size", "epochs", "plateau_patience"):
        if getattr(train, key) < 1:
            raise ConfigError(f"{where}: [train] {key} must be at least 1")
    steps = train.lr_step_epochs
    if any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in steps) or \
            list(steps) != sorted(set(steps)):
        raise ConfigError(f"{where}: [train] lr_step_epochs must be increasing positive epoch "
                          f"numbers, got {list(steps)!r}")


def parse_config(raw: dict, where="config") -> Config:
    """A Config from the dict a TOML file holds; errors name the file and key."""
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(sorted(TOP_KEYS))}")
    towers = raw.get("towers", 1)
    if towers not in (1, 2) or isinstance(towers, bool):
        raise ConfigError(f"{where}: towers must be 1 or 2, got {towers!r}")
    inp = _section(raw, InputConfig, "input", where)
    _check_input(inp, where)
    init = _section(raw, InitConfig, "init", where)
    _check_init(init, where)
    train = _section(raw, TrainConfig, "train", where)
    _check_train(train, where)
    tables = tuple(raw.get("layer", ()))
    try:
        layers = parse_layers(tables, (inp.channels, inp.size, inp.size), towers)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    num_classes = raw.get("num_classes", layers[-1].outputs)
    if num_classes != layers[-1].outputs:
        raise ConfigError(f"{where}: num_classes = {num_classes} but the last layer "
                          f"({layers[-1].name}) has {layers[-1].outputs} outputs")
    return Config(name=raw.get("name", "unnamed"), description=raw.get("description", ""),
                  towers=towers, num_classes=num_classes, input=inp, init=init, train=train,
                  layers=tuple(layers), tables=tables, path=where)


def load_config(name_or_path, num_classes=None) -> Config:
    """A bundled config by name ("alexnet", "alexnet-owt", "cifar-small", ...), or a .toml
    path. A Config is returned as is (with ``num_classes`` applied)."""
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
