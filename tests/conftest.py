"""Shared fixtures: run one test body on every available backend.

PYALEXNET_TEST_BACKENDS (comma-separated, default "emu,cuda") limits the kernel backends:
the GPU check sets it to "cuda". Emulator cases run under forward and random thread order;
the random-order cases also check every launch for writes outside its arrays.
"""
import os

import numpy as np
import pytest

from pyalexnet.backends import BackendUnavailable, EmuBackend, cuda_available, get_backend

F32_EPS = float(np.finfo(np.float32).eps)


def _wanted():
    return [b.strip() for b in os.environ.get("PYALEXNET_TEST_BACKENDS", "emu,cuda").split(",")]


KERNEL_BACKENDS = [
    pytest.param(("emu", "forward"), id="emu-forward"),
    pytest.param(("emu", "random"), id="emu-random"),
    pytest.param(("cuda", None), id="cuda"),
]


def _make(spec):
    name, order = spec
    if name not in _wanted():
        pytest.skip(f"{name} not in PYALEXNET_TEST_BACKENDS")
    if name == "cuda":
        if not cuda_available():
            pytest.skip("cuda backend: no CuPy or no GPU on this machine")
        return get_backend("cuda")
    try:
        return get_backend("emu", order=order, seed=1234, check_bounds=order == "random")
    except BackendUnavailable as e:
        pytest.fail(str(e))


@pytest.fixture(params=["forward", "reverse", "random", "cuda"],
                ids=["emu-forward", "emu-reverse", "emu-random", "cuda"])
def checked_backend(request):
    """Like kernel_backend, with the reverse order too and bounds checking on in every
    emulator order (the test suite's build, tests/kernels/ included)."""
    from emu_builds import selftest_build
    name = "cuda" if request.param == "cuda" else "emu"
    if name not in _wanted():
        pytest.skip(f"{name} not in PYALEXNET_TEST_BACKENDS")
    if request.param == "cuda":
        if not cuda_available():
            pytest.skip("cuda backend: no CuPy or no GPU on this machine")
        return get_backend("cuda")
    return EmuBackend(order=request.param, seed=99, check_bounds=True, module=selftest_build())


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    """A backend that runs the CUDA kernels: emu (forward and random order) and cuda."""
    return _make(request.param)


@pytest.fixture(params=[pytest.param(("numpy", None), id="numpy")] + KERNEL_BACKENDS)
def backend(request):
    """Every backend, the NumPy reference included."""
    if request.param[0] == "numpy":
        return get_backend("numpy")
    return _make(request.param)


@pytest.fixture
def winograd_where_it_applies(monkeypatch):
    """The planning cost model made to pick Winograd F(2x2) wherever it applies (at the
    tests' small shapes it would pick implicit GEMM; tests/test_winograd.py checks its real
    choices), for conv_algo="auto": the passes it was asked about, in order."""
    from pyalexnet.ops import conv_plan
    asked = []

    def pick(pass_, x_shape, w_shape, stride=1, pad=0, groups=1):
        asked.append((pass_, tuple(w_shape)))
        return "winograd2" if tuple(w_shape[2:]) == (3, 3) and stride == 1 else "gemm"

    monkeypatch.setattr(conv_plan, "pick_algo", pick)
    return asked


def record_launches(monkeypatch, be):
    """The list to which every kernel name ``be`` launches from now on is appended."""
    launched = []
    real = type(be).launch

    def record(self, file, kernel, *args, **kw):
        launched.append(kernel)
        return real(self, file, kernel, *args, **kw)

    monkeypatch.setattr(type(be), "launch", record)
    return launched


@pytest.fixture
def rng():
    return np.random.default_rng(20121203)


def assert_matches_reference(actual, reference, reduction=1, what="result", rounds=1):
    """float32 kernel output against a float64 reference.

    Tolerance: atol + rtol*|ref| with rtol = 16 eps32 sqrt(reduction length) and atol the
    same fraction of the reference's largest magnitude (sums of mixed signs cancel); times
    ``rounds`` for results of that many dependent rounds of such sums (training steps: each
    step's rounding differences carry into the next through the weights and momentum).
    """
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values in the kernel output"
    rtol = 16 * F32_EPS * max(1, reduction) ** 0.5 * max(1, rounds)
    atol = rtol * (np.max(np.abs(reference)) if reference.size else 0)
    err = np.abs(actual - reference) - (atol + rtol * np.abs(reference))
    if err.size and err.max() > 0:
        i = np.unravel_index(np.argmax(err), err.shape)
        bad = int(np.sum(err > 0))
        raise AssertionError(f"{what}: {bad} of {err.size} entries off; worst at {i}: "
                             f"kernel {actual[i]!r} vs reference {reference[i]!r} "
                             f"(rtol {rtol:.2g}, atol {atol:.2g})")
