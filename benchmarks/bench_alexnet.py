#!/usr/bin/env python
"""End-to-end AlexNet training steps on generated 227×227 data.

    python benchmarks/bench_alexnet.py --steps 300           # on a GPU: the paper's net, batch 128
    python benchmarks/bench_alexnet.py --config cifar-small --backend numpy --steps 5 --batch 8

Runs forward + backward + SGD for --steps steps on a fixed pool of generated batches (so
the loss must fall: the net memorises them), timing every step with the device
synchronised, plus a separate forward/backward/update split. Writes images/s, the split and
the loss curve as JSON (benchmarks/results/alexnet-<device>-<date>.json by default) and
the loss curve as a PNG beside it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyalexnet.backends import get_backend  # noqa: E402
from pyalexnet.config import load_config  # noqa: E402
from pyalexnet.net import Net  # noqa: E402
from pyalexnet.plots import plot_series  # noqa: E402


def generated_batches(pool, batch, size, classes, seed):
    """Class-dependent smooth patterns plus noise: learnable, nothing to download."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    batches = []
    for _ in range(pool):
        labels = rng.integers(0, classes, batch).astype(np.int32)
        freq = (labels % 7 + 1).astype(np.float32)[:, None, None, None]
        phase = (labels % 5).astype(np.float32)[:, None, None, None]
        chan = np.arange(3, dtype=np.float32)[None, :, None, None]
        x = np.sin(2 * np.pi * (freq * xx + (labels // 7 % 5)[:, None, None, None] * yy) + phase + chan)
        x = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
        batches.append((np.ascontiguousarray(x, dtype=np.float32), labels))
    return batches


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="alexnet", help="network config (default alexnet)")
    ap.add_argument("--backend", default=None, help="cuda, emu or numpy (default: auto)")
    ap.add_argument("--devices", type=int, default=2, help="1, or 2 for the paper's two-tower split")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--pool", type=int, default=4, help="distinct generated batches cycled through")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--max-seconds", type=float, default=80, help="stop stepping after this long")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    be = get_backend(args.backend)
    net = Net(load_config(args.config), backend=be, devices=args.devices, seed=0, bias_init="caffe")
    batches = generated_batches(args.pool, args.batch, net.config.crop_size,
                                net.config.num_classes, seed=1)

    def update():
        net.sgd_step(args.lr, 0.9, 5e-4)

    losses, step_ms = [], []
    t_start = time.perf_counter()
    for step in range(args.steps):
        x, labels = batches[step % len(batches)]
        t0 = time.perf_counter()
        loss, _ = net.train_step_grads(be.asarray(x), be.asarray(labels, dtype=np.int32), seed=step)
        update()
        net.synchronize()
        step_ms.append((time.perf_counter() - t0) * 1e3)
        losses.append(float(loss))
        if not np.isfinite(loss):
            print(f"step {step}: loss is {loss}; stopping")
            break
        if step % 20 == 0:
            print(f"step {step:4d}  loss {loss:.4f}  {step_ms[-1]:.1f} ms/step", flush=True)
        if time.perf_counter() - t_start > args.max_seconds:
            print(f"stopping after {step + 1} steps: --max-seconds {args.max_seconds} reached")
            break

    # forward / backward / update split, measured separately after the run
    split = {"forward_ms": [], "backward_ms": [], "update_ms": []}
    x, labels = batches[0]
    xd, ld = be.asarray(x), be.asarray(labels, dtype=np.int32)
    for i in range(5):
        net.synchronize()
        t0 = time.perf_counter()
        net.train_step_grads(xd, ld, seed=10**6 + i)  # forward + backward
        net.synchronize()
        t1 = time.perf_counter()
        net.forward(xd, train=True, seed=10**6 + i)
        net.synchronize()
        t2 = time.perf_counter()
        update()
        net.synchronize()
        t3 = time.perf_counter()
        split["forward_ms"].append((t2 - t1) * 1e3)
        split["backward_ms"].append(((t1 - t0) - (t2 - t1)) * 1e3)
        split["update_ms"].append((t3 - t2) * 1e3)
    split = {k: statistics.median(v) for k, v in split.items()}

    steady = step_ms[min(5, len(step_ms) - 1):]  # skip compilation and warm-up
    ms = statistics.median(steady)
    device = be.name
    if be.name == "cuda":
        import cupy
        device = cupy.cuda.runtime.getDeviceProperties(be.device.id)["name"].decode()
    result = {
        "config": args.config, "device": device, "backend": be.name, "devices": args.devices,
        "batch": args.batch, "steps": len(losses), "median_ms_per_step": ms,
        "images_per_second": args.batch / (ms / 1e3), "split_ms": split,
        "first_loss": losses[0], "last_loss": losses[-1], "loss_curve": losses,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "numpy": np.__version__,
        "note": "forward+backward+SGD per step, device synchronised each step; data pool of "
                f"{args.pool} generated batches already in memory (no data loading)",
    }
    print(f"{result['images_per_second']:.1f} images/s, {ms:.1f} ms/step; split {split}; "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    slug = "-".join(device.lower().split())
    out = Path(args.out) if args.out else (
        ROOT / "benchmarks" / "results" / f"alexnet-{args.config}-{slug}-{datetime.date.today():%Y%m%d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    curve = plot_series(out.with_suffix(".png"), [("train loss", list(range(len(losses))), losses)],
                        f"{args.config} on {device}, batch {args.batch}: loss per step")
    print(f"wrote {out} and {curve}")
    return 0 if np.isfinite(losses[-1]) and losses[-1] < losses[0] else 1


if __name__ == "__main__":
    sys.exit(main())
