#!/usr/bin/env python
"""Kernel benchmarks at AlexNet's layer shapes, side by side with cuDNN/cuBLAS.

    python benchmarks/bench_kernels.py                 # cuda if a GPU is here, else --small on emu
    python benchmarks/bench_kernels.py --small --backend emu --repeats 1   # never rots on CPUs

On a GPU, each case is validated (against PyTorch's cuDNN/cuBLAS result where PyTorch is
installed, else against the NumPy reference), timed with CUDA events after warm-up with L2
flushed between repeats, validated again, then the same operation is timed in PyTorch at
the same precision (TF32 off). The claim is the ratio ours/baseline, measured in one run.
Results go to benchmarks/results/kernels-<device>-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyalexnet.backends import get_backend  # noqa: E402
from pyalexnet.ops import conv, dropout, linear, lrn, pool, relu, sgd, softmax  # noqa: E402

# Vendor datasheet peaks (dense FP32 without tensor cores, HBM bandwidth): leads, not readings.
PEAKS = {"H200": (67e12, 4.8e12), "H100": (67e12, 3.35e12), "A100": (19.5e12, 2.0e12)}

# The paper's network in its single-device grouped form: (name, C, H, K, R, stride, pad, groups)
CONVS = [("conv1", 3, 227, 96, 11, 4, 0, 1), ("conv2", 96, 27, 256, 5, 1, 2, 2),
         ("conv3", 256, 13, 384, 3, 1, 1, 1), ("conv4", 384, 13, 384, 3, 1, 1, 2),
         ("conv5", 384, 13, 256, 3, 1, 1, 2)]
FCS = [("fc6", 9216, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)]
LRNS = [("lrn1", 96, 55), ("lrn2", 256, 27)]
POOLS = [("pool1", 96, 55), ("pool2", 256, 27), ("pool3", 256, 13)]


@dataclass
class Case:
    name: str
    shape: str
    flops: float = 0.0      # arithmetic-bound ops: GFLOP/s is the measure
    bytes: float = 0.0      # memory-bound ops: GB/s
    ours: object = None     # () -> output (backend arrays)
    baseline: object = None  # () -> output (torch tensors), or None
    reference: object = None  # () -> numpy output to validate against (when no torch)
    compare: bool = True    # baseline output comparable with ours (dropout: different RNG)
    tol: float = 1e-3


@dataclass
class Result:
    name: str
    shape: str
    ours_ms: float
    baseline_ms: float | None
    ratio: float | None      # ours / baseline: below 1 is faster than the baseline
    gflops: float | None
    gbps: float | None
    frac_peak: float | None
    max_rel_err: float | None
    validated_against: str
    notes: list = field(default_factory=list)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


class Timer:
    """CUDA events on a GPU (L2 flushed between repeats); wall clock on CPU backends."""

    def __init__(self, be, flush_mb=256):
        self.be = be
        self.gpu = be.name == "cuda"
        if self.gpu:
            import cupy
            self.cupy = cupy
            self.flush = cupy.empty(flush_mb * 1024 * 1024 // 4, dtype=np.float32)

    def __call__(self, fn, warmup, repeats):
        for _ in range(warmup):
            fn()
        times = []
        for r in range(repeats):
            if self.gpu:
                self.flush.fill(r)  # evict L2 (60 MB on an H200)
                start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(self.cupy.cuda.get_elapsed_time(start, end))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)


def build_cases(be, torch, batch, scale, rng):
    """Every op at the layer shapes; channel and unit counts divided by ``scale`` (--small)."""
    cases = []

    def arr(*shape, std=1.0):
        return be.asarray(rng.standard_normal(shape).astype(np.float32) * std)

    def t(a):  # zero-copy view for PyTorch (DLPack)
        return torch.from_dlpack(a) if torch is not None else None

    def host(a):
        return be.to_numpy(a)

    def ch(c):
        return max(1, c // scale)

    for name, c, h, k, r, s, p, g in CONVS:
        c, k = (c if c == 3 else max(g, ch(c) // g * g)), max(g, ch(k) // g * g)
        x, w = arr(batch, c, h, h), arr(k, c // g, r, r, std=0.01)
        y_shape = conv.conv2d_output_shape(x.shape, w.shape, s, p)
        dy = arr(*y_shape)
        flops = 2.0 * np.prod(y_shape) * (c // g) * r * r
        shape = f"x{tuple(x.shape)} w{tuple(w.shape)} s{s} p{p} g{g}"
        tf = torch.nn.functional if torch is not None else None
        cases += [
            Case(f"{name} forward", shape, flops=flops,
                 ours=lambda x=x, w=w, s=s, p=p, g=g: conv.conv2d_forward(be, x, w, None, s, p, g),
                 baseline=torch and (lambda x=x, w=w, s=s, p=p, g=g: tf.conv2d(t(x), t(w), None, s, p, 1, g)),
                 reference=lambda x=x, w=w, s=s, p=p, g=g: conv.conv2d_forward_reference(
                     host(x).astype(np.float64), host(w).astype(np.float64), None, s, p, g)),
            Case(f"{name} backward data", shape, flops=flops,
                 ours=lambda x=x, w=w, dy=dy, s=s, p=p, g=g: conv.conv2d_backward_data(be, dy, w, x.shape, s, p, g),
                 baseline=torch and (lambda x=x, w=w, dy=dy, s=s, p=p, g=g: torch.nn.grad.conv2d_input(
                     tuple(x.shape), t(w), t(dy), s, p, 1, g)),
                 reference=lambda x=x, w=w, dy=dy, s=s, p=p, g=g: conv.conv2d_backward_data_reference(
                     host(dy).astype(np.float64), host(w).astype(np.float64), x.shape, s, p, g)),
            Case(f"{name} backward filter", shape, flops=flops,
                 ours=lambda x=x, w=w, dy=dy, s=s, p=p, g=g: conv.conv2d_backward_filter(be, x, dy, w.shape, s, p, g),
                 baseline=torch and (lambda x=x, w=w, dy=dy, s=s, p=p, g=g: torch.nn.grad.conv2d_weight(
                     t(x), tuple(w.shape), t(dy), s, p, 1, g)),
                 reference=lambda x=x, w=w, dy=dy, s=s, p=p, g=g: conv.conv2d_backward_filter_reference(
                     host(x).astype(np.float64), host(dy).astype(np.float64), w.shape, s, p, g)),
        ]

    for name, n_in, n_out in FCS:
        n_in, n_out = ch(n_in), ch(n_out)
        x, w, dy = arr(batch, n_in), arr(n_out, n_in, std=0.01), arr(batch, n_out)
        flops = 2.0 * batch * n_in * n_out
        shape = f"x{tuple(x.shape)} w{tuple(w.shape)}"
        cases += [
            Case(f"{name} forward", shape, flops=flops,
                 ours=lambda x=x, w=w: linear.linear_forward(be, x, w),
                 baseline=torch and (lambda x=x, w=w: t(x) @ t(w).T),
                 reference=lambda x=x, w=w: host(x).astype(np.float64) @ host(w).astype(np.float64).T),
            Case(f"{name} backward data", shape, flops=flops,
                 ours=lambda w=w, dy=dy: linear.linear_backward_data(be, dy, w),
                 baseline=torch and (lambda w=w, dy=dy: t(dy) @ t(w)),
                 reference=lambda w=w, dy=dy: host(dy).astype(np.float64) @ host(w).astype(np.float64)),
            Case(f"{name} backward weight", shape, flops=flops,
                 ours=lambda x=x, dy=dy: linear.linear_backward_weight(be, x, dy),
                 baseline=torch and (lambda x=x, dy=dy: t(dy).T @ t(x)),
                 reference=lambda x=x, dy=dy: host(dy).astype(np.float64).T @ host(x).astype(np.float64)),
        ]

    def autograd_pair(fn, x, dy):
        """PyTorch forward and a backward-only closure (the graph is kept)."""
        xt = t(x).detach().requires_grad_(True)
        yt = fn(xt)
        return (lambda: fn(t(x))), (lambda: torch.autograd.grad(yt, xt, t(dy), retain_graph=True)[0])

    # PyTorch's LRN divides alpha by n: compare like with like.
    lrn_args = dict(size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_n=True)
    for name, c, h in LRNS:
        c = ch(c)
        x, dy = arr(batch, c, h, h), arr(batch, c, h, h)
        y, scl = lrn.lrn_forward(be, x, **lrn_args)
        shape = f"x{tuple(x.shape)} n5"
        fwd = bwd = None
        if torch is not None:
            fwd, bwd = autograd_pair(lambda a: torch.nn.functional.local_response_norm(a, 5, 1e-4, 0.75, 2.0), x, dy)

        def lrn_ref_backward(x=x, dy=dy):
            xx = host(x).astype(np.float64)
            yy, ss = lrn.lrn_forward_reference(xx, **lrn_args)
            return lrn.lrn_backward_reference(xx, yy, ss, host(dy).astype(np.float64), **lrn_args)

        cases += [
            Case(f"{name} forward", shape, bytes=2.0 * x.nbytes,
                 ours=lambda x=x: lrn.lrn_forward(be, x, **lrn_args)[0], baseline=fwd,
                 reference=lambda x=x: lrn.lrn_forward_reference(host(x).astype(np.float64), **lrn_args)[0]),
            Case(f"{name} backward", shape, bytes=4.0 * x.nbytes,
                 ours=lambda x=x, y=y, scl=scl, dy=dy: lrn.lrn_backward(be, x, y, scl, dy, **lrn_args),
                 baseline=bwd, reference=lrn_ref_backward),
        ]

    for name, c, h in POOLS:
        c = ch(c)
        x = arr(batch, c, h, h)
        y = pool.maxpool_forward(be, x, 3, 2)
        dy = arr(*y.shape)
        shape = f"x{tuple(x.shape)} 3x3 s2"
        fwd = bwd = None
        if torch is not None:
            fwd, bwd = autograd_pair(lambda a: torch.nn.functional.max_pool2d(a, 3, 2), x, dy)
        cases += [
            Case(f"{name} forward", shape, bytes=float(x.nbytes + y.nbytes),
                 ours=lambda x=x: pool.maxpool_forward(be, x, 3, 2), baseline=fwd,
                 reference=lambda x=x: pool.maxpool_forward_reference(host(x), 3, 2)),
            Case(f"{name} backward", shape, bytes=float(2 * x.nbytes + 2 * y.nbytes),
                 ours=lambda x=x, y=y, dy=dy: pool.maxpool_backward(be, x, y, dy, 3, 2), baseline=bwd,
                 reference=lambda x=x, dy=dy: pool.maxpool_backward_reference(
                     host(x), pool.maxpool_forward_reference(host(x), 3, 2), host(dy), 3, 2)),
        ]

    x = arr(batch, ch(96), 55, 55)
    dy = arr(*x.shape)
    fwd = bwd = None
    if torch is not None:
        fwd, bwd = autograd_pair(torch.relu, x, dy)
    y = relu.relu_forward(be, x)
    cases += [
        Case("relu1 forward", f"x{tuple(x.shape)}", bytes=2.0 * x.nbytes,
             ours=lambda: relu.relu_forward(be, x), baseline=fwd,
             reference=lambda: relu.relu_forward_reference(host(x))),
        Case("relu1 backward", f"x{tuple(x.shape)}", bytes=3.0 * x.nbytes,
             ours=lambda: relu.relu_backward(be, y, dy), baseline=bwd,
             reference=lambda: relu.relu_backward_reference(host(y), host(dy))),
    ]

    x = arr(batch, ch(4096))
    cases.append(Case(
        "dropout6 forward", f"x{tuple(x.shape)} p0.5", bytes=2.0 * x.nbytes,
        ours=lambda: dropout.dropout_forward(be, x, 0.5, 1234),
        baseline=torch and (lambda: torch.nn.functional.dropout(t(x), 0.5, True)), compare=False,
        reference=lambda: host(x) * dropout.dropout_mask_reference(x.shape, 0.5, 1234) / 0.5))

    logits = arr(batch, 1000)
    labels = be.asarray(rng.integers(0, 1000, batch), dtype=np.int32)

    def ours_xent():
        loss, probs = softmax.softmax_cross_entropy_forward(be, logits, labels)
        return softmax.softmax_cross_entropy_backward(be, probs, labels)

    def torch_xent():
        lt = t(logits).detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(lt, t(labels).long())
        return torch.autograd.grad(loss, lt)[0]

    def ref_xent():
        lg, lb = host(logits).astype(np.float64), host(labels)
        _, probs = softmax.softmax_cross_entropy_reference(lg, lb)
        return softmax.softmax_cross_entropy_backward_reference(probs, lb)

    cases.append(Case("softmax+xent fwd+bwd", f"logits{tuple(logits.shape)}", bytes=3.0 * logits.nbytes,
                      ours=ours_xent, baseline=torch and torch_xent, reference=ref_xent))

    n_in, n_out = ch(9216), ch(4096)
    w, g, v = arr(n_out, n_in, std=0.01), arr(n_out, n_in, std=0.01), arr(n_out, n_in, std=0.001)
    w0, v0 = host(w).copy(), host(v).copy()

    def ours_sgd():
        sgd.sgd_update(be, w, g, v, 0.01, 0.9, 5e-4)
        return w

    def torch_sgd():  # the same update as PyTorch eager ops
        wt, gt, vt = t(w), t(g), t(v)
        vt.mul_(0.9).add_(wt, alpha=-5e-4 * 0.01).add_(gt, alpha=-0.01)
        wt.add_(vt)
        return wt

    def ref_sgd():
        # The benchmark applies the update repeatedly; validate one step from a fresh copy.
        wn, vn = sgd.sgd_update_reference(w0, host(g), v0, 0.01, 0.9, 5e-4)
        return wn

    cases.append(Case("sgd fc6 weights", f"w({n_out}, {n_in})", bytes=5.0 * w.nbytes,
                      ours=ours_sgd, baseline=torch and torch_sgd, reference=ref_sgd, compare=False))
    return cases


def run(args):
    be = get_backend(args.backend)
    gpu = be.name == "cuda"
    small = args.small or not gpu
    batch = args.batch or (2 if small else 128)
    scale = 8 if small else 1
    torch = None
    if gpu and not args.no_torch:
        try:
            import torch as _torch
            _torch.backends.cuda.matmul.allow_tf32 = False
            _torch.backends.cudnn.allow_tf32 = False
            _torch.backends.cudnn.benchmark = True
            torch = _torch
        except ImportError:
            print("PyTorch not installed: no cuDNN/cuBLAS baseline; validating against NumPy")
    rng = np.random.default_rng(0)
    cases = build_cases(be, torch, batch, scale, rng)
    if args.only:
        cases = [c for c in cases if any(o in c.name for o in args.only)]
    timer = Timer(be)
    peak = next((v for k, v in PEAKS.items() if gpu and k in device_name(be)), None)
    results, failures = [], []
    for c in cases:
        first = be.to_numpy(c.ours())
        if c.name.startswith("sgd"):
            # sgd updates in place: validate the single step just taken, then time more steps
            against, expected = "NumPy reference", c.reference()
        elif torch is not None and c.baseline is not None and c.compare:
            against, expected = "PyTorch (cuDNN/cuBLAS)", torch_to_numpy(c.baseline())
        else:
            against, expected = "NumPy reference", c.reference()
        err = rel_err(first, expected)
        ok = err <= c.tol
        ours_ms = timer(c.ours, args.warmup, args.repeats)
        again = be.to_numpy(c.ours())
        if not c.name.startswith("sgd") and not np.array_equal(again, first):
            ok = False
            print(f"  {c.name}: output changed between before and after timing")
        base_ms = timer(c.baseline, args.warmup, args.repeats) if (torch and c.baseline) else None
        secs = ours_ms / 1e3
        gflops = c.flops / secs / 1e9 if c.flops else None
        gbps = c.bytes / secs / 1e9 if c.bytes else None
        frac = None
        if peak:
            frac = (c.flops / secs / peak[0]) if c.flops else (c.bytes / secs / peak[1])
        r = Result(c.name, c.shape, ours_ms, base_ms, ours_ms / base_ms if base_ms else None,
                   gflops, gbps, frac, err, against)
        if not ok:
            r.notes.append("VALIDATION FAILED")
            failures.append(c.name)
        results.append(r)
        print_row(r)
    return be, batch, small, torch, results, failures


def torch_to_numpy(t):
    return t.detach().cpu().numpy()


def device_name(be):
    if be.name != "cuda":
        return f"CPU ({platform.processor() or platform.machine()}), {be.name} backend"
    import cupy
    return cupy.cuda.runtime.getDeviceProperties(be.device.id)["name"].decode()


def print_header():
    print(f"{'case':28s} {'ours ms':>9s} {'base ms':>9s} {'ratio':>6s} {'GFLOP/s':>9s} "
          f"{'GB/s':>8s} {'%peak':>6s} {'err':>8s}")


def fmt(v, f):
    return format(v, f) if v is not None else "-".rjust(int(f.split(".")[0]))


def print_row(r):
    print(f"{r.name:28s} {fmt(r.ours_ms, '9.3f')} {fmt(r.baseline_ms, '9.3f')} {fmt(r.ratio, '6.2f')} "
          f"{fmt(r.gflops, '9.1f')} {fmt(r.gbps, '8.1f')} "
          f"{fmt(r.frac_peak and 100 * r.frac_peak, '6.1f')} {fmt(r.max_rel_err, '8.1e')}"
          + (" " + ",".join(r.notes) if r.notes else ""), flush=True)


def versions(torch):
    v = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import cupy
        v["cupy"] = cupy.__version__
        v["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        v["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception:
        pass
    if torch is not None:
        v["torch"] = torch.__version__
        v["cudnn"] = torch.backends.cudnn.version()
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default=None, help="cuda, emu or numpy (default: auto)")
    ap.add_argument("--small", action="store_true", help="batch 2 and 1/8 of the channels (CPU backends always)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 128; 2 with --small)")
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats per case (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    ap.add_argument("--only", nargs="*", help="run only cases whose name contains one of these")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    ap.add_argument("--out", default=None, help="JSON output path (default benchmarks/results/...)")
    args = ap.parse_args(argv)
    print_header()
    be, batch, small, torch, results, failures = run(args)
    name = device_name(be)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    slug = "-".join(name.lower().split()) if be.name == "cuda" else f"cpu-{be.name}"
    out = Path(args.out) if args.out else (
        ROOT / "benchmarks" / "results" / f"kernels-{'small-' if small else ''}{slug}-{stamp:%Y%m%d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with_base = [r.ratio for r in results if r.ratio]
    summary = {
        "device": name, "backend": be.name, "date": stamp.isoformat(timespec="seconds"),
        "batch": batch, "small": small, "versions": versions(torch),
        "baseline": "PyTorch cuDNN/cuBLAS, FP32, TF32 off" if torch else None,
        "timing": "CUDA events, median, L2 flushed between repeats" if be.name == "cuda" else "wall clock, median",
        "repeats": args.repeats, "geomean_ratio": float(np.exp(np.mean(np.log(with_base)))) if with_base else None,
        "validation_failures": failures, "results": [asdict(r) for r in results]}
    out.write_text(json.dumps(summary, indent=1))
    if with_base:
        print(f"geometric mean of ours/baseline time: {summary['geomean_ratio']:.2f}")
    print(f"wrote {out}")
    if failures:
        print(f"VALIDATION FAILED: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
