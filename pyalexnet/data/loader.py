"""Batches for training and evaluation, decoded and augmented in worker processes.

Normalisation (what the network is fed), float32, RGB, channel-first:

    x = pixel / 255 + pca_offset - mean01

``pixel`` is the decoded 0..255 value; ``pca_offset`` is the per-image PCA colour noise
sum_i alpha_i lambda_i p_i (training only), in the [0, 1] RGB scale the ImageNet
eigenvalues were measured in; ``mean01`` is the per-channel training-set mean in [0, 1]
(``compute_channel_mean``), so x is roughly in [-0.5, 0.6]. The paper subtracted the mean
image; a per-channel mean is what later implementations used and is as good.

Randomness is per sample, from (seed, epoch, dataset index): the same seed gives the same
batches whatever the number of workers. The shuffle comes from (seed, epoch).

Worker processes are started with 'spawn' by default (safe next to CUDA and threads). As
with any multiprocessing code, a script that iterates a Loader with workers > 0 must do so
under ``if __name__ == "__main__":``. Workers write batches into shared memory (one slot
per batch in flight), so only labels and file names travel through pipes.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
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
_SAMPLE, _SHUFFLE, _SUBSET = 0, 1, 2
_POLL_S = 0.5               # how often a waiting side checks that the other is still alive


class _Transform:
    """Everything a worker needs to turn a decoded image into the network's input."""

    def __init__(self, train, crop, resize, mean01, pca_std, flip, ten_crop, seed):
        self.train, self.crop, self.resize = train, crop, resize
        self.mean01, self.pca_std, self.flip = mean01, pca_std, flip
        self.ten_crop, self.seed = ten_crop, seed
        self.sample_shape = ((10,) if ten_crop else ()) + (3, crop, crop)

    def apply(self, img, epoch, index, out):
        """Write the network input for ``img`` (uint8 HWC) into ``out`` (float32)."""
        if self.train:
            rng = np.random.default_rng([self.seed, _SAMPLE, epoch, index])
            patch = random_crop_flip(img, self.crop, rng, self.flip)
            offset = pca_color_offset(rng, self.pca_std) if self.pca_std > 0 else None
            to_chw_float(patch, self.mean01, offset, out=out)
        elif self.ten_crop:
            to_chw_float(ten_crops(img, self.crop), self.mean01, out=out)
        else:
            to_chw_float(center_crop(img, self.crop), self.mean01, out=out)


def _fill_batch(dataset, tf, epoch, indices, out):
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
            n, labels, bad = _fill_batch(dataset, tf, epoch, indices, xs[slot])
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


class _WorkerPool:
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


class Loader:
    """Batches of (x float32 (N, 3, crop, crop) C-contiguous, labels int32 (N,)).

    dataset: an ``ImageFolder`` or ``ArrayDataset`` (anything with ``len``,
        ``load(i, resize) -> (uint8 HWC RGB, label)`` and ``describe(i)``).
    train=True: shuffled each epoch (from seed and epoch), a random ``crop`` patch of the
        ``resize`` x ``resize`` image, mirrored with probability 1/2 if ``flip``, PCA colour
        noise with standard deviation ``pca_noise`` (0 disables).
    train=False: the centre crop, or with ``ten_crop`` the ten crops, x (N, 10, 3, crop, crop).
    resize: the shorter side is rescaled to it and the centre square kept (256 for ImageNet);
        None keeps the stored size (array datasets only: folder images differ in size).
    mean: per-channel mean in [0, 1] to subtract (``compute_channel_mean``), or None.
    workers: processes that decode and augment; 0 runs inline in the caller.
    prefetch: batches in flight (at least one per worker); each holds a shared buffer of
        batch_size x 3 x crop x crop floats (x10 with ten_crop).
    limit: use only this many samples per epoch, a fixed random subset (quick runs).
    drop_last: leave out the last, short, batch.
    shard: (rank, ranks) to yield only rank's contiguous share of every batch (data
        parallel: the ranks' shards of a batch are the one-process batch, in rank order);
        ``batch_size`` stays the global batch.

    Unreadable files are skipped (the batch comes out smaller; a batch with none left is
    not yielded), reported once each on the "pyalexnet.data" logger, listed in
    ``bad_files`` ({name: reason}) and counted in ``skipped``. ``wait_time`` is the time
    the consumer has spent waiting for batches in the current or last epoch. Iterating
    again starts the next epoch unless ``set_epoch`` says otherwise. ``close()`` (or a
    ``with`` block) stops the workers; they are also stopped when the Loader is collected.
    ``set_epoch(epoch, start_batch)`` resumes mid-epoch.
    """

    def __init__(self, dataset, batch_size, train, crop=227, resize=256, mean=None, pca_noise=0.1,
                 flip=True, ten_crop=False, workers=2, prefetch=4, seed=0, drop_last=False,
                 limit=None, start_method="spawn", shard=None):
        if not all(hasattr(dataset, a) for a in ("__len__", "load", "describe")):
            raise TypeError(f"dataset must be an ImageFolder or ArrayDataset, got "
                            f"{type(dataset).__name__} (for a folder, pass ImageFolder(path))")
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(crop) < 1:
            raise ValueError(f"crop must be >= 1, got {crop}")
        if resize is not None and crop > resize:
            raise ValueError(f"crop {crop} is larger than the rescaled image ({resize}); "
                             "pass a larger resize or a smaller crop")
        if resize is None:
            shape = getattr(dataset, "image_shape", None)
            if shape is None:
                raise ValueError("resize=None needs an array dataset whose images share one "
                                 "size; folder images differ in size, so pass resize")
            if crop > min(shape):
                raise ValueError(f"crop {crop} is larger than the images ({shape[0]}x{shape[1]})")
        if ten_crop and train:
            raise ValueError("ten_crop is for evaluation: pass train=False")
        if mean is not None:
            mean = np.asarray(mean, dtype=np.float32).reshape(-1)
            if mean.shape != (3,):
                raise ValueError(f"mean must hold 3 values (R, G, B), got {mean.shape[0]}")
            if np.abs(mean).max() > 1.0:
                raise ValueError(f"mean {mean.tolist()} looks like 0..255 values; the mean is in "
                                 "[0, 1] (pixel/255), divide it by 255")
        if pca_noise < 0:
            raise ValueError(f"pca_noise must be >= 0, got {pca_noise}")
        if int(workers) < 0 or int(prefetch) < 1:
            raise ValueError(f"workers must be >= 0 and prefetch >= 1, got {workers} and {prefetch}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if limit is not None and int(limit) < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")

        if shard is not None and not 0 <= int(shard[0]) < int(shard[1]):
            raise ValueError(f"shard must be (rank, ranks) with 0 <= rank < ranks, got {shard}")
        self.shard = None if shard is None else (int(shard[0]), int(shard[1]))
        self.dataset = dataset
        self.batch_size, self.train, self.drop_last = int(batch_size), bool(train), drop_last
        self.workers, self.prefetch, self.seed = int(workers), int(prefetch), int(seed)
        self.mean = mean
        self.start_method = start_method
        self._tf = _Transform(self.train, int(crop), resize, mean, float(pca_noise) if train else 0.0,
                              bool(flip), bool(ten_crop), self.seed)
        n = len(dataset)
        self._subset = np.arange(n)
        if limit is not None and limit < n:
            # A random subset, not the first images: folders are sorted by class.
            pick = np.random.default_rng([self.seed, _SUBSET]).permutation(n)[:int(limit)]
            self._subset = np.sort(pick)
        self.epoch, self._start_batch = 0, 0
        self.wait_time = 0.0
        self.bad_files = {}
        self._pool = None
        self._active = None

    @property
    def skipped(self):
        """Number of distinct unreadable files met so far."""
        return len(self.bad_files)

    @property
    def classes(self):
        return self.dataset.classes

    @property
    def num_samples(self):
        """Samples per epoch (before any unreadable ones are skipped)."""
        return len(self._subset)

    def __len__(self):
        n, b = len(self._subset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch, start_batch=0):
        """Make the next pass epoch ``epoch``, starting at its batch ``start_batch``.

        Batch order and augmentation depend only on (seed, epoch, image), so a run resumed
        with ``start_batch`` sees exactly the batches it would have seen (no image of the
        batches left out is decoded).
        """
        if not 0 <= int(start_batch) <= len(self):
            raise ValueError(f"start_batch must be in 0..{len(self)}, got {start_batch}")
        self.epoch, self._start_batch = int(epoch), int(start_batch)

    def _index_batches(self, epoch):
        order = self._subset
        if self.train:
            order = order[np.random.default_rng([self.seed, _SHUFFLE, epoch]).permutation(len(order))]
        b = self.batch_size
        batches = [order[i:i + b] for i in range(0, len(self) * b, b)]
        if self.shard is not None:
            r, k = self.shard
            batches = [a[r * len(a) // k:(r + 1) * len(a) // k] for a in batches]
        return batches

    def _inline(self, batches, epoch):
        for indices in batches:
            x = np.empty((len(indices),) + self._tf.sample_shape, dtype=np.float32)
            n, labels, bad = _fill_batch(self.dataset, self._tf, epoch, indices, x)
            yield x[:n], labels, bad

    def _worker_pool(self):
        if self._pool is None or self._pool.closed:
            ctx = mp.get_context(self.start_method)
            self._pool = _WorkerPool(ctx, self.dataset, self._tf, self.batch_size,
                                     max(self.prefetch, self.workers), self.workers)
        return self._pool

    def _note_bad(self, bad):
        for name, reason in bad:
            if name not in self.bad_files:
                self.bad_files[name] = reason
                log.warning("skipping unreadable image (%d so far): %s", len(self.bad_files), reason)

    def __iter__(self):
        # One pass at a time: a pass abandoned without being closed is closed now, so its
        # batches in flight cannot land in this one.
        active = self._active() if self._active is not None else None
        if active is not None:
            active.close()
        it = self._run_epoch(self.epoch)
        self._active = weakref.ref(it)
        return it

    def _run_epoch(self, epoch):
        self.wait_time = 0.0
        batches = self._index_batches(epoch)[self._start_batch:]
        self._start_batch = 0
        source = (self._inline(batches, epoch) if self.workers == 0
                  else self._worker_pool().run(batches, epoch))
        yielded = 0
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    x, labels, bad = next(source)
                except StopIteration:
                    break
                self.wait_time += time.perf_counter() - t0
                self._note_bad(bad)
                if len(x):
                    yielded += 1
                    yield x, np.asarray(labels, dtype=np.int32)
        finally:
            source.close()
        if not yielded and batches:
            raise RuntimeError(f"every image of the epoch was unreadable ({self.skipped} files, "
                               f"e.g. {next(iter(self.bad_files), '?')})")
        self.epoch = epoch + 1

    def close(self):
        """Stop the worker processes (a later iteration starts new ones)."""
        active = self._active() if self._active is not None else None
        if active is not None:
            active.close()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        mode = "train" if self.train else ("eval, 10 crops" if self._tf.ten_crop else "eval")
        return (f"Loader({self.dataset!r}, {mode}, batch {self.batch_size}, crop {self._tf.crop}, "
                f"{len(self)} batches, {self.workers} workers)")


def compute_channel_mean(dataset, resize=256, samples=500, seed=0, workers=0):
    """Per-channel mean of the training images, float32 (3,) RGB in [0, 1] (pixel/255).

    Taken over the whole resize x resize image of a fixed random sample of ``samples``
    images (all of them if None), unreadable ones skipped. Pass the result as ``mean=``
    to both the training and the evaluation Loader.
    """
    # Without resize, the whole stored image (array datasets; a folder makes Loader say why not).
    crop = resize if resize is not None else min(getattr(dataset, "image_shape", None) or (1,))
    total, count = np.zeros(3), 0
    with Loader(dataset, batch_size=64, train=False, crop=crop, resize=resize, mean=None,
                workers=workers, seed=seed, limit=samples) as loader:
        for x, _ in loader:
            total += x.sum(axis=(0, 2, 3), dtype=np.float64)
            count += x.shape[0] * x.shape[2] * x.shape[3]
    return (total / count).astype(np.float32)
