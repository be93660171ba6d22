"""Compile-check every kernel file: nvcc (sm_80, sm_90) and g++ through the emulator.

    python -m pyalexnet.compile_check [kernels/foo.cu ...]

nvcc must report no warnings and zero spill stores/loads. Per kernel and architecture it
prints what ptxas reports (registers, spills, static shared memory per block) and the
occupancy that follows: resident blocks and warps per SM, and what limits them. The block
size is the kernel's __launch_bounds__ where it declares one, else 256 (the elementwise
block; marked "assumed"); kernels with dynamic shared memory are marked "+dyn" (their
occupancy counts only the static part). g++ checks the same source against
kernels/emu/cuda_emu.h, the way the emulator builds it.
"""
from __future__ import annotations

import argparse
import ast
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
_SMEM = re.compile(r"(\d+) bytes smem")
# A parenthesised expression, nested up to three deep (launch bounds written as arithmetic
# of template arguments expand to that).
_PARENS = r"\((?:[^()]|\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\))*\)"
# In the macro-expanded source: a kernel's launch bounds and whether it has dynamic shared memory.
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__(%s)\s+)?'
                     r'void\s+(?:__launch_bounds__(%s)\s+)?(\w+)\s*\(' % (_PARENS, _PARENS))
_DYN = re.compile(r"extern\s+__shared__")
_FUNCTION = re.compile(r"(__device__|__global__)[^;{}]*?\b(\w+)\s*\(")
DEFAULT_BLOCK = 256


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM resources (CUDA C Programming Guide, compute capability tables)."""
    regs: int = 65536
    reg_unit: int = 256       # registers are allocated per warp in units of this many
    max_warps: int = 64
    max_blocks: int = 32
    smem: int = 233472        # bytes of shared memory per SM usable by blocks
    smem_reserved: int = 1024  # the runtime's per-block reservation
    smem_unit: int = 128


LIMITS = {"sm_80": ArchLimits(smem=167936), "sm_90": ArchLimits()}


@dataclass(frozen=True)
class Occupancy:
    blocks: int   # resident blocks per SM
    warps: int    # resident warps per SM
    limit: str    # what bounds it: registers, shared memory, warps or blocks


def occupancy(registers, threads, smem_bytes, arch="sm_90") -> Occupancy:
    """Resident blocks per SM for a kernel using ``registers`` per thread and
    ``smem_bytes`` of shared memory per block, launched with ``threads`` per block."""
    lim = LIMITS[arch]
    warps = -(-threads // 32)
    per_warp = -(-max(registers, 1) * 32 // lim.reg_unit) * lim.reg_unit
    smem = -(-smem_bytes // lim.smem_unit) * lim.smem_unit + lim.smem_reserved
    bounds = {"registers": lim.regs // per_warp // warps,
              "shared memory": lim.smem // smem,
              "warps": lim.max_warps // warps,
              "blocks": lim.max_blocks}
    limit = min(bounds, key=bounds.get)
    return Occupancy(bounds[limit], bounds[limit] * warps, limit)


def launch_info(path):
    """{kernel: (block threads or None, uses dynamic shared memory)} from the file's
    macro-expanded source (kernels stamped out by a macro included)."""
    p = subprocess.run(["g++", "-E", "-P", "-x", "c++", "-nostdinc", f"-I{kernel_dir()}",
                        str(path)], capture_output=True, text=True)
    text = p.stdout if p.returncode == 0 else Path(path).read_text()
    starts = [(m.start(), m) for m in _KERNEL.finditer(text)] + [(len(text), None)]
    # device functions that declare dynamic shared memory (a storage-typed kernel's body is
    # a template its entries call): the function around each declaration
    helpers = set()
    for d in _DYN.finditer(text):
        around = list(_FUNCTION.finditer(text, 0, d.start()))
        if around and around[-1].group(1) == "__device__":
            helpers.add(around[-1].group(2))
    calls = re.compile(r"\b(?:%s)\s*[<(]" % "|".join(sorted(helpers))) if helpers else None
    info = {}
    for (pos, m), (nxt, _) in zip(starts, starts[1:]):
        bounds = m.group(1) or m.group(2)
        dyn = _DYN.search(text, pos, nxt) or (calls and calls.search(text, pos, nxt))
        info[m.group(3)] = (launch_bounds_threads(bounds) if bounds else None, bool(dyn))
    return info


def launch_bounds_threads(bounds):
    """The block size of a ``__launch_bounds__(...)`` argument list, e.g. "((128 / 64) * 32,
    2)" -> 64: its first argument, C integer arithmetic (+ - * / %, parentheses) on
    literals (the later arguments are not read)."""
    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _C_INT_OPS:
            return _C_INT_OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"launch bounds {bounds!r}: not integer arithmetic on literals")
    inner, depth = bounds.strip()[1:-1], 0
    for i, ch in enumerate(inner):  # the first argument ends at the first top-level comma
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            inner = inner[:i]
            break
    try:
        return value(ast.parse(inner.strip(), mode="eval").body)
    except SyntaxError:
        raise ValueError(f"launch bounds {bounds!r}: not integer arithmetic on literals") from None


def _c_div(a, b):
    q = abs(a) // abs(b)  # C truncates toward zero
    return q if (a < 0) == (b < 0) else -q


_C_INT_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
              ast.Mult: lambda a, b: a * b, ast.Div: _c_div, ast.FloorDiv: _c_div,
              ast.Mod: lambda a, b: a - _c_div(a, b) * b}


@dataclass
class KernelUsage:
    name: str
    arch: str
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0          # static shared memory per block, bytes
    threads: int = 0       # block size the occupancy assumes
    assumed: bool = True   # no __launch_bounds__: DEFAULT_BLOCK threads
    dynamic_smem: bool = False
    occupancy: Occupancy | None = None


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
            m = _SMEM.search(line)
            cur.smem = int(m.group(1)) if m else 0
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
    info = launch_info(path)
    for k in kernels:
        threads, k.dynamic_smem = info.get(k.name, (None, False))
        k.assumed = threads is None
        k.threads = threads or DEFAULT_BLOCK
        if k.arch in LIMITS:
            k.occupancy = occupancy(k.registers, k.threads, k.smem, k.arch)
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


def describe(k: KernelUsage) -> str:
    """One report line: resources, then the occupancy they allow."""
    line = (f"{k.name}: {k.registers} registers, spills {k.spill_stores}/{k.spill_loads} B, "
            f"{k.smem} B shared/block{' +dyn' if k.dynamic_smem else ''}")
    if k.occupancy:
        o = k.occupancy
        line += (f"; block {k.threads}{' (assumed)' if k.assumed else ''}: {o.blocks} blocks/SM, "
                 f"{o.warps} warps/SM (limit: {o.limit})")
    return line


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
                print("    " + describe(k))
            if not r.ok:
                failed = True
                print("    " + r.log.strip().replace("\n", "\n    "))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
