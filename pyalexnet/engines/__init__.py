"""Engines: the ways a model's training step runs on devices, behind one interface
(`Engine`: forward, backward, train_step, sgd_step, evaluate, state dicts).

- `SingleDeviceEngine`: one device; a two-tower net runs in its grouped form.
- `TwoDeviceEngine`: the paper's model parallelism, one tower per device, peer-to-peer.
- `DataParallelEngine`: either of them on each of several processes (torchrun), the
  gradients summed across them (pyalexnet.distributed).

A new parallel scheme is a new `Engine` subclass and an entry in `ENGINES`.
"""
from __future__ import annotations

from ..backends import get_backend
from .base import Engine
from .data_parallel import DataParallelEngine
from .single import SingleDeviceEngine
from .two_device import TwoDeviceEngine

# devices -> engine
ENGINES = {1: SingleDeviceEngine, 2: TwoDeviceEngine}

__all__ = ["ENGINES", "Engine", "SingleDeviceEngine", "TwoDeviceEngine", "DataParallelEngine",
           "make_engine"]


def make_engine(config, backend=None, devices=1, dropout_mode="inverted",
                alpha_over_n=None, world=None) -> Engine:
    """The engine that runs ``config`` on ``devices`` devices of ``backend``; with a
    ``world`` (pyalexnet.distributed.World), that engine on each rank, data parallel."""
    cls = ENGINES.get(devices)
    if cls is None:
        raise ValueError(f"devices must be one of {', '.join(map(str, ENGINES))}, "
                         f"got {devices!r}")
    if cls is SingleDeviceEngine:
        if isinstance(backend, (list, tuple)):
            raise ValueError("devices=1 takes one backend, not a list")
        backend = get_backend(backend)
    engine = cls(config, backend, dropout_mode, alpha_over_n)
    return engine if world is None else DataParallelEngine(engine, world)
