"""Data sources: where a run's images come from, and opening their splits.

A source is a small JSON-able dict, so that a checkpoint can record it:
  {"kind": "builtin", "root": None|str}   the generated dataset (pyalexnet.data.builtin)
  {"kind": "folder",  "root": str}        ImageNet layout: root/train/<class>, root/val/<class>
  {"kind": "cifar",   "root": str}        CIFAR-10 python batches (val = the test batch)
Training and evaluation both open data through `open_split` and `make_loader`.
"""
from __future__ import annotations

from pathlib import Path

from .builtin import default_root, ensure_builtin_dataset
from .cifar import cifar10_dataset
from .folders import ImageFolder
from .loader import Loader

KINDS = ("builtin", "folder", "cifar")


def source_from_args(data=None, cifar=None, builtin_root=None):
    if data and cifar:
        raise SystemExit("error: give either --data or --cifar, not both")
    if cifar:
        return {"kind": "cifar", "root": str(Path(cifar).expanduser())}
    if data:
        return {"kind": "folder", "root": str(Path(data).expanduser())}
    return {"kind": "builtin", "root": builtin_root}


def describe_source(source):
    kind, root = source["kind"], source.get("root")
    if kind == "builtin":
        return f"the built-in dataset at {root if root is not None else default_root()}"
    if kind == "cifar":
        return f"CIFAR-10 at {root}"
    return f"image folders at {root}"


def open_split(source, split):
    """(dataset, class names) of the ``train`` or ``val`` split of ``source``."""
    kind = source["kind"]
    if kind == "cifar":
        ds = cifar10_dataset(source["root"], "train" if split == "train" else "test")
        return ds, list(ds.classes)
    if kind == "builtin":
        root = Path(ensure_builtin_dataset(source.get("root")))
    elif kind == "folder":
        root = Path(source["root"])
    else:
        raise ValueError(f"unknown data source {kind!r}: one of {', '.join(KINDS)}")
    train_classes = None
    if split != "train":
        # Labels follow the training set's class list, so val labels mean the same classes.
        train_classes = ImageFolder(root / "train").classes
    try:
        ds = ImageFolder(root / split, classes=train_classes)
    except ValueError as e:
        if train_classes is None or "not in the given class list" not in str(e):
            raise
        raise ValueError(f"{e}: the class folders of {root / split} must be among the "
                         f"{len(train_classes)} of {root / 'train'}") from None
    return ds, list(ds.classes)


def make_loader(dataset, *, batch_size, train, crop, resize, mean, seed=0, workers=0,
                ten_crop=False, limit=None, pca_noise=0.0, flip=True, shard=None):
    """A `Loader` with the options training and evaluation use (no augmentation unless
    ``train``)."""
    return Loader(dataset, batch_size=batch_size, train=train, crop=crop, resize=resize,
                  mean=mean, pca_noise=pca_noise if train else 0.0,
                  flip=flip if train else False, ten_crop=ten_crop and not train,
                  workers=workers, seed=seed, drop_last=train, limit=limit, shard=shard)
