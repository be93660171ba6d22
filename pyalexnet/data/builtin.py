"""A built-in image dataset, generated on first use, so training runs without downloads.

Ten procedurally drawn classes -- five shapes (circle, square, triangle, cross, ring) and
five textures (horizontal, vertical and diagonal stripes, checkerboard, dots) -- each with
random colours, position, size, rotation, line period, a two-colour gradient background and
pixel noise. Foreground and background colours are drawn independently of the class, so
colour or mean brightness says nothing about it, and shapes move and turn, so no fixed
pixel template fits: a linear model on raw pixels does poorly while a small convnet on
32x32 crops learns it well.

The images are written as real JPEG files in the ImageNet layout, root/train/<class>/*.jpg
and root/val/<class>/*.jpg, so the real loading path (ImageFolder, Pillow decoding,
worker processes) runs on them. Train with ``resize=image_size`` (40) and ``crop=32``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "cross", "ring",
          "hstripes", "vstripes", "dstripes", "checker", "dots")
MANIFEST = "pyalexnet_builtin.json"
# Bump when the drawing code changes, so stale caches are regenerated.
FORMAT_VERSION = 1
JPEG_QUALITY = 90
CHUNK = 250                    # images drawn at once
ENV_DATA = "PYALEXNET_DATA"


def default_root():
    """$PYALEXNET_DATA/builtin if that variable is set, else ~/.cache/pyalexnet/builtin."""
    base = os.environ.get(ENV_DATA)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "pyalexnet") / "builtin"


def _luma(c):
    return c @ np.array([0.299, 0.587, 0.114])


def _colours(n, rng):
    """(n, 3) background and foreground colours, the foreground at least 60 luma levels
    from its background. Drawn independently of the class: neither says anything about it."""
    bg = rng.uniform(0, 255, (n, 3))
    fg = rng.uniform(0, 255, (n, 3))
    bad = np.abs(_luma(fg) - _luma(bg)) < 60
    while bad.any():                        # redraw the few that are too alike
        fg[bad] = rng.uniform(0, 255, (bad.sum(), 3))
        bad = np.abs(_luma(fg) - _luma(bg)) < 60
    return bg, fg


def _frac(t):
    return t - np.floor(t)                  # t mod 1; much faster than % on floats


def _square_wave(t, period, duty):
    """Antialiased 0/1 stripes along coordinate ``t``: 1 on a fraction ``duty`` of each period."""
    dist = np.abs(_frac(t / period) - 0.5) * period     # distance from the stripe centre
    return np.clip(duty * period / 2 - dist + 0.5, 0.0, 1.0)


def _uniform(rng, lo, hi, n):
    """n per-image parameters, shaped to broadcast against (n, size, size) images."""
    return rng.uniform(lo, hi, (n, 1, 1)).astype(np.float32)


def _masks(kind, n, size, rng):
    """Foreground coverage in [0, 1] (antialiased), shape (n, size, size), of n drawings
    of class ``kind``, all drawn at once (per-image work in NumPy is mostly overhead)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if kind in SHAPES[:5]:
        cx, cy = (size / 2 + _uniform(rng, -0.1, 0.1, n) * size for _ in range(2))
        theta = _uniform(rng, 0, 2 * np.pi, n)
        r = _uniform(rng, 0.17, 0.27, n) * size
    else:
        # Textures cover the whole image; the phase moves them, the angle is the class.
        cx, cy = (_uniform(rng, 0, size, n) for _ in range(2))
        jitter = np.deg2rad(20 if kind == "checker" else 12)
        theta = _uniform(rng, -jitter, jitter, n)
        if kind == "vstripes":
            theta += np.pi / 2
        elif kind == "dstripes":
            theta += rng.choice(np.float32([np.pi / 4, -np.pi / 4]), (n, 1, 1))
        elif kind == "dots":
            theta = _uniform(rng, 0, np.pi, n)
        period = _uniform(rng, 0.14, 0.24, n) * size
    dx, dy = x - cx, y - cy
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy                 # rotated coordinates
    if kind == "circle":
        d = np.sqrt(u * u + v * v) - r                   # signed distance, < 0 inside
    elif kind == "square":
        d = np.maximum(np.abs(u), np.abs(v)) - 0.85 * r
    elif kind == "triangle":
        d = np.full_like(u, -np.inf)
        for a in np.pi / 2 + np.arange(3) * (2 * np.pi / 3):    # the three edge normals
            d = np.maximum(d, np.float32(np.cos(a)) * u + np.float32(np.sin(a)) * v)
        d -= 0.55 * r
    elif kind == "cross":
        w = 0.3 * r
        au, av = np.abs(u), np.abs(v)
        d = np.minimum(np.maximum(au - r, av - w), np.maximum(au - w, av - r))   # two bars
    elif kind == "ring":
        d = np.abs(np.sqrt(u * u + v * v) - r) - np.maximum(0.22 * r, 1.2)
    elif kind in ("hstripes", "vstripes", "dstripes"):
        return _square_wave(v, period, _uniform(rng, 0.35, 0.65, n))
    elif kind == "checker":
        a, b = _square_wave(u, period, 0.5), _square_wave(v, period, 0.5)
        return a * (1 - b) + b * (1 - a)
    elif kind == "dots":
        fu = (_frac(u / period) - 0.5) * period
        fv = (_frac(v / period) - 0.5) * period
        d = np.sqrt(fu * fu + fv * fv) - _uniform(rng, 0.2, 0.32, n) * period
    else:
        raise ValueError(f"unknown class {kind!r}; the classes are {SHAPES}")
    return np.clip(0.5 - d, 0.0, 1.0)


def draw(kind, n, size, rng):
    """n uint8 (n, size, size, 3) RGB images of class ``kind``."""
    # Composed channel-first, so the per-pixel mask broadcasts over long contiguous rows.
    bg, fg = (c[:, :, None, None].astype(np.float32) for c in _colours(n, rng))
    # Background: a gentle gradient from bg towards a nearby colour, in a random direction.
    phi = _uniform(rng, 0, 2 * np.pi, n)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    t = (np.cos(phi) * x + np.sin(phi) * y)[:, None]
    img = t * rng.uniform(-40, 40, (n, 3, 1, 1)).astype(np.float32)
    img += bg
    img += _masks(kind, n, size, rng)[:, None] * (fg - img)   # foreground over background
    # Uniform pixel noise (cheaper to draw than Gaussian), standard deviation 2..10.
    noise = rng.random(img.shape, dtype=np.float32) - np.float32(0.5)
    noise *= _uniform(rng, 2, 10, n)[:, None] * np.float32(np.sqrt(12))
    img += noise
    img += np.float32(0.5)                  # the uint8 cast truncates; this makes it round
    np.clip(img, 0, 255, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(0, 2, 3, 1))


def _params(num_classes, train_per_class, val_per_class, image_size, seed):
    return {"format": FORMAT_VERSION, "num_classes": num_classes, "train_per_class": train_per_class,
            "val_per_class": val_per_class, "image_size": image_size, "seed": seed}


def _read_manifest(root):
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _matches(manifest, params):
    return manifest is not None and all(manifest.get(k) == v for k, v in params.items())


def _write_chunk(folder, kind, split, split_id, k, start, count, params):
    """Images start..start+count-1 of one class and split. Each chunk has its own random
    stream (seed, split, class, chunk), so the output does not depend on how chunks are
    scheduled, and train and val never share an image."""
    rng = np.random.default_rng([params["seed"], split_id, k, start // CHUNK])
    out = folder / split / kind
    for i, img in enumerate(draw(kind, count, params["image_size"], rng), start):
        # 4:4:4 chroma: tiny images would lose their colour edges to subsampling.
        Image.fromarray(img).save(out / f"{kind}_{i:05d}.jpg", format="JPEG",
                                  quality=JPEG_QUALITY, subsampling=0)


def _generate(folder, params):
    """Write the whole dataset into ``folder`` (which exists and is empty)."""
    classes = SHAPES[:params["num_classes"]]
    chunks = []
    for split_id, (split, count) in enumerate((("train", params["train_per_class"]),
                                               ("val", params["val_per_class"]))):
        for k, kind in enumerate(classes):
            (folder / split / kind).mkdir(parents=True)
            chunks += [(folder, kind, split, split_id, k, start, min(CHUNK, count - start), params)
                       for start in range(0, count, CHUNK)]
    # Threads, not processes: NumPy's array loops, Pillow's JPEG encoder and file writes
    # all release the GIL, and threads need no __main__ guard or start-up imports.
    threads = min(len(chunks), os.cpu_count() or 1, 8)
    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(_write_chunk, *c) for c in chunks]:
            f.result()
    manifest = dict(params, classes=list(classes))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def ensure_builtin_dataset(root=None, num_classes=10, train_per_class=1000, val_per_class=200,
                           image_size=40, seed=0):
    """Make sure the built-in dataset with these parameters exists under ``root``; return root.

    Generated on first use (the default 12,000 images of 40x40 take about 5 s of CPU time,
    shared among up to 8 threads) into a temporary folder beside ``root`` and renamed into
    place when complete, so a crash leaves no half-written dataset.
    ``root/pyalexnet_builtin.json`` records the parameters; a dataset without it, or made
    with other parameters, is replaced. A folder that holds anything but train/, val/ and
    that file is never deleted: that is an error.
    Default root: $PYALEXNET_DATA/builtin, or ~/.cache/pyalexnet/builtin.
    """
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be between 2 and {len(SHAPES)}, got {num_classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError("train_per_class and val_per_class must be >= 1")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    root = Path(root).expanduser() if root is not None else default_root()
    params = _params(num_classes, train_per_class, val_per_class, image_size, seed)
    if _matches(_read_manifest(root), params):
        return root
    if root.exists():
        foreign = sorted(set(os.listdir(root)) - {"train", "val", MANIFEST})
        if foreign:
            raise FileExistsError(
                f"{root} exists and holds {foreign[:5]}, so it is not a pyalexnet built-in "
                "dataset; pass another root (or set $PYALEXNET_DATA) rather than have it deleted")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _generate(tmp, params)
        _replace(tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _replace(new, root, params):
    """Move the finished dataset ``new`` to ``root``, replacing a stale one there.

    Two processes may generate at once: whoever renames second finds root taken and, if the
    dataset there is the one it wanted, simply uses it.
    """
    if _matches(_read_manifest(root), params):
        return                              # another process finished the same dataset first
    if root.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        try:
            os.rename(root, trash / "data")
        except FileNotFoundError:
            pass                            # someone else moved it away just now
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(new, root)
    except OSError:
        if not _matches(_read_manifest(root), params):
            raise
