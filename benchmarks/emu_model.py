"""A modeled H200 time for a kernel launch, from the emulator's counters (the profiling
build, pyalexnet._emu_profile) and nvcc's resource usage. Used by
``bench_kernels.py --emulated``; see README "The emulator as a profiler".

The model, per launch:
  * counts of a sampled grid are scaled by blocks_total / blocks_run;
  * L1: a block's repeated reads of its own sectors of an array hit in L1 when that array's
    share of the block (its distinct sectors in the block) fits, for every block resident
    on the SM, beside the smaller arrays' shares, in what the SM's shared memory leaves of
    its 256 KB; the other reads reach the L2;
  * DRAM bytes: per array, the distinct 32-byte sectors touched, scaled and capped at the
    array's size (a lower bound: every byte once). Sectors read again past L1 hit in the
    L2 while the data of the blocks resident at once fits in it, else miss in proportion
    (1 - L2 / that working set);
  * occupancy from registers, shared memory and block size (sm_90 limits);
  * blocks run in waves of (blocks per SM) * SMs; a wave lasts as long as its busiest SM,
    whose blocks get one SM's share of each rate, slowed by the latency their warps leave
    unhidden: max(DRAM / copy bandwidth, L2 sectors / L2 bandwidth, shared wavefronts /
    clock, FLOPs / FP32 peak, tensor-core FLOPs / their dense peak), each rate per SM and
    divided by its latency hiding (warps on that SM / warps needed, at most 1);
  * time = the waves' sum + a fixed launch cost.
Every constant below is a datasheet value or an assumption, named as such; a GPU's
probes (benchmarks/bench_device.py, --device-probe) put measured ones in their place.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyalexnet.compile_check import _FUNC, _REGS, find_nvcc


@dataclass(frozen=True)
class Device:
    name: str = "NVIDIA H200"
    sms: int = 132                  # datasheet (H200 SXM)
    clock_hz: float = 1.98e9        # datasheet boost clock
    fp32_flops: float = 67e12       # datasheet dense FP32 (no tensor cores)
    # datasheet dense tensor-core peaks; these are wgmma's: the mma.sync our kernels use is
    # reported to reach less of them on Hopper, so the modeled time is a lower bound there
    tf32_flops: float = 494.7e12
    bf16_flops: float = 989.4e12
    dram_bw: float = 4.8e12 * 0.9   # assumption: copy reaches 90% of the 4.8 TB/s datasheet
    l2_bytes: float = 50e6          # L2 of the GH100 die
    l1_smem_bytes: int = 256 * 1024  # combined L1 and shared memory per SM (datasheet)
    l2_bw: float = 7e12             # assumption: L2 hit bandwidth
    smem_wavefronts_per_s: float = 1.98e9  # per SM, assumption: one a clock
    launch_s: float = 3e-6          # assumption: launch and ramp cost per kernel
    # sm_90 limits
    regs_per_sm: int = 65536
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    smem_per_sm: int = 228 * 1024
    smem_reserved_per_block: int = 1024
    # warps per SM needed to hide latency (assumption): memory and FMA pipelines
    warps_hide_memory: int = 32
    warps_hide_fma: int = 8


H200 = Device()


def calibrated(dev, probe):
    """``dev`` with the constants a GPU's probes measured (benchmarks/bench_device.py's JSON,
    its "model" part) in place of the assumed ones."""
    return dataclasses.replace(dev, **probe["model"])


def load_device(probe_path=None, dev=H200):
    """``dev``, calibrated by the probe JSON file at ``probe_path`` when one is given."""
    return calibrated(dev, json.loads(Path(probe_path).read_text())) if probe_path else dev


ROOT = Path(__file__).resolve().parent.parent

_SMEM = re.compile(r"(\d+) bytes smem")


def resource_usage(files, cache_dir):
    """{kernel: (registers, static shared bytes)} for sm_90 from ``nvcc --resource-usage``,
    cached per source state; {} where nvcc is missing."""
    nvcc = find_nvcc()
    if nvcc is None:
        return {}
    root = Path(files[0]).resolve().parent
    h = hashlib.sha256()
    for f in sorted(files) + sorted(root.glob("*.cuh")):
        h.update(Path(f).read_bytes())
    cache = Path(cache_dir) / f"resource-usage-sm_90-{h.hexdigest()[:12]}.json"
    if cache.exists():
        return {k: tuple(v) for k, v in json.loads(cache.read_text()).items()}
    usage = {}
    for f in files:
        p = subprocess.run([nvcc, "-cubin", "-arch=sm_90", "--resource-usage", "-std=c++17",
                            f"-I{root}", "-o", "/dev/null", str(f)], capture_output=True, text=True)
        cur = None
        for line in (p.stdout + p.stderr).splitlines():
            m = _FUNC.search(line)
            if m:
                cur = m.group(1)
                usage[cur] = [0, 0]
            elif cur and _REGS.search(line):
                usage[cur][0] = int(_REGS.search(line).group(1))
                m = _SMEM.search(line)
                usage[cur][1] = int(m.group(1)) if m else 0
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(usage))
    return {k: tuple(v) for k, v in usage.items()}


def kernel_resource_usage():
    """resource_usage of the product kernels (kernels/*.cu), cached under build/."""
    return resource_usage(sorted((ROOT / "kernels").glob("*.cu")), ROOT / "build")


def tensor_seconds(counters, dev=H200):
    """The time a launch's tensor-core FLOPs need at the dense peaks, the whole GPU busy."""
    return (counters.get("tensor_flops_tf32", 0.0) / dev.tf32_flops
            + counters.get("tensor_flops_bf16", 0.0) / dev.bf16_flops)


def occupancy(threads, registers, shared_bytes, dev=H200):
    """Blocks per SM and active warps per SM, and what limits them."""
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256  # allocation unit: 256
    limits = {
        "warps": dev.max_warps_per_sm // warps,
        "blocks": dev.max_blocks_per_sm,
        "registers": dev.regs_per_sm // (regs_per_warp * warps),
        "shared memory": dev.smem_per_sm // (shared_bytes + dev.smem_reserved_per_block),
    }
    limiter = min(limits, key=limits.get)
    blocks = max(0, limits[limiter])
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps,
            "occupancy": blocks * warps / dev.max_warps_per_sm, "limited_by": limiter}


def l1_hits(profile, blocks_per_sm, smem_per_block, dev=H200):
    """Load sectors of the blocks run that L1 serves. Each resident block gets an equal share
    of the L1 that shared memory leaves, as an LRU cache: it hits the loads whose reuse
    distance (profile's load_reuse_sectors) is below its share, in sectors. Profiles
    without reuse distances: a block's repeated reads of the arrays whose per-block shares
    (smallest first) fit in the L1 beside the other resident blocks'."""
    room = dev.l1_smem_bytes - blocks_per_sm * (smem_per_block + dev.smem_reserved_per_block)
    if "load_reuse_sectors" in profile:
        return reuse_hits(profile["load_reuse_sectors"], room / max(1, blocks_per_sm) / 32)
    runs = max(1, profile["blocks_run"])
    hits = 0
    for a in sorted(profile["arrays"], key=lambda a: a.get("block_unique_load_sectors", 0)):
        own = a.get("block_unique_load_sectors", a["requested_load_sectors"])  # old profiles: no hits
        room -= 32 * own / runs * max(1, blocks_per_sm)
        if room < 0:
            break
        hits += a["requested_load_sectors"] - own
    return hits


def reuse_hits(buckets, capacity):
    """Loads an LRU cache of ``capacity`` sectors hits, from reuse distance buckets (0:
    distance 0; b >= 1: [2^(b-1), 2^b)), spread evenly within each bucket."""
    hits = 0.0
    for b, n in enumerate(buckets):
        lo, hi = (0, 1) if b == 0 else (2 ** (b - 1), 2 ** b)
        hits += n * min(1.0, max(0.0, (capacity - lo) / (hi - lo)))
    return hits


def scaled(profile, resident_blocks=None, dev=H200, l1_hit_sectors=0):
    """The counters of a (possibly sampled) launch, scaled to its whole grid, with DRAM
    traffic: a lower bound (distinct sectors) and the L2 model's estimate, for
    ``resident_blocks`` blocks running at once (default: all), and the load sectors that
    reach the L2 once ``l1_hit_sectors`` of the blocks run hit in L1."""
    s = profile["blocks_total"] / max(1, profile["blocks_run"])
    out = {k: v * s for k, v in profile.items() if isinstance(v, int) and k not in
           ("blocks_total", "blocks_run", "shared_mem")}
    out["l1_hit_sectors"] = l1_hit_sectors * s
    out["l2_load_sectors"] = out["global_load_sectors"] - out["l1_hit_sectors"]
    unique = {"load": 0.0, "store": 0.0}
    repeats = -out["l1_hit_sectors"]
    footprint = 0.0
    per_block = 0.0  # bytes one block touches (the sampled blocks are far apart: no overlap)
    for a in profile["arrays"]:
        cap = a["bytes"] / 32
        ld = min(a["unique_load_sectors"] * s, cap)
        st = min(a["unique_store_sectors"] * s, cap)
        unique["load"] += ld
        unique["store"] += st
        footprint += max(ld, st) * 32
        per_block += 32 * max(a["unique_load_sectors"], a["unique_store_sectors"]) / max(1, profile["blocks_run"])
        repeats += max(0.0, a["requested_load_sectors"] * s - ld)
    repeats = max(0.0, repeats)
    resident = profile["blocks_total"] if resident_blocks is None else min(resident_blocks, profile["blocks_total"])
    working_set = min(footprint, per_block * resident)
    miss = max(0.0, 1.0 - dev.l2_bytes / working_set) if working_set else 0.0
    out["dram_bytes_lower_bound"] = 32 * (unique["load"] + unique["store"])
    out["dram_bytes"] = out["dram_bytes_lower_bound"] + 32 * repeats * miss
    out["footprint_bytes"] = footprint
    out["working_set_bytes"] = working_set
    out["scale"] = s
    return out


def model_launch(profile, usage, dev=H200):
    """Modeled seconds of one launch (and the terms behind it).

    Blocks run in waves of blocks_per_sm * SMs; a wave takes as long as its busiest SM,
    which runs ceil(wave / SMs) blocks at one SM's share of every rate, slowed by the
    latency those blocks' warps leave unhidden. So a grid of fewer blocks than SMs is
    neither charged the whole GPU's idle slots nor credited with its whole bandwidth."""
    threads = math.prod(profile["block"])
    blocks = profile["blocks_total"]
    regs, static_smem = usage.get(profile["kernel"], (32, 0))
    occ = occupancy(threads, regs, static_smem + profile["shared_mem"], dev)
    per_sm = max(1, occ["blocks_per_sm"])
    slots = per_sm * dev.sms
    hits = l1_hits(profile, occ["blocks_per_sm"], static_smem + profile["shared_mem"], dev)
    c = scaled(profile, slots, dev, hits)
    flops = c.get("flops") or 0.0  # None: a build without a FLOP table
    l2_sectors = c["l2_load_sectors"] + c["global_store_sectors"]
    wavefronts = c["shared_load_wavefronts"] + c["shared_store_wavefronts"]
    # the whole launch at the whole GPU's rates, and the warps each pipeline needs
    work = {
        "dram": (c["dram_bytes"] / dev.dram_bw, dev.warps_hide_memory),
        "l2": (32 * l2_sectors / dev.l2_bw, dev.warps_hide_memory),
        "shared": (wavefronts / (dev.sms * dev.smem_wavefronts_per_s), 0),
        "fp32": (flops / dev.fp32_flops, dev.warps_hide_fma),
        "tensor": (tensor_seconds(c, dev), dev.warps_hide_fma),
    }
    full, rest = divmod(blocks, slots)
    waves = ([(full, slots)] if full else []) + ([(1, rest)] if rest else [])
    warps_per_block = math.ceil(threads / 32)
    terms = dict.fromkeys(work, 0.0)
    seconds = dev.launch_s
    for count, size in waves:
        busiest = math.ceil(size / dev.sms)  # blocks on the busiest SM
        warps = busiest * warps_per_block
        wave = {k: t * busiest * dev.sms / blocks / min(1.0, warps / need if need else 1.0)
                for k, (t, need) in work.items()}
        seconds += count * max(wave.values())
        for k, t in wave.items():
            terms[k] += count * t
    bound = max(terms, key=terms.get)
    tail = blocks / (math.ceil(blocks / slots) * slots)  # the last wave's fill, reported
    return {"seconds": seconds, "bound": bound, "terms": terms, "tail": tail, **occ,
            "registers": regs, "static_shared": static_smem, "counters": c}


def spearman(a, b):
    """Rank correlation of two equally long sequences (ties get their mean rank)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb) if va and vb else float("nan")
