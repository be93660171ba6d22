import os
import subprocess
import sys

import numpy as np
import pytest

import pyalexnet
from pyalexnet.backends import (BackendUnavailable, CudaBackend, get_backend, kernel_dir,
                                kernel_source)


def test_import_does_not_import_cupy():
    code = "import sys, pyalexnet, pyalexnet.backends; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_by_name_and_env(monkeypatch):
    assert get_backend("numpy").name == "numpy"
    assert get_backend("emu").name == "emu"
    monkeypatch.setenv("PYALEXNET_BACKEND", "emu")
    assert get_backend().name == "emu"
    monkeypatch.setenv("PYALEXNET_BACKEND", "numpy")
    assert get_backend().name == "numpy"
    be = get_backend("emu")
    assert get_backend(be) is be


def test_auto_detection_falls_back_to_numpy(monkeypatch):
    monkeypatch.delenv("PYALEXNET_BACKEND", raising=False)
    expected = "cuda" if pyalexnet.backends.cuda_available() else "numpy"
    assert get_backend().name == expected


def test_unknown_backend():
    with pytest.raises(ValueError, match="choose one of numpy, emu, cuda"):
        get_backend("opencl")


@pytest.mark.skipif(pyalexnet.backends.cuda_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_says_what_is_missing():
    with pytest.raises(BackendUnavailable, match="CuPy|GPU"):
        CudaBackend()


def test_numpy_backend_runs_no_kernels():
    with pytest.raises(BackendUnavailable, match="NumPy references"):
        get_backend("numpy").launch("relu.cu", "relu_forward", 1, 1, [])


def test_emu_options(monkeypatch):
    monkeypatch.setenv("PYALEXNET_EMU_ORDER", "reverse")
    monkeypatch.setenv("PYALEXNET_EMU_THREADS", "3")
    be = pyalexnet.backends.EmuBackend()
    assert (be.order, be.threads) == ("reverse", 3)
    with pytest.raises(ValueError, match="thread order"):
        pyalexnet.backends.EmuBackend(order="sideways")


def test_kernel_source_inlines_headers_with_line_markers():
    src = kernel_source("relu.cu")
    assert '#line 1 "common.cuh"' in src and "pa_philox4x32_10" in src
    assert '#include "common.cuh"' not in src
    # the line after the include in relu.cu is numbered as in the file
    relu_lines = (kernel_dir() / "relu.cu").read_text().splitlines()
    after = next(i for i, l in enumerate(relu_lines) if "#include" in l) + 2
    assert f'#line {after} "relu.cu"' in src


def test_kernel_source_compiles_and_reports_real_file(tmp_path):
    """The inlined text is what NVRTC gets; nvcc must accept it and name the real file."""
    from pyalexnet.compile_check import find_nvcc
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("no CUDA compiler (nvcc) on this machine")
    good = tmp_path / "relu_inlined.cu"
    good.write_text(kernel_source("relu.cu"))
    subprocess.run([nvcc, "--cubin", "-arch=sm_90", "-o", os.devnull, str(good)], check=True,
                   capture_output=True)
    bad = tmp_path / "bad.cu"
    source = kernel_source("relu.cu")
    assert "v < 0.0f ?" in source  # the line the syntax error goes into
    bad.write_text(source.replace("v < 0.0f ?", "v <<< 0.0f ?"))
    p = subprocess.run([nvcc, "--cubin", "-arch=sm_90", "-o", os.devnull, str(bad)],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "relu.cu(" in p.stdout + p.stderr


def test_cuda_compile_error_names_the_file(monkeypatch):
    if not pyalexnet.backends.cuda_available():
        pytest.skip("cuda backend: no CuPy or no GPU on this machine")
    be = CudaBackend()
    source = kernel_source("relu.cu")
    assert "v < 0.0f ?" in source
    broken = source.replace("v < 0.0f ?", "undeclared_name < 0.0f ?")
    monkeypatch.setattr(pyalexnet.backends.cuda, "kernel_source", lambda file: broken)
    with pytest.raises(pyalexnet.KernelError) as e:
        be.function("relu.cu", "relu_forward")
    assert "kernels/relu.cu" in str(e.value) and "undeclared_name" in str(e.value)


def test_cuda_runs_a_kernel():
    if not pyalexnet.backends.cuda_available():
        pytest.skip("cuda backend: no CuPy or no GPU on this machine")
    be = get_backend("cuda")
    x = be.asarray(np.array([-1.0, 2.0, -3.0, 4.0]))
    y = be.empty(4)
    be.launch("relu.cu", "relu_forward", 1, 32, [x, y, np.int64(4)])
    assert be.to_numpy(y).tolist() == [0.0, 2.0, 0.0, 4.0]
