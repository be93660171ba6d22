"""Probes of the GPU for the emulator's H200 model: the rates and latencies that
benchmarks/emu_model.py assumes, measured (kernels/probe.cu).

On a GPU (backend cuda) it times every probe (CUDA events, L2 flushed between repeats) and
prints and writes (--out) what it found: the read rate against the warps per SM and the
loads each thread keeps in flight, the latency of L1, L2 and DRAM, the L2 read rate, the
FP32 FMA rate, the shared-memory rate and the rate of the tensor-core mma.sync shapes our
kernels use; and, under "model", the constants emu_model.calibrated() puts in place of its
assumptions (bench_kernels.py / bench_alexnet.py --emulated --device-probe FILE). On the
emulator it runs every probe at a small size and checks its result against NumPy; nothing
is timed there.

  python benchmarks/bench_device.py --out probe.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_kernels import Timer  # noqa: E402

from pyalexnet.backends import BackendUnavailable, get_backend  # noqa: E402
from pyalexnet.ops._launch import i32  # noqa: E402

KERNELS = "probe.cu"
ILPS = (1, 2, 4, 8)
WARPS_PER_SM = (4, 8, 16, 32, 64)
SMEM_WORDS = 8192  # PROBE_SMEM_WORDS


class Probe:
    """Launches the probes; on a GPU times them (ms, the median of a few runs)."""

    def __init__(self, be):
        self.be = be
        self.gpu = be.name == "cuda"
        self.timer = Timer(be)
        if self.gpu:
            import cupy
            props = cupy.cuda.runtime.getDeviceProperties(be.device.id)
            self.sms, self.clock_hz = props["multiProcessorCount"], props["clockRate"] * 1e3
            self.name = props["name"].decode()
        else:
            self.sms, self.clock_hz, self.name = 2, None, f"{be.name} (not timed)"

    def run(self, kernel, grid, block, args):
        """The launch's time in ms on a GPU (None elsewhere, where it runs once)."""
        go = lambda: self.be.launch(KERNELS, kernel, grid, block, args)  # noqa: E731
        if not self.gpu:
            go()
            return None
        return self.timer(go, 1, 3)

    def layout(self, warps_per_sm):
        """(grid, block) that puts warps_per_sm warps on every SM: one block an SM up to 32
        warps (1024 threads), two above."""
        per_block = min(warps_per_sm, 32)
        return self.sms * max(1, warps_per_sm // 32), 32 * per_block

    # ---- memory ------------------------------------------------------------------------------
    def read(self, warps_per_sm, ilp, src, passes=1):
        """(ms, bytes read) of probe_read_<ilp>: the first n floats of src, n a multiple of
        ilp * threads; the sums are checked."""
        grid, block = self.layout(warps_per_sm)
        threads = grid * block
        n = src.size // (ilp * threads) * (ilp * threads)
        sink = self.be.empty((threads,))
        ms = self.run(f"probe_read_{ilp}", grid, block, [src, sink, np.int64(n), i32(passes)])
        if not self.gpu:  # the GPU's sums go unchecked: 20 host sums of 1 GiB would take long
            host = self.be.to_numpy(src)[:n].astype(np.float64)
            want = passes * host.reshape(-1, threads).sum(axis=0)
            np.testing.assert_allclose(self.be.to_numpy(sink), want, rtol=1e-5,
                                       err_msg=f"probe_read_{ilp}")
        return ms, 4 * n * passes

    def chase(self, nbytes, steps, rng):
        """ms per hop through a random cycle of 128-byte-spaced words in nbytes."""
        nodes = max(2, nbytes // 128)
        order = rng.permutation(nodes).astype(np.uint32) * 32
        nxt = np.zeros(nodes * 32, np.uint32)
        nxt[order] = np.roll(order, -1)
        out = self.be.empty((1,), dtype=np.uint32)
        ms = self.run("probe_chase", 1, 1, [self.be.asarray(nxt, dtype=np.uint32), out,
                                            i32(steps)])
        j = 0
        for _ in range(steps):
            j = nxt[j]
        assert int(self.be.to_numpy(out)[0]) == j, "probe_chase"
        return ms and ms / steps

    # ---- compute -------------------------------------------------------------------------------
    def fma(self, iters, blocks_per_sm=8, block=256):
        grid = self.sms * blocks_per_sm
        out = self.be.empty((grid * block,))
        ms = self.run("probe_fma", grid, block, [out, i32(iters), np.float32(1.0),
                                                 np.float32(0.5)])
        tid = np.arange(grid * block) % block
        want = sum(tid + j + 0.5 * iters for j in range(8))
        np.testing.assert_array_equal(self.be.to_numpy(out), want.astype(np.float32), "probe_fma")
        return ms, grid * block * iters * 8 * 2

    def smem(self, iters, blocks_per_sm=8, block=256):
        grid = self.sms * blocks_per_sm
        out = self.be.empty((grid * block,))
        ms = self.run("probe_smem", grid, block, [out, i32(iters)])
        lane = np.arange(block) & 31
        want = sum((((i * 128) & (SMEM_WORDS - 1)) + lane + 32 * j) & 7
                   for i in range(iters) for j in range(4))
        np.testing.assert_array_equal(self.be.to_numpy(out), np.tile(want, grid), "probe_smem")
        return ms, grid * block // 32 * iters * 4  # wavefronts

    def mma(self, fmt, iters, blocks_per_sm=4, block=256):
        grid = self.sms * blocks_per_sm
        out = self.be.empty((grid * block,))
        ms = self.run(f"probe_mma_{fmt}", grid, block, [out, i32(iters)])
        k = {"tf32": 8, "bf16": 16}[fmt]
        # 4 tiles x 4 values, each iters * k * (1/256) * 1
        want = np.full(grid * block, 16 * iters * k / 256)
        np.testing.assert_array_equal(self.be.to_numpy(out), want, f"probe_mma_{fmt}")
        return ms, grid * block // 32 * iters * 4 * 2 * 16 * 8 * k


def measure(be, small=False):
    p = Probe(be)
    rng = np.random.default_rng(0)
    mib = 1 << 20
    dram_bytes = 64 * 1024 if small else 1024 * mib
    src = be.asarray(rng.random(dram_bytes // 4, dtype=np.float32))
    r = {"device": p.name, "backend": be.name, "sms": p.sms, "clock_hz": p.clock_hz}
    grid = []
    for w in (WARPS_PER_SM[:2] if small else WARPS_PER_SM):
        for ilp in ILPS:
            ms, nbytes = p.read(w, ilp, src)
            grid.append({"warps_per_sm": w, "ilp": ilp, "bytes_in_flight_per_sm": w * ilp * 128,
                         "bytes_per_s": ms and nbytes / (ms / 1e3)})
    r["read"] = grid
    l2_src = be.asarray(rng.random((4096 if small else 16 * mib) // 4, dtype=np.float32))
    ms, nbytes = p.read(4 if small else 64, 8, l2_src, passes=2 if small else 100)
    r["l2_read_bytes_per_s"] = ms and nbytes / (ms / 1e3)
    r["latency_ns"] = {k: (ms and 1e6 * ms) for k, ms in (
        ("l1", p.chase(16 * 1024, 200 if small else 100000, rng)),
        ("l2", p.chase(4096 if small else 4 * mib, 200 if small else 100000, rng)),
        ("dram", p.chase(8192 if small else 1024 * mib, 200 if small else 20000, rng)))}
    ms, flops = p.fma(16 if small else 4096)
    r["fp32_flops"] = ms and flops / (ms / 1e3)
    ms, wavefronts = p.smem(8 if small else 4096)
    r["smem_wavefronts_per_sm_per_s"] = ms and wavefronts / (ms / 1e3) / p.sms
    for fmt in ("tf32", "bf16"):
        ms, flops = p.mma(fmt, 4 if small else 4096)
        r[f"mma_{fmt}_flops"] = ms and flops / (ms / 1e3)
    if p.gpu:
        r["model"] = model_constants(r)
    return r


def model_constants(r):
    """emu_model.Device fields from a measurement. warps_hide_memory: the model's latency
    rule (active warps / warps_hide_memory, at most 1) put through the read rate of 64 warps
    an SM with one load in flight each (our memory-bound kernels' pattern), as a share of
    the best read rate found."""
    best = max(g["bytes_per_s"] for g in r["read"])
    at64 = next(g["bytes_per_s"] for g in r["read"] if g["warps_per_sm"] == 64 and g["ilp"] == 1)
    return {"l2_bw": r["l2_read_bytes_per_s"], "fp32_flops": r["fp32_flops"],
            "tf32_flops": r["mma_tf32_flops"], "bf16_flops": r["mma_bf16_flops"],
            "smem_wavefronts_per_s": r["smem_wavefronts_per_sm_per_s"],
            "warps_hide_memory": 64 * best / at64}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default=None, help="cuda (timed) or emu (checked, small)")
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args(argv)
    try:
        be = get_backend(args.backend)
        if not be.runs_kernels:
            raise BackendUnavailable(f"the {be.name} backend runs no kernels: use cuda or emu")
    except BackendUnavailable as e:
        print(f"bench_device.py: error: {e}", file=sys.stderr)
        return 2
    r = measure(be, small=be.name != "cuda")
    r["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if be.name != "cuda":
        print(f"every probe ran on {be.name} and matched NumPy (not timed)")
    else:
        print(f"{r['device']}: {r['sms']} SMs at {r['clock_hz'] / 1e9:.2f} GHz")
        print("read rate (TB/s) by warps per SM (rows) and loads in flight per thread:")
        print("warps " + "".join(f"{ilp:>8d}" for ilp in ILPS))
        for w in WARPS_PER_SM:
            row = [g["bytes_per_s"] for g in r["read"] if g["warps_per_sm"] == w]
            print(f"{w:5d} " + "".join(f"{v / 1e12:8.2f}" for v in row))
        lat = r["latency_ns"]
        print(f"latency: L1 {lat['l1']:.0f} ns, L2 {lat['l2']:.0f} ns, DRAM {lat['dram']:.0f} ns")
        print(f"L2 read {r['l2_read_bytes_per_s'] / 1e12:.2f} TB/s; FP32 "
              f"{r['fp32_flops'] / 1e12:.1f} TFLOP/s; shared memory "
              f"{r['smem_wavefronts_per_sm_per_s'] / r['clock_hz']:.2f} wavefronts a clock an SM; "
              f"mma.sync tf32 {r['mma_tf32_flops'] / 1e12:.0f}, bf16 "
              f"{r['mma_bf16_flops'] / 1e12:.0f} TFLOP/s")
        print("model constants:", json.dumps(r["model"]))
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
