"""Engines: the ways a model's training step runs on devices, behind one interface
(`Engine`: forward, backward, train_step, sgd_step, evaluate, state dicts).

- `SingleDeviceEngine`: one device; a two-tower net runs in its grouped form.
- `TwoDeviceEngine`: the paper's model parallelism, one tower per device, peer-to-peer.
- `DataParallelEngine`: either of them on each of several processes (torchrun), the
  gradients summed across them (pyalexnet.distributed).
- `OneWeirdTrickEngine`: over several processes, the conv layers data parallel and the fc
  layers model parallel (Krizhevsky 2014).

A new parallel scheme is a new `Engine` subclass and an entry in `ENGINES`.
"""
from __future__ import annotations

from ..backends import get_backend
from .base import Engine
from .data_parallel import DataParallelEngine
from .owt import OneWeirdTrickEngine
from .single import SingleDeviceEngine
from .two_device import TwoDeviceEngine

# devices -> engine
ENGINES = {1: SingleDeviceEngine, 2: TwoDeviceEngine}
# how several processes share the work: "dp" wraps the engine above on each rank
PARALLEL = ("dp", "owt")

__all__ = ["ENGINES", "PARALLEL", "Engine", "SingleDeviceEngine", "TwoDeviceEngine",
           "DataParallelEngine", "OneWeirdTrickEngine", "make_engine"]


def make_engine(config, backend=None, devices=1, dropout_mode="inverted",
                alpha_over_n=None, world=None, parallel="dp") -> Engine:
    """The engine that runs ``config`` on ``devices`` devices of ``backend``; with a
    ``world`` (pyalexnet.distributed.World), over its ranks as ``parallel`` says: "dp"
    that engine on each rank, data parallel; "owt" the one weird trick (devices=1)."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL)}, got {parallel!r}")
    cls = ENGINES.get(devices)
    if cls is None:
        raise ValueError(f"devices must be one of {', '.join(map(str, ENGINES))}, "
                         f"got {devices!r}")
    if cls is SingleDeviceEngine:
        if isinstance(backend, (list, tuple)):
            raise ValueError("devices=1 takes one backend, not a list")
        backend = get_backend(backend)
    if world is not None and parallel == "owt":
        if cls is not SingleDeviceEngine:
            raise ValueError("parallel='owt' runs one device per rank (devices=1); for two "
                             "towers per rank use parallel='dp' with devices=2")
        return OneWeirdTrickEngine(config, backend, world, dropout_mode, alpha_over_n)
    engine = cls(config, backend, dropout_mode, alpha_over_n)
    return engine if world is None else DataParallelEngine(engine, world)
