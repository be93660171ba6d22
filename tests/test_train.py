"""Training CLI: end to end, exact resume, Ctrl-C, NaN stop, --help, pictures, schedule.

A tiny network (a config written here: 16x16 input, two small convolutions, dropout, one
fc layer) on a tiny built-in dataset keeps every run to a few seconds.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyalexnet import checkpoint as ckpt
from pyalexnet import evaluate, plots, train
from pyalexnet.rng import step_seed

TINY_TOML = """
name = "tiny"
description = "a very small net for the training tests"
towers = 1
num_classes = 10

[input]
size = 16
resize = 20
mean = "dataset"
flip = true

[train]
batch_size = 8
lr = 0.05
epochs = 2
lr_schedule = "step"
lr_step_epochs = [1]

[[layer]]
name = "conv1"
type = "conv"
filters = 6
size = 3
pad = 1
init_std = 0.2

[[layer]]
name = "relu1"
type = "relu"

[[layer]]
name = "pool1"
type = "maxpool"
size = 3
stride = 2

[[layer]]
name = "norm1"
type = "lrn"
size = 3

[[layer]]
name = "conv2"
type = "conv"
filters = 8
size = 3
pad = 1
init_std = 0.1
bias_init = 1.0

[[layer]]
name = "relu2"
type = "relu"

[[layer]]
name = "pool2"
type = "maxpool"
size = 3
stride = 2

[[layer]]
name = "drop"
type = "dropout"
p = 0.5

[[layer]]
name = "fc"
type = "fc"
outputs = 10
init_std = 0.05
"""

# 32 training images in batches of 8: 4 steps per epoch.
STEPS_PER_EPOCH = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config path, data root) shared by the module's runs."""
    from pyalexnet.data import ensure_builtin_dataset

    base = tmp_path_factory.mktemp("tiny")
    cfg = base / "tiny.toml"
    cfg.write_text(TINY_TOML)
    root = ensure_builtin_dataset(base / "data", num_classes=10, train_per_class=4,
                                  val_per_class=2, image_size=20, seed=3)
    return cfg, Path(root)


def _args(tiny, out, *extra):
    cfg, root = tiny
    return ["--config", str(cfg), "--data", str(root), "--out", str(out), "--limit-train", "32",
            "--limit-val", "16", "--log-every", "1", "--backend", "numpy", *extra]


def _run(argv, capsys):
    rc = train.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _losses(run_dir):
    recs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if r["kind"] == "train"]


def _assert_same_state(a, b):
    ca, cb = ckpt.load(a), ckpt.load(b)
    assert ca.step == cb.step and ca.epoch == cb.epoch
    assert ca.params.keys() == cb.params.keys() and ca.velocities.keys() == cb.velocities.keys()
    for k in ca.params:
        np.testing.assert_array_equal(ca.params[k], cb.params[k], err_msg=k)
        np.testing.assert_array_equal(ca.velocities[k], cb.velocities[k], err_msg=k)


@pytest.fixture(scope="module")
def reference_run(tiny, tmp_path_factory):
    """Two uninterrupted epochs on numpy (8 steps), the trajectory the others must match."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert train.main(_args(tiny, out, "--epochs", "2")) == 0
    return out


# ---- command line --------------------------------------------------------------------------

FLAGS = ["--config", "--data", "--cifar", "--backend", "--devices", "--epochs", "--batch-size",
         "--lr", "--momentum", "--weight-decay", "--schedule", "--lr-steps",
         "--plateau-patience", "--bias-init", "--dropout-mode", "--crop", "--workers", "--seed",
         "--out", "--resume", "--eval-every", "--limit-train", "--limit-val", "--ten-crop",
         "--max-steps", "--log-every", "--precision", "--conv-algo", "--cuda-graph"]


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text, f"--help does not mention {flag}"
    for action in train.build_parser()._actions:
        if action.dest != "help":
            assert action.help and "default" in action.help, \
                f"{action.option_strings}: help must say its default"


def test_bad_arguments_are_rejected(capsys, tmp_path):
    with pytest.raises(SystemExit):
        train.main(["--lr", "-1"])
    with pytest.raises(SystemExit):
        train.main(["--lr-steps", "30,10"])
    assert train.main(["--config", "no-such-config", "--out", str(tmp_path / "x")]) == 2
    assert "no config named" in capsys.readouterr().err


# ---- end to end ------------------------------------------------------------------------------

def test_end_to_end_cli_and_evaluate(tiny, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYALEXNET_BACKEND="numpy")
    p = subprocess.run([sys.executable, "-m", "pyalexnet.train", *_args(tiny, out, "--epochs", "2",
                                                                       "--ten-crop")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "HELD-OUT TOP-1 ACCURACY" in p.stdout
    assert "img/s" in p.stdout and "data wait" in p.stdout  # progress lines (not a TTY)
    for name in ("checkpoint.npz", "metrics.jsonl", "curves.png", "filters.png", "results.json"):
        assert (out / name).is_file(), name
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in recs]
    assert kinds.count("train") == 2 * STEPS_PER_EPOCH and kinds.count("epoch") == 2
    assert kinds[0] == "config" and kinds[-1] == "final"
    for r in recs:
        if r["kind"] == "epoch":
            assert {"train_loss", "val_top1", "val_top5", "lr"} <= set(r)
    # The step schedule divided the lr by 10 after epoch 1 ([train] lr_step_epochs = [1]).
    lrs = [r["lr"] for r in recs if r["kind"] == "epoch"]
    assert lrs == pytest.approx([0.05, 0.005])
    c = ckpt.load(out)
    assert c.step == 2 * STEPS_PER_EPOCH and c.epoch == 2 and len(c.meta["history"]) == 2
    results = json.loads((out / "results.json").read_text())
    assert {"centre_crop", "ten_crop"} <= set(results)

    # python -m pyalexnet.evaluate reproduces the centre-crop numbers and adds 10 crops.
    p = subprocess.run([sys.executable, "-m", "pyalexnet.evaluate", str(out), "--ten-crop",
                        "--json", "--limit", "16", "--backend", "numpy"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    ev = json.loads(p.stdout)
    centre, ten = ev["results"]
    assert not centre["ten_crop"] and ten["ten_crop"]
    assert centre["images"] == ten["images"] == 16
    assert centre["top1"] == pytest.approx(results["centre_crop"]["top1"])
    assert centre["loss"] == pytest.approx(results["centre_crop"]["loss"], rel=1e-5)
    assert ten["top1"] == pytest.approx(results["ten_crop"]["top1"])


def test_default_data_is_the_builtin_dataset(tmp_path, monkeypatch, capsys):
    """No --data: the built-in dataset is generated on first use (here a small one)."""
    from pyalexnet.data import sources

    made = []
    real = sources.ensure_builtin_dataset

    def small(root=None, **kw):
        made.append(root)
        return real(tmp_path / "builtin", train_per_class=3, val_per_class=2)

    monkeypatch.setattr(sources, "ensure_builtin_dataset", small)
    rc, out, _ = _run(["--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "10",
                       "--backend", "numpy", "--log-every", "1"], capsys)
    assert rc == 0 and made
    assert "built-in dataset" in out and "HELD-OUT TOP-1 ACCURACY" in out
    assert ckpt.load(tmp_path / "run").meta["options"]["config"] == "cifar-small"


def test_crop_override_rebuilds_the_net(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, _ = _run(_args(tiny, out, "--crop", "12", "--resize", "14", "--max-steps", "2"), capsys)
    assert rc == 0
    c = ckpt.load(out)
    assert c.meta["options"]["crop"] == 12
    assert c.params["fc.w"].shape == (10, 8 * 2 * 2)  # 12 -> pool 5 -> pool 2
    assert evaluate.main([str(out), "--json", "--backend", "numpy"]) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["images"] == 20  # the whole held-out set, not the run's --limit-val


def test_conv_algo_is_stored_and_carried_on_resume(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, _ = _run(_args(tiny, out, "--conv-algo", "auto", "--max-steps", "2"), capsys)
    assert rc == 0 and ckpt.load(out).meta["options"]["conv_algo"] == "auto"
    rc, _, _ = _run(["--resume", str(out), "--max-steps", "3", "--backend", "numpy"], capsys)
    c = ckpt.load(out)
    assert rc == 0 and c.step == 3 and c.meta["options"]["conv_algo"] == "auto"
    with pytest.raises(SystemExit) as e:
        train.main(_args(tiny, tmp_path / "bad", "--conv-algo", "fast"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--conv-algo: invalid choice: 'fast'" in err


# ---- exact resume ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_resume_continues_bit_for_bit(tiny, tmp_path, backend, capsys, request):
    if backend == "numpy":
        ref = request.getfixturevalue("reference_run")
    else:
        ref = tmp_path / "ref"
        assert train.main(_args(tiny, ref, "--epochs", "2", "--backend", backend)) == 0
    out = tmp_path / "resumed"
    # Stop in the middle of the first epoch, resume, stop again in the second, resume.
    rc, text, _ = _run(_args(tiny, out, "--epochs", "2", "--backend", backend,
                             "--max-steps", "3"), capsys)
    assert rc == 0 and "reached --max-steps 3" in text
    assert ckpt.load(out).step == 3
    rc, text, _ = _run(["--resume", str(out), "--max-steps", "6", "--log-every", "1"], capsys)
    assert rc == 0 and "resuming at step 3" in text
    rc, _, _ = _run(["--resume", str(out / "checkpoint.npz"), "--log-every", "1"], capsys)
    assert rc == 0
    assert _losses(out) == _losses(ref)
    assert len(_losses(out)) == 2 * STEPS_PER_EPOCH
    _assert_same_state(out, ref)


def test_keyboard_interrupt_saves_a_checkpoint(tiny, tmp_path, reference_run, monkeypatch, capsys):
    from pyalexnet.net import Net

    real = Net.train_step_grads
    calls = []

    def interrupted(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # in the middle of step 3's forward/backward
        return real(self, *a, **kw)

    monkeypatch.setattr(Net, "train_step_grads", interrupted)
    out = tmp_path / "run"
    rc, text, _ = _run(_args(tiny, out, "--epochs", "2"), capsys)
    assert rc == train.EXIT_INTERRUPTED
    assert "interrupted: saved" in text and "--resume" in text
    assert ckpt.load(out).step == 2  # step 3 never happened
    monkeypatch.setattr(Net, "train_step_grads", real)
    rc, _, _ = _run(["--resume", str(out)], capsys)
    assert rc == 0
    assert _losses(out) == _losses(reference_run)
    _assert_same_state(out, reference_run)


def test_ctrl_c_finishes_the_step_then_saves(tiny, tmp_path, monkeypatch, capsys):
    from pyalexnet.net import Net

    real = Net.train_step_grads
    calls = []

    def with_sigint(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # the user presses Ctrl-C during step 3
        return real(self, *a, **kw)

    monkeypatch.setattr(Net, "train_step_grads", with_sigint)
    # Python's default handler, or SIG_IGN where the shell started us in the background
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    rc, text, _ = _run(_args(tiny, out, "--epochs", "2"), capsys)
    assert rc == train.EXIT_INTERRUPTED
    assert "Ctrl-C" in text
    assert ckpt.load(out).step == 3
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


# ---- NaN -------------------------------------------------------------------------------------

def test_nan_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, _ = _run(_args(tiny, out, "--epochs", "1"), capsys)
    assert rc == 0
    good = (out / "checkpoint.npz").read_bytes()
    # An absurd learning rate blows the weights up within a few steps.
    rc, _, err = _run(["--resume", str(out), "--epochs", "4", "--lr", "1e12"], capsys)
    assert rc == train.EXIT_NAN
    assert "diverged" in err and "step" in err and "last good checkpoint" in err
    assert (out / "checkpoint.npz").read_bytes() == good
    assert ckpt.load(out).step == STEPS_PER_EPOCH
    kinds = [json.loads(line)["kind"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert kinds[-1] == "diverged"


def test_nan_before_any_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    from pyalexnet.net import Net

    real = Net.train_step_grads
    calls = []

    def nan_at_2(self, *a, **kw):
        calls.append(1)
        loss, logits = real(self, *a, **kw)  # the loss as the loop asks for it: an array
        return (np.full_like(loss, np.nan) if len(calls) == 2 else loss), logits

    monkeypatch.setattr(Net, "train_step_grads", nan_at_2)
    out = tmp_path / "run"
    rc, _, err = _run(_args(tiny, out, "--epochs", "1"), capsys)
    assert rc == train.EXIT_NAN
    assert "the loss is nan at step 2" in err and "no checkpoint was written" in err
    assert not (out / "checkpoint.npz").exists()


# ---- pictures --------------------------------------------------------------------------------

def test_run_pictures_are_valid_pngs(reference_run):
    with Image.open(reference_run / "curves.png") as im:
        assert im.format == "PNG" and im.size == (1200, 480)
        im.verify()
    with Image.open(reference_run / "filters.png") as im:
        assert im.format == "PNG"
        assert 40 < im.width < 1000 and 40 < im.height < 1000
        colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 10  # not a blank image


def test_filter_grid_layout_and_normalisation(rng):
    w = rng.normal(size=(96, 3, 11, 11)).astype(np.float32) * rng.uniform(0.01, 10, (96, 1, 1, 1))
    img = plots.filter_grid(w, towers=2, scale=4, gap=2)
    # 16 columns, two towers of 3 rows each (the paper's Figure 3 layout).
    assert img.size == (16 * (44 + 2) + 2, 2 * (3 * (44 + 2) + 2) + 8)
    a = np.asarray(img)
    tile = a[2:46, 2:46]  # the first filter, normalised on its own to the full range
    assert tile.min() == 0 and tile.max() == 255
    grey = plots.filter_grid(rng.normal(size=(8, 5, 3, 3)))  # not RGB: shown as grey
    g = np.asarray(grey)
    assert (g[..., 0] == g[..., 1]).all()


def test_curves_without_data_still_draw(tmp_path):
    p = plots.plot_curves(tmp_path / "c.png", [], [])
    with Image.open(p) as im:
        assert im.format == "PNG"


# ---- schedule --------------------------------------------------------------------------------

def test_plateau_schedule():
    s = train.Schedule("plateau", patience=2, max_drops=2)
    lr = 0.01
    for err, expect in [(0.5, 0.01), (0.4, 0.01), (0.4, 0.01), (0.45, 0.001), (0.3, 0.001),
                        (0.3, 0.001), (0.3, 0.0001), (0.3, 0.0001), (0.3, 0.0001)]:
        lr = s.after_epoch(lr, 0, err)
        assert lr == pytest.approx(expect)
    assert s.state["drops"] == 2
    assert s.after_epoch(0.1, 0, None) == 0.1  # no measurement, no change


def test_step_schedule():
    s = train.Schedule("step", lr_steps="2,4")
    assert [s.lr_at_epoch_start(1.0, e) for e in range(6)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_step_seeds_are_a_pure_function():
    seeds = [step_seed(7, s) for s in range(1000)]
    assert seeds == [step_seed(7, s) for s in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**32 for s in seeds)
    assert step_seed(8, 0) != step_seed(7, 0)
