"""Compile-check every kernel file: nvcc (sm_80, sm_90) and g++ through the emulator.

    python -m pyalexnet.compile_check [kernels/foo.cu ...]

nvcc must report no warnings and zero spill stores/loads; the per-kernel register and
shared-memory use it prints (``--resource-usage``) are shown. g++ checks the same source
against kernels/emu/cuda_emu.h, the way the emulator builds it.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .backends import kernel_dir

ARCHS = ("sm_80", "sm_90")
_FUNC = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


@dataclass
class KernelUsage:
    name: str
    arch: str
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


@dataclass
class CheckResult:
    file: str
    arch: str
    ok: bool
    log: str
    kernels: list = field(default_factory=list)

    @property
    def spills(self):
        return sum(k.spill_stores + k.spill_loads for k in self.kernels)


def kernel_files():
    root = kernel_dir()
    return sorted(root.glob("*.cu")) + sorted((root / "emu").glob("*.cu"))


def find_nvcc():
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).exists():
            return cand
    return None


def parse_ptxas(log: str):
    """Per-kernel registers and spills from ptxas -v output."""
    kernels, cur = [], None
    for line in log.splitlines():
        m = _FUNC.search(line)
        if m:
            cur = KernelUsage(m.group(1), m.group(2))
            kernels.append(cur)
            continue
        if cur is None:
            continue
        m = _SPILL.search(line)
        if m:
            cur.spill_stores, cur.spill_loads = int(m.group(1)), int(m.group(2))
        m = _REGS.search(line)
        if m:
            cur.registers = int(m.group(1))
    return kernels


def nvcc_check(path, arch, nvcc=None) -> CheckResult:
    nvcc = nvcc or find_nvcc()
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "--cubin", f"-arch={arch}", "-std=c++17", f"-I{kernel_dir()}",
               "-Xptxas", "-v", "-Werror", "all-warnings", "-o", str(Path(tmp) / "k.cubin"),
               str(path)]
        p = subprocess.run(cmd, capture_output=True, text=True)
    log = p.stdout + p.stderr
    kernels = parse_ptxas(log)
    warned = re.search(r"\bwarning\b", log, re.I) is not None
    res = CheckResult(str(path), arch, p.returncode == 0 and not warned, log, kernels)
    res.ok = res.ok and res.spills == 0
    return res


def gxx_check(path) -> CheckResult:
    emu = kernel_dir() / "emu"
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wno-unknown-pragmas",
           "-Wno-unused-function", "-Wno-unused-variable", f"-I{kernel_dir()}", f"-I{emu}",
           "-include", str(emu / "cuda_emu.h"), "-x", "c++", str(path)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    return CheckResult(str(path), "g++", p.returncode == 0 and not p.stderr.strip(),
                       p.stdout + p.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="kernel files (default: all)")
    args = ap.parse_args(argv)
    files = [Path(f) for f in args.files] or kernel_files()
    nvcc = find_nvcc()
    if nvcc is None:
        print("nvcc not found: only the g++ (emulator) check runs", file=sys.stderr)
    failed = False
    for f in files:
        results = [gxx_check(f)] + ([nvcc_check(f, a, nvcc) for a in ARCHS] if nvcc else [])
        for r in results:
            status = "ok" if r.ok else "FAILED"
            print(f"{f.name} [{r.arch}]: {status}")
            for k in r.kernels:
                print(f"    {k.name}: {k.registers} registers, spills {k.spill_stores}/{k.spill_loads} B")
            if not r.ok:
                failed = True
                print("    " + r.log.strip().replace("\n", "\n    "))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
