#!/usr/bin/env python
"""Kernel benchmarks at AlexNet's layer shapes, side by side with cuDNN/cuBLAS.

    python benchmarks/bench_kernels.py                 # cuda if a GPU is here, else --small on emu
    python benchmarks/bench_kernels.py --small --backend emu --repeats 1   # never rots on CPUs
    python benchmarks/bench_kernels.py --emulated      # modeled H200 times, on a CPU
    python benchmarks/bench_kernels.py --precision tf32 bf16 --only conv fc

On a GPU, each case is validated (against PyTorch's cuDNN/cuBLAS result where PyTorch is
installed, else against the NumPy reference), timed with CUDA events after warm-up with L2
flushed between repeats, validated again, then the same operation is timed in PyTorch at
the same precision (TF32 off for fp32). The claim is the ratio ours/baseline, measured in
one run. Results go to benchmarks/results/kernels-<device>-<date>.json.

--precision (default: all three; fp32 alone with --emulated) adds rows "<layer> <pass>
[tf32]" / "[bf16]" for every conv and FC pass: our tensor-core kernels against PyTorch
with TF32 allowed (cuDNN/cuBLAS TF32) or on bfloat16 tensors, both converted before timing
on both sides. These rows are
validated against the exact (float64) result within the format's error bound
(ops/precision.py, reduction_error_bound) and report their share of the tensor-core peak.
With bf16, the memory-bound layers between the convolutions (LRN, max-pool, ReLU) get
"[bf16]" rows too: their activations stored as bf16, as in bf16 training, against PyTorch
on bfloat16 tensors.

With --emulated, every case runs at its real shape (batch 128) on the emulator's profiling
build, on a sample of each grid's blocks; benchmarks/emu_model.py turns the counters into
a modeled H200 time, printed beside the H200 measurement of --measured with their ratio
and the rank correlation over the rows.
"""
from __future__ import annotations

import argparse
import dataclasses
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

from pyalexnet.backends import BackendUnavailable, get_backend  # noqa: E402
from pyalexnet.ops import (bias, conv, conv_mma, dropout, linear, lrn, pool, relu, sgd,  # noqa: E402
                           softmax)
from pyalexnet.ops.precision import (PRECISIONS, reduction_error_bound, to_bf16,  # noqa: E402
                                     widened)

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
# conv output gradients: 96 channels (fewer than the SMs: bias backward v2's case) and 256
BIASES = [("conv1", 96, 55), ("conv2", 256, 27)]


def replaced(case, v, tag=""):
    """The ``replaces`` of version v of ``case`` ("conv1 backward filter"): its v - 1."""
    return f"{case} v{v - 1}{tag}" if v > 1 else ""


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
    replaces: str = ""         # the case of the kernel version this one supersedes: the
                               # run also prints this one's time over that one's
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

    def produced(self, kernel, reference, precision):
        """An input that an earlier pass makes (the y a backward pass reads): ``kernel()``'s
        output, except on a backend that runs only a sample of each grid's blocks
        (--emulated), where most of that output is never written and data-dependent kernels
        would profile the wrong branches: there ``reference()``'s float64 arrays, stored as
        the kernel stores them (bf16 maps at bf16, anything else fp32)."""
        if not getattr(self.be, "profile_blocks", 0):
            return kernel()
        out = [self.be.asarray(np.asarray(a, dtype=np.float32)) for a in reference()]
        out[0] = self.as_precision(out[0], precision)
        return out

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

        if precision != "fp32":
            return self.conv_mma(name, shape, flops, (x, w, dy, X, W, DY), (c, k, r, s, p, g),
                                 y_shape, (fwd, bwd_data, bwd_filter), precision)
        passes = (
            ("forward", fwd, lambda v: conv.conv2d_forward(be, x, w, None, s, p, g, version=v),
             lambda: conv.conv2d_forward_reference(X, W, None, s, p, g)),
            ("backward data", bwd_data,
             lambda v: conv.conv2d_backward_data(be, dy, w, x.shape, s, p, g, version=v),
             lambda: conv.conv2d_backward_data_reference(DY, W, x.shape, s, p, g)))
        return [
            # v2 (the 128x128 tile at two resident blocks per SM; backward data at stride 1
            # only) beside the planned tile it would replace
            Case(f"{name} {label}" + (" v2" if v == 2 else ""), shape, flops=flops,
                 replaces=f"{name} {label}" if v == 2 else "", ours=lambda run=run, v=v: run(v),
                 expected=self.exact(torch_fn, reference), baseline=self.timed(torch_fn))
            for label, torch_fn, run, reference in passes
            for v in conv.GEMM_VERSIONS if v == 1 or s == 1 or label == "forward"
        ] + [
            # each version's workspace allocated once, as the model does
            Case(f"{name} backward filter v{v}", shape, flops=flops,
                 replaces=replaced(f"{name} backward filter", v),
                 ours=lambda v=v, ws=be.empty((max(1, conv.conv2d_backward_filter_workspace_size(
                     x.shape, w.shape, s, p, g, version=v)),)):
                     conv.conv2d_backward_filter(be, x, dy, w.shape, s, p, g, version=v,
                                                 workspace=ws),
                 expected=self.exact(bwd_filter, lambda: conv.conv2d_backward_filter_reference(
                     X, DY, w.shape, s, p, g)),
                 baseline=self.timed(bwd_filter))
            for v in conv.FILTER_VERSIONS
        ] + self.winograd(name, shape, flops, x, w, dy, s, p, g, fwd, bwd_data, bwd_filter)

    def mma_inputs(self, pr, x, w, dy):
        """x, w, dy in the format's storage, and a maker of PyTorch baselines in it."""
        TP = self.torch_views(pr)
        timed = (lambda f: (lambda: f(TP))) if self.torch is not None else (lambda f: None)
        return (*(self.as_precision(a, pr) for a in (x, w, dy)), timed)

    def conv_mma(self, name, shape, flops, arrays, geometry, y_shape, torch_fns, pr):
        """The tensor-core rows of one conv layer: validated within the format's error
        bound, timed against PyTorch at the same precision."""
        be = self.be
        x, w, dy, X, W, DY = arrays
        c, k, r, s, p, g = geometry
        fwd, bwd_data, bwd_filter = torch_fns
        tag = f" [{pr}]"
        xo, wo, dyo, timed = self.mma_inputs(pr, x, w, dy)
        extra = dict(precision=pr)
        red = {"forward": (c // g) * r * r, "data": (k // g) * r * r,
               "filter": y_shape[0] * y_shape[2] * y_shape[3]}
        AX, AW, ADY = np.abs(X), np.abs(W), np.abs(DY)
        extra_f = dict(abs_expected=self.abs_exact(fwd, lambda: conv.conv2d_forward_reference(
            AX, AW, None, s, p, g)), reduction=red["forward"])
        extra_d = dict(abs_expected=self.abs_exact(bwd_data, lambda: conv.conv2d_backward_data_reference(
            ADY, AW, x.shape, s, p, g)), reduction=red["data"])
        extra_w = dict(abs_expected=self.abs_exact(bwd_filter, lambda: conv.conv2d_backward_filter_reference(
            AX, ADY, w.shape, s, p, g)), reduction=red["filter"])
        # Where a pass's planned tile changed, the old tile's row too, and the planned row's
        # time over it: the forward and data gradient took what the plan gave while a 64
        # tile's speed was guessed at 0.7 (now 0.4, from the emulator's model); the filter
        # gradient took 64 for every AlexNet layer before its tile went by padded work alone.
        n, was = y_shape[0], {128: 1.0, 64: 0.7}
        fwd_plan = (k // g, n * y_shape[2] * y_shape[3], g)
        data_plan = (c // g, n * x.shape[2] * x.shape[3], g)
        old_fwd, old_data = (conv_mma._mma_tile(*plan, speed=was) for plan in (fwd_plan, data_plan))

        def rows(label, extra_p, torch_fn, reference, ours, old_tile, changed):
            def case(tile=None):
                return Case(f"{name} {label}{tag}" + (f" tile {tile}" if tile else ""), shape,
                            flops=flops, **extra, **extra_p,
                            replaces=f"{name} {label}{tag} tile {old_tile}" if changed and not tile else "",
                            ours=lambda: ours(tile), expected=self.exact(torch_fn, reference),
                            baseline=timed(torch_fn))
            return [case(old_tile)] * changed + [case()]

        return (
            rows("forward", extra_f, fwd, lambda: conv.conv2d_forward_reference(X, W, None, s, p, g),
                 lambda t: conv.conv2d_forward(be, xo, wo, None, s, p, g, precision=pr, tile=t),
                 old_fwd, old_fwd != conv_mma._mma_tile(*fwd_plan))
            + rows("backward data", extra_d, bwd_data,
                   lambda: conv.conv2d_backward_data_reference(DY, W, x.shape, s, p, g),
                   lambda t: conv.conv2d_backward_data(be, dyo, wo, x.shape, s, p, g, precision=pr,
                                                       tile=t),
                   old_data, (old_data != conv_mma._mma_tile(*data_plan)
                              and c // g >= conv.DIRECT_MAX_CHANNELS))  # else the direct kernel
            + rows("backward filter", extra_w, bwd_filter,
                   lambda: conv.conv2d_backward_filter_reference(X, DY, w.shape, s, p, g),
                   lambda t: conv.conv2d_backward_filter(be, xo, dyo, w.shape, s, p, g,
                                                         precision=pr, tile=t),
                   64, True))

    def winograd(self, name, shape, flops, x, w, dy, s, p, g, fwd, bwd_data, bwd_filter):
        """Each pass of a 3x3 stride-1 layer through F(2x2) and F(4x4), against the implicit
        GEMM (ratio printed) and cuDNN; validated against float64, as every case is (cuDNN's
        own Winograd/FFT results are approximations too)."""
        if tuple(w.shape[2:]) != (3, 3) or s != 1 or p > 2:
            return []
        be = self.be
        X, W, DY = self.host64(x), self.host64(w), self.host64(dy)
        passes = [
            ("forward", "forward", fwd, lambda: conv.conv2d_forward_reference(X, W, None, s, p, g),
             lambda a, ws: conv.conv2d_forward(be, x, w, None, s, p, g, algo=a, workspace=ws)),
            ("backward_data", "backward data", bwd_data,
             lambda: conv.conv2d_backward_data_reference(DY, W, x.shape, s, p, g),
             lambda a, ws: conv.conv2d_backward_data(be, dy, w, x.shape, s, p, g, algo=a,
                                                     workspace=ws)),
            ("backward_filter", "backward filter", bwd_filter,
             lambda: conv.conv2d_backward_filter_reference(X, DY, w.shape, s, p, g),
             lambda a, ws: conv.conv2d_backward_filter(be, x, dy, w.shape, s, p, g, algo=a,
                                                       workspace=ws)),
        ]
        cases = []
        for pass_, label, torch_fn, ref, run in passes:
            gemm_case = f"{name} {label}" + (" v2" if pass_ == "backward_filter" else "")
            for m in (2, 4):
                algo = f"winograd{m}"
                ws = be.empty((conv.conv2d_workspace_size(pass_, x.shape, w.shape, s, p, g,
                                                          algo=algo),))
                cases.append(Case(
                    f"{name} {label} {algo}", shape, flops=flops, replaces=gemm_case,
                    tol=1e-3,  # F(4x4) rounds more (tests/test_winograd.py bounds it)
                    ours=lambda run=run, algo=algo, ws=ws: run(algo, ws),
                    expected=self.exact(torch_fn, ref), baseline=self.timed(torch_fn)))
        return cases

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

        if precision != "fp32":
            return self.fc_mma(name, shape, flops, (x, w, dy, X, W, DY), n_in, n_out,
                               (fwd, bwd_data, bwd_weight), precision)
        # the forward as planned before K-contiguous weights had their own tile (64k)
        old = linear.gemm_plan(self.batch, n_out, n_in)
        return [
            Case(f"{name} forward previous plan", shape, flops=flops,
                 ours=lambda: linear.gemm(be, x, w, trans_b=True, tile=old.tile, splits=old.splits),
                 expected=self.exact(fwd, lambda: X @ W.T), baseline=self.timed(fwd)),
            Case(f"{name} forward", shape, flops=flops, ours=lambda: linear.linear_forward(be, x, w),
                 replaces=f"{name} forward previous plan",
                 expected=self.exact(fwd, lambda: X @ W.T), baseline=self.timed(fwd)),
            Case(f"{name} backward data", shape, flops=flops,
                 ours=lambda: linear.linear_backward_data(be, dy, w),
                 expected=self.exact(bwd_data, lambda: DY @ W), baseline=self.timed(bwd_data)),
            Case(f"{name} backward weight", shape, flops=flops,
                 ours=lambda: linear.linear_backward_weight(be, x, dy),
                 expected=self.exact(bwd_weight, lambda: DY.T @ X), baseline=self.timed(bwd_weight)),
        ]

    def fc_mma(self, name, shape, flops, arrays, n_in, n_out, torch_fns, pr):
        """The tensor-core rows of one fc layer (see conv_mma)."""
        be = self.be
        x, w, dy, X, W, DY = arrays
        fwd, bwd_data, bwd_weight = torch_fns
        tag = f" [{pr}]"
        xo, wo, dyo, timed = self.mma_inputs(pr, x, w, dy)
        AX, AW, ADY = np.abs(X), np.abs(W), np.abs(DY)
        ex = [dict(precision=pr, abs_expected=self.abs_exact(f, nf), reduction=red)
              for f, nf, red in ((fwd, lambda: AX @ AW.T, n_in), (bwd_data, lambda: ADY @ AW, n_out),
                                 (bwd_weight, lambda: ADY.T @ AX, self.batch))]
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

    def autograd_pair(self, fn, x, dy, T=None):
        """PyTorch forward, and backward alone (the graph is built once and kept); T makes
        the tensors (torch_views: bfloat16 copies for bf16)."""
        if self.torch is None:
            return None, None
        T = T or self.t
        xt = T(x).detach().requires_grad_(True)
        yt = fn(xt)
        dyt = T(dy)
        return (lambda: fn(T(x))), (lambda: self.torch.autograd.grad(yt, xt, dyt, retain_graph=True)[0])

    def storage(self, x, precision):
        """A memory-bound row's input x (float32; PyTorch's, made bfloat16 by torch_views) as
        our kernels take it in `precision` (bf16 bits for bf16), its
        float64 values, the " [bf16]" name tag, the bytes per element, and the Case fields
        that validate a bf16 row: within the format's bound of the float64 reference on
        the same (rounded) inputs, over `reduction` terms."""
        xo = self.as_precision(x, precision)
        X = widened(self.be.to_numpy(xo)).astype(np.float64)
        if precision != "bf16":
            return xo, X, "", 4.0, lambda reduction, expected: {}
        return xo, X, " [bf16]", 2.0, lambda reduction, expected: dict(
            precision="bf16", reduction=reduction, abs_expected=lambda: np.abs(expected()[0]))

    def lrn(self, name, c, h, precision="fp32"):
        # PyTorch's LRN divides alpha by n: compare like with like.
        be, args = self.be, dict(size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_n=True)
        c = self.ch(c)
        x32, dy = self.arr(self.batch, c, h, h, std=30.0), self.arr(self.batch, c, h, h)
        x, X, tag, sb, check = self.storage(x32, precision)
        y, scale = self.produced(lambda: lrn.lrn_forward(be, x, **args),
                                 lambda: lrn.lrn_forward_reference(X, **args), precision)
        DY = self.host64(dy)
        fwd, bwd = self.autograd_pair(
            lambda a: self.torch.nn.functional.local_response_norm(a, 5, 1e-4, 0.75, 2.0), x32,
            dy, self.torch_views(precision))

        def ref_backward():  # on the y the kernel reads (stored: bf16-rounded in bf16)
            Y = widened(be.to_numpy(y)).astype(np.float64)
            return lrn.lrn_backward_reference(X, Y, lrn.lrn_forward_reference(X, **args)[1], DY,
                                              **args)

        shape, n = f"x{tuple(x.shape)} n5", float(x.size)
        forward = self.reference(lambda: lrn.lrn_forward_reference(X, **args)[0])
        backward = self.reference(ref_backward)
        # bytes: x, y (stored) and scale (fp32); backward x, y, scale, dy and dx
        return [case for v in lrn.VERSIONS for case in (
            Case(f"{name} forward v{v}{tag}", shape, bytes=(2 * sb + 4) * n, baseline=fwd,
                 replaces=replaced(f"{name} forward", v, tag),
                 ours=lambda v=v: lrn.lrn_forward(be, x, **args, version=v)[0], expected=forward,
                 **check(5, forward)),
            Case(f"{name} backward v{v}{tag}", shape, bytes=(2 * sb + 12) * n, baseline=bwd,
                 replaces=replaced(f"{name} backward", v, tag),
                 ours=lambda v=v: lrn.lrn_backward(be, x, y, scale, dy, **args, version=v),
                 expected=backward, **check(5, backward)))]

    def pool(self, name, c, h, precision="fp32"):
        be = self.be
        x32 = self.arr(self.batch, self.ch(c), h, h)
        x, X, tag, sb, check = self.storage(x32, precision)
        y, = self.produced(lambda: [pool.maxpool_forward(be, x, 3, 2)],
                           lambda: [pool.maxpool_forward_reference(X, 3, 2)], precision)
        dy = self.arr(*y.shape)
        DY = self.host64(dy)
        fwd, bwd = self.autograd_pair(lambda a: self.torch.nn.functional.max_pool2d(a, 3, 2), x32,
                                      dy, self.torch_views(precision))
        shape = f"x{tuple(x.shape)} 3x3 s2"
        forward = self.reference(lambda: pool.maxpool_forward_reference(X, 3, 2))
        backward = self.reference(lambda: pool.maxpool_backward_reference(
            X, pool.maxpool_forward_reference(X, 3, 2), DY, 3, 2))
        return [
            Case(f"{name} forward v{v}{tag}", shape, bytes=sb * (x.size + y.size), baseline=fwd,
                 replaces=replaced(f"{name} forward", v, tag),
                 ours=lambda v=v: pool.maxpool_forward(be, x, 3, 2, version=v), expected=forward,
                 **check(1, forward))
            for v in pool.FORWARD_VERSIONS
        ] + [
            # bytes: what v1 reads and writes (x, y stored; dy, dx fp32; v2 and v3 do not
            # read y), the same for every row
            Case(f"{name} backward v{v}{tag}", shape, bytes=float((sb + 4) * (x.size + y.size)),
                 baseline=bwd, replaces=replaced(f"{name} backward", v, tag),
                 ours=lambda v=v: pool.maxpool_backward(be, x, y, dy, 3, 2, version=v),
                 expected=backward, **check(1, backward))
            for v in pool.BACKWARD_VERSIONS
        ]

    def relu(self, precision="fp32"):
        be = self.be
        x32 = self.arr(self.batch, self.ch(96), 55, 55)
        x, X, tag, sb, check = self.storage(x32, precision)
        dy = self.arr(*x.shape)
        y, = self.produced(lambda: [relu.relu_forward(be, x)],
                           lambda: [relu.relu_forward_reference(X)], precision)
        DY = self.host64(dy)
        fwd, bwd = self.autograd_pair(lambda a: self.torch.relu(a), x32, dy,
                                      self.torch_views(precision))
        shape, n = f"x{tuple(x.shape)}", float(x.size)
        forward = self.reference(lambda: relu.relu_forward_reference(X))
        backward = self.reference(lambda: relu.relu_backward_reference(X, DY))
        return [case for v in relu.VERSIONS for case in (
            Case(f"relu1 forward v{v}{tag}", shape, bytes=2 * sb * n, baseline=fwd,
                 replaces=replaced("relu1 forward", v, tag),
                 ours=lambda v=v: relu.relu_forward(be, x, version=v), expected=forward,
                 **check(1, forward)),
            Case(f"relu1 backward v{v}{tag}", shape, bytes=(sb + 8) * n, baseline=bwd,
                 replaces=replaced("relu1 backward", v, tag),
                 ours=lambda v=v: relu.relu_backward(be, y, dy, version=v), expected=backward,
                 **check(1, backward)))]

    def bias(self, name, c, h):
        """The bias gradient of a conv layer's output, per version."""
        be = self.be
        dy = self.arr(self.batch, self.ch(c), h, h)
        DY = self.host64(dy)
        return [Case(f"{name} bias backward v{v}", f"dy{tuple(dy.shape)}", bytes=float(dy.nbytes),
                     ours=lambda v=v: bias.bias_backward(be, dy, version=v),
                     baseline=self.timed(lambda T: T(dy).sum((0, 2, 3))),
                     replaces=replaced(f"{name} bias backward", v),
                     expected=self.reference(lambda: bias.bias_backward_reference(DY)))
                for v in bias.BACKWARD_VERSIONS]

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
        # the memory-bound layers between convolutions: fp32, and bf16 storage in bf16 runs
        for pr in [p for p in ("fp32", "bf16") if p == "fp32" or p in precisions]:
            for spec in LRNS:
                cases += self.lrn(*spec, precision=pr)
            for spec in POOLS:
                cases += self.pool(*spec, precision=pr)
            cases += self.relu(precision=pr)
        for spec in BIASES:
            cases += self.bias(*spec)
        return cases + self.dropout() + self.softmax() + self.sgd()


def run(args, on_row=lambda be, batch, small, torch, results, failures: None, info=None):
    """Validate and time every case; ``on_row`` sees the results so far after each row.
    ``info`` (a dict) gets the device copy bandwidth, measured first on a GPU."""
    try:
        be = get_backend(args.backend)
    except (ValueError, BackendUnavailable) as e:
        print(f"bench_kernels.py: error: {e}", file=sys.stderr)
        sys.exit(2)
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
    cases = Builder(be, torch, batch, scale, np.random.default_rng(0)).all(
        args.precision or PRECISIONS)
    if args.only:
        cases = [c for c in cases if any(o in c.name for o in args.only)]
    timer = Timer(be)
    if gpu and info is not None:
        info["copy_bandwidth_bytes_per_s"] = copy_bandwidth(be)
        print(f"device copy bandwidth: {info['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s")
    peak = next((v for k, v in PEAKS.items() if gpu and k in device_name(be)), None)
    tc_peak = next((v for k, v in TC_PEAKS.items() if gpu and k in device_name(be)), None)
    results, failures = [], []
    print_header()
    for c in cases:
        # validate before timing ...
        first = be.to_numpy(c.ours())
        expected, against = c.expected()
        first = widened(first)  # bf16 rows' outputs are compared as values
        err = rel_err(first, expected)
        if c.precision == "fp32":
            ok = err <= c.tol
        else:  # within the format's bound of the exact result, elementwise
            bound = reduction_error_bound(c.abs_expected(), c.reduction, c.precision)
            ok = bool(np.all(np.abs(first.astype(np.float64) - expected) <= bound))
            against += f", within the {c.precision} error bound"
        ours_ms = timer(c.ours, args.warmup, args.repeats)
        # ... and after: the kernel still gives the same bits
        if c.repeatable and not np.array_equal(widened(be.to_numpy(c.ours())), first):
            ok = False
            print(f"  {c.name}: output changed between before and after timing")
        with torch_precision(torch, c.precision):
            base_ms = timer(c.baseline, args.warmup, args.repeats) if c.baseline else None
        secs = ours_ms / 1e3
        gflops = c.flops / secs / 1e9 if c.flops else None
        gbps = c.bytes / secs / 1e9 if c.bytes else None
        frac = None
        if c.precision != "fp32" and c.flops:
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
        on_row(be, batch, small, torch, results, failures)
    ratios = version_ratios(cases, results)
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f} x the time of {next(c.replaces for c in cases if c.name == name)}")
    return be, batch, small, torch, results, failures, ratios


def version_ratios(cases, results):
    """{new case: its time / the time of the version it replaces}, both from this run."""
    times = {r.name: r.ours_ms for r in results}
    return {c.name: times[c.name] / times[c.replaces] for c in cases
            if c.replaces and c.name in times and times.get(c.replaces)}


def copy_bandwidth(be, nbytes=1 << 30):
    """Device-to-device copy rate (bytes read + written per second, L2 flushed): the DRAM
    rate the --emulated model uses."""
    src, dst = be.empty(nbytes // 4), be.empty(nbytes // 4)
    ms = Timer(be)(lambda: dst.__setitem__(Ellipsis, src), 2, 5)
    return 2 * nbytes / (ms / 1e3)


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


# Rows measured before their kernel had numbered versions: the same kernels as today's v1
# (max-pool, LRN and the conv filter gradient were renamed v1 when v2 came, their bodies
# unchanged; the filter gradient's split plan is today's).
RENAMED = {**{f"{name} {pass_}": f"{name} {pass_} v1" for name, *_ in POOLS + LRNS
              for pass_ in ("forward", "backward")},
           **{f"{name} backward filter": f"{name} backward filter v1" for name, *_ in CONVS}}


def load_measured(path):
    """{case name: measured ms} from a GPU run's JSON ({} if there is none)."""
    if not path or not Path(path).exists():
        return {}, None
    d = json.loads(Path(path).read_text())
    return {RENAMED.get(r["name"], r["name"]): r["ours_ms"] for r in d["results"]
            if r.get("ours_ms")}, d


def run_emulated(args):
    """Model every case's H200 time from the emulator's counters; returns the JSON summary."""
    import os

    import emu_model
    from pyalexnet.backends import EmuBackend

    be = EmuBackend(threads=args.threads or os.cpu_count(), profile=True,
                    profile_blocks=args.blocks)
    measured, measured_doc = load_measured(args.measured)
    dev = emu_model.load_device(args.device_probe)
    if measured_doc and measured_doc.get("copy_bandwidth_bytes_per_s"):  # measured beats assumed
        dev = dataclasses.replace(dev, dram_bw=measured_doc["copy_bandwidth_bytes_per_s"])
    usage = emu_model.kernel_resource_usage()
    if not usage:
        print("nvcc not found: occupancy assumes 32 registers per thread and no static shared memory")
    batch = args.batch or 128
    if measured_doc and measured_doc.get("batch") != batch:
        print(f"measured at batch {measured_doc.get('batch')}, modeled at {batch}: not compared")
        measured, measured_doc = {}, None
    # fp32 unless asked: all precisions at once need over 24 GB
    cases = Builder(be, None, batch, 1, np.random.default_rng(0)).all(args.precision or ["fp32"])
    if args.only:
        cases = [c for c in cases if any(o in c.name for o in args.only)]
    print(f"modeled {emu_model.H200.name} at batch {batch}: counters of at most {args.blocks} blocks "
          f"per launch (evenly spread), scaled to the grid; measured: "
          f"{args.measured if measured else 'none'}")
    print(f"{'case':28s} {'model ms':>9s} {'H200 ms':>9s} {'mod/meas':>8s} {'bound':>6s} "
          f"{'GFLOP':>8s} {'DRAM MB':>8s} {'ld sec/req':>10s} {'st sec/req':>10s} {'gld eff':>7s} "
          f"{'smem wf/ideal':>13s} {'SIMT eff':>8s} {'warps/SM':>8s} {'blocks':>12s} {'TC %peak':>8s}")
    rows = []
    for c in cases:
        be.profiles.clear()
        c.ours()
        launches = [emu_model.model_launch(p, usage, dev) for p in be.profiles]
        tot = {k: sum(m["counters"].get(k, 0.0) for m in launches) for k in (
            "global_load_requests", "global_load_sectors", "global_load_bytes",
            "global_store_requests", "global_store_sectors", "global_store_bytes",
            "shared_load_wavefronts", "shared_store_wavefronts", "shared_load_ideal_wavefronts",
            "shared_store_ideal_wavefronts", "dram_bytes", "dram_bytes_lower_bound", "flops",
            "barriers", "atomics_global", "atomics_shared", "thread_instructions",
            "warp_instructions", "mma_tf32", "mma_bf16", "tensor_flops_tf32", "tensor_flops_bf16")}
        model_ms = 1e3 * sum(m["seconds"] for m in launches)
        main = max(launches, key=lambda m: m["seconds"])
        meas = measured.get(c.name)
        # the tensor-core share of peak, as the GPU run reports it: the pass's own FLOPs (not
        # the padding the mma tiles also compute) over the model time, at the dense peak
        peak = {"tf32": dev.tf32_flops, "bf16": dev.bf16_flops}.get(c.precision)
        at_peak = c.flops / peak if peak and c.flops else 0.0
        row = {"name": c.name, "shape": c.shape, "model_ms": model_ms, "measured_ms": meas,
               "ratio": model_ms / meas if meas else None, "bound": main["bound"],
               "memory_bound_op": not c.flops, **tot,
               "tensor_share_of_peak": 1e3 * at_peak / model_ms if at_peak else None,
               "launches": [{"kernel": p["kernel"], "grid": p["grid"], "block": p["block"],
                             "blocks_run": p["blocks_run"], "blocks_total": p["blocks_total"],
                             "model_ms": 1e3 * m["seconds"], "bound": m["bound"],
                             "terms_ms": {k: 1e3 * v for k, v in m["terms"].items()},
                             "registers": m["registers"], "static_shared": m["static_shared"],
                             "blocks_per_sm": m["blocks_per_sm"], "warps_per_sm": m["warps_per_sm"],
                             "limited_by": m["limited_by"], "tail": m["tail"],
                             "profile": p}
                            for p, m in zip(be.profiles, launches)]}
        rows.append(row)

        def per(a, b):
            return tot[a] / tot[b] if tot[b] else None
        eff = per("global_load_bytes", "global_load_sectors")
        wf = tot["shared_load_wavefronts"] + tot["shared_store_wavefronts"]
        ideal = tot["shared_load_ideal_wavefronts"] + tot["shared_store_ideal_wavefronts"]
        blocks = f"{sum(p['blocks_run'] for p in be.profiles)}/{sum(p['blocks_total'] for p in be.profiles)}"
        # SIMT efficiency: the lanes' instructions over what their warps issue (divergence)
        simt = per("thread_instructions", "warp_instructions")
        row["simt_efficiency"] = simt and simt / 32
        print(f"{c.name:28s} {model_ms:9.3f} {fmt(meas, '9.3f')} {fmt(row['ratio'], '8.2f')} "
              f"{main['bound']:>6s} {all_flops(tot) / 1e9:8.1f} {tot['dram_bytes'] / 1e6:8.1f} "
              f"{fmt(per('global_load_sectors', 'global_load_requests'), '10.2f')} "
              f"{fmt(per('global_store_sectors', 'global_store_requests'), '10.2f')} "
              f"{fmt(eff and 100 * eff / 32, '6.0f')}% "
              f"{fmt(wf / ideal if ideal else None, '13.2f')} "
              f"{fmt(simt and 100 * simt / 32, '7.0f')}% {main['warps_per_sm']:8d} {blocks:>12s} "
              f"{fmt(row['tensor_share_of_peak'] and 100 * row['tensor_share_of_peak'], '7.0f')}%",
              flush=True)
    both = [r for r in rows if r["measured_ms"]]
    rho = emu_model.spearman([r["model_ms"] for r in both], [r["measured_ms"] for r in both]) if len(both) > 2 else None
    within2 = [r for r in both if 0.5 <= r["ratio"] <= 2]
    if both:
        rank = f"{rho:.2f}" if rho is not None else "none (it needs 3 rows)"
        print(f"rank correlation (Spearman) of modeled vs measured over {len(both)} rows: {rank}; "
              f"within 2x: {len(within2)}/{len(both)}")
        mem = [r for r in both if r["memory_bound_op"]]
        if mem:
            print(f"memory-bound ops (LRN, pooling, ...) within 2x: "
                  f"{sum(0.5 <= r['ratio'] <= 2 for r in mem)}/{len(mem)}")
    return {"device": dev.name, "backend": "emu (profiling build)", "batch": batch,
            "blocks_per_launch": args.blocks, "model": asdict(dev),
            "measured": args.measured if measured else None,
            "measured_date": measured_doc and measured_doc.get("date"),
            "rank_correlation": rho, "within_2x": len(within2), "rows_compared": len(both),
            "memory_bound_within_2x": sum(0.5 <= r["ratio"] <= 2 for r in both if r["memory_bound_op"]),
            "memory_bound_rows": sum(r["memory_bound_op"] for r in both),
            "results": rows}


def all_flops(counters):
    """FP32 FLOPs of the CUDA cores plus the tensor cores' (None counts as 0)."""
    return sum(counters.get(k) or 0.0 for k in ("flops", "tensor_flops_tf32", "tensor_flops_bf16"))


def cell(v, f):
    """A Markdown table cell: ``v`` in format ``f``, or a dash for no value."""
    return format(v, f) if v is not None else "–"


def counters_table(rows):
    """The --emulated rows as the README's Markdown table of counters."""
    def pct(v):
        return f"{100 * v:.0f}%" if v is not None else "–"

    def per(r, a, b):
        return r[a] / r[b] if r.get(b) else None

    tc = any(r.get("tensor_share_of_peak") for r in rows)  # a column only where mma ran
    out = ["| case | kernels (blocks) | GFLOP | DRAM MB model (min) | ld sectors/req | "
           "st sectors/req | ld efficiency | smem wavefronts/ideal | SIMT efficiency | "
           "barriers/block | warps/SM (limit) | model ms | " + ("tensor-core share of peak | " if tc else "")
           + "H200 ms |", "|" + "---|" * (14 if tc else 13)]
    for r in rows:
        main = max(r["launches"], key=lambda m: m["model_ms"])
        blocks = sum(m["blocks_total"] for m in r["launches"])
        wf = r["shared_load_wavefronts"] + r["shared_store_wavefronts"]
        ideal = r["shared_load_ideal_wavefronts"] + r["shared_store_ideal_wavefronts"]
        eff = per(r, "global_load_bytes", "global_load_sectors")
        kernels = ", ".join(f"`{m['kernel']}` ({m['blocks_total']})" for m in r["launches"])
        out.append(
            f"| {r['name']} | {kernels} | {all_flops(r) / 1e9:.1f} | {r['dram_bytes'] / 1e6:.0f} "
            f"({r['dram_bytes_lower_bound'] / 1e6:.0f}) | "
            f"{cell(per(r, 'global_load_sectors', 'global_load_requests'), '.2f')} | "
            f"{cell(per(r, 'global_store_sectors', 'global_store_requests'), '.2f')} | "
            f"{pct(eff and eff / 32)} | {cell(wf / ideal if ideal else None, '.2f')} | "
            f"{pct(r.get('simt_efficiency'))} | {r['barriers'] / blocks:.0f} | "
            f"{main['warps_per_sm']} ({main['limited_by']}) | {r['model_ms']:.3f} | "
            + (f"{pct(r.get('tensor_share_of_peak'))} | " if tc else "")
            + f"{cell(r['measured_ms'], '.3f')} |")
    return "\n".join(out) + "\n"


# the counters a kernel change is judged by: (column, value of a row, format)
CHANGE_COLUMNS = (
    ("model ms", lambda r: r["model_ms"], ".3f"),
    ("DRAM MB", lambda r: r["dram_bytes"] / 1e6, ".1f"),
    ("ld requests", lambda r: r["global_load_requests"], ",.0f"),
    ("ld sectors/req", lambda r: r["global_load_sectors"] / r["global_load_requests"]
     if r["global_load_requests"] else None, ".2f"),
    ("st sectors/req", lambda r: r["global_store_sectors"] / r["global_store_requests"]
     if r["global_store_requests"] else None, ".2f"),
    ("smem wavefronts", lambda r: r["shared_load_wavefronts"] + r["shared_store_wavefronts"], ",.0f"),
)


def changes_table(before, after, tolerance=1e-3):
    """A Markdown table of the --emulated rows whose counters moved between two runs (the
    results lists of two JSON files), "old → new" where a value moved by more than
    ``tolerance`` of itself: what a kernel change's note shows. Rows of one run only are
    left out; "" when nothing moved."""
    old = {r["name"]: r for r in before}
    lines = []
    for r in after:
        b = old.get(r["name"])
        if b is None:
            continue
        cells, moved = [], False
        for _, value, f in CHANGE_COLUMNS:
            v0, v1 = value(b), value(r)
            if v0 is None or v1 is None:
                changed = (v0 is None) != (v1 is None)
            else:
                changed = abs(v1 - v0) > tolerance * max(abs(v0), abs(v1))
            cells.append(f"{cell(v0, f)} → {cell(v1, f)}" if changed else cell(v1, f))
            moved |= changed
        if moved:
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = "| case | " + " | ".join(c for c, _, _ in CHANGE_COLUMNS) + " |"
    return "\n".join([head, "|" + "---|" * (len(CHANGE_COLUMNS) + 1)] + lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default=None, help="cuda, emu or numpy (default: auto)")
    ap.add_argument("--small", action="store_true", help="batch 2 and 1/8 of the channels (CPU backends always)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 128; 2 with --small)")
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats per case (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    ap.add_argument("--only", nargs="*", help="run only cases whose name contains one of these")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    ap.add_argument("--precision", nargs="+", choices=PRECISIONS, default=None,
                    help="conv/FC rows per precision (default: all; fp32 with --emulated); "
                         "tf32/bf16 use tensor cores")
    ap.add_argument("--out", default=None, help="JSON output path (default benchmarks/results/...)")
    ap.add_argument("--emulated", action="store_true",
                    help="model H200 times from the emulator's counters (needs pyalexnet._emu_profile)")
    ap.add_argument("--blocks", type=int, default=16, help="--emulated: blocks run per launch")
    ap.add_argument("--threads", type=int, default=None, help="--emulated: OS threads (default: all cores)")
    ap.add_argument("--measured", default=str(ROOT / "benchmarks" / "results" / "h200-20261130" / "kernels.json"),
                    help="--emulated: a GPU run's JSON to compare with")
    ap.add_argument("--device-probe", default=None,
                    help="--emulated: a GPU's benchmarks/bench_device.py JSON: its measured "
                         "constants replace the model's assumed ones")
    ap.add_argument("--markdown", default=None,
                    help="--emulated: also write the counters as a Markdown table (the README's)")
    ap.add_argument("--before", default=None,
                    help="--emulated: an earlier --emulated JSON; print the rows whose counters "
                         "moved since, old -> new (for a kernel change's note)")
    args = ap.parse_args(argv)
    for flag in ("markdown", "before"):
        if getattr(args, flag) and not args.emulated:
            ap.error(f"--{flag} goes with --emulated (a timed run's table is in its JSON)")
    if args.emulated:
        if args.blocks < 1:
            ap.error("--blocks must be at least 1")
        before = None
        if args.before:  # read first: a bad file must not cost a whole run
            try:
                before = json.loads(Path(args.before).read_text())["results"]
                if not all({"name", "model_ms", "dram_bytes"} <= r.keys() for r in before):
                    raise ValueError("its rows have no counters")  # a GPU run's, say
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                ap.error(f"--before {args.before}: not an --emulated JSON of bench_kernels.py ({e})")
        t0 = time.perf_counter()
        summary = run_emulated(args)
        summary["seconds"] = time.perf_counter() - t0
        stamp = datetime.datetime.now(datetime.timezone.utc)
        out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"kernels-emulated-{stamp:%Y%m%d}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1))
        print(f"{summary['seconds']:.0f} s; wrote {out}")
        if args.markdown:
            Path(args.markdown).write_text(counters_table(summary["results"]))
            print(f"wrote {args.markdown}")
        if before is not None:
            moved = changes_table(before, summary["results"])
            print(f"since {args.before}:\n{moved}" if moved else
                  f"since {args.before}: no row's counters moved")
        return 0
    stamp = datetime.datetime.now(datetime.timezone.utc)

    def summarize(be, batch, small, torch, results, failures, ratios=None):
        """The JSON summary, written after every row (a run cut short by a timeout keeps
        what it measured: "complete" false) and once more at the end."""
        name = device_name(be)
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
            "validation_failures": failures, "complete": ratios is not None,
            "version_ratios": ratios or {}, **info, "results": [asdict(r) for r in results]}
        out.write_text(json.dumps(summary, indent=1))
        return out, summary, with_base

    info = {}
    be, batch, small, torch, results, failures, ratios = run(args, summarize, info)
    out, summary, with_base = summarize(be, batch, small, torch, results, failures, ratios)
    if with_base:
        print(f"geometric mean of ours/baseline time: {summary['geomean_ratio']:.2f}")
    print(f"wrote {out}")
    if failures:
        print(f"VALIDATION FAILED: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
