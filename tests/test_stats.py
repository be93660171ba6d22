"""Per-layer statistics (--stats-every): what metrics.jsonl holds, layers.png, warnings."""
import json

import numpy as np
import pytest
from test_train import _args, _assert_same_state, tiny  # noqa: F401

from pyalexnet import train
from pyalexnet.net import Net
from pyalexnet.train.stats import relu_zero_fractions


def test_stats_records_plot_and_warnings(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    # lr 1 makes the update/weight ratio leave [1e-5, 1e-1]: a warning line.
    assert train.main(_args(tiny, out, "--epochs", "1", "--stats-every", "2", "--lr", "1")) == 0
    text = capsys.readouterr().out
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    layers = [r for r in recs if r["kind"] == "layers"]
    assert [r["step"] for r in layers] == [2, 4]
    conv1 = layers[0]["layers"]["conv1"]
    assert {"weight_rms", "grad_rms", "update_rms", "update_ratio", "relu_zero"} <= set(conv1)
    assert conv1["update_ratio"] == pytest.approx(conv1["update_rms"] / conv1["weight_rms"])
    assert 0 <= conv1["relu_zero"] <= 1 and "relu_zero" not in layers[0]["layers"]["fc"]
    assert "update/weight ratio" in text and "outside [1e-05, 0.1]" in text
    assert (out / "layers.png").stat().st_size > 1000


def test_relu_zero_fraction_counts_zeros():
    net = Net("cifar-small", backend="numpy")
    state = net.state_dict()
    state["conv1.b"][:] = -100.0  # every conv1 output negative: all dead
    net.load_state_dict(state)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    fr = relu_zero_fractions(net, x)
    assert fr["conv1"] == 1.0 and set(fr) == {"conv1", "conv2", "conv3"}


@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_stats_do_not_change_training(tiny, tmp_path, backend):  # noqa: F811
    """The statistics only read: the same steps with and without them end bit for bit alike
    (on emu also with the step's fixed buffers, pyalexnet.memory)."""
    runs = []
    for every in ("0", "1"):
        out = tmp_path / f"every{every}"
        argv = _args(tiny, out, "--max-steps", "3", "--stats-every", every, "--eval-every", "0")
        argv[argv.index("--backend") + 1] = backend
        assert train.main(argv) == 0
        runs.append(out)
    _assert_same_state(*runs)
