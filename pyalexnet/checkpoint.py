"""Training checkpoints: one ``.npz`` file, written atomically, readable without pickle.

Layout of the archive (``numpy.savez``, every entry a plain array):

- ``param/<name>``    the network's parameters (``Net.state_dict()``, single-device layout)
- ``velocity/<name>`` the SGD momentum buffers, same names and shapes
- ``meta``            UTF-8 JSON (as a uint8 array): format version, epoch, step, batch within
                      the epoch, learning rate, schedule state, seeds, the resolved training
                      options and config, the metrics history.

No Python objects are pickled, so loading a checkpoint never runs code
(``numpy.load(..., allow_pickle=False)``).

Writing goes to a temporary file in the same directory, is flushed and fsync'd, then
``os.replace``d over the target: a crash at any moment leaves either the old checkpoint or
the new one, never a torn file.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "pyalexnet-checkpoint"
VERSION = 1
FILENAME = "checkpoint.npz"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a pyalexnet checkpoint."""


@dataclass
class Checkpoint:
    """Everything needed to continue training exactly where it stopped."""

    params: dict            # name -> np.ndarray
    velocities: dict        # name -> np.ndarray (may be empty for weights-only files)
    meta: dict = field(default_factory=dict)

    # Convenience accessors for the commonly used meta fields.
    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def resolve(path) -> Path:
    """A checkpoint path: a file, or a run directory holding ``checkpoint.npz``."""
    p = Path(path)
    if p.is_dir():
        p = p / FILENAME
    return p


def json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in a checkpoint's metadata")


def _fsync_dir(directory: Path):
    # Make the rename itself durable; not every platform lets you open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, write) -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename over it.

    If ``write`` raises (or the process dies), ``path`` is untouched and the temp file is
    removed (or left as an ignorable ``.tmp``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def save(path, params: dict, velocities: dict | None = None, meta: dict | None = None) -> Path:
    """Write a checkpoint atomically; ``path`` may be a file or a directory."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path / FILENAME
    arrays = {}
    for name, a in params.items():
        arrays[f"param/{name}"] = np.ascontiguousarray(a)
    for name, a in (velocities or {}).items():
        arrays[f"velocity/{name}"] = np.ascontiguousarray(a)
    m = {"format": FORMAT, "version": VERSION, **(meta or {})}
    text = json.dumps(m, default=json_default, allow_nan=True, sort_keys=True)
    arrays["meta"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def write(f):
        # savez into memory first: numpy's zip writer wants a seekable file, and a
        # single write keeps the window in which the temp file is incomplete short.
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        f.write(buf.getbuffer())

    return atomic_write_bytes(path, write)


def load(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save` (a file or a run directory)."""
    p = resolve(path)
    if not p.exists():
        where = f" (looked for {FILENAME} in the directory {path})" if Path(path).is_dir() else ""
        raise CheckpointError(f"no checkpoint at {p}{where}")
    size = p.stat().st_size
    if size == 0 or not zipfile.is_zipfile(p):
        what = "it is empty (0 bytes)" if size == 0 else "it is truncated or not a .npz file"
        raise CheckpointError(f"cannot read checkpoint {p}: {what}; a checkpoint is the .npz "
                              "file that pyalexnet.train or pyalexnet.convert writes")
    try:
        with np.load(p, allow_pickle=False) as z:
            files = list(z.files)
            if "meta" not in files:
                raise CheckpointError(f"{p} is not a pyalexnet checkpoint (no 'meta' entry)")
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            params = {k[len("param/"):]: z[k] for k in files if k.startswith("param/")}
            velocities = {k[len("velocity/"):]: z[k] for k in files if k.startswith("velocity/")}
    except CheckpointError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError, JSON errors...
        raise CheckpointError(f"cannot read checkpoint {p}: {type(e).__name__}: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a pyalexnet checkpoint (format {meta.get('format')!r})")
    if int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(f"{p} was written by a newer pyalexnet (checkpoint version "
                              f"{meta.get('version')}; this one reads up to {VERSION})")
    return Checkpoint(params=params, velocities=velocities, meta=meta)
