"""CIFAR-10 from its "python version" batches (cifar-10-python.tar.gz).

Each batch is a pickled dict: ``data`` uint8 (10000, 3072), a row being the 1024 red, then
1024 green, then 1024 blue values of a 32x32 image in row-major order; ``labels`` a list
of ints 0..9. ``batches.meta`` holds ``label_names``. The files were written by Python 2,
so keys come back as bytes.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from .folders import ArrayDataset

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SPLIT_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
SPLIT_ALIASES = {"val": "test", "valid": "test", "validation": "test"}
SUBDIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: plain containers and NumPy arrays, nothing that could
    run code (a pickle from the internet can otherwise execute anything)."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")


def _unpickle(data, what):
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"{what} is not a CIFAR-10 python batch: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{what} is not a CIFAR-10 python batch (a {type(obj).__name__})")
    # Python 2 pickles give bytes keys; re-pickled copies may have str keys.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _find_source(root):
    """A function name -> bytes reading from the batch folder or the .tar.gz archive."""
    root = Path(root).expanduser()
    for folder in (root, root / SUBDIR):
        if (folder / "data_batch_1").exists() or (folder / "test_batch").exists():
            def read_file(name, folder=folder):
                path = folder / name
                return path.read_bytes() if path.exists() else None
            return read_file, folder
    archive = root if root.is_file() else root / ARCHIVE
    if archive.is_file():
        members = {}

        def read(name):
            # One pass over the archive for all batches: a gzip stream cannot seek.
            if not members:
                with tarfile.open(archive, "r:gz") as tar:
                    for m in tar:
                        if m.isfile() and m.name.startswith(SUBDIR + "/"):
                            members[m.name[len(SUBDIR) + 1:]] = tar.extractfile(m).read()
            return members.get(name)
        return read, archive
    raise FileNotFoundError(
        f"no CIFAR-10 batches in {root} (looked for data_batch_1..5 / test_batch in {root} and "
        f"{root / SUBDIR}, and for {root / ARCHIVE}); download {CIFAR10_URL} and extract it "
        f"there (tar xzf {ARCHIVE})")


def load_cifar10(root, split="train"):
    """(images uint8 (N, 32, 32, 3) RGB, labels int64 (N,), classes list of 10 names).

    ``root``: the folder holding data_batch_1..5 and test_batch, or its parent (holding
    cifar-10-batches-py/), or the cifar-10-python.tar.gz archive or its folder.
    ``split``: "train" (50000 images) or "test" (10000; "val" is accepted for it).
    """
    key = SPLIT_ALIASES.get(split, split)
    if key not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test' (or 'val'), got {split!r}")
    read, where = _find_source(root)
    images, labels = [], []
    for name in SPLIT_FILES[key]:
        data = read(name)
        if data is None:
            raise FileNotFoundError(f"CIFAR-10 batch {name} is missing from {where} (split "
                                    f"{split!r} needs {', '.join(SPLIT_FILES[key])}); "
                                    f"re-extract {CIFAR10_URL}")
        batch = _unpickle(data, f"{where}/{name}")
        try:
            x = np.asarray(batch["data"], dtype=np.uint8)
            y = np.asarray(batch["labels"], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"{where}/{name} has no {e} entry; not a CIFAR-10 batch") from e
        if x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
            raise ValueError(f"{where}/{name}: data {x.shape} and {len(y)} labels; expected "
                             "(N, 3072) and N labels")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"{where}/{name}: labels outside 0..9")
        # Rows are planar R, G, B; the rest of pyalexnet uses HWC.
        images.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y)
    classes = list(CIFAR10_CLASSES)
    meta = read("batches.meta")
    if meta is not None:
        names = _unpickle(meta, f"{where}/batches.meta").get("label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), classes


def cifar10_dataset(root, split="train"):
    """``load_cifar10`` wrapped as an ArrayDataset for ``Loader``."""
    return ArrayDataset(*load_cifar10(root, split))
