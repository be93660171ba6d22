"""Weights in and out: torchvision state dicts (.pth with torch, .safetensors without) and
ONNX export, each checked against our own forward pass."""

import numpy as np
import pytest

from pyalexnet import checkpoint as ckpt
from pyalexnet.config import list_configs, load_config
from pyalexnet.convert import ConvertError, from_torchvision, key_map, to_torchvision
from pyalexnet.convert.cli import main as convert_main
from pyalexnet.convert.safetensors_io import read_safetensors, write_safetensors
from pyalexnet.convert.torchvision import MEAN, STD
from pyalexnet.model import init_params
from pyalexnet.net import Net
from shrink import shrunk_config

TV = load_config("alexnet-torchvision")
SMALL = dict(widths=(8, 24, 48, 32, 32), hidden=64)  # the shrunk config's widths, for torch


@pytest.fixture
def small_tv(tmp_path):
    return shrunk_config("alexnet-torchvision", tmp_path)


def _tv_state(cfg, seed=0, num_classes=None):
    """A torchvision-keyed state dict with random weights of torch's init scale."""
    rng = np.random.default_rng(seed)
    cfg = cfg.with_num_classes(num_classes)
    out = {}
    for ours, key in key_map(cfg).items():
        shape = cfg.param_shapes[ours]
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        out[key] = (rng.uniform(-1, 1, shape) / np.sqrt(fan_in) if len(shape) > 1
                    else rng.uniform(-0.1, 0.1, shape)).astype(np.float32)
    return out


def _images(n=2, size=224, seed=1):
    """Mean-subtracted pixels (our input) and the torchvision-normalised same images."""
    px = np.random.default_rng(seed).random((n, 3, size, size)).astype(np.float32)
    ours = px - np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1)
    return ours, ours / np.asarray(STD, np.float32).reshape(1, 3, 1, 1)


def test_safetensors_round_trip_without_torch(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.int64)}
    write_safetensors(tmp_path / "x.safetensors", arrays)
    back = read_safetensors(tmp_path / "x.safetensors")
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
        assert back[k].dtype == arrays[k].dtype


def test_safetensors_matches_the_reference_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed")
    arrays = {"features.0.weight": np.random.default_rng(0).random((4, 3, 2, 2), np.float32)}
    st.save_file(arrays, str(tmp_path / "theirs.safetensors"))
    np.testing.assert_array_equal(read_safetensors(tmp_path / "theirs.safetensors")["features.0.weight"],
                                  arrays["features.0.weight"])
    write_safetensors(tmp_path / "ours.safetensors", arrays)
    np.testing.assert_array_equal(st.load_file(str(tmp_path / "ours.safetensors"))["features.0.weight"],
                                  arrays["features.0.weight"])


def test_torchvision_mapping_round_trip(small_tv):
    cfg = small_tv[1]
    state = _tv_state(cfg)
    params = from_torchvision(state, cfg)
    assert set(params) == set(cfg.param_shapes)
    back = to_torchvision(params, cfg)
    assert list(back) == list(key_map(cfg).values())
    for k, v in state.items():
        np.testing.assert_allclose(back[k], v, rtol=2e-7, atol=0)


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.pop("features.3.bias"), "missing key.*features.3.bias"),
    (lambda s: s.update({"features.1.weight": np.zeros(1, np.float32)}),
     "unexpected key.*features.1.weight"),
    (lambda s: s.update({"features.6.weight": np.zeros((48, 24, 5, 5), np.float32)}),
     r"features.6.weight has shape \(48, 24, 5, 5\).*needs \(48, 24, 3, 3\)"),
])
def test_bad_state_dicts_name_the_key(small_tv, edit, match):
    state = _tv_state(small_tv[1])
    edit(state)
    with pytest.raises(ConvertError, match=match):
        from_torchvision(state, small_tv[1], "alexnet.pth")


def test_other_configs_are_refused():
    with pytest.raises(ConvertError, match="not torchvision's AlexNet"):
        key_map(load_config("alexnet"))


def _cli_import(tmp_path, config_path, state, name="alexnet.safetensors", extra=()):
    write_safetensors(tmp_path / name, state)
    out = tmp_path / "tv.npz"
    assert convert_main(["--from-torchvision", str(tmp_path / name), "--out", str(out),
                         "--config", str(config_path), *extra]) == 0
    return out


def test_safetensors_import_export_round_trip(tmp_path, small_tv):
    state = _tv_state(small_tv[1], num_classes=10)  # a fine-tuned classifier: fc8 sets the count
    (tmp_path / "names.txt").write_text("".join(f"thing {i}\n" for i in range(10)))
    out = _cli_import(tmp_path, small_tv[0], state,
                      extra=["--class-names", str(tmp_path / "names.txt")])
    c = ckpt.load(out)
    assert c.meta["num_classes"] == 10 and c.meta["classes"][3] == "thing 3"
    assert convert_main(["--checkpoint", str(out), "--to-torchvision",
                         str(tmp_path / "back.safetensors")]) == 0
    back = read_safetensors(tmp_path / "back.safetensors")
    for k, v in state.items():
        np.testing.assert_allclose(back[k], v, rtol=2e-7, atol=0)


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    """torchvision's real AlexNet (random torch init) saved as .pth, imported by the CLI,
    and torch's logits for two images."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
    from torch_alexnet import AlexNet
    tmp = tmp_path_factory.mktemp("torch")
    torch.manual_seed(0)
    model = AlexNet().eval()
    torch.save(model.state_dict(), tmp / "alexnet.pth")
    out = tmp / "tv.npz"
    assert convert_main(["--from-torchvision", str(tmp / "alexnet.pth"), "--out", str(out)]) == 0
    ours_x, tv_x = _images(n=1)
    with torch.no_grad():
        want = model(torch.from_numpy(tv_x)).numpy().astype(np.float64)
    return ckpt.load(out).params, ours_x, want


def test_torchvision_logits_on_every_backend(torch_run, backend):
    """A .pth written by torch, imported by the CLI, gives torch's logits on our kernels."""
    params, ours_x, want = torch_run
    net = Net("alexnet-torchvision", backend=backend)
    net.load_state_dict(params)
    got = net.backend.to_numpy(net.forward(ours_x, train=False)).astype(np.float64)
    err = np.abs(got - want).max()
    assert err <= 2e-5 * np.abs(want).max(), f"max |ours - torch| = {err:.3g}"  # float32 sums
    assert (np.argsort(-got, axis=1)[:, :5] == np.argsort(-want, axis=1)[:, :5]).all()


def test_pth_export_loads_into_torch(tmp_path, small_tv):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
    from torch_alexnet import AlexNet
    out = _cli_import(tmp_path, small_tv[0], _tv_state(small_tv[1]))
    assert convert_main(["--checkpoint", str(out), "--to-torchvision", str(tmp_path / "a.pth")]) == 0
    model = AlexNet(**SMALL)
    model.load_state_dict(torch.load(tmp_path / "a.pth", weights_only=True))  # strict: every key


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import builtins
    real = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch":
            raise ImportError("no torch")
        return real(name, *a, **k)

    (tmp_path / "a.pth").write_bytes(b"x")
    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert convert_main(["--from-torchvision", str(tmp_path / "a.pth"), "--out",
                         str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs PyTorch" in err and ".safetensors" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("name", list_configs())
def test_onnx_export_runs_in_onnxruntime(tmp_path, name):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pytest.importorskip("onnx", reason="onnx is not installed")
    from pyalexnet.convert import export_onnx
    # the AlexNets with every layer but fewer filters: seconds, not minutes
    config = shrunk_config(name, tmp_path)[1] if name.startswith("alexnet") else load_config(name)
    for mode in ("inverted", "classic"):
        net = Net(config, backend="numpy", dropout_mode=mode, bias_init="caffe")
        x = np.random.default_rng(0).standard_normal((2,) + net.config.input_shape).astype(np.float32)
        ours = net.forward(x, train=False).astype(np.float64)
        path = export_onnx(tmp_path / f"{mode}.onnx", net.config, net.state_dict(), mode)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        theirs = sess.run(["logits"], {"images": x})[0]
        err = np.abs(theirs - ours).max()
        assert err <= 2e-5 * np.abs(ours).max(), f"{name} {mode}: max diff {err:.3g}"


def test_onnx_cli_from_a_checkpoint(tmp_path, capsys):
    pytest.importorskip("onnx", reason="onnx is not installed")
    cfg = load_config("cifar-small")
    ckpt.save(tmp_path / "c.npz", init_params(cfg), {},
              {"options": {"config": "cifar-small", "crop": 32, "resize": 40,
                           "dropout_mode": "classic"}, "num_classes": 10})
    assert convert_main(["--checkpoint", str(tmp_path / "c.npz"), "--to-onnx",
                         str(tmp_path / "m.onnx")]) == 0
    assert "dropout classic" in capsys.readouterr().out
    assert (tmp_path / "m.onnx").stat().st_size > 4 * cfg.num_params


def test_fine_tune_from_torchvision_weights(tmp_path, small_tv):
    """--init-from a converted checkpoint: every pretrained layer is loaded; the data have 10
    classes, not 1000, so fc8 starts fresh. The adaptive pool lets a 64-pixel crop use the
    224-pixel weights."""
    from pyalexnet import train
    from pyalexnet.data import ensure_builtin_dataset
    root = ensure_builtin_dataset(tmp_path / "data", num_classes=10, train_per_class=2,
                                  val_per_class=1, image_size=72, seed=3)
    state = _tv_state(small_tv[1])
    out = _cli_import(tmp_path, small_tv[0], state)
    run = tmp_path / "run"
    assert train.main(["--config", str(small_tv[0]), "--data", str(root), "--out", str(run),
                       "--init-from", str(out), "--crop", "64", "--resize", "72",
                       "--batch-size", "4", "--max-steps", "1", "--lr", "1e-30",
                       "--backend", "numpy", "--eval-every", "0"]) == 0
    got, want = ckpt.load(run).params, ckpt.load(out).params
    for k in want:
        if k.startswith("fc8."):
            assert got[k].shape[0] == 10
        else:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
