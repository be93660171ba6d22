"""Evaluate a network: centre-crop and 10-crop top-1/top-5 error.

    python -m pyalexnet.evaluate runs/cifar-small-20260101-120000            # centre crop
    python -m pyalexnet.evaluate runs/latest/checkpoint.npz --ten-crop       # and 10 crops

10-crop (the paper's test protocol): the four corner crops and the centre crop of each
image, and their mirror images; the softmax outputs of the ten are averaged and the
average is ranked. By default the data are the held-out set of whatever the checkpoint was
trained on (the built-in dataset, an ImageNet-style folder, or CIFAR-10); --data / --cifar
/ --builtin choose another.

Data are opened through pyalexnet.data (`open_split`, `make_loader`), as in training.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from . import checkpoint as ckpt
from .cliargs import ArgumentParser
from .data import describe_source, make_loader, open_split, source_from_args
from .net import net_from_options

# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def evaluate(net, loader, ten_crop=False, chunk=None, progress=None):
    """Error rates of ``net`` over ``loader`` (with ``train=False`` forward passes).

    Returns {"loss", "top1", "top5", "images", "seconds", "ten_crop"} with errors as fractions.
    Centre crop: loader batches are (N, 3, c, c). 10-crop: (N, 10, 3, c, c); the crops go
    through the net in chunks of at most ``chunk`` images (default: the batch size)
    and their softmax outputs are averaged per image.
    """
    from .ops import softmax as sm

    be = net.backend
    t0 = time.perf_counter()
    loss_sum, err1, err5, n_total = 0.0, 0, 0, 0
    for x, labels in loader:
        labels = np.asarray(labels, dtype=np.int32)
        n = len(labels)
        if ten_crop:
            x = np.asarray(x)
            if x.ndim != 5:
                raise ValueError("10-crop evaluation needs (N, 10, 3, H, W) batches, got "
                                 f"{x.shape}")
            flat = x.reshape((-1,) + x.shape[2:])
            step = chunk or max(x.shape[1], n)
            probs = []
            for i in range(0, len(flat), step):
                logits = net.forward(flat[i:i + step], train=False)
                probs.append(_softmax(be.to_numpy(logits).astype(np.float64)))
            p = np.concatenate(probs).reshape(n, x.shape[1], -1).mean(axis=1)
            k5 = min(5, p.shape[1])
            e1, e5 = sm.topk_errors_reference(p, labels, (1, k5))
            loss_sum += float(-np.log(np.maximum(p[np.arange(n), labels], 1e-30)).sum())
        else:
            logits = net.forward(x, train=False)
            lab = be.asarray(labels, dtype=np.int32)
            loss, _ = sm.softmax_cross_entropy_forward(be, logits, lab)
            k5 = min(5, logits.shape[1])
            e1, e5 = sm.topk_errors(be, logits, lab, ks=(1, k5))
            loss_sum += float(loss) * n
        err1 += int(e1)
        err5 += int(e5)
        n_total += n
        if progress is not None:
            progress(n_total, err1, err5)
    if n_total == 0:
        raise ValueError("the evaluation set is empty")
    return {"loss": loss_sum / n_total, "top1": err1 / n_total, "top5": err5 / n_total,
            "images": n_total, "seconds": time.perf_counter() - t0, "ten_crop": bool(ten_crop)}


def format_result(r, what="held-out"):
    crops = "10 crops" if r["ten_crop"] else "centre crop"
    return (f"{what} ({crops}, {r['images']} images): top-1 accuracy {100 * (1 - r['top1']):.2f}% "
            f"| top-1 error {100 * r['top1']:.2f}% | top-5 error {100 * r['top5']:.2f}% "
            f"| loss {r['loss']:.4f}")


# --------------------------------------------------------------------------------------
# Networks from checkpoints
# --------------------------------------------------------------------------------------


def net_from_checkpoint(c: ckpt.Checkpoint, backend, devices=None):
    """The network a checkpoint holds, with its weights, on ``backend``."""
    net = net_from_options(c.meta["options"], backend, num_classes=c.meta.get("num_classes"),
                           devices=devices)
    net.load_state_dict(c.params)
    return net


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def build_parser():
    ap = ArgumentParser(
        prog="python -m pyalexnet.evaluate",
        description="Top-1/top-5 error of a checkpoint, centre crop and (with --ten-crop) "
                    "the paper's 10-crop average. The data default to the held-out split of "
                    "the data the checkpoint was trained on.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("checkpoint", help="checkpoint file, or a run directory holding checkpoint.npz")
    ap.add_argument("--data", metavar="DIR", default=None,
                    help="ImageNet-style root with train/ and val/ class folders "
                         "(default: the checkpoint's training data)")
    ap.add_argument("--cifar", metavar="DIR", default=None,
                    help="CIFAR-10 python batches (evaluates the test batch)")
    ap.add_argument("--builtin", action="store_true",
                    help="evaluate on the built-in generated dataset")
    ap.add_argument("--split", choices=("val", "train"), default="val",
                    help="which split to evaluate")
    ap.add_argument("--ten-crop", action="store_true",
                    help="also report 10-crop error (4 corners + centre, and their mirrors)")
    ap.add_argument("--backend", choices=("auto", "numpy", "emu", "cuda"), default="auto",
                    help="where to run (auto: cuda if a GPU is present, else numpy)")
    ap.add_argument("--devices", type=int, choices=(1, 2), default=None,
                    help="devices to split the net over (default: as trained)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="images per batch (default: the training batch size)")
    ap.add_argument("--workers", type=int, default=None,
                    help="data-loading worker processes (default: as trained)")
    ap.add_argument("--limit", type=int, default=None, metavar="N",
                    help="evaluate only the first N images (default: all)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .backends import get_backend

    try:
        c = ckpt.load(args.checkpoint)
    except ckpt.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    opts = c.meta["options"]
    if args.builtin:
        source = {"kind": "builtin", "root": None}
    elif args.data or args.cifar:
        source = source_from_args(args.data, args.cifar)
    elif opts.get("source") is None:
        print(f"error: {args.checkpoint} holds converted weights and no training data to "
              "evaluate on; give --data DIR, --cifar DIR or --builtin", file=sys.stderr)
        return 2
    else:
        source = opts["source"]
    be = get_backend(None if args.backend == "auto" else args.backend)
    try:
        net = net_from_checkpoint(c, be, devices=args.devices)
        ds, classes = open_split(source, args.split)
    except (ValueError, OSError) as e:
        print(f"error: {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    if c.meta.get("num_classes") and len(classes) != int(c.meta["num_classes"]):
        print(f"error: the checkpoint has {c.meta['num_classes']} classes but "
              f"{describe_source(source)} has {len(classes)}", file=sys.stderr)
        return 2
    mean = c.meta.get("mean")
    mean = None if mean is None else np.asarray(mean, dtype=np.float32)
    results = []
    for ten in ([False, True] if args.ten_crop else [False]):
        loader = make_loader(ds, batch_size=args.batch_size or int(opts["batch_size"]),
                             train=False, crop=int(opts["crop"]), resize=int(opts["resize"]),
                             mean=mean, workers=opts.get("workers", 0) if args.workers is None
                             else args.workers, ten_crop=ten, limit=args.limit,
                             seed=int(opts.get("seed", 0)))  # --limit: the subset training used
        try:
            r = evaluate(net, loader, ten_crop=ten)
        finally:
            getattr(loader, "close", lambda: None)()
        results.append(r)
        if not args.json:
            print(format_result(r, f"{args.split} of {describe_source(source)}"))
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt.resolve(args.checkpoint)), "step": c.step,
                          "epoch": c.epoch, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
