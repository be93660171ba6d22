"""Layers: what a config's ``[[layer]]`` tables mean, their shapes, and their forward and
backward passes on one device, composed from the ops in pyalexnet.ops.

A network is a list of `Layer`s (conv, fc, relu, lrn, maxpool, dropout) with per-image
input and output shapes inferred from the config's input size. `build_steps` turns the
list into execution steps, fusing a ReLU into the conv or fc in front of it (the conv
kernel has a bias+ReLU epilogue; after an fc the ReLU runs in place).

Towers. A two-tower net (the paper's) is described in its single-device "grouped" form:
channels are split into tower slices by `tower_slices` (tower A first), a conv with
``groups`` a multiple of the tower count stays inside its tower, a conv with ``groups = 1``
and every fc read all towers, LRN windows stay inside a tower (``groups``), and dropout
draws one mask per tower slice with its own seed (`dropout_seed`), so the two-device
model in pyalexnet.parallel draws exactly the same masks as the grouped model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ops import conv as conv_ops
from .ops import dropout as dropout_ops
from .ops import linear as linear_ops
from .ops import lrn as lrn_ops
from .ops import pool as pool_ops
from .ops import relu as relu_ops

REQUIRED = object()
# Per layer type: the keys a config may give, with their defaults (REQUIRED: no default).
LAYER_KEYS = {
    "conv": {"filters": REQUIRED, "size": REQUIRED, "stride": 1, "pad": 0, "groups": 1,
             "bias_init": 0.0, "init_std": None},
    "fc": {"outputs": REQUIRED, "bias_init": 0.0, "init_std": None},
    "relu": {},
    "lrn": {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0, "groups": 1, "alpha_over_n": False},
    "maxpool": {"size": 3, "stride": 2},
    "dropout": {"p": 0.5},
}
INT_KEYS = {"filters", "size", "stride", "pad", "groups", "outputs"}
FLOAT_KEYS = {"bias_init", "init_std", "alpha", "beta", "k", "p"}


class ConfigError(ValueError):
    """A network definition that cannot be built; the message names the layer and key."""


@dataclass(frozen=True)
class Layer:
    """One ``[[layer]]`` table with its per-image shapes (no batch axis)."""

    name: str
    type: str
    attrs: dict = field(compare=False)
    index: int
    in_shape: tuple
    out_shape: tuple

    def __getitem__(self, key):
        return self.attrs[key]

    @property
    def param_shapes(self) -> dict:
        """{"w": shape, "b": shape} in the grouped single-device layout; {} if none."""
        if self.type == "conv":
            c = self.in_shape[0]
            k, r, g = self["filters"], self["size"], self["groups"]
            return {"w": (k, c // g, r, r), "b": (k,)}
        if self.type == "fc":
            return {"w": (self["outputs"], int(np.prod(self.in_shape))), "b": (self["outputs"],)}
        return {}

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.param_shapes.values())

    @property
    def macs(self) -> int:
        """Forward multiply-adds per image (convolutions and fc layers only)."""
        if self.type in ("conv", "fc"):
            return int(np.prod(self.out_shape)) * int(np.prod(self.param_shapes["w"][1:]))
        return 0


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


def _typed(layer, key, value):
    if key in INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"layer {layer}: {key} must be an integer, got {value!r}")
        return value
    if key in FLOAT_KEYS:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"layer {layer}: {key} must be a number, got {value!r}")
        return float(value)
    if key == "alpha_over_n" and not isinstance(value, bool):
        raise ConfigError(f"layer {layer}: alpha_over_n must be true or false, got {value!r}")
    return value


def parse_layers(tables, input_shape, towers=1, num_classes=None) -> list:
    """Validate ``[[layer]]`` tables and infer shapes; returns a list of `Layer`.

    num_classes, if given, replaces the outputs of the last layer (which must be an fc).
    """
    if not tables:
        raise ConfigError("the network has no [[layer]] tables")
    layers, names, shape = [], set(), tuple(input_shape)
    for i, table in enumerate(tables):
        table = dict(table)
        name = table.pop("name", None) or f"layer{i + 1}"
        kind = table.pop("type", None)
        if kind not in LAYER_KEYS:
            raise ConfigError(f"layer {name}: type must be one of {', '.join(LAYER_KEYS)}, "
                              f"got {kind!r}")
        if name in names:
            raise ConfigError(f"layer name {name!r} is used twice")
        names.add(name)
        allowed = LAYER_KEYS[kind]
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise ConfigError(f"layer {name} ({kind}): unknown key(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(allowed) or 'none'}")
        attrs = {}
        for key, default in allowed.items():
            if key in table:
                attrs[key] = _typed(name, key, table[key])
            elif default is REQUIRED:
                raise ConfigError(f"layer {name} ({kind}) needs {key}")
            else:
                attrs[key] = default
        if kind == "fc" and i == len(tables) - 1 and num_classes is not None:
            attrs["outputs"] = int(num_classes)
        out = _out_shape(name, kind, attrs, shape, towers, i)
        layers.append(Layer(name, kind, attrs, i, shape, out))
        shape = out
    last = layers[-1]
    if last.type != "fc":
        raise ConfigError(f"the last layer ({last.name}) must be an fc layer giving the "
                          f"class scores, not {last.type}")
    return layers


def _positive(name, **values):
    for key, v in values.items():
        if v is not None and v < 1:
            raise ConfigError(f"layer {name}: {key} must be at least 1, got {v}")


def _out_shape(name, kind, a, shape, towers, index):
    spatial = len(shape) == 3
    if kind in ("conv", "lrn", "maxpool") and not spatial:
        raise ConfigError(f"layer {name} ({kind}) needs (C, H, W) maps but gets {shape} "
                          "(after an fc layer)")
    if towers > 1 and index == 0 and kind not in ("conv", "fc"):
        raise ConfigError(f"layer {name}: a {towers}-tower net must start with a conv or fc "
                          "layer (the towers begin there)")
    if kind == "conv":
        c, h, w = shape
        k, r, s, p, g = a["filters"], a["size"], a["stride"], a["pad"], a["groups"]
        _positive(name, filters=k, size=r, stride=s, groups=g)
        if p < 0:
            raise ConfigError(f"layer {name}: pad must be >= 0, got {p}")
        if towers > 1 and index == 0 and g != 1:
            raise ConfigError(f"layer {name}: the first layer of a {towers}-tower net reads the "
                              f"whole image, so its groups must be 1, got {g}")
        if c % g or k % g:
            raise ConfigError(f"layer {name}: groups={g} must divide both its {c} input "
                              f"channels and its {k} filters")
        if towers > 1 and g != 1 and g % towers:
            raise ConfigError(f"layer {name}: in a {towers}-tower net groups must be 1 (read "
                              f"every tower) or a multiple of {towers} (stay in the tower), "
                              f"got {g}")
        ph, pw = (h + 2 * p - r) // s + 1, (w + 2 * p - r) // s + 1
        if ph < 1 or pw < 1:
            raise ConfigError(f"layer {name}: a {r}x{r} filter does not fit a {h}x{w} input "
                              f"with pad {p}")
        if towers > 1 and k < towers:
            raise ConfigError(f"layer {name}: {k} filters cannot be split over {towers} towers")
        return (k, ph, pw)
    if kind == "fc":
        _positive(name, outputs=a["outputs"])
        if towers > 1 and a["outputs"] < towers:
            raise ConfigError(f"layer {name}: {a['outputs']} outputs cannot be split over "
                              f"{towers} towers")
        return (a["outputs"],)
    if kind == "lrn":
        c = shape[0]
        _positive(name, size=a["size"], groups=a["groups"])
        if a["size"] % 2 == 0:
            raise ConfigError(f"layer {name}: the LRN size must be odd, got {a['size']}")
        if c % a["groups"]:
            raise ConfigError(f"layer {name}: groups={a['groups']} must divide its {c} channels")
        if towers > 1 and a["groups"] % towers:
            raise ConfigError(f"layer {name}: in a {towers}-tower net the LRN window must stay "
                              f"inside a tower: groups must be a multiple of {towers}, got "
                              f"{a['groups']}")
        if a["k"] <= 0 or a["alpha"] < 0:
            raise ConfigError(f"layer {name}: LRN needs k > 0 and alpha >= 0")
        return shape
    if kind == "maxpool":
        c, h, w = shape
        _positive(name, size=a["size"], stride=a["stride"])
        ph, pw = (h - a["size"]) // a["stride"] + 1, (w - a["size"]) // a["stride"] + 1
        if ph < 1 or pw < 1:
            raise ConfigError(f"layer {name}: a {a['size']}x{a['size']} pool does not fit "
                              f"{h}x{w} maps")
        return (c, ph, pw)
    if kind == "dropout" and not 0.0 <= a["p"] < 1.0:
        raise ConfigError(f"layer {name}: dropout p must be in [0, 1), got {a['p']}")
    return shape  # relu, dropout


# ---- execution steps -------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One unit of execution: a layer, with the ReLU after a conv/fc fused into it."""

    layer: Layer
    relu: bool = False

    @property
    def name(self):
        return self.layer.name


def build_steps(layers) -> list:
    steps, i = [], 0
    while i < len(layers):
        layer = layers[i]
        fuse = (layer.type in ("conv", "fc") and i + 1 < len(layers)
                and layers[i + 1].type == "relu")
        steps.append(Step(layer, fuse))
        i += 2 if fuse else 1
    return steps


_M64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def dropout_seed(seed: int, layer_index: int, tower: int) -> int:
    """The Philox key of one dropout layer's mask in one tower, from the forward seed."""
    return _splitmix64(_splitmix64(int(seed) & _M64) ^ ((int(layer_index) << 8) | int(tower)))


# ---- forward / backward of one layer on one device ---------------------------------------
# Each forward returns (y, cache); the backward takes the cache. `groups` and the dropout
# `seeds` are arguments because a tower of the two-device model runs the same layer with
# fewer groups and its own seed.

def conv_forward(be, layer, x, w, b, groups, relu):
    y = conv_ops.conv2d_forward(be, x, w, b, stride=layer["stride"], pad=layer["pad"],
                                groups=groups, relu=relu)
    return y, (x, y)


def conv_backward(be, layer, dy, cache, w, groups, relu, need_dx):
    x, y = cache
    if relu:
        dy = relu_ops.relu_backward(be, y, dy)
    s, p = layer["stride"], layer["pad"]
    dw = conv_ops.conv2d_backward_filter(be, x, dy, w.shape, stride=s, pad=p, groups=groups)
    db = conv_ops.conv2d_backward_bias(be, dy)
    dx = (conv_ops.conv2d_backward_data(be, dy, w, x.shape, stride=s, pad=p, groups=groups)
          if need_dx else None)
    return dx, dw, db


def fc_forward(be, x, w, b, relu):
    x2 = x.reshape(x.shape[0], -1)  # flatten (C, H, W) maps: a view of a C-contiguous array
    y = linear_ops.linear_forward(be, x2, w, b)
    if relu:
        relu_ops.relu_forward(be, y, out=y)  # y is not needed by the backward pass
    return y, (x.shape, x2, y if relu else None)


def fc_backward(be, dy, cache, w, relu, need_dx):
    x_shape, x2, y = cache
    if relu:
        dy = relu_ops.relu_backward(be, y, dy)
    dw = linear_ops.linear_backward_weight(be, x2, dy)
    db = linear_ops.linear_backward_bias(be, dy)
    dx = linear_ops.linear_backward_data(be, dy, w).reshape(x_shape) if need_dx else None
    return dx, dw, db


def relu_forward(be, x):
    y = relu_ops.relu_forward(be, x)  # not in place: x may be another layer's saved output
    return y, y


def relu_backward(be, dy, cache):
    return relu_ops.relu_backward(be, cache, dy)


def _lrn_args(layer, alpha_over_n):
    aon = layer["alpha_over_n"] if alpha_over_n is None else alpha_over_n
    return dict(size=layer["size"], alpha=layer["alpha"], beta=layer["beta"], k=layer["k"],
                alpha_over_n=aon)


def lrn_forward(be, layer, x, groups, alpha_over_n=None):
    # Per-group LRN without copies: (N, C, H, W) -> (N*G, C/G, H, W) is a view in NCHW.
    n, c, h, w = x.shape
    xg = x.reshape(n * groups, c // groups, h, w)
    yg, scale = lrn_ops.lrn_forward(be, xg, **_lrn_args(layer, alpha_over_n))
    return yg.reshape(x.shape), (xg, yg, scale)


def lrn_backward(be, layer, dy, cache, alpha_over_n=None):
    xg, yg, scale = cache
    dx = lrn_ops.lrn_backward(be, xg, yg, scale, dy.reshape(xg.shape),
                              **_lrn_args(layer, alpha_over_n))
    return dx.reshape(dy.shape)


def pool_forward(be, layer, x):
    y = pool_ops.maxpool_forward(be, x, kernel=layer["size"], stride=layer["stride"])
    return y, (x, y)


def pool_backward(be, layer, dy, cache):
    x, y = cache
    return pool_ops.maxpool_backward(be, x, y, dy, kernel=layer["size"], stride=layer["stride"])


def _pieces(be, x, n):
    """x split along axis 1 into n tower slices (contiguous copies; x itself when n == 1)."""
    if n == 1:
        return [x]
    xp = be.xp
    return [xp.ascontiguousarray(x[:, s]) for s in tower_slices(x.shape[1], n)]


def _join(be, parts):
    return parts[0] if len(parts) == 1 else be.xp.concatenate(parts, axis=1)


def dropout_forward(be, layer, x, seeds, mode, train):
    """One mask per tower slice of axis 1, each from its own seed (see the module doc)."""
    parts = [dropout_ops.dropout_forward(be, part, p=layer["p"], seed=seed, mode=mode,
                                         train=train)
             for part, seed in zip(_pieces(be, x, len(seeds)), seeds)]
    return _join(be, parts), None


def dropout_backward(be, layer, dy, seeds, mode):
    parts = [dropout_ops.dropout_backward(be, part, p=layer["p"], seed=seed, mode=mode)
             for part, seed in zip(_pieces(be, dy, len(seeds)), seeds)]
    return _join(be, parts)


def step_forward(be, step, x, w=None, b=None, groups=1, seeds=(0,), train=True,
                 dropout_mode="inverted", alpha_over_n=None):
    """Run one step on one device: (y, cache). ``groups`` is the conv/LRN group count to
    use, ``seeds`` the dropout seeds, one per tower slice of the input."""
    layer = step.layer
    kind = layer.type
    if kind == "conv":
        return conv_forward(be, layer, x, w, b, groups, step.relu)
    if kind == "fc":
        return fc_forward(be, x, w, b, step.relu)
    if kind == "relu":
        return relu_forward(be, x)
    if kind == "lrn":
        return lrn_forward(be, layer, x, groups, alpha_over_n)
    if kind == "maxpool":
        return pool_forward(be, layer, x)
    if kind == "dropout":
        y, _ = dropout_forward(be, layer, x, seeds, dropout_mode, train)
        return y, tuple(seeds)
    raise AssertionError(kind)


def step_backward(be, step, dy, cache, w=None, groups=1, need_dx=True,
                  dropout_mode="inverted", alpha_over_n=None):
    """The backward pass of `step_forward`: (dx, dw, db); dw, db are None for layers
    without parameters, dx is None when not ``need_dx``."""
    layer = step.layer
    kind = layer.type
    if kind == "conv":
        return conv_backward(be, layer, dy, cache, w, groups, step.relu, need_dx)
    if kind == "fc":
        return fc_backward(be, dy, cache, w, step.relu, need_dx)
    if kind == "relu":
        dx = relu_backward(be, dy, cache)
    elif kind == "lrn":
        dx = lrn_backward(be, layer, dy, cache, alpha_over_n)
    elif kind == "maxpool":
        dx = pool_backward(be, layer, dy, cache)
    elif kind == "dropout":
        dx = dropout_backward(be, layer, dy, cache, dropout_mode)
    else:
        raise AssertionError(kind)
    return dx, None, None
