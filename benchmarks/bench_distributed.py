#!/usr/bin/env python
"""Data-parallel scaling: measured step time at 1 and 2 ranks on this machine, the share of
it spent in communication, and the ring all-reduce model for many GPUs.

    python benchmarks/bench_distributed.py                   # cifar-small, numpy, gloo
    python benchmarks/bench_distributed.py --config cifar-small --batch 64 --steps 20

Measured: for each rank count, forward + backward (bucketed all-reduce overlapping it) +
SGD on generated batches at the same global batch, the median step time, the time backward
waited for all-reduces (the exposed communication), and one blocking all-reduce of the
whole gradient volume alone (communication / step time = the communication share).

Modeled: a ring all-reduce moves 2(N-1)/N x bytes per GPU over its slowest link, so it takes
2(N-1)/N x bytes / bandwidth (latency terms left out). With AlexNet's 61 M parameters
(244 MB of FP32 gradients per step) and the step time measured on an H200
(benchmarks/results/h200-20261130/alexnet.json, batch 128: one GPU's compute for a
per-GPU batch of 128), it prints the step time and scaling efficiency at 8, 64 and 512
GPUs over NVLink and InfiniBand, without overlap and with the all-reduce hidden behind
backward (as the buckets do) up to the measured backward time.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_alexnet import generated_batches  # noqa: E402

from pyalexnet.config import load_config  # noqa: E402

H200_RUN = ROOT / "benchmarks" / "results" / "h200-20261130" / "alexnet.json"
# bytes/s one GPU can send in one direction
LINKS = {"NVLink 4 (450 GB/s)": 450e9, "InfiniBand NDR (50 GB/s)": 50e9}
GPUS = (8, 64, 512)


def ring_allreduce_s(nbytes, ranks, bandwidth):
    """The bandwidth term of a ring all-reduce: 2(N-1)/N x bytes / link bandwidth."""
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth


def model_rows(params, compute_ms, backward_ms):
    """Rows of (GPUs, link, all-reduce ms, step ms without / with overlap, efficiencies)."""
    nbytes = 4 * params
    rows = []
    for n in GPUS:
        for link, bw in LINKS.items():
            comm = 1e3 * ring_allreduce_s(nbytes, n, bw)
            serial = compute_ms + comm
            overlap = compute_ms + max(0.0, comm - backward_ms)
            rows.append({"gpus": n, "link": link, "allreduce_ms": comm, "step_ms": serial,
                         "efficiency": compute_ms / serial, "step_ms_overlap": overlap,
                         "efficiency_overlap": compute_ms / overlap})
    return rows


def format_model(rows, params, compute_ms, backward_ms):
    lines = [f"Ring all-reduce model: {params / 1e6:.0f} M parameters = "
             f"{4 * params / 1e6:.0f} MB FP32 per step; compute {compute_ms:.1f} ms per step "
             f"(H200, batch 128 per GPU), of it backward {backward_ms:.1f} ms",
             "",
             "| GPUs | link | all-reduce | step, no overlap | efficiency | step, overlapped "
             "with backward | efficiency |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['gpus']} | {r['link']} | {r['allreduce_ms']:.1f} ms | "
                     f"{r['step_ms']:.1f} ms | {100 * r['efficiency']:.0f}% | "
                     f"{r['step_ms_overlap']:.1f} ms | {100 * r['efficiency_overlap']:.0f}% |")
    return "\n".join(lines)


# ---- measurement --------------------------------------------------------------------------
def worker(args):
    """One rank (or the only process): time the steps, write JSON (rank 0)."""
    from pyalexnet.distributed import World
    from pyalexnet.net import Net

    world = World.from_env(args.backend)
    rank, size = (0, 1) if world is None else (world.rank, world.size)
    config = load_config(args.config)
    net = Net(config, backend=args.backend, devices=args.devices, seed=1, world=world)
    share = args.batch // size
    pool = generated_batches(2, args.batch, config.input_shape[1], config.num_classes, 0)
    steps, waits = [], []
    for i in range(args.warmup + args.steps):
        x, labels = pool[i % len(pool)]
        x, labels = x[rank * share:(rank + 1) * share], labels[rank * share:(rank + 1) * share]
        wait0 = getattr(net.engine, "comm_wait", 0.0)
        t0 = time.perf_counter()
        net.train_step_grads(x, net.backend.asarray(labels, dtype=np.int32), seed=i)
        net.sgd_step(0.01)
        net.synchronize()
        if i >= args.warmup:
            steps.append(time.perf_counter() - t0)
            waits.append(getattr(net.engine, "comm_wait", 0.0) - wait0)
    allreduce = []
    if world is not None:
        import torch

        grads = torch.zeros(config.num_params, dtype=torch.float32)
        for _ in range(args.steps):
            t0 = time.perf_counter()
            world.dist.all_reduce(grads)
            allreduce.append(time.perf_counter() - t0)
        world.close()
    if rank == 0:
        med = statistics.median(steps)
        Path(args.json).write_text(json.dumps({
            "ranks": size, "config": args.config, "batch": args.batch,
            "step_ms": 1e3 * med, "images_per_second": args.batch / med,
            "exposed_comm_ms": 1e3 * statistics.median(waits),
            "allreduce_ms": 1e3 * statistics.median(allreduce) if allreduce else 0.0,
            "gradient_bytes": 4 * config.num_params}))


def measure(args, ranks):
    out = Path(tempfile.mkdtemp()) / f"ranks{ranks}.json"
    cmd = [sys.argv[0], "--worker", "--json", str(out), "--config", args.config,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--backend", args.backend, "--devices", str(args.devices)]
    if ranks == 1:
        cmd = [sys.executable] + cmd
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
               "--master-addr", "127.0.0.1", "--master-port", str(port)] + cmd
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def format_measured(results):
    lines = ["| ranks | global batch | step | images/s | all-reduce of all gradients | "
             "communication share | backward waited (comm + rank skew) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['ranks']} | {r['batch']} | {r['step_ms']:.1f} ms | "
                     f"{r['images_per_second']:.0f} | {r['allreduce_ms']:.2f} ms | "
                     f"{100 * r['allreduce_ms'] / r['step_ms']:.1f}% | "
                     f"{r['exposed_comm_ms']:.2f} ms |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="cifar-small")
    ap.add_argument("--backend", default="numpy", choices=("numpy", "emu", "cuda"))
    ap.add_argument("--devices", type=int, default=1, choices=(1, 2))
    ap.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ranks", default="1,2", help="rank counts to measure (default 1,2)")
    ap.add_argument("--model-only", action="store_true", help="print only the modeled table")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    if not args.model_only:
        results = [measure(args, int(n)) for n in args.ranks.split(",")]
        print(f"Measured on this machine ({os.cpu_count()} CPU cores, {args.backend}, "
              f"gloo; {args.config}, {results[0]['gradient_bytes'] / 1e3:.0f} kB of "
              "gradients):\n")
        print(format_measured(results) + "\n")
    run = json.loads(H200_RUN.read_text())
    params = load_config("alexnet").num_params
    compute, backward = run["median_ms_per_step"], run["split_ms"]["backward_ms"]
    print(format_model(model_rows(params, compute, backward), params, compute, backward))


if __name__ == "__main__":
    sys.exit(main())
