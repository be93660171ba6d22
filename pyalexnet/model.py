"""The model: a config's layers as execution steps, and its parameters in the grouped
single-device layout (initial values, and the check that a state dict fits).

Initialisation (``bias_init``): "paper" gives every bias the value of its layer's
``bias_init`` in the config (alexnet: 1 in conv2, conv4, conv5, fc6, fc7, else 0); "caffe"
puts 0.1 where the paper puts a non-zero bias (a bias of 1 often leaves the loss flat at
the start); a number puts that number there. Weights are N(0, std) with the layer's
``init_std`` or the config's ``[init] weight_std`` (the paper: 0.01), drawn in layer order
from ``numpy.random.default_rng(seed)`` in the grouped layout, so every engine starts from
the same weights.

The engines (pyalexnet.engines) run a model on devices; the model knows nothing of them.
"""
from __future__ import annotations

import numpy as np


def init_params(config, seed=0, bias_init="paper") -> dict:
    """Initial parameters in the grouped layout, as NumPy float32 arrays (see module doc)."""
    if not (bias_init in ("paper", "caffe") or
            (isinstance(bias_init, (int, float)) and not isinstance(bias_init, bool))):
        raise ValueError(f"bias_init must be 'paper', 'caffe' or a number, got {bias_init!r}")
    rng = np.random.default_rng(seed)
    out = {}
    for layer in config.layers:
        for key, value in layer.init_params(rng, config.init.weight_std, bias_init).items():
            out[f"{layer.name}.{key}"] = value
    return out


def check_state(config, state: dict, what="state") -> dict:
    """``state`` as grouped-layout arrays of ``config``; a ValueError names what differs."""
    expected = config.param_shapes
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise ValueError(f"{what} does not match config {config.name}: "
                         f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'}")
    out = {}
    for k, shape in expected.items():
        a = np.asarray(state[k])
        if a.shape != tuple(shape):
            raise ValueError(f"{what}: {k} has shape {a.shape}, config {config.name} "
                             f"needs {tuple(shape)}")
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{what}: {k} has dtype {a.dtype}, expected floating point")
        out[k] = a
    return out


def layer_params(arrays: dict, layer, suffix="") -> dict:
    """The {"w": ..., "b": ...} of one layer from a flat "<layer>.<key><suffix>" dict."""
    return {k: arrays[f"{layer.name}.{k}{suffix}"] for k in layer.param_shapes}

