"""Whole-model tests: configs, initialisation, state dicts, and the NumPy model against the
kernel model (numpy vs emu/cuda) on logits, loss, every gradient and a few SGD steps."""
import time
import tomllib

import numpy as np
import pytest
from conftest import F32_EPS, assert_matches_reference

from pyalexnet.config import CONFIG_DIR, ConfigError, list_configs, load_config, parse_config
from pyalexnet.devices import tower_slices
from pyalexnet.model import init_params
from pyalexnet.net import Net
from pyalexnet.rng import dropout_seed
from pyalexnet.ops import conv as conv_ops
from pyalexnet.ops import dropout as dropout_ops
from pyalexnet.ops import lrn as lrn_ops
from pyalexnet.ops import pool as pool_ops
from pyalexnet.ops import softmax as softmax_ops

# A tiny copy of alexnet.toml: the same layers (two towers, grouped conv2/4/5, per-tower
# LRN, cross-tower conv3/fc6/fc7/fc8, dropout), few channels, 99x99 input (-> 23, 11, 5, 2),
# 7 classes (an odd count: fc8's tower slices are 4 and 3 units). Larger init std and LRN
# alpha than the paper's, so that every layer's signal and gradient are far from zero.
TINY_WIDTHS = {"conv1": 8, "conv2": 12, "conv3": 16, "conv4": 16, "conv5": 10,
               "fc6": 24, "fc7": 18, "fc8": 7}


def tiny_alexnet_raw():
    raw = tomllib.loads((CONFIG_DIR / "alexnet.toml").read_text())
    raw["name"], raw["num_classes"] = "tiny-alexnet", TINY_WIDTHS["fc8"]
    raw["input"].update(size=99, resize=110)
    raw["init"]["weight_std"] = 0.2
    for table in raw["layer"]:
        if table["name"] in TINY_WIDTHS:
            table["filters" if table["type"] == "conv" else "outputs"] = TINY_WIDTHS[table["name"]]
        if table["type"] == "lrn":
            table["alpha"] = 0.01
    raw["layer"][0]["init_std"] = 0.08
    return raw


def tiny_alexnet():
    return parse_config(tiny_alexnet_raw(), "tiny-alexnet")


def batch(config, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + config.input_shape).astype(np.float32)
    labels = rng.integers(0, config.num_classes, n).astype(np.int32)
    return x, labels


def max_reduction(config, n):
    """The longest sum in a training step: a layer's fan-in, or batch x output pixels for
    its weight gradient. Tolerances scale with its square root."""
    k = 1
    for layer in config.layers:
        if layer.param_shapes:
            k = max(k, int(np.prod(layer.param_shapes["w"][1:])),
                    n * int(np.prod(layer.out_shape[1:])))
    return k


def assert_state_close(actual, ref, reduction, what):
    assert actual.keys() == ref.keys()
    for k in ref:
        assert_matches_reference(actual[k], ref[k], reduction, what=f"{what} {k}")


# ---- configs --------------------------------------------------------------------------------

def test_bundled_configs():
    assert {"alexnet", "alexnet-owt", "cifar-small"} <= set(list_configs())
    alexnet = load_config("alexnet")
    assert alexnet.num_params == 60_965_224
    assert alexnet.macs == 724_406_816            # 724.4 M multiply-adds per image
    assert alexnet.towers == 2 and alexnet.input_shape == (3, 227, 227)
    assert alexnet.resize_size == 256 and alexnet.num_classes == 1000
    owt = load_config("alexnet-owt")
    assert owt.num_params == 61_100_840 and owt.towers == 1
    small = load_config("cifar-small")
    assert small.input_shape == (3, 32, 32) and small.num_classes == 10
    assert 5e6 <= small.macs <= 20e6  # must train in minutes on two CPU cores


def test_alexnet_layer_table():
    """The paper's network (its section 3 and Figure 2), layer by layer."""
    layers = {layer.name: layer for layer in load_config("alexnet").layers}
    expect = {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27),
              "pool2": (256, 13, 13), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
              "conv5": (256, 13, 13), "pool5": (256, 6, 6), "fc6": (4096,), "fc7": (4096,),
              "fc8": (1000,)}
    for name, shape in expect.items():
        assert layers[name].out_shape == shape, name
    assert [layers[n].groups for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] == \
        [1, 2, 1, 2, 2]
    conv1 = layers["conv1"]
    assert (conv1.size, conv1.stride, conv1.pad) == (11, 4, 0)
    assert layers["conv2"].param_shapes["w"] == (256, 48, 5, 5)
    for norm in ("norm1", "norm2"):
        n = layers[norm]
        assert (n.size, n.k, n.alpha, n.beta, n.groups, n.alpha_over_n) == \
            (5, 2.0, 1e-4, 0.75, 2, False)
    assert layers["drop6"].p == layers["drop7"].p == 0.5
    order = [layer.type for layer in load_config("alexnet").layers[:4]]
    assert order == ["conv", "relu", "lrn", "maxpool"]  # LRN after ReLU, before pooling


def test_num_classes_override():
    c = load_config("alexnet", num_classes=10)
    assert c.num_classes == 10 and c.layers[-1].out_shape == (10,)
    assert c.num_params == 60_965_224 - 4_097_000 + 4096 * 10 + 10
    assert load_config("alexnet").num_classes == 1000  # the bundled config is not changed


def _raw_with(edit):
    raw = tiny_alexnet_raw()
    edit(raw)
    return raw


def _layer(raw, name):
    return next(t for t in raw["layer"] if t["name"] == name)


@pytest.mark.parametrize("edit, message", [
    (lambda r: _layer(r, "conv2").update(filtres=3), "unknown key"),
    (lambda r: _layer(r, "conv2").update(groups=3), "groups"),
    (lambda r: _layer(r, "norm1").update(groups=1), "inside a tower"),
    (lambda r: _layer(r, "conv1").update(groups=3), "groups must be 1"),
    (lambda r: _layer(r, "conv2").update(size=2.5), "integer"),
    (lambda r: _layer(r, "pool5").update(size=9), "does not fit"),
    (lambda r: _layer(r, "norm2").update(size=4), "odd"),
    (lambda r: _layer(r, "drop6").update(p=1.0), "dropout p"),
    (lambda r: _layer(r, "conv3").update(type="convolution"), "type must be one of"),
    (lambda r: r["layer"].pop(), "last layer"),
    (lambda r: r.update(num_classes=5), "num_classes"),
    (lambda r: r.update(towers=3), "towers"),
    (lambda r: r["input"].update(crop=3), "unknown key"),
    (lambda r: r.update(layers=[]), "unknown top-level"),
    (lambda r: _layer(r, "conv4").update(name="conv3"), "used twice"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_config_errors(edit, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_raw_with(edit), "test")


def test_config_by_path_and_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="alexnet-owt"):  # the message lists the names
        load_config("alexnet-2")
    path = tmp_path / "net.toml"
    path.write_text((CONFIG_DIR / "cifar-small.toml").read_text().replace("filters = 64",
                                                                         "filters = 48"))
    assert load_config(str(path)).layers[8].out_shape == (48, 7, 7)
    path.write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


# ---- initialisation and state -----------------------------------------------------------

def test_init_biases_and_std():
    config = load_config("alexnet")
    paper = init_params(config, seed=0)
    ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}
    for layer in config.layers:
        if layer.param_shapes:
            b = paper[f"{layer.name}.b"]
            assert np.all(b == (1.0 if layer.name in ones else 0.0)), layer.name
    w = paper["fc6.w"]
    assert w.dtype == np.float32 and abs(float(w.std()) - 0.01) < 1e-4
    assert abs(float(w.mean())) < 1e-5
    # Other bias choices (on the tiny copy, which has the same bias_init entries).
    tiny = tiny_alexnet()
    tiny_paper = init_params(tiny, seed=0)
    caffe = init_params(tiny, seed=0, bias_init="caffe")
    assert np.all(caffe["conv2.b"] == np.float32(0.1)) and np.all(caffe["conv3.b"] == 0)
    assert np.array_equal(caffe["fc6.w"], tiny_paper["fc6.w"])  # same seed, same weights
    assert np.all(init_params(tiny, seed=0, bias_init=0.5)["fc7.b"] == 0.5)
    assert np.all(Net(tiny, backend="numpy", bias_init="caffe").params["fc6.b"] == np.float32(0.1))
    with pytest.raises(ValueError, match="bias_init"):
        init_params(tiny, bias_init="zeros")
    assert not np.array_equal(init_params(tiny, seed=1)["conv1.w"], tiny_paper["conv1.w"])
    # Per-layer init_std overrides [init] weight_std.
    assert abs(float(tiny_paper["conv1.w"].std()) - 0.08) < 0.005
    assert abs(float(tiny_paper["conv2.w"].std()) - 0.2) < 0.02


def test_state_dict_round_trip():
    config = tiny_alexnet()
    a, b = Net(config, backend="numpy", seed=1), Net(config, backend="numpy", seed=2)
    x, _ = batch(config, 2)
    state = a.state_dict()
    assert list(state) == [f"{n}.{k}" for n in TINY_WIDTHS for k in "wb"]
    state["conv1.w"][...] = 0  # a copy: the net is unchanged
    assert np.any(a.params["conv1.w"] != 0)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(b.forward(x, train=False), a.forward(x, train=False))
    bad = a.state_dict()
    del bad["fc8.b"]
    with pytest.raises(ValueError, match="missing.*fc8.b"):
        b.load_state_dict(bad)
    bad = a.state_dict()
    bad["conv2.w"] = bad["conv2.w"][:, :2]
    with pytest.raises(ValueError, match="conv2.w has shape"):
        b.load_state_dict(bad)
    assert a.num_params() == config.num_params == sum(v.size for v in state.values())


def test_errors():
    config = tiny_alexnet()
    net = Net(config, backend="numpy")
    with pytest.raises(RuntimeError, match="forward"):
        net.backward(np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match=r"takes input \(N, 3, 99, 99\)"):
        net.forward(np.zeros((2, 3, 98, 98), np.float32))
    with pytest.raises(ValueError, match="dropout_mode"):
        Net(config, backend="numpy", dropout_mode="paper")
    with pytest.raises(ValueError, match="devices"):
        Net(config, backend="numpy", devices=3)


def test_eval_mode_and_dropout_modes():
    config = tiny_alexnet()
    x, _ = batch(config, 2)
    inv = Net(config, backend="numpy", dropout_mode="inverted")
    classic = Net(config, backend="numpy", dropout_mode="classic")
    # Test time: no randomness; classic dropout scales by (1 - p), inverted does not.
    assert np.array_equal(inv.forward(x, train=False, seed=1), inv.forward(x, train=False, seed=2))
    assert not np.allclose(classic.forward(x, train=False), inv.forward(x, train=False))
    # Training: the seed picks the masks.
    assert not np.allclose(inv.forward(x, seed=1), inv.forward(x, seed=2))
    assert np.array_equal(inv.forward(x, seed=3), inv.forward(x, seed=3))


# ---- gradients --------------------------------------------------------------------------

def _lrn_reference(h, a):
    g = a["groups"]  # each group (tower) normalised on its own
    y, _ = lrn_ops.lrn_forward_reference(h.reshape((h.shape[0] * g, h.shape[1] // g) + h.shape[2:]),
                                         a["size"], a["alpha"], a["beta"], a["k"], a["alpha_over_n"])
    return y.reshape(h.shape)


# Each layer type written out directly with the float64 op references (h, attrs, w, b, ctx),
# independently of the layer classes.
REFERENCE = {
    "conv": lambda h, a, w, b, c: conv_ops.conv2d_forward_reference(h, w, b, a["stride"], a["pad"],
                                                                     a["groups"]),
    "fc": lambda h, a, w, b, c: h.reshape(h.shape[0], -1) @ w.T + b,
    "relu": lambda h, a, w, b, c: np.maximum(h, 0),
    "lrn": lambda h, a, w, b, c: _lrn_reference(h, a),
    "maxpool": lambda h, a, w, b, c: pool_ops.maxpool_forward_reference(h, a["size"], a["stride"]),
    # one mask per tower slice, each with its own seed
    "dropout": lambda h, a, w, b, c: np.concatenate([dropout_ops.dropout_forward_reference(
        h[:, s], a["p"], dropout_seed(c["seed"], c["index"], t), c["mode"])
        for t, s in enumerate(tower_slices(h.shape[1], c["towers"]))], axis=1),
}


def reference_loss(config, params, x, labels, seed, dropout_mode="inverted"):
    """The network written out directly with the float64 op references, independently of
    the Net's composition code: (loss, logits)."""
    h = np.asarray(x, np.float64)
    for layer in config.layers:
        w, b = params.get(f"{layer.name}.w"), params.get(f"{layer.name}.b")
        ctx = {"seed": seed, "index": layer.index, "mode": dropout_mode, "towers": config.towers}
        h = REFERENCE[layer.type](h, layer.attrs, w, b, ctx)
    loss, _ = softmax_ops.softmax_cross_entropy_reference(h, labels)
    return float(loss), h


@pytest.mark.parametrize("name", ["tiny-alexnet", "cifar-small"])
def test_gradients_match_float64_finite_differences(name):
    """The Net's float32 forward and backward (numpy backend, dropout on) against the
    network written out with float64 references: logits, and each layer's gradient as a
    directional derivative by central differences (a random direction per layer)."""
    config = tiny_alexnet() if name == "tiny-alexnet" else load_config("cifar-small")
    net = Net(config, backend="numpy", seed=3, bias_init=0.1)
    x, labels = batch(config, 3, seed=4)
    loss, logits = net.train_step_grads(x, labels, seed=9)
    grads = net.grad_state_dict()
    base = {k: v.astype(np.float64) for k, v in net.state_dict().items()}
    ref_loss, ref_logits = reference_loss(config, base, x, labels, seed=9)
    k = max_reduction(config, 3)
    assert_matches_reference(logits, ref_logits, k, what="logits")
    assert abs(loss - ref_loss) <= 1e-5 * max(1.0, ref_loss)
    rng = np.random.default_rng(5)
    for layer in config.layers:
        if not layer.param_shapes:
            continue
        keys = [f"{layer.name}.w", f"{layer.name}.b"]
        direction = {key: rng.standard_normal(base[key].shape) for key in keys}
        analytic = sum(float(np.sum(grads[key] * direction[key])) for key in keys)
        eps = 1e-6 / max(abs(analytic), 1e-3)  # changes the loss by ~1e-6: no kinks crossed
        losses = [reference_loss(config, {**base, **{key: base[key] + sign * eps * direction[key]
                                                     for key in keys}}, x, labels, seed=9)[0]
                  for sign in (1, -1)]
        numeric = (losses[0] - losses[1]) / (2 * eps)
        assert abs(numeric - analytic) <= 1e-3 * max(abs(analytic), abs(numeric), 1e-2), \
            f"{layer.name}: analytic {analytic}, numeric {numeric}"


@pytest.mark.parametrize("name", ["tiny-alexnet", "cifar-small"])
def test_numpy_model_matches_kernel_model(name, kernel_backend):
    """The NumPy model and the kernel model agree on logits, loss, every gradient, and the
    parameters after three SGD steps (dropout on)."""
    config = tiny_alexnet() if name == "tiny-alexnet" else load_config("cifar-small")
    n = 4
    nets = [Net(config, backend=be, seed=7) for be in ("numpy", kernel_backend)]
    start = nets[0].state_dict()
    assert_state_close(nets[1].state_dict(), start, 1, "initial params")
    k = max_reduction(config, n)
    for step in range(3):
        x, labels = batch(config, n, seed=10 + step)
        out = [net.train_step_grads(x, labels, seed=step) for net in nets]
        (ref_loss, ref_logits), (loss, logits) = out
        logits = nets[1].backend.to_numpy(logits)
        assert_matches_reference(logits, ref_logits, k, what=f"step {step} logits")
        assert abs(loss - ref_loss) <= 16 * F32_EPS * np.sqrt(k) * max(1.0, abs(ref_loss))
        assert_state_close(nets[1].grad_state_dict(), nets[0].grad_state_dict(), k,
                           f"step {step} gradient")
        for net in nets:
            net.sgd_step(lr=0.01, momentum=0.9, weight_decay=5e-4)
    # Compare what SGD changed (a loose check on the parameters would hide the updates).
    deltas = [{key: v - start[key] for key, v in net.state_dict().items()} for net in nets]
    assert_state_close(deltas[1], deltas[0], k, "parameter change after 3 SGD steps")
    assert all(np.any(d != 0) for d in deltas[0].values())
    assert_state_close(nets[1].optimizer_state(), nets[0].optimizer_state(), k, "velocity")


def test_training_reduces_loss():
    """SGD steps on one fixed batch drive the loss down (cifar-small, numpy, its init; a
    learning rate below the config's, which is tuned for real batches, not one batch)."""
    config = load_config("cifar-small")
    net = Net(config, backend="numpy", seed=0)
    x, labels = batch(config, 8, seed=1)
    x *= 0.3  # about the spread of mean-subtracted pixels in [0, 1]
    losses = []
    for step in range(8):
        loss, _ = net.train_step_grads(x, labels, seed=step)
        net.sgd_step(lr=0.01, momentum=0.9, weight_decay=5e-4)
        losses.append(loss)
    assert losses[-1] < 0.6 * losses[0], losses


def test_full_alexnet_forward_numpy():
    """The real network builds, has the paper's parameter count, and runs at batch 1."""
    net = Net("alexnet", backend="numpy", seed=0)
    assert net.num_params() == 60_965_224
    assert net.params["conv2.w"].shape == (256, 48, 5, 5)
    assert net.params["fc6.w"].shape == (4096, 9216)
    x, _ = batch(net.config, 1)
    start = time.perf_counter()
    logits = net.forward(x, train=False)
    assert time.perf_counter() - start < 20
    assert logits.shape == (1, 1000) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits)) and np.std(logits) > 0
