"""Data parallel over processes (torchrun, gloo, numpy backend): N ranks at global batch B
reach the weights of one process at batch B, to float32 reduction-order tolerance (plain,
two towers per rank, and the one weird trick: fc layers split over the ranks); a dying
rank stops the others with a message naming it; restarts and other rank counts resume."""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import assert_matches_reference

torch = pytest.importorskip("torch", reason="the distributed extra (pip install torch) is "
                                            "not installed")

BATCH = 16
MAX_POSITIONS = 32 * 32  # the largest conv output map of cifar-small and cifar-towers


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from pyalexnet.data import ensure_builtin_dataset

    # 80 training images: 5 steps of 16 an epoch
    return ensure_builtin_dataset(tmp_path_factory.mktemp("dist") / "data", num_classes=10,
                                  train_per_class=8, val_per_class=1, image_size=40, seed=3)


def _args(config, root, out, steps, devices=1, parallel="dp"):
    return ["--config", config, "--data", str(root), "--out", str(out), "--backend", "numpy",
            "--devices", str(devices), "--parallel", parallel, "--batch-size", str(BATCH),
            "--max-steps", str(steps), "--limit-val", "10", "--log-every", "1", "--seed", "3",
            "--lr", "0.02"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher, args, env=None):
    """torchrun with ``launcher`` options running the training CLI (a Popen)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "pyalexnet.train",
           *args]
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYALEXNET_DIST_TIMEOUT": "30", **(env or {})}
    return subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def torchrun(args, ranks=2, env=None, restarts=0, timeout=120):
    """Run the training CLI under torchrun on this machine: (return code, output, seconds)."""
    t0 = time.monotonic()
    p = _launch(["--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1", "--master-port",
                 str(_free_port()), "--max-restarts", str(restarts)], args, env)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out, time.monotonic() - t0


def one_process(args):
    from pyalexnet import train

    assert train.main(args) == 0


def assert_same_weights(a, b):
    from pyalexnet import checkpoint as ckpt

    ca, cb = ckpt.load(a), ckpt.load(b)
    assert ca.step == cb.step
    for part in ("params", "velocities"):
        pa, pb = getattr(ca, part), getattr(cb, part)
        assert sorted(pa) == sorted(pb)
        for k in pa:
            # the gradients are sums over the global batch, and for a conv layer's weights
            # over its output positions too, added up in another order, step after step
            assert_matches_reference(pa[k], pb[k], reduction=BATCH * MAX_POSITIONS,
                                     rounds=ca.step, what=f"{part} {k}")


@pytest.mark.parametrize("config,devices,parallel", [
    ("cifar-small", 1, "dp"), ("cifar-towers", 2, "dp"), ("cifar-towers", 1, "owt")],
    ids=["data-parallel", "hybrid-two-towers", "one-weird-trick"])
def test_two_ranks_equal_one_process(config, devices, parallel, data_root, tmp_path, capsys):
    one_process(_args(config, data_root, tmp_path / "one", 4, devices))
    capsys.readouterr()
    rc, out, _ = torchrun(_args(config, data_root, tmp_path / "two", 4, devices, parallel))
    assert rc == 0, out
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    # rank 0 alone prints: one banner, one line per step
    assert out.count("pyalexnet.train: ") == 1 and out.count("(step 4)") == 1, out


def test_two_nodes_equal_one_process(data_root, tmp_path, capsys):
    # two torchrun agents ("machines") of one rank each, meeting through a c10d rendezvous
    one_process(_args("cifar-small", data_root, tmp_path / "one", 3))
    capsys.readouterr()
    rdzv = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "test"]
    nodes = [_launch(rdzv, _args("cifar-small", data_root, tmp_path / "two", 3))
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_resume_with_another_number_of_ranks(data_root, tmp_path, capsys):
    # 3 steps on 2 ranks, then 3 more in one process == 6 steps in one process
    rc, out, _ = torchrun(_args("cifar-small", data_root, tmp_path / "a", 3))
    assert rc == 0, out
    one_process(["--resume", str(tmp_path / "a"), "--max-steps", "6"])
    one_process(_args("cifar-small", data_root, tmp_path / "ref", 6))
    capsys.readouterr()
    assert_same_weights(tmp_path / "a", tmp_path / "ref")


def test_dying_rank_stops_the_others_with_its_name(data_root, tmp_path):
    rc, out, seconds = torchrun(_args("cifar-small", data_root, tmp_path / "run", 6),
                                env={"PYALEXNET_TEST_DIE_AT": "1:2"})
    assert rc != 0
    assert "rank 1: PYALEXNET_TEST_DIE_AT test hook: dying at step 2" in out
    assert "error: rank 0 of 2: rank 1 (last seen at step 2" in out, out
    assert seconds < 60


def test_max_restarts_resumes_from_the_last_checkpoint(data_root, tmp_path, capsys):
    # rank 1 dies at step 7; the restart resumes from the epoch-end checkpoint (step 5)
    rc, out, _ = torchrun(_args("cifar-small", data_root, tmp_path / "run", 8),
                          env={"PYALEXNET_TEST_DIE_AT": "1:7"}, restarts=1)
    assert rc == 0, out
    assert "resuming at step 5" in out, out
    one_process(_args("cifar-small", data_root, tmp_path / "ref", 8))
    capsys.readouterr()
    assert_same_weights(tmp_path / "run", tmp_path / "ref")


@pytest.mark.parametrize("argv,env,message", [
    (["--batch-size", "15"], {"WORLD_SIZE": "2"},
     "--batch-size 15 is the global batch and must be divisible by the 2 ranks"),
    ([], {"WORLD_SIZE": "2"}, "2 ranks (torchrun) need --out DIR"),
    (["--parallel", "owt", "--config", "cifar-towers", "--devices", "2"], {"WORLD_SIZE": "2"},
     "--parallel owt runs one device per rank: use --devices 1"),
])
def test_bad_distributed_input_is_one_line_exit_2(argv, env, message, monkeypatch, capsys,
                                                   tmp_path, data_root):
    from pyalexnet import train

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = ["--data", str(data_root), "--backend", "numpy", *argv]
    if "--out" not in message:
        args += ["--out", str(tmp_path / "run")]
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


class _RecordingDist:
    """A one-rank stand-in for torch.distributed that records when all-reduces start."""

    def __init__(self, log):
        self.log = log

    def all_reduce(self, tensor, async_op=False):
        self.log.append(("all_reduce", tensor.numel()))
        return type("Work", (), {"wait": lambda self: None})()


def test_buckets_start_while_backward_runs():
    from pyalexnet.net import Net
    from pyalexnet.distributed import World

    log = []
    world = World(0, 1, 0, _RecordingDist(log), None)
    ref = Net("cifar-small", backend="numpy", seed=1)
    net = Net("cifar-small", backend="numpy", seed=1, world=world)
    net.engine.bucket_bytes = 40_000  # several buckets for this small net
    inner_done = net.engine.inner._grads_done
    net.engine.inner._grads_done = lambda names: (log.append(("grads", tuple(names))),
                                                  inner_done(names))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    labels = np.array([1, 2, 3, 4], np.int32)
    loss, _ = net.train_step_grads(x, labels, seed=5)
    start = next(i for i, (k, _) in enumerate(log) if k == "grads")  # before: batch sizes
    reduces = [i for i, (k, _) in enumerate(log) if k == "all_reduce" and i > start]
    conv1 = next(i for i, (k, v) in enumerate(log) if k == "grads" and "conv1.w" in v)
    # several buckets, the first started before backward reached the first layer
    assert len(reduces) > 1 and reduces[0] < conv1
    assert sum(log[i][1] for i in reduces) == net.num_params()
    # one rank: the same gradients as the plain engine
    ref_loss, _ = ref.train_step_grads(x, labels, seed=5)
    assert loss == ref_loss
    for k, g in ref.grad_state_dict().items():
        np.testing.assert_array_equal(net.grad_state_dict()[k], g)
