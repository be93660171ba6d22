"""Training: ``python -m pyalexnet.train`` (see pyalexnet.train.cli for what a run does).

- cli.py      the command line: flags, where the outputs go, resuming
- options.py  merging flags, checkpoint and config into a run's options
- session.py  setting a run up: network, data, loaders, starting state
- loop.py     the training loop: steps, epochs, evaluation, checkpoints, stopping
- schedule.py learning-rate schedules
- metrics.py  running averages, metrics.jsonl, pictures
- state.py    the counters a checkpoint stores
"""
from .cli import build_parser, main
from .loop import EXIT_INTERRUPTED, EXIT_NAN, Trainer, TrainingDiverged
from .schedule import Schedule

__all__ = ["main", "build_parser", "Trainer", "TrainingDiverged", "Schedule", "EXIT_NAN",
           "EXIT_INTERRUPTED"]
