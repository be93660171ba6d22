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
import re
from pathlib import Path

import numpy as np

ENV_BACKEND = "PYALEXNET_BACKEND"
BACKEND_NAMES = ("numpy", "emu", "cuda")
# Scalars must carry their C type: CuPy would pass a Python int as long long and a float
# as double without complaint, and the kernel would read garbage.
SCALAR_TYPES = (np.int32, np.uint32, np.int64, np.uint64, np.float32)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine; the message says what is missing."""


class KernelError(RuntimeError):
    """A kernel failed: a compile error, a divergent barrier, a bad launch."""


def kernel_dir() -> Path:
    """Where the kernel sources live: the repository's kernels/, or the installed copy."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "kernels", here / "_kernels"):
        if (candidate / "common.cuh").exists():
            return candidate
    raise FileNotFoundError("pyalexnet's kernel sources (kernels/*.cu) are missing from "
                            f"{here.parent / 'kernels'} and {here / '_kernels'}; reinstall")


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


class EmuBackend(Backend):
    """Kernels compiled by g++ against the CUDA host-emulation layer (pyalexnet._emu).

    threads: OS threads running blocks in parallel (env PYALEXNET_EMU_THREADS, default all
    cores); order: thread order between barriers, "forward", "reverse" or "random"
    (env PYALEXNET_EMU_ORDER); seed: for the random order (env PYALEXNET_EMU_SEED);
    check_bounds: run every launch on guarded copies of its arrays and raise if a kernel
    wrote outside one (env PYALEXNET_EMU_CHECK_BOUNDS=1); see GuardedArgs.
    profile: run on the profiling build pyalexnet._emu_profile (env PYALEXNET_EMU_PROFILE=1)
    and keep each launch's counters (a dict: global and shared memory requests, sectors,
    bank-conflict wavefronts, barriers, atomics, per-array traffic) in ``last_profile`` and
    ``profiles``; profile_blocks: run only that many blocks of each grid, evenly spread (the
    counts are then those of the blocks run; ``blocks_run``/``blocks_total`` say so).
    module: the compiled emulator to use instead (the test suite passes its own builds).
    """

    name = "emu"
    runs_kernels = True
    ORDERS = ("forward", "reverse", "random")

    def __init__(self, threads=None, order=None, seed=None, check_bounds=None, profile=None,
                 profile_blocks=None, module=None):
        if profile is None:
            profile = os.environ.get("PYALEXNET_EMU_PROFILE", "0") not in ("", "0")
        self.profile = bool(profile)
        if module is None:
            module = self._load_module("_emu_profile" if self.profile else "_emu")
        if self.profile and not getattr(module, "PROFILER", False):
            raise ValueError(f"emu profile=True needs a profiling build; {module.__name__} is not one")
        self._emu = module
        self.profile_blocks = int(profile_blocks or 0)
        self.last_profile = None
        self.profiles = []  # (kernel, counters) of every profiled launch; clear it at will
        self.threads = int(threads or os.environ.get("PYALEXNET_EMU_THREADS") or os.cpu_count())
        self.order = order or os.environ.get("PYALEXNET_EMU_ORDER", "forward")
        if self.order not in self.ORDERS:
            raise ValueError(f"emu thread order must be one of {self.ORDERS}, got {self.order!r}")
        self.seed = int(seed if seed is not None else os.environ.get("PYALEXNET_EMU_SEED", 0))
        if check_bounds is None:
            check_bounds = os.environ.get("PYALEXNET_EMU_CHECK_BOUNDS", "0") not in ("", "0")
        self.check_bounds = bool(check_bounds)
        self._files = {}
        self.last_fibers = 0  # fiber stacks the last launch's busiest block held at once

    @staticmethod
    def _load_module(name):
        import importlib
        try:
            return importlib.import_module(f"pyalexnet.{name}")
        except ImportError as e:
            why = (" (it is built only where clang++ is installed)" if name == "_emu_profile" else "")
            raise BackendUnavailable(
                f"the emu backend needs the compiled extension pyalexnet.{name}{why}; build it "
                f"with `pip install -e .` ({e})") from e

    _recording = None  # the launches of a graph being captured

    def begin_capture(self):
        if self._recording is not None:
            raise RuntimeError("a graph capture is already in progress on this backend")
        self._recording = []

    def end_capture(self):
        graph, self._recording = self._recording, None
        return graph

    def replay(self, graph):
        for launch in graph:
            self._run(*launch)

    def to_numpy(self, a):
        if self._recording is not None:  # as CUDA refuses a copy to the host in a capture
            raise KernelError("a device-to-host copy during graph capture: the captured step "
                              "must not read results on the host")
        return super().to_numpy(a)

    def _launch(self, file, kernel, grid, block, args, shared_mem):
        if self._recording is not None:  # as CUDA's stream capture: recorded, not run
            self._recording.append((file, kernel, grid, block, args, shared_mem))
            return
        self._run(file, kernel, grid, block, args, shared_mem)

    def _run(self, file, kernel, grid, block, args, shared_mem):
        known = self._files.get(kernel)
        if known is None:
            try:
                known = self._files[kernel] = self._emu.kernel_file(kernel)
            except (KeyError, IndexError):
                raise KernelError(f"no kernel named {kernel!r} in the emulator build; after "
                                  "adding a kernel, rebuild with `pip install -e .`") from None
        if Path(known).name != Path(file).name:
            raise KernelError(f"kernel {kernel} lives in {known}, not {file}")
        guard = GuardedArgs(args) if self.check_bounds else None
        try:
            self.last_fibers = self._emu.launch(kernel, grid, block, shared_mem,
                                                guard.args if guard else args, self.threads,
                                                self.ORDERS.index(self.order), self.seed,
                                                self.profile_blocks)
        except RuntimeError as e:
            raise KernelError(str(e)) from None
        if self.profile:
            self.last_profile = dict(self._emu.last_profile(), kernel=kernel, grid=grid,
                                     block=block, shared_mem=shared_mem)
            self.profiles.append(self.last_profile)
        if guard:
            guard.check_and_copy_back(kernel)

    def __repr__(self):
        return (f"<pyalexnet backend emu threads={self.threads} order={self.order} "
                f"seed={self.seed}{' check_bounds' if self.check_bounds else ''}"
                f"{' profile' if self.profile else ''}>")


class GuardedArgs:
    """Copies of a launch's arrays, each between guard zones of 0xFF bytes.

    A write outside an array lands in a guard and is reported after the launch; a read
    outside one sees 0xFF bytes (NaN as float32, -1 as int32), which spoils the result. On
    a CPU an out-of-bounds access corrupts the host's memory silently, so this is the
    emulator's bounds check. Arguments that are the same array share one copy; copies
    are 256-byte aligned, as cudaMalloc's are.
    """

    GUARD = 4096
    ALIGN = 256

    def __init__(self, args):
        self.args, self._copies = [], {}
        for a in args:
            if not isinstance(a, np.ndarray):
                self.args.append(a)
                continue
            key = (a.__array_interface__["data"][0], a.nbytes, a.dtype.str, a.shape)
            if key not in self._copies:
                raw = np.full(a.nbytes + 2 * self.GUARD + self.ALIGN, 0xFF, dtype=np.uint8)
                start = self.GUARD + (-(raw.ctypes.data + self.GUARD) % self.ALIGN)
                inner = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
                inner[...] = a
                self._copies[key] = (len(self.args), a, raw, start, inner)
            self.args.append(self._copies[key][4])

    def check_and_copy_back(self, kernel):
        for index, a, raw, start, inner in self._copies.values():
            before = np.flatnonzero(raw[:start] != 0xFF)
            after = np.flatnonzero(raw[start + a.nbytes:] != 0xFF)
            if before.size or after.size:
                where = (f"{start - before[0]} bytes before its start" if before.size else
                         f"{after[-1] + 1} bytes past its end")
                raise KernelError(f"kernel {kernel} wrote outside array argument {index} "
                                  f"(shape {a.shape}, {a.dtype}): up to {where}")
            if a.flags.writeable:
                a[...] = inner


# NVRTC options, in one place. Everything else is CuPy's default (which adds -ftz=true).
NVRTC_OPTIONS = ("-std=c++17",)
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


def kernel_source(file: str | Path) -> str:
    """A kernel file with its local #includes inlined, with #line markers.

    Inlining puts every header's text into the code CuPy hashes for its on-disk cache,
    so editing common.cuh recompiles; #line keeps NVRTC's messages pointing at the real
    file and line. ``file`` is relative to kernels/, or a path elsewhere (the tests' own
    kernels); includes are looked up beside the including file, then in kernels/.
    """
    root = kernel_dir()
    seen = set()

    def expand(path: Path) -> str:
        path = path.resolve()
        if path in seen:  # every header is #pragma once
            return ""
        seen.add(path)
        text = path.read_text()
        out, last, line = [], 0, 1
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        for m in _INCLUDE.finditer(text):
            out.append(text[last:m.start()])
            line += text.count("\n", last, m.start())
            out.append(f'#line 1 "{Path(m.group(1)).name}"\n')
            beside = path.parent / m.group(1)
            out.append(expand(beside if beside.exists() else root / m.group(1)))
            out.append(f'\n#line {line + 1} "{rel}"\n')
            last = m.end()
        out.append(text[last:])
        return f'#line 1 "{rel}"\n' + "".join(out)

    return expand(root / file)


class CudaBackend(Backend):
    """The same kernels compiled by NVRTC through ``cupy.RawModule``, on one GPU."""

    name = "cuda"
    runs_kernels = True

    def __init__(self, device=0):
        try:
            import cupy
        except ImportError as e:
            raise BackendUnavailable(
                "the cuda backend needs CuPy: pip install 'pyalexnet[cuda13]' (or [cuda12]) "
                f"on a machine with an NVIDIA GPU ({e})") from e
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # no driver, no device
            raise BackendUnavailable(f"the cuda backend needs an NVIDIA GPU; CuPy found none ({e})") from e
        if count == 0:
            raise BackendUnavailable("the cuda backend needs an NVIDIA GPU; CuPy found none")
        if not 0 <= device < count:
            raise BackendUnavailable(f"no CUDA device {device}: this machine has {count}")
        self.cupy = cupy
        self.xp = cupy
        self.device = cupy.cuda.Device(device)
        self._modules = {}
        self._functions = {}

    def asarray(self, a, dtype=np.float32):
        if self._serving() and not (isinstance(a, self.cupy.ndarray) and a.dtype == dtype
                                    and a.flags.c_contiguous):
            buf = self.empty(np.shape(a), dtype)  # a fixed address: graph replays reuse it
            if isinstance(a, self.cupy.ndarray):
                buf[...] = a
            else:
                buf.set(np.ascontiguousarray(a, dtype=dtype))
            return buf
        with self.device:
            return self.cupy.ascontiguousarray(self.cupy.asarray(a, dtype=dtype))

    def copy_from_host(self, dst, host):
        with self.device:
            dst.set(np.ascontiguousarray(host, dtype=dst.dtype))

    def to_numpy(self, a):
        if not isinstance(a, self.cupy.ndarray):
            return np.asarray(a)
        self.syncs += 1
        return self.cupy.asnumpy(a)

    def _empty(self, shape, dtype):
        with self.device:
            return self.cupy.empty(shape, dtype=dtype)

    def _zeros(self, shape, dtype):
        with self.device:
            return self.cupy.zeros(shape, dtype=dtype)

    def synchronize(self):
        self.syncs += 1
        self.device.synchronize()

    def begin_capture(self):
        """Capture the work queued on a fresh stream (and on streams it forks to by events,
        as the two-device engine's streams do) until `end_capture`."""
        with self.device:
            self._capture_stream = self.cupy.cuda.Stream(non_blocking=True)
        self._capture_stream.__enter__()
        self._capture_stream.begin_capture()

    def end_capture(self):
        stream, self._capture_stream = self._capture_stream, None
        try:
            return stream.end_capture()
        finally:
            stream.__exit__(None, None, None)

    def replay(self, graph):
        with self.device:
            graph.launch()

    def function(self, file, kernel):
        """The compiled kernel (NVRTC runs on first use; CuPy caches the binary on disk)."""
        key = (file, kernel)
        fn = self._functions.get(key)
        if fn is None:
            with self.device:
                try:
                    module = self._modules.get(file)
                    if module is None:
                        module = self._modules[file] = self.cupy.RawModule(
                            code=kernel_source(file), options=NVRTC_OPTIONS)
                    fn = module.get_function(kernel)
                except self.cupy.cuda.compiler.CompileException as e:
                    self._modules.pop(file, None)
                    raise KernelError(f"NVRTC could not compile kernels/{file}:\n{e}") from None
            self._functions[key] = fn
        return fn

    def _launch(self, file, kernel, grid, block, args, shared_mem):
        fn = self.function(file, kernel)
        if shared_mem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < shared_mem:
            fn.max_dynamic_shared_size_bytes = shared_mem
        with self.device:
            fn(grid, block, tuple(args), shared_mem=shared_mem)


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
