"""Every kernel file compiles for sm_80 and sm_90 with no warnings and zero spills, and
through the emulation header with g++."""
import pytest

from pyalexnet.compile_check import ARCHS, find_nvcc, gxx_check, kernel_files, nvcc_check

FILES = kernel_files()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_nvcc_no_warnings_no_spills(path, arch):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("no CUDA compiler (nvcc) on this machine")
    r = nvcc_check(path, arch, nvcc)
    assert r.kernels, f"{path.name}: ptxas reported no kernels\n{r.log}"
    spilled = [k.name for k in r.kernels if k.spill_stores or k.spill_loads]
    assert not spilled, f"{path.name} [{arch}] spills in {spilled}"
    assert r.ok, f"{path.name} [{arch}]:\n{r.log}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_gxx_through_emulator_header(path):
    r = gxx_check(path)
    assert r.ok, f"{path.name}:\n{r.log}"
