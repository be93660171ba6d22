"""A run's options: the command line, the checkpoint being resumed, the config and the
built-in defaults, merged into one dict (which the checkpoint stores)."""
from __future__ import annotations

from ..data import source_from_args

# Training options and their built-in defaults. ``None`` in the parser means "not given on
# the command line": the value then comes from the checkpoint (when resuming), then the
# config, then this table.
DEFAULTS = {
    "config": "cifar-small",
    "backend": "auto",
    "devices": 1,
    "parallel": "dp",    # under torchrun: data parallel, or "owt" (the one weird trick)
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
    "cuda_graph": False,
    "precision": "fp32",
    "conv_algo": "gemm",
    "init_from": None,
    "class_names": None,
    "stats_every": 0,
}
# Options that shape the loss trajectory: a resumed run keeps the checkpoint's values
# unless the command line says otherwise (--out, --resume and --max-steps are not carried).
CARRIED = ("config", "source", "backend", "devices", "epochs", "batch_size", "lr", "momentum",
           "weight_decay", "schedule", "lr_steps", "plateau_patience", "max_lr_drops", "lr_decay",
           "bias_init", "dropout_mode", "crop", "resize", "pca_noise", "flip", "workers", "seed",
           "eval_every", "limit_train", "limit_val", "ten_crop", "log_every", "parallel",
           "precision", "conv_algo", "stats_every")

# Where each option's default lives in a Config: (section, field).
CONFIG_FIELDS = {
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "momentum": ("train", "momentum"), "weight_decay": ("train", "weight_decay"),
    "schedule": ("train", "lr_schedule"), "lr_steps": ("train", "lr_step_epochs"),
    "plateau_patience": ("train", "plateau_patience"), "max_lr_drops": ("train", "max_lr_drops"),
    "lr_decay": ("train", "lr_decay"),
    "crop": ("input", "size"), "resize": ("input", "resize"), "pca_noise": ("input", "pca_noise"),
    "bias_init": ("init", "bias"),
}


def config_default(config, key, default=None):
    where = CONFIG_FIELDS.get(key)
    if where is None:
        return default
    v = getattr(getattr(config, where[0]), where[1])
    return default if v is None else v


def parse_lr_steps(s) -> str:
    """Comma-separated increasing positive epoch numbers, normalised ("30,60")."""
    try:
        steps = [int(t) for t in str(s).replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"must be comma-separated epoch numbers such as 30,60,80, "
                         f"got {s!r}") from None
    if any(e < 1 for e in steps) or steps != sorted(set(steps)):
        raise ValueError(f"must be increasing positive epoch numbers, got {s!r}")
    return ",".join(map(str, steps))


def resolve_options(args: dict, config, resumed: dict | None) -> dict:
    """Merge the given options (None = not given), a checkpoint's options and the config's
    defaults into one dict."""
    given = {k: v for k, v in args.items() if v is not None}
    opts = {}
    for key, default in DEFAULTS.items():
        if key in given:
            opts[key] = given[key]
        elif resumed is not None and key in CARRIED and key in resumed:
            opts[key] = resumed[key]
        else:
            opts[key] = config_default(config, key, default)
    if given.get("data") or given.get("cifar"):
        opts["source"] = source_from_args(given.get("data"), given.get("cifar"))
    elif resumed is not None:
        opts["source"] = resumed["source"]
    else:
        opts["source"] = source_from_args()
    if opts["pca_noise"] is None:
        opts["pca_noise"] = 0.0
    opts["flip"] = bool(config.input.flip)
    opts["crop"], opts["resize"] = int(opts["crop"]), int(opts["resize"])
    if opts["resize"] < opts["crop"]:
        raise SystemExit(f"error: --resize {opts['resize']} is smaller than --crop {opts['crop']}")
    if isinstance(opts["lr_steps"], (list, tuple)):
        opts["lr_steps"] = ",".join(str(int(e)) for e in opts["lr_steps"])
    opts["lr_steps"] = parse_lr_steps(opts["lr_steps"] or "")
    return opts
