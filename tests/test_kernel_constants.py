"""The constants that the CUDA sources and the Python launchers must agree on.

Two checks. Named constants (tile shapes, chunk sizes, block limits, Philox's multipliers)
are read out of the kernel sources and compared with the launchers' values. And every
launch made by a training step of two small nets (one- and two-tower) on the emulator is
checked against the ``__launch_bounds__`` of the kernel it launches, read from the
macro-expanded source: a launcher that asks for more threads than a kernel was compiled
for fails here, on the CPU, instead of at launch on a GPU.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from pyalexnet.backends import Backend, kernel_dir
from pyalexnet.ops import conv, dropout, linear, lrn

DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)\s+(.+?)\s*(?://.*)?$", re.M)


def defines(file):
    """{name: text} of a kernel file's object-like #defines."""
    return {m.group(1): m.group(2) for m in DEFINE.finditer((kernel_dir() / file).read_text())}


def ints(text):
    return tuple(int(v, 0) for v in re.findall(r"-?(?:0x[0-9a-fA-F]+|\d+)", text))


def test_conv_constants():
    d = defines("conv.cu")
    assert ints(d["CONV_THREADS"]) == (conv.THREADS,)
    assert ints(d["CONV_BK"]) == (conv.CHUNK,)
    assert ints(d["CONV_DIRECT_CB"]) == (conv.DIRECT_CHANNELS,)
    stamped = re.findall(r"^CONV_ENTRY_POINTS\((\d+),\s*(\d+)\)", (kernel_dir() / "conv.cu").read_text(),
                         re.M)
    assert sorted((int(a), int(b)) for a, b in stamped) == sorted(conv.TILES)


def test_gemm_tiles():
    d = defines("gemm.cu")
    for name, (bm, bn, bk) in linear.TILES.items():
        cfg = ints(d[f"GEMM_CFG_{name}"])  # BM, BN, BK, TM, TN
        assert cfg[:3] == (bm, bn, bk), name
        assert (bm // cfg[3]) * (bn // cfg[4]) == linear.THREADS, f"{name}: threads per block"


def test_lrn_block_limit():
    assert ints(defines("lrn.cu")["LRN_MAX_BLOCK"]) == (lrn.MAX_BLOCK,)


def test_philox_constants():
    text = (kernel_dir() / "common.cuh").read_text()
    found = dict(re.findall(r"\b(M0|M1|W0|W1)\s*=\s*(0x[0-9A-Fa-f]+)u", text))
    assert {k: int(v, 16) for k, v in found.items()} == {
        "M0": dropout.PHILOX_M0, "M1": dropout.PHILOX_M1,
        "W0": dropout.PHILOX_W0, "W1": dropout.PHILOX_W1}


# ---- every launch within its kernel's __launch_bounds__ ------------------------------------

BOUNDS = re.compile(r"__launch_bounds__\s*\(\s*(\d+)[^)]*\)\s*void\s+(\w+)\s*\(|"
                    r"void\s+__launch_bounds__\s*\(\s*(\d+)[^)]*\)\s+(\w+)\s*\(")


def launch_bounds(file):
    """{kernel: max threads per block} from the macro-expanded source."""
    p = subprocess.run(["g++", "-E", "-P", "-x", "c++", "-nostdinc", f"-I{kernel_dir()}",
                        str(kernel_dir() / file)], capture_output=True, text=True, check=True)
    out = {}
    for m in BOUNDS.finditer(p.stdout):
        threads, name = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        out[name] = int(threads)
    return out


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to expand the kernel macros")
def test_every_launch_fits_its_launch_bounds(monkeypatch):
    from pyalexnet.config import load_config
    from pyalexnet.net import Net

    launches = set()
    real = Backend.launch

    def record(self, file, kernel, grid, block, args, shared_mem=0):
        b = block if isinstance(block, tuple) else (block,)
        launches.add((file, kernel, int(np.prod(b))))
        return real(self, file, kernel, grid, block, args, shared_mem)

    monkeypatch.setattr(Backend, "launch", record)
    for name, devices in (("cifar-small", 1), ("cifar-towers", 2)):
        config = load_config(name)
        net = Net(config, backend="emu", devices=devices, seed=1)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4,) + config.input_shape).astype(np.float32)
        labels = rng.integers(0, config.num_classes, 4).astype(np.int32)
        net.train_step_grads(x, net.backend.asarray(labels, dtype=np.int32), seed=3)
        net.sgd_step(0.01)
        net.forward(x, train=False)
    bounds = {}
    for file in {f for f, _, _ in launches}:
        bounds[file] = launch_bounds(file)
    kernels = {k for _, k, _ in launches}
    assert {"lrn_forward_v2_r3", "dropout_apply", "softmax_xent_forward"} <= kernels, kernels
    assert any(k.startswith("conv_fwd_") for k in kernels) and any(k.startswith("gemm_")
                                                                   for k in kernels), kernels
    checked = 0
    for file, kernel, threads in sorted(launches):
        limit = bounds[file].get(kernel, 1024)  # without __launch_bounds__: CUDA's limit
        assert threads <= limit, f"{file}:{kernel} launched with {threads} threads, " \
                                 f"its __launch_bounds__ allow {limit}"
        checked += kernel in bounds[file]
    assert checked >= 5, f"only {checked} launches had __launch_bounds__ to check"
