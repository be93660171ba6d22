"""The benchmark scripts must not rot: run them on small shapes on the CPU backends."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script, *args):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_kernel_benchmark_small_on_emu(tmp_path):
    out = tmp_path / "kernels.json"
    stdout = run("bench_kernels.py", "--small", "--backend", "emu", "--repeats", "1", "--warmup", "0",
                 "--only", "conv5", "fc8", "lrn2", "pool3", "relu", "dropout", "softmax", "sgd",
                 "--out", str(out))
    result = json.loads(out.read_text())
    names = [r["name"] for r in result["results"]]
    assert "conv5 backward filter v2" in names and "fc8 forward" in names and "sgd fc6 weights" in names
    assert set(result["version_ratios"]) >= {"conv5 backward filter v2", "pool3 backward v2",
                                             "fc8 forward", "conv5 forward winograd4",
                                             "conv5 backward filter winograd2",
                                             "conv5 backward filter [tf32]"}
    # the tensor-core rows run too (the GPU-only baseline aside)
    assert "conv5 backward data [tf32]" in names and "fc8 backward weight [bf16]" in names
    assert {"lrn2 forward v2", "lrn2 backward v2", "pool3 forward v2", "pool3 backward v3",
            "relu1 forward v2", "relu1 backward v2"} <= set(result["version_ratios"])
    assert result["validation_failures"] == [] and result["complete"]
    assert all(r["validated_against"].startswith("NumPy reference") for r in result["results"])
    assert "wrote" in stdout


def test_kernel_benchmark_keeps_the_rows_of_a_run_cut_short(tmp_path, monkeypatch):
    """The GPU check's timeout may stop the table midway: the rows timed so far are in the
    JSON, marked incomplete."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_kernels

    printed = []

    def print_row(r):
        if len(printed) == 2:
            raise KeyboardInterrupt  # what a timeout's signal would do, as the third row ends
        printed.append(r.name)

    monkeypatch.setattr(bench_kernels, "print_row", print_row)
    out = tmp_path / "kernels.json"
    with pytest.raises(KeyboardInterrupt):
        bench_kernels.main(["--small", "--backend", "emu", "--repeats", "1", "--warmup", "0",
                            "--only", "relu1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [r["name"] for r in result["results"]] == printed and not result["complete"]


def test_device_probes_run_and_check_on_emu(tmp_path):
    """bench_device.py on the emulator: every probe runs at a small size and its result is
    checked against NumPy (nothing is timed there)."""
    out = tmp_path / "probe.json"
    stdout = run("bench_device.py", "--backend", "emu", "--out", str(out))
    assert "matched NumPy" in stdout
    r = json.loads(out.read_text())
    assert len(r["read"]) == 2 * 4 and r["latency_ns"] == {"l1": None, "l2": None, "dram": None}
    assert "model" not in r  # no constants from an untimed run


def test_alexnet_benchmark_small_on_numpy(tmp_path):
    out = tmp_path / "alexnet.json"
    run("bench_alexnet.py", "--config", "cifar-small", "--backend", "numpy", "--devices", "1",
        "--batch", "16", "--steps", "12", "--pool", "1", "--no-compile", "--conv-algo", "auto",
        "--out", str(out))
    result = json.loads(out.read_text())
    assert result["conv_algo"] == "auto"
    assert result["steps"] == 12 and result["last_loss"] < result["first_loss"]
    assert result["images_per_second"] > 0
    assert set(result["split_ms"]) == {"forward_ms", "backward_ms", "update_ms", "other_ms"}
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    # Equal work first: PyTorch's loss and gradients from our weights and masks.
    assert result["equal_work_check"]["worst_over_tolerance"] <= 1
    assert result["pytorch_eager_images_per_second"] > 0 and "pytorch_eager_speedup" in result


def test_alexnet_benchmark_captured_steps_on_emu(tmp_path):
    out = tmp_path / "graph.json"
    run("bench_alexnet.py", "--config", "cifar-towers", "--backend", "emu", "--devices", "2",
        "--batch", "4", "--steps", "3", "--pool", "1", "--cuda-graph", "--torch", "off",
        "--out", str(out))
    result = json.loads(out.read_text())
    assert result["cuda_graph"] and result["steps"] == 3 and result["images_per_second"] > 0


def test_alexnet_benchmark_two_towers_equal_work_with_pytorch(tmp_path):
    """The two-tower net on two (emulated) devices against PyTorch's groups=2 twin."""
    pytest.importorskip("torch")
    out = tmp_path / "towers.json"
    run("bench_alexnet.py", "--config", "cifar-towers", "--backend", "numpy", "--devices", "2",
        "--batch", "8", "--steps", "2", "--pool", "1", "--no-compile", "--precision", "bf16",
        "--out", str(out))
    result = json.loads(out.read_text())
    assert result["precision"] == "bf16" and result["pytorch_eager_images_per_second"] > 0
    check = result["equal_work_check"]
    assert check["worst_over_tolerance"] <= 1 and "conv3.w" in check and "fc5.w" in check
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_alexnet_step_modeled_from_the_emulators_counters(tmp_path):
    """--emulated: one steady-state step of our kernels, every launch modeled on an H200."""
    try:
        import pyalexnet._emu_profile  # noqa: F401
    except ImportError:
        pytest.skip("no profiling build (pyalexnet._emu_profile needs clang++)")
    out = tmp_path / "step.json"
    stdout = run("bench_alexnet.py", "--emulated", "--config", "cifar-towers", "--devices", "2",
                 "--batch", "4", "--blocks", "2", "--threads", "2", "--precision", "bf16",
                 "--out", str(out))
    r = json.loads(out.read_text())
    kernels = r["kernels_ms"]
    assert sum(k["launches"] for k in kernels.values()) == r["launches"] > 20
    assert sum(k["ms"] for k in kernels.values()) == pytest.approx(r["modeled_ms_per_step"])
    assert sum(r["modeled_split_ms"].values()) == pytest.approx(r["modeled_ms_per_step"])
    assert min(r["modeled_split_ms"].values()) > 0
    # bf16: the products run on the tensor cores, the update on fp32 master weights
    assert any(k.startswith("conv_mma_") and "bf16" in k for k in kernels)
    assert "sgd_update" in kernels and not any(k.startswith("conv_fwd_") for k in kernels)
    assert "images/s" in stdout


def test_distributed_benchmark_measures_one_and_two_ranks():
    import pytest

    pytest.importorskip("torch", reason="the distributed extra (pip install torch) is not "
                                        "installed")
    stdout = run("bench_distributed.py", "--batch", "8", "--steps", "2", "--warmup", "1")
    assert "| 1 | 8 |" in stdout and "| 2 | 8 |" in stdout
    # the ring model: 2(N-1)/N x 244 MB over 50 GB/s = 8.5 ms at 8 GPUs
    assert "| 8 | InfiniBand NDR (50 GB/s) | 8.5 ms |" in stdout
    assert "61 M parameters = 244 MB FP32 per step" in stdout
