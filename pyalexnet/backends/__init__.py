"""The three backends: ``numpy`` (reference), ``emu`` (kernels on the CPU), ``cuda`` (GPU).

An op computes its grid, block and shared-memory size once and calls
``backend.launch(file, kernel, grid, block, args, shared_mem)``; only the array type
(NumPy or CuPy) and the launcher differ between ``emu`` and ``cuda``. So every line of the
GPU path except CuPy's own call runs on every machine.

Choose a backend by name (``get_backend("emu")``) or with the environment variable
``PYALEXNET_BACKEND``; with neither, ``cuda`` is used where CuPy sees a GPU, else ``numpy``.
"""
from __future__ import annotations

import functools
import os

from .base import (SCALAR_TYPES, Backend, BackendUnavailable, KernelError, NumpyBackend,
                   kernel_dir)
from .cuda import NVRTC_OPTIONS, CudaBackend, kernel_source
from .emu import EmuBackend, GuardedArgs

ENV_BACKEND = "PYALEXNET_BACKEND"
BACKEND_NAMES = ("numpy", "emu", "cuda")

__all__ = ["Backend", "BackendUnavailable", "KernelError", "NumpyBackend", "EmuBackend",
           "GuardedArgs", "CudaBackend", "kernel_dir", "kernel_source", "NVRTC_OPTIONS",
           "SCALAR_TYPES", "cuda_available", "get_backend", "ENV_BACKEND", "BACKEND_NAMES"]


_cache: dict = {}


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    """Whether CuPy is installed and sees a GPU (asked once)."""
    try:
        CudaBackend()
        return True
    except BackendUnavailable:
        return False


def get_backend(name=None, **options) -> Backend:
    """The backend called ``name`` (or $PYALEXNET_BACKEND, or auto-detected).

    A Backend instance is returned unchanged, so every API takes either.
    """
    if isinstance(name, Backend):
        return name
    name = name or os.environ.get(ENV_BACKEND) or ("cuda" if cuda_available() else "numpy")
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    key = (name, tuple(sorted(options.items())))
    if key not in _cache:
        cls = {"numpy": NumpyBackend, "emu": EmuBackend, "cuda": CudaBackend}[name]
        _cache[key] = cls(**options)
    return _cache[key]
