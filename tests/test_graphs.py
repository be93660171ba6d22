"""Captured training steps (pyalexnet.graphs): a replayed step gives the same weights as an
eager one, bit for bit on the emulator, where capture records the launches and replay runs
them again without Python."""
import numpy as np
import pytest

from pyalexnet.backends import KernelError, get_backend
from pyalexnet.graphs import GraphedStep
from pyalexnet.net import Net
from pyalexnet.ops.softmax import count_errors, prepare_labels, topk_ranks


def eager_step(net, x, labels, seed, lr):
    be = net.backend
    with net.repeated_step(x.shape):
        lab = prepare_labels(be, labels)
        loss, logits = net.train_step_grads(x, lab, seed=seed, sync=False)
        ranks = topk_ranks(be, logits, lab)
        loss = float(be.to_numpy(loss)[0])
        net.sgd_step(lr)
    return loss, be.to_numpy(ranks)


CASES = [("cifar-small", 1, "gemm"), ("cifar-towers", 1, "gemm"), ("cifar-towers", 2, "gemm"),
         ("cifar-towers", 2, "auto")]  # auto: Winograd's transforms and workspaces too


@pytest.mark.parametrize("config, devices, conv_algo", CASES)
def test_replayed_steps_equal_eager_steps(config, devices, conv_algo, request):
    if conv_algo == "auto":
        request.getfixturevalue("winograd_where_it_applies")
    be = get_backend("emu", order="forward")
    rng = np.random.default_rng(3)
    eager, graphed = (Net(config, backend=be, devices=devices, seed=2, conv_algo=conv_algo)
                      for _ in range(2))
    shape = (6,) + eager.config.input_shape
    graph = GraphedStep(graphed, shape)
    lrs = [0.02, 0.02, 0.02, 0.002, 0.002]  # a schedule drop: a second update graph
    for step, lr in enumerate(lrs):
        x = rng.standard_normal(shape).astype(np.float32)
        labels = rng.integers(0, eager.config.num_classes, shape[0])
        want = eager_step(eager, x, labels, seed=100 + step, lr=lr)
        got = graph.run(x, labels, 100 + step, lr)
        assert got[0] == want[0], f"step {step}: loss {got[0]} != {want[0]}"
        assert count_errors(got[1]) == count_errors(want[1])
    a, b = eager.state_dict(), graphed.state_dict()
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    assert len(graph.updates) == 2


def test_capture_refuses_to_read_results_on_the_host():
    be = get_backend("emu", order="forward")
    x = be.zeros((4,))
    be.begin_capture()
    try:
        with pytest.raises(KernelError, match="during graph capture"):
            be.to_numpy(x)
    finally:
        assert be.end_capture() == []


def test_numpy_backend_has_no_graphs():
    with pytest.raises(Exception, match="cannot capture graphs"):
        GraphedStep(Net("cifar-small", backend="numpy"), (2, 3, 32, 32)).run(
            np.zeros((2, 3, 32, 32), np.float32), np.zeros(2, np.int64), 0, 0.01)
