"""The layer protocol and the typed config: a new layer type is one class and one registry
entry, and config mistakes are errors that name the key and what is allowed."""
from dataclasses import dataclass

import numpy as np
import pytest

from pyalexnet.config import CONFIG_DIR, ConfigError, parse_config
from pyalexnet.layers import LAYER_TYPES, Layer, build_steps
from pyalexnet.net import Net
from pyalexnet.summary import format_summary, summary


@dataclass(frozen=True, kw_only=True)
class Scale(Layer):
    """y = factor * x: the smallest layer type, written only against the protocol."""

    TYPE = "scale"
    factor: float = 2.0

    def check(self, towers):
        if self.factor == 0:
            raise ConfigError(f"layer {self.name}: factor must not be 0")
        return self.in_shape

    def forward(self, be, x, params, ctx):
        return x * np.float32(self.factor), None

    def backward(self, be, dy, cache, params, ctx, need_dx=True):
        return dy * np.float32(self.factor), {}

    def note(self, towers):
        return f"x{self.factor:g}"


def tiny_raw(extra_layer=None):
    import tomllib
    raw = tomllib.loads((CONFIG_DIR / "cifar-small.toml").read_text())
    if extra_layer is not None:
        raw["layer"].insert(3, extra_layer)
    return raw


def test_a_new_layer_type_is_one_class_and_one_registry_entry(monkeypatch):
    monkeypatch.setitem(LAYER_TYPES, "scale", Scale)
    config = parse_config(tiny_raw({"name": "half", "type": "scale", "factor": 0.5}), "test")
    layer = next(layer for layer in config.layers if layer.name == "half")
    assert isinstance(layer, Scale) and layer.factor == 0.5 and layer.out_shape == (32, 15, 15)
    assert "half   scale" in format_summary(summary(config)) and "x0.5" in format_summary(
        summary(config))
    assert [s.layer.name for s in build_steps(config.layers)][:4] == ["conv1", "pool1", "half",
                                                                     "norm1"]
    # The net runs it, forward and backward, on the NumPy backend and on the kernels.
    plain = parse_config(tiny_raw(), "plain")
    x = np.random.default_rng(0).standard_normal((2,) + config.input_shape).astype(np.float32)
    labels = np.array([1, 2], np.int32)
    for backend in ("numpy", "emu"):
        scaled, ref = Net(config, backend=backend, seed=4), Net(plain, backend=backend, seed=4)
        _, logits = scaled.train_step_grads(x, labels, seed=1)
        assert np.all(np.isfinite(scaled.backend.to_numpy(logits)))
        assert np.any(scaled.grad_state_dict()["conv1.w"] != 0)  # backward went through it
        assert not np.allclose(scaled.forward(x, train=False), ref.forward(x, train=False))
    with pytest.raises(ConfigError, match="factor must not be 0"):
        parse_config(tiny_raw({"name": "zero", "type": "scale", "factor": 0}), "test")
    with pytest.raises(ConfigError, match="factor must be a number"):
        parse_config(tiny_raw({"name": "s", "type": "scale", "factor": "big"}), "test")


def test_unregistered_types_are_listed():
    with pytest.raises(ConfigError, match="type must be one of conv, fc, relu, lrn, maxpool, "
                                          "dropout, avgpool, got 'scale'"):
        parse_config(tiny_raw({"name": "half", "type": "scale"}), "test")


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "learning_rate", 0.1, r"net.toml \[train\]: unknown key\(s\) learning_rate; "
                                    r"allowed: batch_size, lr"),
    ("train", "lr", "fast", r"\[train\]: lr must be a number, got 'fast'"),
    ("train", "epochs", 2.5, r"\[train\]: epochs must be an integer"),
    ("train", "lr_schedule", "cosine", r"lr_schedule must be one of plateau, step"),
    ("train", "lr_step_epochs", [3, 2], "increasing positive epoch numbers"),
    ("train", "batch_size", 0, r"batch_size must be at least 1"),
    ("input", "flip", "yes", r"\[input\]: flip must be true or false"),
    ("input", "mean", [0.5], r"mean must be \"dataset\", \"none\" or a list of 3 numbers"),
    ("init", "bias", "zeros", r"\[init\] bias must be \"paper\", \"caffe\" or a number"),
])
def test_config_sections_are_typed(section, key, value, message):
    raw = tiny_raw()
    raw[section][key] = value
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, "net.toml")


def test_config_values_are_typed_objects():
    config = parse_config(tiny_raw(), "net.toml")
    assert config.train.batch_size == 64 and config.train.lr_step_epochs == ()
    assert config.input.size == 32 and config.init.bias == "paper"
    bigger = config.with_input(size=40, resize=48)  # 40 -> pools 19, 9, 4
    assert bigger.input_shape == (3, 40, 40) and bigger.layers[-1].in_shape == (64, 4, 4)
    with pytest.raises(ConfigError, match="smaller than the crop size"):
        config.with_input(size=48, resize=40)
