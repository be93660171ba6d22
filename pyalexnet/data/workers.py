"""The loader's workers: each decodes and augments whole batches into a shared-memory slot,
so only labels and file names travel through pipes (see pyalexnet.data.loader).

Randomness is per sample, from (seed, epoch, dataset index), so the batches do not depend
on which worker made them or how many there are.
"""
from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import time
import traceback
import weakref

import numpy as np

from .augment import (UnreadableImageError, center_crop, pca_color_offset, random_crop_flip,
                      ten_crops, to_chw_float)

log = logging.getLogger("pyalexnet.data")

# Distinct first words of the random streams, so no two uses of one seed coincide.
SAMPLE, SHUFFLE, SUBSET = 0, 1, 2
_POLL_S = 0.5               # how often a waiting side checks that the other is still alive


class Transform:
    """Everything a worker needs to turn a decoded image into the network's input."""

    def __init__(self, train, crop, resize, mean01, pca_std, flip, ten_crop, seed):
        self.train, self.crop, self.resize = train, crop, resize
        self.mean01, self.pca_std, self.flip = mean01, pca_std, flip
        self.ten_crop, self.seed = ten_crop, seed
        self.sample_shape = ((10,) if ten_crop else ()) + (3, crop, crop)

    def apply(self, img, epoch, index, out):
        """Write the network input for ``img`` (uint8 HWC) into ``out`` (float32)."""
        if self.train:
            rng = np.random.default_rng([self.seed, SAMPLE, epoch, index])
            patch = random_crop_flip(img, self.crop, rng, self.flip)
            offset = pca_color_offset(rng, self.pca_std) if self.pca_std > 0 else None
            to_chw_float(patch, self.mean01, offset, out=out)
        elif self.ten_crop:
            to_chw_float(ten_crops(img, self.crop), self.mean01, out=out)
        else:
            to_chw_float(center_crop(img, self.crop), self.mean01, out=out)


def fill_batch(dataset, tf, epoch, indices, out):
    """Load and transform the samples ``indices`` into out[0], out[1], ...

    Unreadable images are left out, so the batch may come out short. Returns
    (number written, their labels, [(name, reason) of each unreadable image]).
    """
    n, labels, bad = 0, [], []
    for index in indices:
        index = int(index)
        try:
            img, label = dataset.load(index, tf.resize)
        except UnreadableImageError as e:
            bad.append((dataset.describe(index), str(e)))
            continue
        tf.apply(img, epoch, index, out[n])
        labels.append(label)
        n += 1
    return n, labels, bad


def _worker_loop(dataset, tf, slots, tasks, results):
    """A worker process: take (batch number, slot, epoch, indices), fill the slot, report."""
    # Ctrl-C reaches the whole process group; the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Never block this process's exit on results that nobody will read any more.
    results.cancel_join_thread()
    xs = [np.frombuffer(s, dtype=np.float32).reshape((-1,) + tf.sample_shape) for s in slots]
    parent = os.getppid()
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:      # the parent died without stopping us
                return
            continue
        if task is None:
            return
        batch_no, slot, epoch, indices = task
        try:
            n, labels, bad = fill_batch(dataset, tf, epoch, indices, xs[slot])
            results.put((batch_no, slot, n, labels, bad, None))
        except Exception:
            results.put((batch_no, slot, 0, [], [], traceback.format_exc()))


def _stop_workers(procs, tasks, results, graceful):
    """Stop worker processes: by message when idle (graceful), else by signal."""
    if graceful:
        for _ in procs:
            try:
                tasks.put_nowait(None)
            except Exception:
                break
        deadline = time.monotonic() + 5.0
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join()
    for q in (tasks, results):
        q.cancel_join_thread()      # an unread queue must not hang the interpreter's exit
        q.close()


class WorkerPool:
    """Worker processes plus one shared-memory batch buffer ("slot") per batch in flight."""

    def __init__(self, ctx, dataset, tf, batch_size, n_slots, workers):
        size = batch_size * int(np.prod(tf.sample_shape))
        # RawArray: shared memory that child processes inherit (fork) or receive (spawn),
        # with no names to clean up afterwards.
        raw = [ctx.RawArray(ctypes.c_float, size) for _ in range(n_slots)]
        self.slots = [np.frombuffer(r, dtype=np.float32).reshape((-1,) + tf.sample_shape) for r in raw]
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        args = (dataset, tf, raw, self.tasks, self.results)
        self.procs = [ctx.Process(target=_worker_loop, args=args, name=f"pyalexnet-data-{i}",
                                  daemon=True) for i in range(workers)]
        for p in self.procs:
            p.start()
        self.closed = False
        self._finalizer = weakref.finalize(self, _stop_workers, self.procs, self.tasks,
                                           self.results, True)

    def close(self, graceful=True):
        if not self.closed:
            self.closed = True
            self._finalizer.detach()
            _stop_workers(self.procs, self.tasks, self.results, graceful)

    def _get(self):
        """The next result; raises if a worker died (instead of waiting forever)."""
        while True:
            # Checked before every wait, not only on timeouts: a worker killed while holding
            # the task queue's lock would starve the others, or its batch never come back.
            for p in self.procs:
                if not p.is_alive():
                    raise RuntimeError(
                        f"data worker {p.name} (pid {p.pid}) exited unexpectedly with code "
                        f"{p.exitcode} (a negative code is the signal that killed it, e.g. "
                        "-9 from the out-of-memory killer: try fewer workers or a smaller "
                        "prefetch or batch)")
            try:
                return self.results.get(timeout=_POLL_S)
            except queue.Empty:
                pass

    def run(self, batches, epoch):
        """Yield (x, labels, bad) for each index batch, in order, keeping every slot busy."""
        free = list(range(len(self.slots)))
        done, submitted, in_flight = {}, 0, 0
        try:
            for b in range(len(batches)):
                while free and submitted < len(batches):
                    self.tasks.put((submitted, free.pop(), epoch, batches[submitted]))
                    submitted += 1
                    in_flight += 1
                while b not in done:
                    batch_no, slot, n, labels, bad, error = self._get()
                    in_flight -= 1
                    if error:
                        raise RuntimeError(f"a data worker failed:\n{error}")
                    done[batch_no] = slot, n, labels, bad
                slot, n, labels, bad = done.pop(b)
                x = self.slots[slot][:n].copy()   # the slot is reused at once
                free.append(slot)
                yield x, labels, bad
        except GeneratorExit:
            # The consumer stopped early: wait for the batches in flight, whose slots the
            # next pass will reuse. If that fails too, give up on these workers.
            try:
                for _ in range(in_flight):
                    self._get()
            except BaseException:
                self.close(graceful=False)
                raise
            raise
        except BaseException:
            # An error or Ctrl-C: stop at once rather than finish the batches in flight.
            self.close(graceful=False)
            raise
