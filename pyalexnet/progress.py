"""Training progress: one self-rewriting line on a terminal, plain periodic lines elsewhere.

On a TTY the line is redrawn in place (carriage return) on every update, at most
``min_interval`` seconds apart; when the output is a file or a pipe (CI, ``| tee``), a
full line is printed every ``log_every`` steps so logs stay readable.
"""
from __future__ import annotations

import shutil
import sys
import time


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """Show training progress for one epoch at a time.

    ``update`` takes the running averages over the epoch so far; the bar renders epoch,
    step within the epoch (and the epoch's length when known), images/s, loss, top-1/top-5
    error, learning rate and the seconds spent waiting for data.
    """

    def __init__(self, stream=None, log_every: int = 50, tty: bool | None = None,
                 min_interval: float = 0.1):
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.log_every = max(1, int(log_every))
        self.min_interval = min_interval
        self._last_draw = 0.0
        self._open_line = False

    def line(self, *, epoch, epochs, batch, batches, step, images_per_s, loss, top1, top5,
             lr, data_wait, elapsed, width=None) -> str:
        """The progress text; with ``width``, a bar is added if it fits."""
        total = f"/{batches}" if batches else ""
        text = (f"epoch {epoch + 1}/{epochs} {batch}{total} (step {step}) | "
                f"{images_per_s:.0f} img/s | loss {loss:.4f} | err top-1 {100 * top1:.1f}% "
                f"top-5 {100 * top5:.1f}% | lr {lr:.3g} | data wait {data_wait:.1f}s | "
                f"{format_duration(elapsed)}")
        if batches and (width is None or len(text) + 24 <= width):
            bar = 20
            fill = int(min(1.0, batch / batches) * bar)
            text = f"[{'#' * fill}{'.' * (bar - fill)}] " + text
        return text

    def update(self, force=False, **fields):
        step = fields["step"]
        if self.tty:
            now = time.monotonic()
            if not force and now - self._last_draw < self.min_interval:
                return
            self._last_draw = now
            cols = shutil.get_terminal_size((120, 20)).columns
            text = self.line(**fields, width=cols - 1)
            text = text[: max(20, cols - 1)]
            self.stream.write("\r" + text + "\x1b[K")
            self.stream.flush()
            self._open_line = True
        elif force or step % self.log_every == 0:
            self.stream.write(self.line(**fields, width=0) + "\n")  # no bar in logs
            self.stream.flush()

    def close_line(self):
        """End the in-place line (before printing anything else)."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False

    def print(self, text: str):
        self.close_line()
        self.stream.write(text + "\n")
        self.stream.flush()
