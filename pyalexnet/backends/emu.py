"""The emu backend: the CUDA kernels compiled for the CPU (kernels/emu/)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import Backend, BackendUnavailable, KernelError

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
