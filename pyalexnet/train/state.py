"""Where a run stands: the counters, learning rate and schedule state that a checkpoint
stores, so that ``--resume`` continues bit for bit."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import numpy as np

from .metrics import Averages


@dataclass
class TrainState:
    lr: float
    mean: np.ndarray | None = None      # per-channel mean subtracted from the inputs
    epoch: int = 0
    batch: int = 0                      # batches done in the current epoch
    step: int = 0                       # optimisation steps done in all
    schedule_state: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # the epoch records so far
    epoch_sums: Averages = field(default_factory=Averages)
    data_wait: float = 0.0              # seconds spent waiting for batches
    elapsed_before: float = 0.0         # seconds of training before this process

    @classmethod
    def from_meta(cls, m: dict) -> "TrainState":
        return cls(lr=float(m["lr"]),
                   mean=None if m.get("mean") is None else np.asarray(m["mean"], np.float32),
                   epoch=int(m["epoch"]), batch=int(m["batch"]), step=int(m["step"]),
                   schedule_state=m.get("schedule_state", {}), history=list(m.get("history", [])),
                   epoch_sums=Averages(m.get("epoch_sums")),
                   data_wait=float(m.get("data_wait", 0.0)),
                   elapsed_before=float(m.get("elapsed", 0.0)))

    def meta(self, elapsed, schedule_state, **extra) -> dict:
        """The checkpoint's metadata for this state (``extra``: options, classes, ...)."""
        return {
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "lr": self.lr,
            "schedule_state": schedule_state,
            "mean": None if self.mean is None else [float(v) for v in self.mean],
            "history": self.history, "epoch_sums": self.epoch_sums.state(),
            "data_wait": self.data_wait, "elapsed": elapsed, **extra,
            "saved_at": _dt.datetime.now().isoformat(timespec="seconds"),
        }
