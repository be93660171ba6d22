"""The conv layers' algorithm switch (Net(conv_algo=), --conv-algo): "gemm" runs implicit
GEMM everywhere; "auto" asks the planning cost model for every conv pass, in every engine
(the two-device engine's tower-local layers and its layers that read both towers), and
runs the filter gradient's planned split (version 2) where it stays on implicit GEMM."""
import collections

import numpy as np
import pytest

from pyalexnet.backends.base import Backend
from pyalexnet.config import load_config
from pyalexnet.net import Net


@pytest.fixture
def recorded(monkeypatch, winograd_where_it_applies):
    """Kernels launched, and the passes the cost model was asked about."""
    seen = {"kernels": collections.Counter(), "asked": winograd_where_it_applies}
    real_launch = Backend.launch

    def launch(self, file, kernel, *args, **kw):
        seen["kernels"][kernel] += 1
        return real_launch(self, file, kernel, *args, **kw)

    monkeypatch.setattr(Backend, "launch", launch)
    return seen


def _grads(algo, devices, backend="emu"):
    config = load_config("cifar-towers")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4,) + config.input_shape).astype(np.float32)
    labels = rng.integers(0, config.num_classes, 4).astype(np.int32)
    net = Net(config, backend=backend, devices=devices, seed=1, conv_algo=algo)
    loss, _ = net.train_step_grads(x, net.backend.asarray(labels, dtype=np.int32), seed=3)
    return loss, net.engine.to_grouped(net.grads)


@pytest.mark.parametrize("devices", [1, 2])
def test_auto_asks_the_cost_model_for_every_conv_pass(recorded, devices):
    loss_gemm, gemm = _grads("gemm", devices)
    assert recorded["asked"] == []
    assert not any(k.startswith(("wino", "conv_bwd_filter_v2")) for k in recorded["kernels"])
    recorded["kernels"].clear()

    loss_auto, auto = _grads("auto", devices)
    asked = collections.Counter((p, w[2:]) for p, w in recorded["asked"])
    # conv2 (tower-local) and conv3 (reads both towers) are 3x3: each pass once per layer on
    # one device; on two, conv2 once per tower and conv3 once per (tower, tower) block.
    # conv1 (5x5, the input's layer) needs no data gradient.
    per_pass = {1: 2, 2: 2 + 4}[devices]
    assert asked == {("forward", (3, 3)): per_pass, ("backward_data", (3, 3)): per_pass,
                     ("backward_filter", (3, 3)): per_pass,
                     ("forward", (5, 5)): devices, ("backward_filter", (5, 5)): devices}
    kernels = recorded["kernels"]
    assert kernels["wino2_input_transform"] and kernels["wino2_dy_transform"]
    # conv1 stays on implicit GEMM, with the planned split of its filter gradient
    assert any(k.startswith("conv_bwd_filter_v2") for k in kernels)
    assert not any(k.startswith("conv_bwd_filter_") and "v2" not in k for k in kernels)
    # the same net: Winograd F(2x2) and the other summation order round differently
    assert loss_auto == pytest.approx(loss_gemm, rel=1e-5)
    assert sorted(auto) == sorted(gemm)
    for k in gemm:
        scale = np.abs(gemm[k]).max()
        assert np.abs(auto[k] - gemm[k]).max() <= 1e-4 * scale, k


def test_numpy_backend_takes_the_same_choices(recorded):
    """The references follow the switch too (Winograd's reference where it is picked)."""
    loss_gemm, gemm = _grads("gemm", 1, "numpy")
    loss_auto, auto = _grads("auto", 1, "numpy")
    assert {p for p, _ in recorded["asked"]} == {"forward", "backward_data", "backward_filter"}
    assert loss_auto == pytest.approx(loss_gemm, rel=1e-5)
    for k in gemm:
        assert np.abs(auto[k] - gemm[k]).max() <= 1e-4 * np.abs(gemm[k]).max(), k


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError,
                       match=r"conv_algo must be one of \('gemm', 'auto'\), got 'fast'"):
        Net("cifar-small", backend="numpy", conv_algo="fast")
