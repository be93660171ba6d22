"""Setting a run up: its network, data, loaders and starting state, from the resolved
options and (when resuming) a checkpoint."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import checkpoint as ckpt
from .. import data
from ..classnames import read_class_names
from ..backends import get_backend
from ..net import net_from_options
from .state import TrainState


class Loaders:
    """The run's loaders, made once each (worker processes are kept between epochs)."""

    def __init__(self, opts, train_set, val_set, mean, world=None):
        self.opts, self.train_set, self.val_set, self.mean = opts, train_set, val_set, mean
        # data parallel: each rank reads its share of every training batch
        self.shard = None if world is None else (world.rank, world.size)
        self._made = {}

    def get(self, train, ten_crop=False):
        key = (train, ten_crop)
        if key not in self._made:
            o = self.opts
            self._made[key] = data.make_loader(
                self.train_set if train else self.val_set, batch_size=int(o["batch_size"]),
                train=train, crop=o["crop"], resize=o["resize"], mean=self.mean,
                seed=int(o["seed"]), workers=int(o["workers"]), ten_crop=ten_crop,
                limit=o["limit_train"] if train else o["limit_val"],
                pca_noise=float(o["pca_noise"]), flip=bool(o.get("flip", True)),
                shard=self.shard if train else None)
        return self._made[key]

    def close(self):
        for loader in self._made.values():
            getattr(loader, "close", lambda: None)()
        self._made.clear()


@dataclass
class Session:
    """Everything a training loop works on."""

    opts: dict
    net: object
    backend: object
    train_set: object
    val_set: object
    classes: list
    state: TrainState
    loaders: Loaders
    resumed: bool
    world: object = None  # pyalexnet.distributed.World of a multi-process run
    class_names: list = None  # display names of ``classes`` (--class-names)


def channel_mean(config, train_set, opts):
    """Per-channel mean (RGB in [0, 1]) subtracted from inputs; stored in the checkpoint.

    The config's [input] mean: "dataset" (the training images' mean, the paper's choice),
    a list of three numbers, or "none".
    """
    spec = config.input.mean
    if isinstance(spec, (list, tuple)):
        return np.asarray(spec, dtype=np.float32)
    if spec in (None, "none", False):
        return None
    # A fixed random sample of 500 training images is plenty for three numbers.
    return np.asarray(data.compute_channel_mean(train_set, opts["resize"], samples=500,
                                                seed=int(opts["seed"])), dtype=np.float32)


def rank_backends(backend, devices, world):
    """With CuPy under torchrun, the GPUs of this rank: local_rank x devices onwards."""
    if world is None or backend.name != "cuda":
        return backend
    first = world.local_rank * int(devices)
    bes = [get_backend("cuda", device=first + i) for i in range(int(devices))]
    return bes[0] if len(bes) == 1 else bes


def open_session(opts, resume=None, world=None) -> Session:
    """The network, data and state of a run (``resume``: a Checkpoint to continue;
    ``world``: this rank's place in a data-parallel run)."""
    backend = get_backend(None if opts["backend"] == "auto" else opts["backend"])
    train_set, classes = data.open_split(opts["source"], "train")
    val_set, _ = data.open_split(opts["source"], "val")  # labels follow train's classes
    net = net_from_options(opts, rank_backends(backend, opts["devices"], world),
                           num_classes=len(classes), world=world)
    if world is not None:
        backend = net.backend  # this rank's device
    if resume is not None:
        net.load_state_dict(resume.params)
        state = TrainState.from_meta(resume.meta)
        net.load_optimizer_state(resume.velocities)
    else:
        if opts.get("init_from"):
            init_from(net, opts["init_from"])
        state = TrainState(lr=float(opts["lr"]), mean=channel_mean(net.config, train_set, opts))
    if opts.get("class_names"):
        names = read_class_names(opts["class_names"], classes=classes)
    else:  # a resumed run keeps the names its checkpoint stores
        names = resume.meta.get("class_names") if resume is not None else None
    return Session(opts, net, backend, train_set, val_set, classes, state,
                   Loaders(opts, train_set, val_set, state.mean, world), resume is not None,
                   world, names)


def init_from(net, path):
    """Start from a checkpoint's weights (fine-tuning). Every parameter must fit, except the
    classifier's when the data have another number of classes: that one keeps its fresh
    initialisation. A ValueError names the key and the shapes."""
    c = ckpt.load(path)
    own = net.state_dict()
    config = net.config
    missing = sorted(set(own) - set(c.params))
    extra = sorted(set(c.params) - set(own))
    if missing or extra:
        raise ValueError(f"--init-from {path}: its weights do not fit config {config.name}: "
                         f"missing {', '.join(missing[:4]) or 'nothing'}, unexpected "
                         f"{', '.join(extra[:4]) or 'nothing'}")
    last = config.layers[-1].name
    new_classes = int(c.meta.get("num_classes") or config.num_classes) != config.num_classes
    merged = {}
    for k, a in own.items():
        theirs = np.asarray(c.params[k])
        if theirs.shape == a.shape:
            merged[k] = theirs
        elif new_classes and k.startswith(f"{last}."):
            merged[k] = a  # a new classifier for the new classes
        else:
            raise ValueError(f"--init-from {path}: {k} has shape {theirs.shape}, config "
                             f"{config.name} needs {a.shape}")
    net.load_state_dict(merged)
