"""What a trained net thinks of some images: the top-k classes with probabilities.

    python -m pyalexnet.predict photo.jpg holiday/ --checkpoint runs/latest --top 5
    python -m pyalexnet.predict cat.png --ten-crop --json

Each image goes through the checkpoint's own preprocessing (shorter side to its resize
size, centre square, mean subtracted) and its centre crop, or with --ten-crop the paper's
ten views (four corners, centre, and their mirrors) whose softmax outputs are averaged.
Class names come from the checkpoint. An unreadable image gets one line on stderr and the
others are still predicted; the exit status is then 2.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .cliargs import ArgumentParser
from .data.augment import UnreadableImageError, center_crop, load_image, ten_crops, to_chw_float
from .data.folders import _images_under


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def class_names(meta) -> list:
    n = int(meta.get("num_classes") or 0)
    return list(meta.get("class_names") or meta.get("classes") or [f"class {i}" for i in range(n)])


def image_paths(items):
    """(files, errors): the image files named or found below the folders named."""
    files, errors = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = _images_under(p)
            if not found:
                errors.append((str(p), f"no images in the folder {p}"))
            files.extend(found)
        elif p.is_file():
            files.append(str(p))
        else:
            errors.append((str(p), f"no such file or folder: {p}"))
    return files, errors


class Predictor:
    """A checkpoint's net and preprocessing; `probs(path)` gives its class probabilities."""

    def __init__(self, checkpoint, backend=None, ten_crop=False):
        from .backends import get_backend
        from .evaluate import net_from_checkpoint

        self.ckpt = ckpt.load(checkpoint)
        meta = self.ckpt.meta
        try:
            self.net = net_from_checkpoint(self.ckpt, get_backend(backend), devices=1)
        except ValueError as e:
            raise ValueError(f"checkpoint {ckpt.resolve(checkpoint)}: {e}") from None
        opts = meta["options"]
        self.crop, self.resize = int(opts["crop"]), int(opts["resize"])
        self.mean = None if meta.get("mean") is None else np.asarray(meta["mean"], np.float32)
        self.names = class_names(meta)
        self.ten_crop = ten_crop

    def probs(self, path):
        img = load_image(path, self.resize)
        views = ten_crops(img, self.crop) if self.ten_crop else center_crop(img, self.crop)[None]
        x = to_chw_float(views, self.mean)
        logits = self.net.backend.to_numpy(self.net.forward(x, train=False))
        return softmax(logits).mean(axis=0)

    def top(self, path, k):
        p = self.probs(path)
        order = np.argsort(-p, kind="stable")[:k]
        return [{"index": int(i), "class": self.names[i] if i < len(self.names) else str(i),
                 "prob": float(p[i])} for i in order]


def build_parser():
    ap = ArgumentParser(
        prog="python -m pyalexnet.predict",
        description="Top-k classes of images (files or folders) under a trained checkpoint.")
    ap.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    ap.add_argument("--checkpoint", default=os.path.join("runs", "latest"), metavar="PATH",
                    help="checkpoint file or run directory (default: runs/latest)")
    ap.add_argument("--top", type=int, default=5, metavar="K", help="classes to show (default: 5)")
    ap.add_argument("--ten-crop", action="store_true",
                    help="average the paper's 10 views (corners, centre, mirrors)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--backend", choices=("auto", "numpy", "emu", "cuda"), default="auto")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.top < 1:
        print(f"error: --top must be at least 1, got {args.top}", file=sys.stderr)
        return 2
    try:
        pred = Predictor(args.checkpoint, None if args.backend == "auto" else args.backend,
                         args.ten_crop)
    except (ckpt.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"error: checkpoint {args.checkpoint} has no {e} in its metadata", file=sys.stderr)
        return 2
    files, errors = image_paths(args.images)
    for _, msg in errors:
        print(f"error: {msg}", file=sys.stderr)
    results = []
    k = min(args.top, len(pred.names) or args.top)
    for f in files:
        try:
            top = pred.top(f, k)
        except UnreadableImageError as e:
            errors.append((f, str(e)))
            print(f"error: {e}", file=sys.stderr)
            continue
        results.append({"image": f, "top": top})
        if not args.json:
            print(f"{f}:" + "".join(f"\n  {100 * t['prob']:6.2f}%  {t['class']}" for t in top))
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt.resolve(args.checkpoint)),
                          "ten_crop": args.ten_crop, "predictions": results,
                          "errors": [{"image": f, "error": m} for f, m in errors]}))
    return 2 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
