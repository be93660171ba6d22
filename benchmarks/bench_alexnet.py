#!/usr/bin/env python
"""Whole AlexNet training steps, ours and PyTorch's side by side, on generated data.

    python benchmarks/bench_alexnet.py --steps 300           # on a GPU: the paper's net, batch 128
    python benchmarks/bench_alexnet.py --config cifar-small --backend numpy --steps 5 --batch 8

First, where PyTorch is installed, the same network in PyTorch (benchmarks/torch_twin.py:
groups=2 convolutions for the towers, LRN, overlapping pooling, dropout) gets our weights
and our dropout masks, and both must compute the same loss and gradients on one batch, to
float32 rounding: so the comparison is of equal work. Then ours runs forward + backward +
SGD for --steps steps on a fixed pool of generated batches (the loss must fall: the net
memorises them), timing every step with the device synchronised, plus a separate
forward / backward / update split (other = the step minus those three). Then PyTorch eager
(SGD with momentum and weight decay, cudnn.benchmark on, TF32 off), and torch.compile where
it runs, do the same steps. Writes images/s for each, the ratio, the split and the loss
curve as JSON (benchmarks/results/alexnet-<config>-<device>-<date>.json by default) and
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

from pyalexnet.backends import BackendUnavailable, get_backend  # noqa: E402
from pyalexnet.config import load_config  # noqa: E402
from pyalexnet.graphs import GraphedStep  # noqa: E402
from pyalexnet.layers.conv import CONV_ALGOS  # noqa: E402
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


def our_dropout_masks(net, n, seed):
    """The masks our dropout layers draw at ``seed`` (scaled keep masks, grouped layout)."""
    from pyalexnet.devices import tower_slices
    from pyalexnet.layers import Dropout
    from pyalexnet.ops.dropout import dropout_backward
    from pyalexnet.rng import dropout_seed

    numpy_be, masks = get_backend("numpy"), []
    for layer in net.config.layers:
        if isinstance(layer, Dropout):
            width = layer.in_shape[0]
            parts = [dropout_backward(numpy_be, np.ones((n, s.stop - s.start), np.float32),
                                      p=layer.p, seed=dropout_seed(seed, layer.index, t),
                                      mode=net.dropout_mode)
                     for t, s in enumerate(tower_slices(width, net.config.towers))]
            masks.append(np.concatenate(parts, axis=1))
    return masks


def check_equal_work(net, twin, torch, device, x, labels, seed=7):
    """Our loss and gradients against PyTorch's on one batch, from the same weights and
    masks. Tolerance: 16 eps32 sqrt(longest reduction), relative to each tensor's largest
    entry (sums of mixed signs cancel). Returns the worst error found, scaled by its
    tolerance (<= 1 passes)."""
    twin.load_ours(net.state_dict())
    twin.train()
    twin.set_dropout_masks([torch.from_numpy(m).to(device)
                            for m in our_dropout_masks(net, len(labels), seed)])
    twin.zero_grad()
    xt = torch.from_numpy(x).to(device)
    out = twin(xt)
    loss_t = torch.nn.functional.cross_entropy(out, torch.from_numpy(labels.astype(np.int64))
                                               .to(device))
    loss_t.backward()
    twin.set_dropout_masks(None)
    be = net.backend
    loss, _ = net.train_step_grads(be.asarray(x), be.asarray(labels, dtype=np.int32), seed=seed)
    ours, theirs = net.grad_state_dict(), twin.grads()
    k = max(max(int(np.prod(s[1:])), len(labels) * int(np.prod(layer.out_shape[1:])))
            for layer in net.config.layers for s in [layer.param_shapes.get("w", (1, 1))])
    rtol = 16 * np.finfo(np.float32).eps * np.sqrt(k)
    loss_t = float(loss_t.detach())
    worst = abs(float(loss) - loss_t) / (rtol * max(1.0, abs(float(loss))))
    report = {"loss_ours": float(loss), "loss_torch": loss_t, "rtol": rtol}
    for name, g in ours.items():
        scale = rtol * max(float(np.abs(theirs[name]).max()), 1e-30)
        err = float(np.abs(g - theirs[name]).max()) / scale
        report[name] = err
        worst = max(worst, err)
    report["worst_over_tolerance"] = worst
    return report


def time_torch(torch, twin, device, batches, steps, lr, max_seconds, compiled=False, bf16=False):
    """Median ms per training step of PyTorch (forward, loss, backward, SGD); ``bf16``:
    under autocast(bfloat16), as PyTorch users train in it."""
    import contextlib

    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else \
        contextlib.nullcontext
    model = torch.compile(twin) if compiled else twin
    opt = torch.optim.SGD(twin.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    data = [(torch.from_numpy(x).to(device), torch.from_numpy(y.astype(np.int64)).to(device))
            for x, y in batches]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ms, t_start = [], time.perf_counter()
    for step in range(steps):
        x, y = data[step % len(data)]
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sync()
        ms.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - t_start > max_seconds:
            break
    return statistics.median(ms[min(5, len(ms) - 1):])


def run_emulated(args):
    """One steady-state training step (forward, loss, backward, SGD) of our kernels on the
    emulator's profiling build, every launch modeled on an H200 (benchmarks/emu_model.py):
    the modeled ms per phase and kernel, and images/s. Every launch runs --blocks of its
    blocks (the rest of its output is left uncomputed: the counts, not the values, are
    the point). With --devices 2 both towers' launches are summed, as when both share one
    GPU."""
    import os

    import emu_model
    from pyalexnet.backends import EmuBackend

    be = EmuBackend(threads=args.threads or os.cpu_count(), profile=True,
                    profile_blocks=args.blocks)
    net = Net(load_config(args.config), backend=be, devices=args.devices, seed=0,
              bias_init="caffe", precision=args.precision, conv_algo=args.conv_algo)
    x, labels = generated_batches(1, args.batch, net.config.crop_size, net.config.num_classes,
                                  seed=1)[0]
    xd, ld = be.asarray(x), be.asarray(labels, dtype=np.int32)
    usage = emu_model.kernel_resource_usage()
    dev = emu_model.load_device(args.device_probe)

    def modeled(run):
        """The launches ``run`` makes, each modeled: [(kernel, seconds)]."""
        be.profiles.clear()
        run()
        return [(p["kernel"], emu_model.model_launch(p, usage, dev)["seconds"])
                for p in be.profiles]

    def step():
        with net.repeated_step(x.shape):  # the training loop's step: fixed buffers, no syncs
            net.train_step_grads(xd, ld, seed=1, sync=False)
            net.sgd_step(args.lr, 0.9, 5e-4)

    step()  # the first step allocates the step's buffers
    launches = modeled(step)
    phases = {"forward": modeled(lambda: net.forward(xd, train=True, seed=1)),
              "update": modeled(lambda: net.sgd_step(args.lr, 0.9, 5e-4))}
    total = sum(sec for _, sec in launches)
    split = {k: 1e3 * sum(sec for _, sec in v) for k, v in phases.items()}
    split["backward"] = 1e3 * total - split["forward"] - split["update"]  # with the loss
    kernels = {}
    for name, sec in launches:
        calls, ms = kernels.get(name, (0, 0.0))
        kernels[name] = (calls + 1, ms + 1e3 * sec)
    top = sorted(kernels.items(), key=lambda kv: -kv[1][1])
    print(f"{args.config}, batch {args.batch}, {args.precision}, conv {args.conv_algo}, "
          f"{args.devices} device(s): "
          f"{len(launches)} launches, modeled on an {emu_model.H200.name}: {1e3 * total:.2f} ms "
          f"a step ({args.batch / total:.0f} images/s); forward {split['forward']:.2f}, "
          f"backward {split['backward']:.2f}, update {split['update']:.2f} ms")
    for name, (calls, ms) in top[:12]:
        print(f"  {name:40s} {calls:4d} launches {ms:8.3f} ms  {100 * ms / (1e3 * total):5.1f}%")
    return {"config": args.config, "batch": args.batch, "precision": args.precision,
            "conv_algo": args.conv_algo, "devices": args.devices, "device": emu_model.H200.name,
            "device_probe": args.device_probe,
            "backend": "emu (profiling build), modeled", "blocks_per_launch": args.blocks,
            "launches": len(launches), "modeled_ms_per_step": 1e3 * total,
            "modeled_images_per_second": args.batch / total, "modeled_split_ms": split,
            "kernels_ms": {k: {"launches": c, "ms": ms} for k, (c, ms) in top},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "note": "not a measurement: the H200 model of benchmarks/emu_model.py applied to "
                    "the emulator's counters of one steady-state step; host work not included"}


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
    ap.add_argument("--torch", choices=("auto", "off"), default="auto",
                    help="auto: compare with PyTorch where it is installed (default)")
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                    help="ours: the conv and fc products' format; PyTorch at the same: TF32 "
                         "allowed, or autocast(bfloat16)")
    ap.add_argument("--conv-algo", choices=CONV_ALGOS, default="gemm",
                    help="ours: the conv layers' algorithms (gemm: implicit GEMM; auto: "
                         "Winograd or implicit GEMM per pass as the cost models choose); the "
                         "equal-work check runs gemm")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="run our steps as captured graphs (pyalexnet.graphs)")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip the torch.compile anchor (it compiles for minutes on a CPU)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--emulated", action="store_true",
                    help="model one step's kernels on an H200 from the emulator's counters "
                         "(needs pyalexnet._emu_profile); no timing, no PyTorch")
    ap.add_argument("--blocks", type=int, default=16, help="--emulated: blocks run per launch")
    ap.add_argument("--device-probe", default=None,
                    help="--emulated: a GPU's benchmarks/bench_device.py JSON: its measured "
                         "constants replace the model's assumed ones")
    ap.add_argument("--threads", type=int, default=None,
                    help="--emulated: OS threads (default: all cores)")
    args = ap.parse_args(argv)
    if args.emulated:
        if args.blocks < 1:
            ap.error("--blocks must be at least 1")
        try:
            result = run_emulated(args)
        except (FileNotFoundError, ValueError, KeyError, BackendUnavailable) as e:
            print(f"bench_alexnet.py: error: {e}", file=sys.stderr)
            return 2
        out = Path(args.out) if args.out else (
            ROOT / "benchmarks" / "results" /
            f"alexnet-{args.config}-emulated-{args.precision}-{args.conv_algo}-"
            f"{datetime.date.today():%Y%m%d}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")
        return 0

    try:
        be = get_backend(args.backend)
        net = Net(load_config(args.config), backend=be, devices=args.devices, seed=0,
                  bias_init="caffe", precision=args.precision, conv_algo=args.conv_algo)
    except (FileNotFoundError, ValueError, KeyError, BackendUnavailable) as e:
        print(f"bench_alexnet.py: error: {e}", file=sys.stderr)
        return 2
    batches = generated_batches(args.pool, args.batch, net.config.crop_size,
                                net.config.num_classes, seed=1)
    torch = twin = device = None
    equal = None
    if args.torch == "auto":
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed: no side-by-side comparison")
    if torch is not None:
        from torch_twin import TorchTwin

        device = torch.device("cuda" if be.name == "cuda" else "cpu")
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        twin = TorchTwin(net.config).to(device)
        # the same network and work, checked in fp32 with implicit GEMM (tf32, bf16 and
        # Winograd differ in their roundings only; their own tests bound those)
        net.engine.precision, net.engine.conv_algo = "fp32", "gemm"
        equal = check_equal_work(net, twin, torch, device, *batches[0])
        net.engine.precision, net.engine.conv_algo = args.precision, args.conv_algo
        if args.precision == "tf32":
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        print(f"equal work: loss ours {equal['loss_ours']:.6f} torch {equal['loss_torch']:.6f}; "
              f"worst gradient error {equal['worst_over_tolerance']:.3f} x tolerance")
        if equal["worst_over_tolerance"] > 1:
            print("error: ours and PyTorch do not compute the same step; not timing",
                  file=sys.stderr)
            return 1
        twin.load_ours(net.state_dict())  # both start the timed run from the same weights

    def update():
        net.sgd_step(args.lr, 0.9, 5e-4)

    graph = GraphedStep(net, batches[0][0].shape) if args.cuda_graph else None

    def step_once(x, labels, seed):
        """The training loop's step: fixed buffers, the loss read after the update."""
        if graph is not None:
            loss, _ = graph.run(x, labels, seed, args.lr)
            return loss
        with net.repeated_step(x.shape):
            loss, _ = net.train_step_grads(be.asarray(x), be.asarray(labels, dtype=np.int32),
                                           seed=seed, sync=False)
            update()
        net.synchronize()
        return float(be.to_numpy(loss)[0])

    losses, step_ms = [], []
    t_start = time.perf_counter()
    for step in range(args.steps):
        x, labels = batches[step % len(batches)]
        t0 = time.perf_counter()
        loss = step_once(x, labels, step)
        step_ms.append((time.perf_counter() - t0) * 1e3)
        losses.append(loss)
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
    split["other_ms"] = ms - sum(split.values())
    baselines = {}
    if torch is not None:
        baselines["pytorch_eager_ms"] = time_torch(torch, twin, device, batches, args.steps,
                                                   args.lr, args.max_seconds,
                                                   bf16=args.precision == "bf16")
        try:
            if args.no_compile:
                raise RuntimeError("skipped (--no-compile)")
            twin.load_ours(net.state_dict())
            baselines["pytorch_compile_ms"] = time_torch(torch, twin, device, batches,
                                                         args.steps, args.lr, args.max_seconds,
                                                         compiled=True,
                                                         bf16=args.precision == "bf16")
        except Exception as e:  # compile needs a compiler toolchain; say why it did not run
            baselines["pytorch_compile_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    device = be.name
    if be.name == "cuda":
        import cupy
        device = cupy.cuda.runtime.getDeviceProperties(be.device.id)["name"].decode()
    result = {
        "config": args.config, "device": device, "backend": be.name, "devices": args.devices,
        "batch": args.batch, "precision": args.precision, "conv_algo": args.conv_algo,
        "cuda_graph": args.cuda_graph,
        "steps": len(losses),
        "median_ms_per_step": ms,
        "images_per_second": args.batch / (ms / 1e3), "split_ms": split,
        "equal_work_check": equal, **baselines,
        **{k.replace("_ms", "_images_per_second"): args.batch / (v / 1e3)
           for k, v in baselines.items() if k.endswith("_ms")},
        **{k.replace("_ms", "_speedup"): v / ms for k, v in baselines.items() if k.endswith("_ms")},
        "first_loss": losses[0], "last_loss": losses[-1], "loss_curve": losses,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "numpy": np.__version__,
        "note": "forward+backward+SGD per step, device synchronised each step; data pool of "
                f"{args.pool} generated batches already in memory (no data loading)",
    }
    print(f"ours: {result['images_per_second']:.1f} images/s, {ms:.1f} ms/step; split "
          + ", ".join(f"{k[:-3]} {v:.2f}" for k, v in split.items())
          + f" ms; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    for k, v in baselines.items():
        if k.endswith("_ms"):
            name = k[:-3].replace("_", " ")
            print(f"{name}: {args.batch / (v / 1e3):.1f} images/s, {v:.1f} ms/step; ours is "
                  f"{v / ms:.2f}x its speed")
        else:
            print(f"{k}: {v}")
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
