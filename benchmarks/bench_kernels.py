#!/usr/bin/env python
"""Kernel benchmarks at AlexNet's layer shapes, side by side with cuDNN/cuBLAS.

    python benchmarks/bench_kernels.py                 # cuda if a GPU is here, else --small on emu
    python benchmarks/bench_kernels.py --small --backend emu --repeats 1   # never rots on CPUs
    python benchmarks/bench_kernels.py --precision tf32 bf16 --only conv fc

On a GPU, each case is validated (against PyTorch's cuDNN/cuBLAS result where PyTorch is
installed, else against the NumPy reference), timed with CUDA events after warm-up with L2
flushed between repeats, validated again, then the same operation is timed in PyTorch at
the same precision (TF32 off for fp32). The claim is the ratio ours/baseline, measured in
one run. Results go to benchmarks/results/kernels-<device>-<date>.json.

--precision (default: all three) adds rows "<layer> <pass> [tf32]" / "[bf16]" for every conv
and FC pass: our tensor-core kernels against PyTorch with TF32 allowed (cuDNN/cuBLAS TF32)
or on bfloat16 tensors, both converted before timing on both sides. These rows are
validated against the exact (float64) result within the format's error bound
(ops/precision.py, reduction_error_bound) and report their share of the tensor-core peak.
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
from pyalexnet.ops.precision import PRECISIONS, reduction_error_bound, to_bf16  # noqa: E402

# Vendor datasheet peaks (dense FP32 without tensor cores, HBM bandwidth): leads, not readings.
PEAKS = {"H200": (67e12, 4.8e12), "H100": (67e12, 3.35e12), "A100": (19.5e12, 2.0e12)}
# Dense tensor-core peaks (datasheet, no sparsity), per precision.
TC_PEAKS = {"H200": {"tf32": 494.7e12, "bf16": 989.4e12}, "H100": {"tf32": 494.7e12, "bf16": 989.4e12},
            "A100": {"tf32": 156e12, "bf16": 312e12}}

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
    ours: object               # () -> our output (backend array)
    expected: object           # () -> (NumPy array to validate against, what it is)
    baseline: object = None    # () -> the same operation in PyTorch (timed), or None
    flops: float = 0.0         # arithmetic-bound ops: GFLOP/s is the measure
    bytes: float = 0.0         # memory-bound ops: GB/s
    tol: float = 1e-4
    repeatable: bool = True    # the same output on every call (not so for in-place SGD)
    precision: str = "fp32"    # tf32 / bf16: tensor-core rows
    abs_expected: object = None  # () -> sum |a||b| per output (the error bound's scale)
    reduction: int = 0         # products per output


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


class Builder:
    """Makes the cases. Each case's closures bind their arrays through function arguments
    (no late-bound loop variables)."""

    def __init__(self, be, torch, batch, scale, rng):
        self.be, self.torch, self.batch, self.scale, self.rng = be, torch, batch, scale, rng

    def arr(self, *shape, std=1.0):
        return self.be.asarray(self.rng.standard_normal(shape).astype(np.float32) * std)

    def host64(self, a):
        return self.be.to_numpy(a).astype(np.float64)

    def t(self, a):
        """A zero-copy PyTorch view (DLPack) of a CuPy array."""
        return self.torch.from_dlpack(a)

    def t64(self, a):
        return self.t(a).double()

    def timed(self, f):
        """The PyTorch operation ``f(T)`` on zero-copy float32 views, or None without PyTorch."""
        return (lambda: f(self.t)) if self.torch is not None else None

    def ch(self, c):
        return max(1, c // self.scale)

    def exact(self, torch_fn, numpy_fn):
        """What to validate against: PyTorch in float64 on the GPU where it is installed
        (cuDNN's FP32 autotuned algorithms are themselves approximate), else the float64
        NumPy reference."""
        if self.torch is not None:
            return lambda: (torch_fn(self.t64).cpu().numpy(), "PyTorch float64")
        return lambda: (numpy_fn(), "NumPy reference (float64)")

    def reference(self, numpy_fn):
        return lambda: (numpy_fn(), "NumPy reference (float64)")

    def as_precision(self, a, precision):
        """Our kernel's input: float32 (fp32, tf32) or a bf16 copy made before timing."""
        return self.be.asarray(to_bf16(self.be.to_numpy(a)), np.uint16) if precision == "bf16" else a

    def torch_views(self, precision):
        """T for PyTorch at `precision`: float32 views, or bfloat16 copies made once."""
        if self.torch is None or precision != "bf16":
            return self.t
        cache = {}

        def T(a):
            if id(a) not in cache:
                cache[id(a)] = (a, self.t(a).bfloat16())
            return cache[id(a)][1]
        return T

    def abs_exact(self, torch_fn, numpy_fn):
        """sum |a||b| per output: the operation on |inputs| in float64."""
        if self.torch is not None:
            return lambda: torch_fn(lambda a: self.t64(a).abs()).cpu().numpy()
        return numpy_fn

    def conv(self, name, c, h, k, r, s, p, g, precision="fp32"):
        be, F = self.be, self.torch and self.torch.nn.functional
        if c != 3:
            c = max(g, self.ch(c) // g * g)
        k = max(g, self.ch(k) // g * g)
        x, w = self.arr(self.batch, c, h, h), self.arr(k, c // g, r, r, std=0.01)
        y_shape = conv.conv2d_output_shape(x.shape, w.shape, s, p)
        dy = self.arr(*y_shape)
        flops = 2.0 * np.prod(y_shape) * (c // g) * r * r
        shape = f"x{tuple(x.shape)} w{tuple(w.shape)} s{s} p{p} g{g}"
        X, W, DY = self.host64(x), self.host64(w), self.host64(dy)
        grad = self.torch and self.torch.nn.grad

        def fwd(T):
            return F.conv2d(T(x), T(w), None, s, p, 1, g)

        def bwd_data(T):
            return grad.conv2d_input(tuple(x.shape), T(w), T(dy), s, p, 1, g)

        def bwd_filter(T):
            return grad.conv2d_weight(T(x), tuple(w.shape), T(dy), s, p, 1, g)

        pr = precision
        tag = "" if pr == "fp32" else f" [{pr}]"
        xo, wo, dyo = (self.as_precision(a, pr) for a in (x, w, dy))
        TP = self.torch_views(pr)
        timed = (lambda f: (lambda: f(TP))) if self.torch is not None else (lambda f: None)
        extra = {} if pr == "fp32" else dict(precision=pr)
        red = {"forward": (c // g) * r * r, "data": (k // g) * r * r,
               "filter": y_shape[0] * y_shape[2] * y_shape[3]}
        if pr != "fp32":
            AX, AW, ADY = np.abs(X), np.abs(W), np.abs(DY)
            extra_f = dict(abs_expected=self.abs_exact(fwd, lambda: conv.conv2d_forward_reference(
                AX, AW, None, s, p, g)), reduction=red["forward"])
            extra_d = dict(abs_expected=self.abs_exact(bwd_data, lambda: conv.conv2d_backward_data_reference(
                ADY, AW, x.shape, s, p, g)), reduction=red["data"])
            extra_w = dict(abs_expected=self.abs_exact(bwd_filter, lambda: conv.conv2d_backward_filter_reference(
                AX, ADY, w.shape, s, p, g)), reduction=red["filter"])
        else:
            extra_f = extra_d = extra_w = {}
        return [
            Case(f"{name} forward{tag}", shape, flops=flops, **extra, **extra_f,
                 ours=lambda: conv.conv2d_forward(be, xo, wo, None, s, p, g, precision=pr),
                 expected=self.exact(fwd, lambda: conv.conv2d_forward_reference(X, W, None, s, p, g)),
                 baseline=timed(fwd)),
            Case(f"{name} backward data{tag}", shape, flops=flops, **extra, **extra_d,
                 ours=lambda: conv.conv2d_backward_data(be, dyo, wo, x.shape, s, p, g, precision=pr),
                 expected=self.exact(bwd_data, lambda: conv.conv2d_backward_data_reference(
                     DY, W, x.shape, s, p, g)),
                 baseline=timed(bwd_data)),
            Case(f"{name} backward filter{tag}", shape, flops=flops, **extra, **extra_w,
                 ours=lambda: conv.conv2d_backward_filter(be, xo, dyo, w.shape, s, p, g, precision=pr),
                 expected=self.exact(bwd_filter, lambda: conv.conv2d_backward_filter_reference(
                     X, DY, w.shape, s, p, g)),
                 baseline=timed(bwd_filter)),
        ]

    def fc(self, name, n_in, n_out, precision="fp32"):
        be = self.be
        n_in, n_out = self.ch(n_in), self.ch(n_out)
        x, w, dy = self.arr(self.batch, n_in), self.arr(n_out, n_in, std=0.01), self.arr(self.batch, n_out)
        flops = 2.0 * self.batch * n_in * n_out
        shape = f"x{tuple(x.shape)} w{tuple(w.shape)}"
        X, W, DY = self.host64(x), self.host64(w), self.host64(dy)

        def fwd(T):
            return T(x) @ T(w).T

        def bwd_data(T):
            return T(dy) @ T(w)

        def bwd_weight(T):
            return T(dy).T @ T(x)

        pr = precision
        tag = "" if pr == "fp32" else f" [{pr}]"
        xo, wo, dyo = (self.as_precision(a, pr) for a in (x, w, dy))
        TP = self.torch_views(pr)
        timed = (lambda f: (lambda: f(TP))) if self.torch is not None else (lambda f: None)
        if pr != "fp32":
            AX, AW, ADY = np.abs(X), np.abs(W), np.abs(DY)
            ex = [dict(precision=pr, abs_expected=self.abs_exact(f, nf), reduction=red)
                  for f, nf, red in ((fwd, lambda: AX @ AW.T, n_in), (bwd_data, lambda: ADY @ AW, n_out),
                                     (bwd_weight, lambda: ADY.T @ AX, self.batch))]
        else:
            ex = [{}, {}, {}]
        return [
            Case(f"{name} forward{tag}", shape, flops=flops, **ex[0],
                 ours=lambda: linear.linear_forward(be, xo, wo, precision=pr),
                 expected=self.exact(fwd, lambda: X @ W.T), baseline=timed(fwd)),
            Case(f"{name} backward data{tag}", shape, flops=flops, **ex[1],
                 ours=lambda: linear.linear_backward_data(be, dyo, wo, precision=pr),
                 expected=self.exact(bwd_data, lambda: DY @ W), baseline=timed(bwd_data)),
            Case(f"{name} backward weight{tag}", shape, flops=flops, **ex[2],
                 ours=lambda: linear.linear_backward_weight(be, xo, dyo, precision=pr),
                 expected=self.exact(bwd_weight, lambda: DY.T @ X), baseline=timed(bwd_weight)),
        ]

    def autograd_pair(self, fn, x, dy):
        """PyTorch forward, and backward alone (the graph is built once and kept)."""
        if self.torch is None:
            return None, None
        xt = self.t(x).detach().requires_grad_(True)
        yt = fn(xt)
        dyt = self.t(dy)
        return (lambda: fn(self.t(x))), (lambda: self.torch.autograd.grad(yt, xt, dyt, retain_graph=True)[0])

    def lrn(self, name, c, h):
        # PyTorch's LRN divides alpha by n: compare like with like.
        be, args = self.be, dict(size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_n=True)
        c = self.ch(c)
        x, dy = self.arr(self.batch, c, h, h, std=30.0), self.arr(self.batch, c, h, h)
        y, scale = lrn.lrn_forward(be, x, **args)
        X, DY = self.host64(x), self.host64(dy)
        fwd, bwd = self.autograd_pair(
            lambda a: self.torch.nn.functional.local_response_norm(a, 5, 1e-4, 0.75, 2.0), x, dy)

        def ref_backward():
            yy, ss = lrn.lrn_forward_reference(X, **args)
            return lrn.lrn_backward_reference(X, yy, ss, DY, **args)

        shape = f"x{tuple(x.shape)} n5"
        return [
            Case(f"{name} forward", shape, bytes=2.0 * x.nbytes, baseline=fwd,
                 ours=lambda: lrn.lrn_forward(be, x, **args)[0],
                 expected=self.reference(lambda: lrn.lrn_forward_reference(X, **args)[0])),
            Case(f"{name} backward", shape, bytes=4.0 * x.nbytes, baseline=bwd,
                 ours=lambda: lrn.lrn_backward(be, x, y, scale, dy, **args),
                 expected=self.reference(ref_backward)),
        ]

    def pool(self, name, c, h):
        be = self.be
        x = self.arr(self.batch, self.ch(c), h, h)
        y = pool.maxpool_forward(be, x, 3, 2)
        dy = self.arr(*y.shape)
        X, DY = self.host64(x), self.host64(dy)
        fwd, bwd = self.autograd_pair(lambda a: self.torch.nn.functional.max_pool2d(a, 3, 2), x, dy)
        shape = f"x{tuple(x.shape)} 3x3 s2"
        return [
            Case(f"{name} forward", shape, bytes=float(x.nbytes + y.nbytes), baseline=fwd,
                 ours=lambda: pool.maxpool_forward(be, x, 3, 2),
                 expected=self.reference(lambda: pool.maxpool_forward_reference(X, 3, 2))),
            Case(f"{name} backward", shape, bytes=float(2 * x.nbytes + 2 * y.nbytes), baseline=bwd,
                 ours=lambda: pool.maxpool_backward(be, x, y, dy, 3, 2),
                 expected=self.reference(lambda: pool.maxpool_backward_reference(
                     X, pool.maxpool_forward_reference(X, 3, 2), DY, 3, 2))),
        ]

    def relu(self):
        be = self.be
        x = self.arr(self.batch, self.ch(96), 55, 55)
        dy = self.arr(*x.shape)
        y = relu.relu_forward(be, x)
        X, DY = self.host64(x), self.host64(dy)
        fwd, bwd = self.autograd_pair(lambda a: self.torch.relu(a), x, dy)
        shape = f"x{tuple(x.shape)}"
        return [
            Case("relu1 forward", shape, bytes=2.0 * x.nbytes, baseline=fwd,
                 ours=lambda: relu.relu_forward(be, x),
                 expected=self.reference(lambda: relu.relu_forward_reference(X))),
            Case("relu1 backward", shape, bytes=3.0 * x.nbytes, baseline=bwd,
                 ours=lambda: relu.relu_backward(be, y, dy),
                 expected=self.reference(lambda: relu.relu_backward_reference(X, DY))),
        ]

    def dropout(self):
        be, torch = self.be, self.torch
        x = self.arr(self.batch, self.ch(4096))
        X = self.host64(x)
        return [Case(
            "dropout6 forward", f"x{tuple(x.shape)} p0.5", bytes=2.0 * x.nbytes,
            ours=lambda: dropout.dropout_forward(be, x, 0.5, 1234),
            # PyTorch's generator differs: its output is timed, never compared
            baseline=torch and (lambda: torch.nn.functional.dropout(self.t(x), 0.5, True)),
            expected=self.reference(lambda: dropout.dropout_forward_reference(X, 0.5, 1234)))]

    def softmax(self):
        be, torch = self.be, self.torch
        logits = self.arr(self.batch, 1000)
        labels = be.asarray(self.rng.integers(0, 1000, self.batch), dtype=np.int32)
        L, Y = self.host64(logits), be.to_numpy(labels)

        def ours():
            _, probs = softmax.softmax_cross_entropy_forward(be, logits, labels)
            return softmax.softmax_cross_entropy_backward(be, probs, labels)

        def theirs():
            lt = self.t(logits).detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(lt, self.t(labels).long())
            return torch.autograd.grad(loss, lt)[0]

        def ref():
            _, probs = softmax.softmax_cross_entropy_reference(L, Y)
            return softmax.softmax_cross_entropy_backward_reference(probs, Y)

        return [Case("softmax+xent fwd+bwd", f"logits{tuple(logits.shape)}", bytes=3.0 * logits.nbytes,
                     ours=ours, baseline=torch and theirs, expected=self.reference(ref))]

    def sgd(self):
        be, torch = self.be, self.torch
        n_in, n_out = self.ch(9216), self.ch(4096)
        w, g, v = self.arr(n_out, n_in, std=0.01), self.arr(n_out, n_in, std=0.01), self.arr(n_out, n_in, std=0.001)
        W0, G, V0 = self.host64(w), self.host64(g), self.host64(v)

        def ours():
            sgd.sgd_update(be, w, g, v, 0.01, 0.9, 5e-4)
            return w

        def theirs():  # the same update as PyTorch eager operations
            wt, gt, vt = self.t(w), self.t(g), self.t(v)
            vt.mul_(0.9).add_(wt, alpha=-5e-4 * 0.01).add_(gt, alpha=-0.01)
            return wt.add_(vt)

        # validated on the first call only: one step from the initial state
        return [Case("sgd fc6 weights", f"w({n_out}, {n_in})", bytes=5.0 * w.nbytes, repeatable=False,
                     ours=ours, baseline=torch and theirs,
                     expected=self.reference(lambda: sgd.sgd_update_reference(W0, G, V0, 0.01, 0.9, 5e-4)[0]))]

    def all(self, precisions=("fp32",)):
        cases = []
        for pr in precisions:
            for spec in CONVS:
                cases += self.conv(*spec, precision=pr)
            for spec in FCS:
                cases += self.fc(*spec, precision=pr)
        for spec in LRNS:
            cases += self.lrn(*spec)
        for spec in POOLS:
            cases += self.pool(*spec)
        return cases + self.relu() + self.dropout() + self.softmax() + self.sgd()


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
    cases = Builder(be, torch, batch, scale, np.random.default_rng(0)).all(args.precision)
    if args.only:
        cases = [c for c in cases if any(o in c.name for o in args.only)]
    timer = Timer(be)
    peak = next((v for k, v in PEAKS.items() if gpu and k in device_name(be)), None)
    tc_peak = next((v for k, v in TC_PEAKS.items() if gpu and k in device_name(be)), None)
    results, failures = [], []
    for c in cases:
        # validate before timing ...
        first = be.to_numpy(c.ours())
        expected, against = c.expected()
        err = rel_err(first, expected)
        if c.precision == "fp32":
            ok = err <= c.tol
        else:  # within the format's bound of the exact result, elementwise
            bound = reduction_error_bound(c.abs_expected(), c.reduction, c.precision)
            ok = bool(np.all(np.abs(first.astype(np.float64) - expected) <= bound))
            against += f", within the {c.precision} error bound"
        ours_ms = timer(c.ours, args.warmup, args.repeats)
        # ... and after: the kernel still gives the same bits
        if c.repeatable and not np.array_equal(be.to_numpy(c.ours()), first):
            ok = False
            print(f"  {c.name}: output changed between before and after timing")
        with torch_precision(torch, c.precision):
            base_ms = timer(c.baseline, args.warmup, args.repeats) if c.baseline else None
        secs = ours_ms / 1e3
        gflops = c.flops / secs / 1e9 if c.flops else None
        gbps = c.bytes / secs / 1e9 if c.bytes else None
        frac = None
        if c.precision != "fp32":
            frac = c.flops / secs / tc_peak[c.precision] if tc_peak else None
        elif peak:
            frac = (c.flops / secs / peak[0]) if c.flops else (c.bytes / secs / peak[1])
        r = Result(c.name, c.shape, ours_ms, base_ms, ours_ms / base_ms if base_ms else None,
                   gflops, gbps, frac, err, against)
        if not ok:
            r.notes.append("VALIDATION FAILED")
            failures.append(c.name)
        results.append(r)
        print_row(r)
    return be, batch, small, torch, results, failures


class torch_precision:
    """PyTorch's TF32 switches on while a tf32 baseline is timed (off otherwise)."""

    def __init__(self, torch, precision):
        self.torch, self.on = torch, precision == "tf32"

    def __enter__(self):
        if self.torch is not None:
            self.torch.backends.cuda.matmul.allow_tf32 = self.on
            self.torch.backends.cudnn.allow_tf32 = self.on

    def __exit__(self, *exc):
        if self.torch is not None:
            self.torch.backends.cuda.matmul.allow_tf32 = False
            self.torch.backends.cudnn.allow_tf32 = False


def device_name(be):
    if be.name != "cuda":
        return f"CPU ({platform.processor() or platform.machine()}), {be.name} backend"
    import cupy
    return cupy.cuda.runtime.getDeviceProperties(be.device.id)["name"].decode()


def print_header():
    print(f"{'case':34s} {'ours ms':>9s} {'base ms':>9s} {'ratio':>6s} {'GFLOP/s':>9s} "
          f"{'GB/s':>8s} {'%peak':>6s} {'err':>8s}")


def fmt(v, f):
    return format(v, f) if v is not None else "-".rjust(int(f.split(".")[0]))


def print_row(r):
    print(f"{r.name:34s} {fmt(r.ours_ms, '9.3f')} {fmt(r.baseline_ms, '9.3f')} {fmt(r.ratio, '6.2f')} "
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
    ap.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                    help="conv/FC rows per precision (default: all); tf32/bf16 use tensor cores")
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
        "baseline": ("PyTorch cuDNN/cuBLAS at each row's precision: fp32 with TF32 off, tf32 with "
                     "TF32 on, bf16 on bfloat16 tensors") if torch else None,
        "tensor_core_peaks": next((v for k, v in TC_PEAKS.items() if k in name), None),
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
