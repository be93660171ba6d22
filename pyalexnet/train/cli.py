"""Train a network: ``python -m pyalexnet.train [options]``.

With no arguments it trains the small CIFAR-style net (configs/cifar-small.toml) on the
built-in generated dataset (made on first use) with the NumPy backend on a machine without
a GPU, and prints the held-out top-1 accuracy at the end.

What a run does (the paper's recipe, see docs/ARCHITECTURE.md):

- SGD with momentum and weight decay, v <- m v - wd lr w - lr dL/dw; w <- w + v
  (``pyalexnet.ops.sgd.sgd_update``, one fused kernel per tensor);
- learning rate divided by 10 when the validation error stops improving (``--schedule
  plateau``) or at fixed epochs (``--schedule step --lr-steps 30,60``);
- the paper's initialisation, N(0, 0.01) weights, biases 1 (``--bias-init paper``) or 0.1
  (``caffe``) in conv2, conv4, conv5, fc6, fc7;
- a progress line (images/s, loss, top-1/top-5 error, lr, time spent waiting for data),
  metrics as JSON lines (``metrics.jsonl``), a checkpoint written atomically after every
  epoch (``checkpoint.npz``), pictures of the curves and first-layer filters at the end.

This module is the command line; the loop is pyalexnet.train.loop, the set-up
pyalexnet.train.session, the options pyalexnet.train.options.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import math
import os
import sys
from pathlib import Path

from .. import checkpoint as ckpt
from .. import distributed
from ..backends import get_backend
from ..cliargs import ArgumentParser
from ..config import load_config
from ..layers.conv import CONV_ALGOS
from .loop import EXIT_INTERRUPTED, Trainer
from .options import DEFAULTS, parse_lr_steps, resolve_options
from .session import open_session


def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _nonneg_int(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _positive_float(s):
    v = float(s)
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _nonneg_float(s):
    v = float(s)
    if not v >= 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _bias_init(s):
    if s in ("paper", "caffe"):
        return s
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'paper' (1), 'caffe' (0.1) or a number, got {s!r}") from None


def _lr_steps(s):
    try:
        return parse_lr_steps(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser():
    d = DEFAULTS
    ap = ArgumentParser(
        prog="python -m pyalexnet.train",
        description="Train AlexNet (or the small CIFAR-style net) with SGD, momentum and weight "
                    "decay, the paper's initialisation and learning-rate schedule. With no "
                    "arguments: the cifar-small net on the built-in generated dataset "
                    "(a few minutes on two CPU cores), printing the held-out top-1 accuracy.",
        epilog="Defaults marked 'config' come from the config file ([train], [input], [init]) "
               "when it sets them. When resuming, options that shape training (data, "
               "hyper-parameters, seed, limits) default to the checkpoint's values; give them "
               "to override. Outputs in "
               "--out: checkpoint.npz (atomic, every epoch), metrics.jsonl, curves.png, "
               "filters.png, results.json. Under torchrun (several processes, machines): "
               "data parallel, --batch-size is the global batch, --out is required, rank 0 "
               "writes the outputs, a restart resumes from --out's checkpoint. Exit status: 0 "
               "done, 2 bad input, 3 NaN/inf loss, 4 another rank died, 130 interrupted.")
    g = ap.add_argument_group("model and data")
    g.add_argument("--config", metavar="NAME|PATH", default=None,
                   help=f"bundled config name or a .toml path (default: {d['config']}; "
                        "see pyalexnet/configs/)")
    g.add_argument("--data", metavar="DIR", default=None,
                   help="ImageNet-style root with train/<class>/ and val/<class>/ image folders "
                        "(default: the built-in dataset, generated on first use under "
                        "$PYALEXNET_DATA or ~/.cache/pyalexnet)")
    g.add_argument("--cifar", metavar="DIR", default=None,
                   help="train on CIFAR-10 from its python batches (cifar-10-batches-py/ or "
                        "the .tar.gz); held-out = the test batch (default: not used)")
    g.add_argument("--crop", type=_positive_int, default=None, metavar="PIXELS",
                   help="input crop size in pixels; the net's layer sizes follow from it "
                        "(default: the config's [input] size)")
    g.add_argument("--resize", type=_positive_int, default=None, metavar="PIXELS",
                   help="images are rescaled to this square before cropping (default: config "
                        "[input] resize)")
    g.add_argument("--pca-noise", type=_nonneg_float, default=None, metavar="STD",
                   help="std of the paper's PCA colour noise, 0 turns it off (default: config)")
    g.add_argument("--bias-init", type=_bias_init, default=None, metavar="paper|caffe|X",
                   help="bias of conv2, conv4, conv5, fc6, fc7: paper = 1, caffe = 0.1, or a "
                        f"number (default: config [init] bias, else {d['bias_init']})")
    g.add_argument("--dropout-mode", choices=("inverted", "classic"), default=None,
                   help="inverted: scale by 1/(1-p) while training; classic (paper): multiply "
                        f"by 1-p at test time (default: {d['dropout_mode']})")
    g.add_argument("--limit-train", type=_positive_int, default=None, metavar="N",
                   help="use only N training images, for smoke runs (default: all)")
    g.add_argument("--limit-val", type=_positive_int, default=None, metavar="N",
                   help="use only N held-out images (default: all)")
    g.add_argument("--init-from", metavar="CKPT", default=None,
                   help="start from this checkpoint's weights (e.g. one made by "
                        "pyalexnet.convert --from-torchvision); with another number of classes "
                        "the classifier starts fresh (default: the config's initialisation)")
    g.add_argument("--class-names", metavar="FILE", default=None,
                   help="display names of the classes, stored in the checkpoint for predict: "
                        "one a line, or an ImageNet 'wnid words' file (default: the folder or "
                        "CIFAR label names)")
    g.add_argument("--workers", type=_nonneg_int, default=None, metavar="N",
                   help=f"data-loading worker processes, 0 = load in this process "
                        f"(default: {d['workers']})")

    g = ap.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"epochs to train (default: config, else {d['epochs']})")
    g.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"images per step (default: config, else {d['batch_size']})")
    g.add_argument("--lr", type=_positive_float, default=None,
                   help=f"initial learning rate; with --resume, replaces the current rate "
                        f"(default: config, else {d['lr']})")
    g.add_argument("--momentum", type=_nonneg_float, default=None,
                   help=f"SGD momentum (default: config, else {d['momentum']})")
    g.add_argument("--weight-decay", type=_nonneg_float, default=None,
                   help=f"weight decay (default: config, else {d['weight_decay']})")
    g.add_argument("--schedule", choices=("plateau", "step"), default=None,
                   help="plateau: divide the lr by 10 (see --lr-decay) when the held-out "
                        "top-1 error has not improved for --plateau-patience evaluations; step: "
                        "divide it by 10 at the epochs in --lr-steps (default: config, else "
                        f"{d['schedule']})")
    g.add_argument("--lr-steps", type=_lr_steps, default=None, metavar="E1,E2,...",
                   help="for --schedule step: epochs after which the lr is divided by 10 "
                        "(default: config, else none)")
    g.add_argument("--plateau-patience", type=_positive_int, default=None, metavar="N",
                   help="for --schedule plateau: evaluations without improvement before the lr "
                        f"drops (default: config, else {d['plateau_patience']})")
    g.add_argument("--max-lr-drops", type=_nonneg_int, default=None, metavar="N",
                   help="for --schedule plateau: drop the lr at most N times (the paper: 3) "
                        f"(default: config, else {d['max_lr_drops']})")
    g.add_argument("--lr-decay", type=_positive_float, default=None, metavar="F",
                   help="factor the lr is multiplied by at each drop (default: config, else "
                        f"{d['lr_decay']}, i.e. divide by 10)")
    g.add_argument("--seed", type=_nonneg_int, default=None,
                   help="seed of the initialisation, data order, augmentation and dropout "
                        f"(default: {d['seed']})")

    g = ap.add_argument_group("hardware")
    g.add_argument("--backend", choices=("auto", "numpy", "emu", "cuda"), default=None,
                   help="numpy: NumPy references (CPU); emu: the CUDA kernels on the CPU "
                        "(slow, for checking); cuda: the GPU; auto: cuda if CuPy sees a GPU, "
                        "else numpy, or $PYALEXNET_BACKEND (default: auto)")
    g.add_argument("--devices", type=int, choices=(1, 2), default=None,
                   help="GPUs to split the two-tower net over, as in the paper (default: 1)")
    g.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default=None,
                   help="number format of the conv and fc products: fp32 (CUDA cores), tf32 or "
                        "bf16 (tensor cores, fp32 accumulation; weights, momentum, update, "
                        "softmax and loss stay fp32) (default: fp32)")
    g.add_argument("--conv-algo", choices=CONV_ALGOS, default=None,
                   help="the conv layers' algorithms: gemm (implicit GEMM, the kernels timed on "
                        "an H200) or auto (Winograd or implicit GEMM per pass as the cost "
                        "models choose; faster as modeled, not yet timed on a GPU; Winograd "
                        "in fp32 only) (default: gemm)")
    g.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="capture each training step once as CUDA graphs and replay them (on "
                        "emu: recorded launches, replayed; not on numpy) (default: off)")
    g.add_argument("--parallel", choices=("dp", "owt"), default=None,
                   help="under torchrun with several ranks: dp = data parallel (each rank the "
                        "whole net, or both towers with --devices 2); owt = the 'one weird "
                        "trick': conv layers data parallel, fc layers split over the ranks "
                        "(one device per rank) (default: dp)")

    g = ap.add_argument_group("run control and output")
    g.add_argument("--out", metavar="DIR", default=None,
                   help="run directory for checkpoint, metrics and pictures (default: "
                        "runs/<config>-<timestamp>, linked as runs/latest; when resuming, "
                        "the checkpoint's directory)")
    g.add_argument("--resume", metavar="PATH|DIR", default=None,
                   help="continue from a checkpoint file or a run directory (default: start fresh)")
    g.add_argument("--eval-every", type=_nonneg_int, default=None, metavar="N",
                   help="evaluate on the held-out set every N epochs, 0 = only at the end "
                        f"(default: {d['eval_every']})")
    g.add_argument("--ten-crop", action="store_true", default=None,
                   help="also report the paper's 10-crop error at the end (default: off)")
    g.add_argument("--max-steps", type=_positive_int, default=None, metavar="N",
                   help="stop after N optimisation steps in total (counting steps before a "
                        "resume), saving a checkpoint, e.g. for smoke runs (default: no limit)")
    g.add_argument("--stats-every", type=_nonneg_int, default=None, metavar="N",
                   help="every N steps, per-layer RMS of weights, gradients and updates, "
                        "update/weight ratio and dead-ReLU fraction into metrics.jsonl and "
                        "layers.png, 0 = off (default: 0)")
    g.add_argument("--log-every", type=_positive_int, default=None, metavar="N",
                   help="write a train record to metrics.jsonl (and a progress line when not on "
                        f"a terminal) every N steps (default: {d['log_every']})")
    return ap


def _default_out(config_name):
    stem = Path(str(config_name)).stem if str(config_name).endswith(".toml") else str(config_name)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs")
    out = base / f"{stem}-{stamp}"
    i = 1
    while out.exists():
        i += 1
        out = base / f"{stem}-{stamp}-{i}"
    return out


def _link_latest(out: Path):
    """Point runs/latest at ``out`` (best effort; replaced atomically)."""
    latest = out.parent / "latest"
    if out.parent.name != "runs":
        return
    try:
        tmp = out.parent / f".latest.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(out.name)
        os.replace(tmp, latest)
    except OSError:
        pass


def _distributed_checks(args, opts):
    """Under torchrun with several ranks: the one-line error for a run that cannot be
    data parallel, else None."""
    ranks = distributed.world_size_from_env()
    if ranks <= 1:
        return None
    if not args.out:
        return (f"{ranks} ranks (torchrun) need --out DIR: every rank and every restart must "
                "agree on the run directory")
    if opts["parallel"] == "owt" and int(opts["devices"]) != 1:
        return ("--parallel owt runs one device per rank: use --devices 1, or --parallel dp "
                "for two towers per rank (--devices 2)")
    batch = int(opts["batch_size"])
    if batch % ranks:
        return (f"--batch-size {batch} is the global batch and must be divisible by the "
                f"{ranks} ranks (WORLD_SIZE); e.g. {ranks * max(1, batch // ranks)}")
    return None


def _restart_checkpoint(args):
    """A torchrun restart (--max-restarts) continues from --out's checkpoint, if any."""
    if args.resume or not args.out or not int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0):
        return None
    path = Path(args.out) / ckpt.FILENAME
    return str(path) if path.exists() else None


def main(argv=None, stream=None):
    args = build_parser().parse_args(argv)
    args.resume = args.resume or _restart_checkpoint(args)
    resumed = None
    if args.resume:
        try:
            resumed = ckpt.load(args.resume)
        except ckpt.CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if resumed.meta.get("kind") == "weights":
            print(f"error: --resume {args.resume} holds converted weights, not a training run; "
                  "start from it with --init-from", file=sys.stderr)
            return 2
    config_name = args.config or (resumed.meta["options"]["config"] if resumed
                                  else DEFAULTS["config"])
    try:
        config = load_config(config_name)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.config = config_name
    opts = resolve_options(vars(args), config, resumed.meta["options"] if resumed else None)
    problem = _distributed_checks(args, opts)
    if opts["stats_every"] and (opts["cuda_graph"] or distributed.world_size_from_env() > 1):
        problem = ("--stats-every runs with single-process eager steps only, not with "
                   "--cuda-graph or torchrun ranks")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
    elif resumed is not None:
        out = ckpt.resolve(args.resume).parent
    else:
        out = _default_out(config_name)
    if resumed is None and (out / ckpt.FILENAME).exists():
        print(f"error: {out} already holds a checkpoint; continue it with --resume {out} or "
              "choose another --out", file=sys.stderr)
        return 2
    if opts["cuda_graph"] and opts["backend"] == "numpy":
        print("error: --cuda-graph needs a kernel backend (--backend cuda or emu), not numpy",
              file=sys.stderr)
        return 2
    world = distributed.World.from_env(
        get_backend(None if opts["backend"] == "auto" else opts["backend"]).name)
    if world is None or world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not args.out and resumed is None:
            _link_latest(out)
    try:
        return _train(args, opts, out, resumed, world, stream)
    except distributed.PeerLost as e:
        print(f"error: {e}", file=sys.stderr)
        return distributed.EXIT_PEER_LOST
    finally:
        if world is not None:
            world.close()


def _train(args, opts, out, resumed, world, stream):
    try:
        session = open_session(opts, resume=resumed, world=world)
    except (ValueError, OSError, ckpt.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if resumed is not None and args.lr is not None:
        session.state.lr = float(args.lr)  # an explicit --lr replaces the checkpoint's rate
    trainer = Trainer(session, out, stream=stream, max_steps=args.max_steps,
                      log_every=int(opts["log_every"]))
    try:
        return trainer.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted; the checkpoint in {out} is from step {trainer.last_saved_step}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
