"""Many processes, one run: rank discovery from torchrun's environment, the process group,
and how a run notices that another rank died.

    torchrun --nproc-per-node 2 -m pyalexnet.train --out runs/dp ...

torch.distributed moves the bytes (gloo on CPUs, NCCL on GPUs); our kernels do all the
compute. `World.from_env` returns None for a plain one-process run (WORLD_SIZE unset or 1),
so single-process code paths stay as they are.

Faults: every rank beats a heartbeat (time, step) into torchrun's key-value store from a
background thread. When a collective fails (a peer's socket closed, or the process group's
timeout passed) or torchrun stops this rank because another one exited, `World.lost_peer`
names the ranks whose heartbeat stopped, or that lag behind at an older step, and the
command line exits with that message (exit status 4) instead of hanging.
"""
from __future__ import annotations

import datetime as _dt
import os
import signal
import sys
import threading
import time

import numpy as np

ENV_TIMEOUT = "PYALEXNET_DIST_TIMEOUT"     # seconds a collective may wait (default 300)
# test hook "RANK:STEP": that rank dies at that step, in torchrun's first attempt only
ENV_TEST_DIE = "PYALEXNET_TEST_DIE_AT"
DEFAULT_TIMEOUT_S = 300.0
HEARTBEAT_S = 0.25
STALE_S = 1.5                              # no heartbeat for this long: that rank is gone
EXIT_PEER_LOST = 4


class PeerLost(RuntimeError):
    """Another rank died or stopped answering; the message names it."""


def _env_int(name, default=None):
    v = os.environ.get(name)
    return default if v in (None, "") else int(v)


def world_size_from_env() -> int:
    return _env_int("WORLD_SIZE", 1)


class World:
    """This process's place in a multi-process run, and the few collectives it needs."""

    def __init__(self, rank, size, local_rank, dist, store_addr):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.dist = dist
        self._stop = threading.Event()
        self._step = 0
        self._store = None
        self._prefix = f"pyalexnet/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        if store_addr is not None:
            host, port = store_addr
            try:
                self._store = dist.TCPStore(host, port, is_master=False,
                                            timeout=_dt.timedelta(seconds=30),
                                            wait_for_workers=False)
            except Exception:  # no reachable store: faults are still reported, unnamed
                self._store = None
        if self._store is not None:
            self._beat()
            threading.Thread(target=self._beats, name="pyalexnet-heartbeat", daemon=True).start()
        self._die_at = None
        hook = os.environ.get(ENV_TEST_DIE)
        if hook and not int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0):
            r, s = hook.split(":")
            if int(r) == rank:
                self._die_at = int(s)

    # ---- set-up -----------------------------------------------------------------------
    @classmethod
    def from_env(cls, backend_name="numpy"):
        """The World of a torchrun worker (None when this is the only process)."""
        size = world_size_from_env()
        if size <= 1:
            return None
        try:
            import torch.distributed as dist
        except ImportError:
            raise SystemExit("error: running under torchrun with WORLD_SIZE > 1 needs PyTorch: "
                             "pip install -e '.[distributed]' (or pip install torch)") from None
        timeout = float(os.environ.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT_S)
        pg = "nccl" if backend_name == "cuda" else "gloo"
        rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
        if backend_name == "cuda":
            import cupy
            cupy.cuda.Device(local_rank).use()
        host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), _env_int("MASTER_PORT", 29500)
        # torchrun's store outlives a restart (--max-restarts); under a static rendezvous
        # the last attempt's addresses are still in it, so each attempt gets its own keys.
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(host, port, world_size=size, is_master=not agent and rank == 0,
                              timeout=_dt.timedelta(seconds=timeout), multi_tenant=not agent)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(pg, store=dist.PrefixStore(f"pyalexnet/attempt{attempt}", store),
                                rank=rank, world_size=size,
                                timeout=_dt.timedelta(seconds=timeout))
        world = cls(rank, size, local_rank, dist, (host, port))
        world.timeout_s = timeout
        signal.signal(signal.SIGTERM, world._on_sigterm)
        return world

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self):
        self._stop.set()
        try:
            self.dist.destroy_process_group()
        except Exception:
            pass

    # ---- collectives --------------------------------------------------------------------
    def all_sum(self, values, dtype=np.float64) -> np.ndarray:
        """The element-wise sum over ranks of a small vector (blocking)."""
        import torch

        t = torch.from_numpy(np.array(values, dtype=dtype))
        self.guard(lambda: self.dist.all_reduce(t))
        return t.numpy()

    def counts(self, n) -> list:
        """Every rank's local batch size, in rank order."""
        v = np.zeros(self.size, dtype=np.int64)
        v[self.rank] = int(n)
        return [int(c) for c in self.all_sum(v, np.int64)]

    def guard(self, fn):
        """Run a collective; a failure becomes PeerLost naming the rank that went away."""
        try:
            return fn()
        except Exception as e:
            if isinstance(e, PeerLost):
                raise
            raise PeerLost(self.lost_peer(f"{type(e).__name__}: {str(e).splitlines()[0]}")) \
                from None

    # ---- steps and faults ---------------------------------------------------------------
    def step_started(self, step):
        """Called by the training loop before each step (``step``: steps done so far)."""
        self._step = int(step)
        if self._store is not None:
            try:
                self._beat()
            except Exception:
                pass  # the heartbeat thread reports nothing either; a collective will fail
        if self._die_at is not None and self._step >= self._die_at:
            print(f"rank {self.rank}: {ENV_TEST_DIE} test hook: dying at step {self._step}",
                  file=sys.stderr, flush=True)
            os._exit(17)

    def _beat(self):
        self._store.set(f"{self._prefix}beat/{self.rank}", f"{time.time()} {self._step}")

    def _beats(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except Exception:
                return  # the store is gone (torchrun stopped): nothing more to tell

    def _peers(self):
        """{rank: (seconds since its heartbeat, its step)} of the other ranks."""
        out, now = {}, time.time()
        for r in range(self.size):
            if r == self.rank:
                continue
            try:
                t, s = self._store.get(f"{self._prefix}beat/{r}").decode().split()
                out[r] = (now - float(t), int(s))
            except Exception:
                out[r] = (float("inf"), -1)
        return out

    def lost_peer(self, cause, wait_s=2 * STALE_S) -> str:
        """A one-line account of which ranks went away, waiting up to ``wait_s`` for the
        heartbeat of a dead one to go stale."""
        me = f"rank {self.rank} of {self.size}"
        if self._store is None:
            return f"{me}: lost contact with the other ranks ({cause})"
        deadline = time.time() + wait_s
        while True:
            try:
                peers = self._peers()
            except Exception:
                return f"{me}: lost contact with the other ranks and torchrun's store ({cause})"
            dead = sorted(r for r, (age, _) in peers.items() if age > STALE_S)
            if dead or time.time() >= deadline:
                break
            time.sleep(HEARTBEAT_S)
        if dead:
            who = ", ".join(f"rank {r}" + (f" (last seen at step {peers[r][1]}, "
                                           f"{peers[r][0]:.1f} s ago)" if peers[r][1] >= 0 else
                                           " (never seen)") for r in dead)
            return f"{me}: {who} stopped responding; stopping too ({cause})"
        behind = [r for r, (_, s) in peers.items() if s < self._step]
        if behind:
            return (f"{me}: " + ", ".join(f"rank {r} (at step {peers[r][1]})" for r in behind)
                    + f" did not reach step {self._step}; stopping ({cause})")
        return f"{me}: a collective failed while every rank was alive ({cause})"

    def _on_sigterm(self, signum, frame):
        # torchrun stops the surviving ranks as soon as one exits: say which one.
        print(f"error: {self.lost_peer('stopped by torchrun')}", file=sys.stderr, flush=True)
        self._stop.set()
        os._exit(EXIT_PEER_LOST)
