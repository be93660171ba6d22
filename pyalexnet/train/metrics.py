"""What a run records: running averages, metrics.jsonl, and the pictures drawn from it."""
from __future__ import annotations

import json
from pathlib import Path

from .. import checkpoint as ckpt


class Averages:
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


class MetricsLog:
    """metrics.jsonl: one JSON record a line (config, train, epoch, final, diverged)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None

    def open(self, resumed_step=None):
        """Start appending. On resume, records from after the checkpoint's step are dropped
        first (they will be redone)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if resumed_step is not None and int(rec.get("step", 0)) <= resumed_step \
                        and rec.get("kind") in ("train", "epoch", "config", "layers"):
                    keep.append(line)
            self.path.write_text("".join(k + "\n" for k in keep))
        self._file = open(self.path, "a", buffering=1)

    def log(self, **rec):
        self._file.write(json.dumps(rec, default=ckpt.json_default) + "\n")

    def flush(self):
        self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()


def draw_pictures(out: Path, metrics_path: Path, title: str, first_filters=None, towers=1):
    """curves.png from the metrics, and filters.png of the first layer's filters (the
    grouped layout: tower A's filters first). Returns the paths drawn."""
    from .. import plots

    epochs, steps = plots.read_metrics(metrics_path)
    drawn = [plots.plot_curves(out / "curves.png", epochs, steps, title=title)]
    if first_filters is not None:
        drawn.append(plots.plot_filters(out / "filters.png", first_filters, towers=towers))
    return drawn
