"""SIGKILL in the middle of a checkpoint write, then --resume: the run ends bit for bit
where an uninterrupted one does (same data order, dropout masks, lr schedule state)."""
import os
import subprocess
import sys

from test_train import _args, _assert_same_state, _losses, reference_run, tiny  # noqa: F401

from pyalexnet import checkpoint as ckpt

# Runs training; the KILL_AT_SAVE-th checkpoint write stops half way through its bytes,
# flushed to disk, and the process SIGKILLs itself there.
WRAPPER = """
import io, os, signal, sys
import pyalexnet.checkpoint as c
original, calls, kill_at = c.atomic_write_bytes, [0], int(os.environ["KILL_AT_SAVE"])

def atomic_write_bytes(path, write):
    calls[0] += 1
    if calls[0] != kill_at:
        return original(path, write)

    def torn(f):
        buf = io.BytesIO()
        write(buf)
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    return original(path, torn)

c.atomic_write_bytes = atomic_write_bytes
from pyalexnet.train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train(argv, kill_at=0):
    env = dict(os.environ, KILL_AT_SAVE=str(kill_at))
    return subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True,
                          env=env, timeout=300)


def test_sigkill_during_a_checkpoint_write_then_resume(tiny, tmp_path, reference_run):  # noqa: F811
    out = tmp_path / "run"
    # Stop mid-epoch (step 2 of 4) with a complete checkpoint.
    p = _train(_args(tiny, out, "--epochs", "2", "--max-steps", "2"))
    assert p.returncode == 0, p.stderr
    # Resume; killed while writing the end-of-epoch-1 checkpoint (step 4).
    p = _train(["--resume", str(out)], kill_at=1)
    assert p.returncode == -9, p.stdout + p.stderr
    assert list(out.glob(".checkpoint.npz.*.tmp")), "the kill did not land inside the write"
    assert ckpt.load(out).step == 2  # the torn file never replaced the good one
    p = _train(["--resume", str(out)])
    assert p.returncode == 0, p.stderr
    _assert_same_state(out, reference_run)
    assert _losses(out) == _losses(reference_run)
    assert ckpt.load(out).meta["schedule_state"] == ckpt.load(reference_run).meta["schedule_state"]
    assert ckpt.load(out).meta["lr"] == ckpt.load(reference_run).meta["lr"]
