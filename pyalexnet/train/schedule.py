"""Learning-rate schedules: divide the rate by 10 on a plateau of the held-out error (the
paper's rule) or at fixed epochs."""
from __future__ import annotations


class Schedule:
    """The lr schedule. Its state (best error, evaluations without improvement, drops so
    far) is a small dict stored in the checkpoint."""

    def __init__(self, kind, lr_steps="", patience=1, max_drops=3, state=None, decay=0.1):
        self.kind = kind
        self.decay = float(decay)
        self.steps = [int(e) for e in str(lr_steps).split(",") if e]
        self.patience = int(patience)
        self.max_drops = int(max_drops)
        self.state = dict(best=None, bad=0, drops=0)
        self.state.update(state or {})

    def lr_at_epoch_start(self, base_lr, epoch):
        """step schedule: the lr for (0-based) ``epoch``."""
        drops = sum(1 for e in self.steps if epoch >= e)
        return base_lr * self.decay ** drops

    def after_epoch(self, lr, epochs_done, val_error):
        """The lr for the next epoch, given the held-out error (or None if not measured)."""
        if self.kind == "step":
            return None  # set at the start of each epoch
        if val_error is None:
            return lr
        s = self.state
        if s["best"] is None or val_error < s["best"] - 1e-9:
            s["best"], s["bad"] = float(val_error), 0
            return lr
        s["bad"] += 1
        if s["bad"] >= self.patience and s["drops"] < self.max_drops:
            s["bad"], s["drops"] = 0, s["drops"] + 1
            return lr * self.decay
        return lr
