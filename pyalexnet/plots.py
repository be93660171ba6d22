"""Pictures of a training run, drawn with Pillow only (no matplotlib).

- :func:`plot_curves`: loss and top-1/top-5 error over training, as a PNG.
- :func:`plot_filters`: the first convolution layer's filters as a grid of small RGB
  images, each normalised to [0, 255] on its own and upscaled (the paper's Figure 3).

Both are written by ``python -m pyalexnet.train`` beside the checkpoint at the end of a
run; ``python -m pyalexnet.plots RUN_DIR`` redraws them from a run directory.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
AXIS = (60, 60, 60)
GRID = (225, 225, 225)
TEXT = (20, 20, 20)
COLORS = {
    "train loss (per log step)": (170, 195, 230),
    "train loss": (31, 119, 180),
    "val loss": (214, 39, 40),
    "train top-1": (31, 119, 180),
    "val top-1": (214, 39, 40),
    "val top-5": (255, 127, 14),
    "val top-1 (10 crops)": (148, 103, 189),
}


def _font(size=12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap font
        return ImageFont.load_default()


def _nice_step(span, target_ticks=5):
    if not span > 0 or not math.isfinite(span):
        return 1.0
    raw = span / target_ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _ticks(lo, hi):
    step = _nice_step(hi - lo)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + 1e-9 * step and len(ticks) < 50:
        if t >= lo - 1e-9 * step:
            ticks.append(t)
        t += step
    return ticks


def _fmt(v):
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.1e}"
    return f"{v:g}" if float(v).is_integer() else f"{v:.3g}"


def _chart(img, box, series, title, xlabel, ylabel, y_min=None, y_max=None, colors=None):
    """Draw line ``series`` [(label, xs, ys)] inside ``box`` = (left, top, right, bottom)."""
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(11)
    left, top, right, bottom = box
    pl, pt, pr, pb = left + 60, top + 30, right - 15, bottom - 45  # plot area
    draw.text(((left + right) // 2, top + 8), title, fill=TEXT, font=font, anchor="mt")
    draw.text(((pl + pr) // 2, bottom - 8), xlabel, fill=TEXT, font=small, anchor="mb")
    draw.text((left + 4, top + 8), ylabel, fill=TEXT, font=small, anchor="lt")

    pts = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys)
           if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if not pts:
        draw.rectangle((pl, pt, pr, pb), outline=AXIS)
        draw.text(((pl + pr) // 2, (pt + pb) // 2), "no data yet", fill=TEXT, font=font,
                  anchor="mm")
        return
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    ylo, yhi = min(p[1] for p in pts), max(p[1] for p in pts)
    x0 = min(x0, 0.0)
    if x1 <= x0:
        x1 = x0 + 1
    ylo = y_min if y_min is not None else ylo
    yhi = y_max if y_max is not None else yhi
    if yhi <= ylo:
        yhi = ylo + (abs(ylo) * 0.1 or 1.0)
    pad = 0.05 * (yhi - ylo)
    ylo_v = ylo if y_min is not None else ylo - pad
    yhi_v = yhi if y_max is not None else yhi + pad

    def px(x):
        return pl + (x - x0) / (x1 - x0) * (pr - pl)

    def py(y):
        return pb - (y - ylo_v) / (yhi_v - ylo_v) * (pb - pt)

    for t in _ticks(ylo_v, yhi_v):
        y = py(t)
        draw.line((pl, y, pr, y), fill=GRID)
        draw.text((pl - 6, y), _fmt(t), fill=TEXT, font=small, anchor="rm")
    for t in _ticks(x0, x1):
        x = px(t)
        draw.line((x, pt, x, pb), fill=GRID)
        draw.text((x, pb + 5), _fmt(t), fill=TEXT, font=small, anchor="mt")
    draw.rectangle((pl, pt, pr, pb), outline=AXIS)

    legend_y = pt + 6
    for label, xs, ys in series:
        color = (colors or COLORS).get(label, (0, 0, 0))
        line = [(px(x), py(y)) for x, y in zip(xs, ys)
                if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
        if not line:
            continue
        width = 1 if "per log step" in label else 2
        if len(line) > 1:
            draw.line(line, fill=color, width=width, joint="curve")
        if width > 1:
            for x, y in line:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
        # Legend entry, top right.
        draw.line((pr - 150, legend_y + 6, pr - 130, legend_y + 6), fill=color, width=3)
        draw.text((pr - 125, legend_y), label, fill=TEXT, font=small)
        legend_y += 16


def plot_curves(path, epochs: list, steps: list | None = None, title: str = "") -> Path:
    """Loss (left) and error in % (right) against epoch; returns ``path``.

    ``epochs``: per-epoch records with keys ``epoch`` (1-based count of finished epochs),
    ``train_loss``, ``train_top1``, ``val_loss``, ``val_top1``, ``val_top5`` (errors as
    fractions; missing keys are skipped). ``steps``: per-log-step records with ``x``
    (fractional epoch) and ``loss``.
    """
    w, h = 1200, 480
    img = Image.new("RGB", (w, h), BACKGROUND)
    if title:
        ImageDraw.Draw(img).text((w // 2, 6), title, fill=TEXT, font=_font(15), anchor="mt")

    def col(key, scale=1.0):
        xs, ys = [], []
        for r in epochs:
            v = r.get(key)
            if v is not None:
                xs.append(float(r["epoch"]))
                ys.append(float(v) * scale)
        return xs, ys

    loss_series = []
    if steps:
        loss_series.append(("train loss (per log step)", [float(s["x"]) for s in steps],
                            [float(s["loss"]) for s in steps]))
    loss_series += [("train loss", *col("train_loss")), ("val loss", *col("val_loss"))]
    err_series = [("train top-1", *col("train_top1", 100)), ("val top-1", *col("val_top1", 100)),
                  ("val top-5", *col("val_top5", 100))]
    _chart(img, (0, 24, w // 2, h), loss_series, "loss (cross-entropy)", "epoch", "loss",
           y_min=0.0)
    _chart(img, (w // 2, 24, w, h), err_series, "error", "epoch", "%", y_min=0.0, y_max=100.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def plot_series(path, series, title="", xlabel="step", ylabel="loss") -> Path:
    """One chart of (label, xs, ys) series, e.g. a benchmark's loss per step."""
    img = Image.new("RGB", (800, 480), BACKGROUND)
    _chart(img, (0, 0, 800, 480), series, title, xlabel, ylabel, y_min=0.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def filter_grid(w: np.ndarray, towers: int = 1, scale: int | None = None, gap: int = 2,
                columns: int | None = None) -> Image.Image:
    """The filters ``w`` (K, C, R, S) as one image; each filter normalised to [0, 255].

    Three input channels are shown as RGB, any other count as the grey mean over channels.
    With ``towers`` = 2 the two halves (the two GPUs' filters in the paper) are drawn as
    separate blocks, one above the other, as in the paper's Figure 3.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"filters must be (K, C, R, S), got shape {w.shape}")
    k, c, r, s = w.shape
    if c == 3:
        tiles = w.transpose(0, 2, 3, 1)  # K, R, S, 3
    else:
        tiles = np.repeat(w.mean(axis=1)[..., None], 3, axis=-1)
    lo = tiles.reshape(k, -1).min(axis=1)[:, None, None, None]
    hi = tiles.reshape(k, -1).max(axis=1)[:, None, None, None]
    tiles = (tiles - lo) / np.where(hi > lo, hi - lo, 1.0) * 255.0
    tiles = np.clip(np.rint(tiles), 0, 255).astype(np.uint8)
    scale = scale or max(1, 44 // max(r, s))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest-neighbour upscale
    th, tw = r * scale, s * scale
    towers = towers if towers > 1 and k % towers == 0 else 1
    per = k // towers
    if columns is None:
        columns = 16 if per % 16 == 0 and per >= 48 else min(per, math.ceil(math.sqrt(2 * per)))
    rows = math.ceil(per / columns)
    block_gap = 4 * gap if towers > 1 else 0
    height = towers * (rows * (th + gap) + gap) + (towers - 1) * block_gap
    width = columns * (tw + gap) + gap
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for i in range(k):
        t, j = divmod(i, per)
        row, colm = divmod(j, columns)
        y = t * (rows * (th + gap) + gap + block_gap) + gap + row * (th + gap)
        x = gap + colm * (tw + gap)
        canvas[y:y + th, x:x + tw] = tiles[i]
    return Image.fromarray(canvas, "RGB")


def plot_filters(path, w, towers: int = 1, **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    filter_grid(w, towers=towers, **kw).save(path, format="PNG")
    return path


def read_metrics(path) -> tuple[list, list]:
    """(per-epoch records, per-log-step records) from a ``metrics.jsonl`` file."""
    epochs, steps = [], []
    p = Path(path)
    if not p.exists():
        return epochs, steps
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash
        if rec.get("kind") == "epoch":
            epochs.append(rec)
        elif rec.get("kind") == "train" and "x" in rec:
            steps.append(rec)
    return epochs, steps


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m pyalexnet.plots",
        description="Redraw curves.png and filters.png of a training run directory.")
    ap.add_argument("run", help="run directory (holding metrics.jsonl and checkpoint.npz)")
    args = ap.parse_args(argv)
    from . import checkpoint as ckpt
    run = Path(args.run)
    epochs, steps = read_metrics(run / "metrics.jsonl")
    print(plot_curves(run / "curves.png", epochs, steps, title=run.name))
    c = ckpt.load(run)
    name = c.meta.get("first_conv", "conv1.w")
    if name in c.params:
        print(plot_filters(run / "filters.png", c.params[name],
                           towers=int(c.meta.get("towers", 1))))


if __name__ == "__main__":
    main()
