"""Train a network: ``python -m pyalexnet.train [options]``.

With no arguments it trains the small CIFAR-style net (configs/cifar-small.toml) on the
built-in generated dataset (made on first use) with the NumPy backend on a machine without
a GPU, and prints the held-out top-1 accuracy at the end.

What a run does (the paper's recipe, DESIGN.md section 5):

- SGD with momentum and weight decay, v <- m v - wd lr w - lr dL/dw; w <- w + v
  (``pyalexnet.ops.sgd.sgd_update``, one fused kernel per tensor);
- learning rate divided by 10 when the validation error stops improving (``--schedule
  plateau``) or at fixed epochs (``--schedule step --lr-steps 30,60``);
- the paper's initialisation, N(0, 0.01) weights, biases 1 (``--bias-init paper``) or 0.1
  (``caffe``) in conv2, conv4, conv5, fc6, fc7;
- a progress line (images/s, loss, top-1/top-5 error, lr, time spent waiting for data),
  metrics as JSON lines (``metrics.jsonl``), a checkpoint written atomically after every
  epoch (``checkpoint.npz``), pictures of the curves and first-layer filters at the end.

Exact resume: every random choice is a pure function of (seed, epoch, step or image index):
the data order and augmentation come from the loader seeded with (seed, epoch), and
each step's dropout seed is a hash of (seed, step). A checkpoint holds the parameters,
the momentum buffers, the step, the epoch and the batch within it, the learning rate and
the schedule's state, so ``--resume`` continues with bit-for-bit the same losses as a run
that never stopped (on the numpy and emu backends).

Stopping: Ctrl-C finishes the current step, saves a checkpoint and exits (a second Ctrl-C
aborts at once). A NaN or infinite loss stops the run with a message naming the step and
leaves the last good checkpoint untouched (exit status 3).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import evaluate as ev
from .progress import Progress, format_duration

EXIT_NAN = 3
EXIT_INTERRUPTED = 130

# Training options and their built-in defaults. ``None`` in the parser means "not given on
# the command line": the value then comes from the checkpoint (when resuming), then the
# config's [train] section, then this table.
DEFAULTS = {
    "config": "cifar-small",
    "backend": "auto",
    "devices": 1,
    "epochs": 90,
    "batch_size": 128,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "plateau",
    "lr_steps": "",
    "plateau_patience": 1,
    "max_lr_drops": 3,
    "lr_decay": 0.1,
    "bias_init": "paper",
    "dropout_mode": "inverted",
    "crop": None,        # from the config
    "resize": None,      # from the config
    "pca_noise": None,   # from the config (0.1 in the paper)
    "workers": 0,
    "seed": 0,
    "eval_every": 1,
    "limit_train": None,
    "limit_val": None,
    "ten_crop": False,
    "log_every": 50,
    "max_steps": None,
}
# Options that shape the loss trajectory: a resumed run keeps the checkpoint's values
# unless the command line says otherwise (--out, --resume and --max-steps are not carried).
CARRIED = ("config", "source", "backend", "devices", "epochs", "batch_size", "lr", "momentum",
           "weight_decay", "schedule", "lr_steps", "plateau_patience", "max_lr_drops", "lr_decay",
           "bias_init", "dropout_mode", "crop", "resize", "pca_noise", "flip", "workers", "seed",
           "eval_every", "limit_train", "limit_val", "ten_crop", "log_every")


class TrainingDiverged(RuntimeError):
    """The loss (or a parameter) became NaN or infinite."""


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


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
        steps = [int(t) for t in s.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated epoch numbers such as 30,60,80, got {s!r}") from None
    if any(e < 1 for e in steps) or steps != sorted(set(steps)):
        raise argparse.ArgumentTypeError(f"must be increasing positive epoch numbers, got {s!r}")
    return ",".join(map(str, steps))


def build_parser():
    d = DEFAULTS
    ap = argparse.ArgumentParser(
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
               "filters.png, results.json. Exit status: 0 done, 3 NaN/inf loss, 130 interrupted.")
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
    g.add_argument("--log-every", type=_positive_int, default=None, metavar="N",
                   help="write a train record to metrics.jsonl (and a progress line when not on "
                        f"a terminal) every N steps (default: {d['log_every']})")
    return ap


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


# Where each option lives in a config file ([section], key).
CONFIG_KEYS = {
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "momentum": ("train", "momentum"), "weight_decay": ("train", "weight_decay"),
    "schedule": ("train", "lr_schedule"), "lr_steps": ("train", "lr_step_epochs"),
    "plateau_patience": ("train", "plateau_patience"), "max_lr_drops": ("train", "max_lr_drops"),
    "lr_decay": ("train", "lr_decay"),
    "crop": ("input", "size"), "resize": ("input", "resize"), "pca_noise": ("input", "pca_noise"),
    "bias_init": ("init", "bias"),
}


def config_section(config, section) -> dict:
    """A config's ``[section]`` as a dict, whatever object the model made of the TOML."""
    for holder in (config, getattr(config, "raw", None), getattr(config, "data", None)):
        if holder is None:
            continue
        sec = holder.get(section) if isinstance(holder, dict) else getattr(holder, section, None)
        if sec is None:
            continue
        if isinstance(sec, dict):
            return sec
        if hasattr(sec, "__dict__"):
            return dict(vars(sec))
    return {}


def config_default(config, key, default=None):
    where = CONFIG_KEYS.get(key)
    if where is None:
        return default
    v = config_section(config, where[0]).get(where[1])
    return default if v is None else v


def resolve_options(args, config, resumed: dict | None):
    """Merge command line, checkpoint, config and built-in defaults into one dict."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    opts = {}
    for key, default in DEFAULTS.items():
        if key in given:
            opts[key] = given[key]
        elif resumed is not None and key in CARRIED and key in resumed:
            opts[key] = resumed[key]
        else:
            opts[key] = config_default(config, key, default)
    if args.data or args.cifar:
        opts["source"] = ev.source_from_args(args.data, args.cifar)
    elif resumed is not None:
        opts["source"] = resumed["source"]
    else:
        opts["source"] = ev.source_from_args()
    if opts["pca_noise"] is None:
        opts["pca_noise"] = 0.0
    opts["flip"] = bool(config_section(config, "input").get("flip", True))
    if opts["crop"] is None or opts["resize"] is None:
        raise SystemExit("error: the config gives no input crop/resize size; pass --crop and "
                         "--resize")
    opts["crop"], opts["resize"] = int(opts["crop"]), int(opts["resize"])
    if opts["resize"] < opts["crop"]:
        raise SystemExit(f"error: --resize {opts['resize']} is smaller than --crop {opts['crop']}")
    if isinstance(opts["lr_steps"], (list, tuple)):
        opts["lr_steps"] = ",".join(str(int(e)) for e in opts["lr_steps"])
    opts["lr_steps"] = _lr_steps(str(opts["lr_steps"] or ""))
    return opts


# --------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------


class Schedule:
    """Divide the learning rate by 10: on a plateau of the held-out error, or at fixed epochs.

    The state (best error, evaluations without improvement, drops so far) is a small dict
    stored in the checkpoint.
    """

    def __init__(self, kind, lr_steps="", patience=1, max_drops=3, state=None, decay=0.1):
        self.kind = kind
        self.decay = float(decay)
        self.steps = [int(e) for e in str(lr_steps).split(",") if e]
        self.patience = int(patience)
        self.max_drops = int(max_drops)
        self.state = dict(best=None, bad=0, drops=0)
        self.state.update(state or {})

    def lr_at_epoch_start(self, base_lr, epoch):
        """step schedule: the lr for (0-based) ``epoch``."""
        drops = sum(1 for e in self.steps if epoch >= e)
        return base_lr * self.decay ** drops

    def after_epoch(self, lr, epochs_done, val_error):
        """The lr for the next epoch, given the held-out error (or None if not measured)."""
        if self.kind == "step":
            return None  # set at the start of each epoch
        if val_error is None:
            return lr
        s = self.state
        if s["best"] is None or val_error < s["best"] - 1e-9:
            s["best"], s["bad"] = float(val_error), 0
            return lr
        s["bad"] += 1
        if s["bad"] >= self.patience and s["drops"] < self.max_drops:
            s["bad"], s["drops"] = 0, s["drops"] + 1
            return lr * self.decay
        return lr


def step_seed(seed: int, step: int) -> int:
    """The dropout seed of a training step: a fixed 32-bit hash of (seed, step).

    SplitMix64 finaliser; a pure function, so a resumed run draws the same masks.
    """
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(step) + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return int((z ^ (z >> 31)) & 0xFFFFFFFF)


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


class _Averages:
    """Running sums of loss and top-k errors over some images."""

    def __init__(self, d=None):
        d = d or {}
        self.loss = float(d.get("loss", 0.0))
        self.err1 = int(d.get("err1", 0))
        self.err5 = int(d.get("err5", 0))
        self.n = int(d.get("n", 0))
        self.steps = int(d.get("steps", 0))

    def add(self, loss, n, e1, e5):
        self.loss += loss * n
        self.err1 += e1
        self.err5 += e5
        self.n += n
        self.steps += 1

    def means(self):
        n = max(1, self.n)
        return self.loss / n, self.err1 / n, self.err5 / n

    def state(self):
        return dict(loss=self.loss, err1=self.err1, err5=self.err5, n=self.n, steps=self.steps)


class _Interrupts:
    """Turn the first Ctrl-C into a request to stop after the current step."""

    def __init__(self, progress):
        self.requested = False
        self.progress = progress
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.progress.print("\nCtrl-C: stopping after this step and saving a checkpoint "
                            "(press Ctrl-C again to abort without saving)")

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: plain KeyboardInterrupt handling
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class Trainer:
    def __init__(self, opts, out: Path, resume: ckpt.Checkpoint | None = None, stream=None,
                 max_steps=None, log_every=50):
        from .backends import get_backend

        self.opts = opts
        self.out = Path(out)
        self.stream = stream or sys.stdout
        self.max_steps = max_steps
        self.log_every = int(log_every)
        self.progress = Progress(self.stream, log_every=self.log_every)
        self.config = ev.run_config(opts)
        self.backend = get_backend(None if opts["backend"] == "auto" else opts["backend"])

        self.train_set, classes = ev.open_split(opts["source"], "train")
        self.val_set, _ = ev.open_split(opts["source"], "val")  # labels follow train's classes
        self.classes = classes
        self.num_classes = len(classes)
        self.net = ev.build_net(opts, self.backend, num_classes=self.num_classes)
        self.towers = int(getattr(self.config, "towers", 1) or 1)

        if resume is not None:
            self.net.load_state_dict(resume.params)
            m = resume.meta
            self.mean = None if m.get("mean") is None else np.asarray(m["mean"], np.float32)
            self.epoch, self.batch, self.step = int(m["epoch"]), int(m["batch"]), int(m["step"])
            self.lr = float(m["lr"])
            self.schedule_state = m.get("schedule_state", {})
            self.history = list(m.get("history", []))
            self.epoch_avg = _Averages(m.get("epoch_sums"))
            self.data_wait_total = float(m.get("data_wait", 0.0))
            self.elapsed_before = float(m.get("elapsed", 0.0))
            self.net.load_optimizer_state(resume.velocities)
        else:
            self.mean = self._channel_mean()
            self.epoch = self.batch = self.step = 0
            self.lr = float(opts["lr"])
            self.schedule_state = {}
            self.history = []
            self.epoch_avg = _Averages()
            self.data_wait_total = 0.0
            self.elapsed_before = 0.0
        self.schedule = Schedule(opts["schedule"], opts["lr_steps"], opts["plateau_patience"],
                                 opts["max_lr_drops"], self.schedule_state,
                                 decay=float(opts["lr_decay"]))
        self.last_saved_step = self.step if resume is not None else None
        self._in_update = False
        self._loaders = {}
        self.metrics_path = self.out / "metrics.jsonl"

    # ---- setup helpers ------------------------------------------------------------------

    def _channel_mean(self):
        """Per-channel mean (RGB in [0, 1]) subtracted from inputs; stored in the checkpoint.

        The config's [input] mean: "dataset" (the training images' mean, the paper's
        choice), a list of three numbers, or "none".
        """
        from . import data

        spec = config_section(self.config, "input").get("mean", "dataset")
        if isinstance(spec, (list, tuple)):
            return np.asarray(spec, dtype=np.float32)
        if spec in (None, "none", False):
            return None
        # A fixed random sample of 500 training images is plenty for three numbers.
        return np.asarray(data.compute_channel_mean(self.train_set, self.opts["resize"],
                                                    samples=500, seed=int(self.opts["seed"])),
                          dtype=np.float32)

    def _loader(self, train, ten_crop=False):
        """The run's loaders, made once (worker processes are kept between epochs)."""
        key = (train, ten_crop)
        if key not in self._loaders:
            self._loaders[key] = self._make_loader(train, ten_crop)
        return self._loaders[key]

    def close_loaders(self):
        for loader in self._loaders.values():
            getattr(loader, "close", lambda: None)()
        self._loaders.clear()

    def _make_loader(self, train, ten_crop=False):
        o = self.opts
        return ev.make_loader(
            self.train_set if train else self.val_set, batch_size=int(o["batch_size"]),
            train=train, crop=o["crop"], resize=o["resize"], mean=self.mean,
            seed=int(o["seed"]), workers=int(o["workers"]), ten_crop=ten_crop,
            limit=o["limit_train"] if train else o["limit_val"], pca_noise=float(o["pca_noise"]),
            flip=bool(o.get("flip", True)))

    # ---- state -------------------------------------------------------------------------

    def meta(self, elapsed):
        return {
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "lr": self.lr,
            "schedule_state": self.schedule.state, "options": self.opts,
            "num_classes": self.num_classes, "classes": self.classes,
            "mean": None if self.mean is None else [float(v) for v in self.mean],
            "history": self.history, "epoch_sums": self.epoch_avg.state(),
            "data_wait": self.data_wait_total, "elapsed": elapsed,
            "towers": self.towers, "first_conv": self.first_conv_name(),
            "rng": {"kind": "pure function of (seed, epoch, step/index)",
                    "seed": int(self.opts["seed"]),
                    "dropout_seed_of_step": "splitmix64(seed, step)"},
            "saved_at": _dt.datetime.now().isoformat(timespec="seconds"),
        }

    def save(self, elapsed):
        """Write the checkpoint, unless a parameter went NaN/inf (then the old one stays)."""
        params = self.net.state_dict()        # grouped single-device layout, NumPy
        velocities = self.net.optimizer_state()
        for name, a in list(params.items()) + list(velocities.items()):
            if not np.isfinite(a).all():
                raise TrainingDiverged(f"{name} holds NaN/inf values after step {self.step}")
        path = ckpt.save(self.out / ckpt.FILENAME, params, velocities, self.meta(elapsed))
        self.last_saved_step = self.step
        return path

    def first_conv_name(self):
        """The state_dict name of the first convolution's weights (for the filter picture)."""
        for layer in self.net.config.layers:
            if layer.type == "conv":
                return f"{layer.name}.w"
        return None

    # ---- metrics -----------------------------------------------------------------------

    def _prepare_metrics(self):
        """On resume, drop records from after the checkpoint (they will be redone)."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.metrics_path.exists():
            keep = []
            for line in self.metrics_path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if self.last_saved_step is not None and int(rec.get("step", 0)) <= self.step \
                        and rec.get("kind") in ("train", "epoch", "config"):
                    keep.append(line)
            self.metrics_path.write_text("".join(k + "\n" for k in keep))
        self._metrics = open(self.metrics_path, "a", buffering=1)

    def log(self, **rec):
        self._metrics.write(json.dumps(rec, default=ckpt._json_default) + "\n")

    # ---- training ----------------------------------------------------------------------

    def _sgd(self):
        o = self.opts
        self.net.sgd_step(self.lr, momentum=float(o["momentum"]),
                          weight_decay=float(o["weight_decay"]))

    def _train_step(self, x, labels):
        from .ops.softmax import topk_errors

        be = self.backend
        lab = be.asarray(labels, dtype=np.int32)
        seed = step_seed(self.opts["seed"], self.step)
        loss, logits = self.net.train_step_grads(x, lab, seed=seed)
        loss = float(loss)
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss is {loss} at step {self.step + 1} (epoch "
                                   f"{self.epoch + 1}, batch {self.batch + 1}, lr {self.lr:g})")
        k5 = min(5, self.num_classes)
        e1, e5 = topk_errors(be, logits, lab, ks=(1, k5))
        self._in_update = True  # until the step counters match the parameters again
        self._sgd()
        return loss, int(e1), int(e5)

    def _evaluate(self, ten_crop=False):
        return ev.evaluate(self.net, self._loader(train=False, ten_crop=ten_crop),
                           ten_crop=ten_crop)

    def run(self):
        try:
            return self._run()
        finally:
            self.close_loaders()

    def _run(self):
        o = self.opts
        epochs = int(o["epochs"])
        t_start = time.monotonic()
        elapsed = lambda: self.elapsed_before + time.monotonic() - t_start  # noqa: E731
        self._prepare_metrics()
        p = self.progress
        if self.step == 0:
            self.log(kind="config", step=0, options=o, num_classes=self.num_classes,
                     params=int(self.net.num_params()), backend=self.backend.name)
        p.print(f"pyalexnet.train: {o['config']} ({self.net.num_params():,} parameters) on "
                f"{ev.describe_source(o['source'])}: {len(self.train_set)} train / "
                f"{len(self.val_set)} held-out images, {self.num_classes} classes; backend "
                f"{self.backend.name}; output {self.out}")
        if self.step:
            p.print(f"resuming at step {self.step} (epoch {self.epoch + 1}, batch {self.batch}), "
                    f"lr {self.lr:g}")
        try:
            with _Interrupts(p) as irq:
                try:
                    status, last_val = self._epochs(epochs, elapsed, irq)
                except KeyboardInterrupt:
                    p.close_line()
                    if self._in_update:
                        # Some tensors got this step's update and some did not: saving that
                        # would make a checkpoint no uninterrupted run ever passes through.
                        print("interrupted in the middle of a parameter update: not saving; "
                              f"the last checkpoint (step {self.last_saved_step}) is kept",
                              file=sys.stderr)
                        return EXIT_INTERRUPTED
                    status, last_val = "interrupted", None
            if status == "interrupted":
                path = self.save(elapsed())
                p.print(f"interrupted: saved {path} at step {self.step} (epoch {self.epoch + 1}, "
                        f"batch {self.batch}); continue with --resume {self.out}")
                self._draw_pictures()
                return EXIT_INTERRUPTED
            if status == "max_steps":
                path = self.save(elapsed())
                p.print(f"reached --max-steps {self.max_steps}: saved {path}")
            self._finish(last_val, elapsed)
            return 0
        except TrainingDiverged as e:
            p.close_line()
            saved = (f"the last good checkpoint is {self.out / ckpt.FILENAME} (step "
                     f"{self.last_saved_step})" if self.last_saved_step is not None
                     else "no checkpoint was written before it")
            print(f"error: training diverged: {e}. Stopped; {saved}. Try a smaller --lr or "
                  "--bias-init caffe.", file=sys.stderr)
            self.log(kind="diverged", step=self.step + 1, epoch=self.epoch, message=str(e))
            return EXIT_NAN
        finally:
            self._metrics.close()

    def _epochs(self, epochs, elapsed, irq):
        o = self.opts
        p = self.progress
        last_val = None
        while self.epoch < epochs:
            if self.max_steps is not None and self.step >= self.max_steps:
                return "max_steps", last_val
            if o["schedule"] == "step":
                lr = self.schedule.lr_at_epoch_start(float(o["lr"]), self.epoch)
                if lr != self.lr and self.batch == 0:
                    p.print(f"epoch {self.epoch + 1}: lr {self.lr:g} -> {lr:g} (--lr-steps)")
                self.lr = lr
            loader = self._loader(train=True)
            # mid-epoch resume: order and augmentation are functions of (seed, epoch, image),
            # so starting at the saved batch puts the run exactly where it stopped
            loader.set_epoch(self.epoch, start_batch=self.batch)
            batches = len(loader) if hasattr(loader, "__len__") else None
            if batches == 0:
                raise SystemExit(f"error: {getattr(loader, 'num_samples', '?')} training "
                                 f"images make no full batch of {o['batch_size']}; lower "
                                 "--batch-size or raise --limit-train")
            it = iter(loader)
            window, t_win, wait_win = _Averages(), time.monotonic(), 0.0
            t_epoch = time.monotonic()
            while True:
                if self.max_steps is not None and self.step >= self.max_steps:
                    return "max_steps", last_val
                t0 = time.monotonic()
                try:
                    x, labels = next(it)
                except StopIteration:
                    break
                wait = time.monotonic() - t0
                self.data_wait_total += wait
                wait_win += wait
                n = len(labels)
                loss, e1, e5 = self._train_step(x, labels)  # sets _in_update
                self.step += 1
                self.batch += 1
                self.epoch_avg.add(loss, n, e1, e5)
                self._in_update = False
                window.add(loss, n, e1, e5)
                now = time.monotonic()
                ips = window.n / max(1e-9, now - t_win)
                el, t1, t5 = self.epoch_avg.means()
                p.update(epoch=self.epoch, epochs=epochs, batch=self.batch, batches=batches,
                         step=self.step, images_per_s=ips, loss=el, top1=t1, top5=t5,
                         lr=self.lr, data_wait=self.data_wait_total, elapsed=elapsed())
                if self.step % self.log_every == 0:
                    wl, w1, w5 = window.means()
                    self.log(kind="train", epoch=self.epoch, step=self.step,
                             x=self.epoch + self.batch / batches if batches else self.epoch,
                             loss=wl, top1=w1, top5=w5, lr=self.lr, images_per_s=ips,
                             data_wait=wait_win, time=elapsed())
                    window, t_win, wait_win = _Averages(), time.monotonic(), 0.0
                if irq.requested:
                    return "interrupted", last_val
            # ---- end of epoch
            train_loss, train_top1, train_top5 = self.epoch_avg.means()
            rec = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.step,
                   "train_loss": train_loss, "train_top1": train_top1, "train_top5": train_top5,
                   "lr": self.lr, "epoch_seconds": time.monotonic() - t_epoch}
            ee = int(o["eval_every"])
            val = None
            if ee and ((self.epoch + 1) % ee == 0 or self.epoch + 1 == epochs):
                val = self._evaluate()
                last_val = (self.step, val)
                rec.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])
            rec["time"] = elapsed()
            p.close_line()
            msg = (f"epoch {self.epoch + 1}/{epochs}: train loss {train_loss:.4f} "
                   f"top-1 err {100 * train_top1:.1f}%")
            if val is not None:
                msg += (f" | held-out loss {val['loss']:.4f} top-1 err {100 * val['top1']:.2f}% "
                        f"top-5 err {100 * val['top5']:.2f}%")
            p.print(msg + f" | lr {self.lr:g} | {format_duration(elapsed())}")
            new_lr = self.schedule.after_epoch(self.lr, self.epoch + 1,
                                               None if val is None else val["top1"])
            if new_lr is not None and new_lr != self.lr:
                p.print(f"held-out error has not improved for {self.schedule.patience} "
                        f"evaluation(s): lr {self.lr:g} -> {new_lr:g}")
                self.lr = new_lr
            # Log before saving: a record newer than the checkpoint is dropped on resume.
            self.log(**rec)
            self.history.append(rec)
            self.epoch += 1
            self.batch = 0
            self.epoch_avg = _Averages()
            self.save(elapsed())
        return "done", last_val

    def _finish(self, last_val, elapsed):
        p = self.progress
        results = {"step": self.step, "epoch": self.epoch}
        if last_val is not None and last_val[0] == self.step:
            centre = last_val[1]  # measured after the last step already
        else:
            centre = self._evaluate()
        results["centre_crop"] = centre
        p.print(ev.format_result(centre))
        if self.opts["ten_crop"]:
            ten = self._evaluate(ten_crop=True)
            results["ten_crop"] = ten
            p.print(ev.format_result(ten))
        results["time"] = elapsed()
        results["data_wait"] = self.data_wait_total
        self.log(kind="final", **results)
        (self.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        pics = self._draw_pictures()
        p.print(f"HELD-OUT TOP-1 ACCURACY: {100 * (1 - centre['top1']):.2f}% "
                f"({centre['images']} images, centre crop) after {self.step} steps in "
                f"{format_duration(elapsed())}; outputs in {self.out}"
                + (f" ({', '.join(x.name for x in pics)})" if pics else ""))
        return results

    def _draw_pictures(self):
        from . import plots

        out = []
        try:
            self._metrics.flush()
            epochs, steps = plots.read_metrics(self.metrics_path)
            out.append(plots.plot_curves(self.out / "curves.png", epochs, steps,
                                         title=f"{self.opts['config']} - {self.out.name}"))
            name = self.first_conv_name()
            if name is not None:
                # The grouped layout: tower A's filters first, then tower B's.
                w = self.net.state_dict()[name]
                out.append(plots.plot_filters(self.out / "filters.png", w, towers=self.towers))
        except Exception as e:  # pictures must never lose a finished run
            self.progress.print(f"warning: could not draw the pictures: {type(e).__name__}: {e}")
        return out


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


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


def main(argv=None, stream=None):
    args = build_parser().parse_args(argv)
    from .model import load_config

    resumed = None
    if args.resume:
        try:
            resumed = ckpt.load(args.resume)
        except ckpt.CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    config_name = args.config or (resumed.meta["options"]["config"] if resumed
                                  else DEFAULTS["config"])
    try:
        config = load_config(config_name)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.config = config_name
    opts = resolve_options(args, config, resumed.meta["options"] if resumed else None)
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
    out.mkdir(parents=True, exist_ok=True)
    if not args.out and resumed is None:
        _link_latest(out)
    max_steps = args.max_steps
    log_every = int(opts["log_every"])
    trainer = Trainer(opts, out, resume=resumed, stream=stream, max_steps=max_steps,
                      log_every=log_every)
    if resumed is not None and args.lr is not None:
        trainer.lr = float(args.lr)  # an explicit --lr replaces the checkpoint's current rate
    try:
        return trainer.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted; the checkpoint in {out} is from step {trainer.last_saved_step}",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
