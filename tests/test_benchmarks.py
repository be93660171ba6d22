"""The benchmark scripts must not rot: run them on small shapes on the CPU backends."""
import json
import subprocess
import sys
from pathlib import Path

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
    assert "conv5 backward filter" in names and "fc8 forward" in names and "sgd fc6 weights" in names
    # the tensor-core rows run too (the GPU-only baseline aside)
    assert "conv5 backward data [tf32]" in names and "fc8 backward weight [bf16]" in names
    assert result["validation_failures"] == []
    assert all(r["validated_against"].startswith("NumPy reference") for r in result["results"])
    assert "wrote" in stdout


def test_alexnet_benchmark_small_on_numpy(tmp_path):
    out = tmp_path / "alexnet.json"
    run("bench_alexnet.py", "--config", "cifar-small", "--backend", "numpy", "--devices", "1",
        "--batch", "16", "--steps", "12", "--pool", "1", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["steps"] == 12 and result["last_loss"] < result["first_loss"]
    assert result["images_per_second"] > 0
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
