"""What every backend is: arrays of its kind, and a checked kernel launch; the NumPy one."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Scalars must carry their C type: CuPy would pass a Python int as long long and a float
# as double without complaint, and the kernel would read garbage.
SCALAR_TYPES = (np.int32, np.uint32, np.int64, np.uint64, np.float32)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine; the message says what is missing."""


class KernelError(RuntimeError):
    """A kernel failed: a compile error, a divergent barrier, a bad launch."""


def kernel_dir() -> Path:
    """Where the kernel sources live: the repository's kernels/, or the installed copy."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "kernels", package / "_kernels"):
        if (candidate / "common.cuh").exists():
            return candidate
    raise FileNotFoundError("pyalexnet's kernel sources (kernels/*.cu) are missing from "
                            f"{package.parent / 'kernels'} and {package / '_kernels'}; reinstall")


def _dim3(v, what):
    dims = (v,) if np.isscalar(v) else tuple(v)
    if not 1 <= len(dims) <= 3 or any(int(d) < 1 for d in dims):
        raise ValueError(f"{what} must be 1 to 3 positive sizes, got {v!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


class Backend:
    """What ops need from a backend: arrays of its kind, and (for kernels) a launcher."""

    name: str = ""
    runs_kernels: bool = False
    xp = np  # the array module

    # A StepMemory while a repeated step runs (pyalexnet.memory): allocations come from it.
    memory = None
    # Device-to-host copies and synchronisations so far (kernel backends), for tests.
    syncs = 0

    def _serving(self):
        return self.memory is not None and self.memory.serving

    def asarray(self, a, dtype=np.float32):
        """A C-contiguous array of this backend holding ``a`` (may be ``a`` itself)."""
        if self._serving() and not (isinstance(a, self.xp.ndarray) and a.dtype == dtype
                                    and a.flags.c_contiguous):
            a = np.asarray(a)
            buf = self.empty(a.shape, dtype)
            buf[...] = a
            return buf
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, a):
        if self.runs_kernels:
            self.syncs += 1
        return np.asarray(a)

    def copy_from_host(self, dst, host):
        """Fill the backend array ``dst`` with the host array ``host`` (same shape)."""
        dst[...] = host

    def empty(self, shape, dtype=np.float32):
        if self._serving():
            return self.memory.take(self._empty, shape, np.dtype(dtype))
        return self._empty(shape, dtype)

    def zeros(self, shape, dtype=np.float32):
        if self._serving():
            buf = self.empty(shape, dtype)
            buf.fill(0)
            return buf
        return self._zeros(shape, dtype)

    def _empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def _zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self):
        pass

    # ---- graphs: a step recorded once, replayed without Python (pyalexnet.graphs) ------
    def begin_capture(self):
        raise BackendUnavailable(f"the {self.name} backend cannot capture graphs (it runs "
                                 "NumPy references, not kernels)")

    def end_capture(self):
        raise BackendUnavailable(f"the {self.name} backend cannot capture graphs")

    def replay(self, graph):
        raise BackendUnavailable(f"the {self.name} backend cannot replay graphs")

    def launch(self, file, kernel, grid, block, args, shared_mem=0):
        """Run ``kernel`` of ``kernels/<file>`` on a grid of blocks."""
        grid, block = _dim3(grid, "grid"), _dim3(block, "block")
        if np.prod(block) > 1024:
            raise ValueError(f"kernel {kernel}: block {block} has more than 1024 threads")
        for i, a in enumerate(args):
            if isinstance(a, self.xp.ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"kernel {kernel}: argument {i} must be C-contiguous")
            elif not isinstance(a, SCALAR_TYPES):
                raise TypeError(f"kernel {kernel}: argument {i} is {type(a).__name__}; pass "
                                f"a {self.name} array or a NumPy scalar (numpy.int32, "
                                f"numpy.float32, ...) so its C type is explicit")
        self._launch(file, kernel, grid, block, list(args), int(shared_mem))

    def _launch(self, file, kernel, grid, block, args, shared_mem):
        raise BackendUnavailable(f"the {self.name} backend runs NumPy references, not kernels")

    def __repr__(self):
        return f"<pyalexnet backend {self.name}>"


class NumpyBackend(Backend):
    name = "numpy"
