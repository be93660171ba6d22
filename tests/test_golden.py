"""Golden runs: the weights after 20 training steps must not change by one bit when the
code is reorganised.

Each case trains through the real command line (`pyalexnet.train.main`: data loading and
augmentation, the mean, initialisation, dropout seeds, the schedule, SGD with momentum) on
a small generated dataset, then compares the checkpoint's parameters and momentum buffers
with the ones recorded in tests/golden/. The recording was made before the architecture
refactor (one class per layer, one engine); refactors must keep them bit-identical.

Recording is deliberate, never automatic: ``python tests/test_golden.py --record``.
The comparison is exact where the recording machine's NumPy, BLAS build and BLAS kernels
(OpenBLAS picks them per CPU: threadpoolctl names them) are the ones running; elsewhere
NumPy's matmul rounds differently, 20 steps amplify that, and each tensor must be within
RELATIVE_NORM of the recording. Seen between OpenBLAS's Haswell kernels and the first
recording machine's: 1.1e-5 for the weights (cifar-small's conv1 bias) and 9.4e-4 for the
momentum (conv1's weights), which holds only the last steps' gradients.
"""
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
STEPS = 20
RELATIVE_NORM = {"param": 1e-4, "velocity": 1e-2}  # ||got - recorded|| / ||recorded||
# (config, backend, devices)
CASES = [("cifar-small", "numpy", 1), ("cifar-small", "emu", 1),
         ("cifar-towers", "numpy", 1), ("cifar-towers", "numpy", 2),
         ("cifar-towers", "emu", 1), ("cifar-towers", "emu", 2)]


def case_id(case):
    config, backend, devices = case
    return f"{config}-{backend}-x{devices}"


def platform_fingerprint():
    """What decides NumPy's float32 rounding: its version and the BLAS it runs on."""
    try:
        from threadpoolctl import threadpool_info
        blas = sorted(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                      for i in threadpool_info() if i.get("user_api") == "blas")
    except ImportError:
        cfg = np.show_config(mode="dicts") or {}
        blas = [str(cfg.get("Build Dependencies", {}).get("blas", {}).get("name"))]
    return {"numpy": np.__version__, "blas": blas, "machine": platform.machine(),
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}


def train_case(case, root, out):
    """Run the training CLI for STEPS steps; return (params, velocities) of the checkpoint."""
    from pyalexnet import checkpoint as ckpt
    from pyalexnet import train

    config, backend, devices = case
    argv = ["--config", config, "--data", str(root), "--out", str(out), "--backend", backend,
            "--devices", str(devices), "--batch-size", "8", "--max-steps", str(STEPS),
            "--limit-val", "16", "--log-every", "5", "--seed", "7", "--lr", "0.02"]
    assert train.main(argv) == 0
    c = ckpt.load(out)
    assert c.step == STEPS
    return c.params, c.velocities


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from pyalexnet.data import ensure_builtin_dataset

    # 10 classes x 12 images: 20 steps of 8 cross an epoch boundary (15 steps an epoch).
    return ensure_builtin_dataset(tmp_path_factory.mktemp("golden") / "data", num_classes=10,
                                  train_per_class=12, val_per_class=2, image_size=40, seed=5)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_weights_after_20_steps_are_unchanged(case, data_root, tmp_path, capsys):
    golden = GOLDEN / f"{case_id(case)}.npz"
    assert golden.exists(), f"{golden} is missing: record it with --record"
    meta = json.loads((GOLDEN / "platform.json").read_text())
    params, velocities = train_case(case, data_root, tmp_path / "run")
    capsys.readouterr()
    want = np.load(golden)
    got = {**{f"param/{k}": v for k, v in params.items()},
           **{f"velocity/{k}": v for k, v in velocities.items()}}
    assert sorted(got) == sorted(want.files)
    exact = meta == platform_fingerprint()
    for k in want.files:
        if exact:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{case_id(case)} {k}")
        else:
            diff = np.linalg.norm(got[k].astype(np.float64) - want[k])
            bound = RELATIVE_NORM[k.split("/")[0]] * np.linalg.norm(want[k].astype(np.float64))
            assert diff <= bound, \
                f"{case_id(case)} {k}: off by {diff:.3g} in norm (another BLAS: tolerance)"


def record():
    import tempfile

    from pyalexnet.data import ensure_builtin_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_builtin_dataset(Path(tmp) / "data", num_classes=10, train_per_class=12,
                                      val_per_class=2, image_size=40, seed=5)
        GOLDEN.mkdir(exist_ok=True)
        for case in CASES:
            params, velocities = train_case(case, root, Path(tmp) / case_id(case))
            np.savez_compressed(GOLDEN / f"{case_id(case)}.npz",
                                **{f"param/{k}": v for k, v in params.items()},
                                **{f"velocity/{k}": v for k, v in velocities.items()})
    (GOLDEN / "platform.json").write_text(json.dumps(platform_fingerprint(), indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_golden.py --record")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    record()
