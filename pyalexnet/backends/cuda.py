"""The cuda backend: the same kernels compiled by NVRTC through cupy.RawModule."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .base import Backend, BackendUnavailable, KernelError, kernel_dir

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
