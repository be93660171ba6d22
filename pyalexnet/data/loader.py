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

import logging
import multiprocessing as mp
import time
import weakref

import numpy as np

from .workers import SHUFFLE, SUBSET, Transform, WorkerPool, fill_batch

log = logging.getLogger("pyalexnet.data")


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
        self._tf = Transform(self.train, int(crop), resize, mean, float(pca_noise) if train else 0.0,
                              bool(flip), bool(ten_crop), self.seed)
        n = len(dataset)
        self._subset = np.arange(n)
        if limit is not None and limit < n:
            # A random subset, not the first images: folders are sorted by class.
            pick = np.random.default_rng([self.seed, SUBSET]).permutation(n)[:int(limit)]
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
            order = order[np.random.default_rng([self.seed, SHUFFLE, epoch]).permutation(len(order))]
        b = self.batch_size
        batches = [order[i:i + b] for i in range(0, len(self) * b, b)]
        if self.shard is not None:
            r, k = self.shard
            batches = [a[r * len(a) // k:(r + 1) * len(a) // k] for a in batches]
        return batches

    def _inline(self, batches, epoch):
        for indices in batches:
            x = np.empty((len(indices),) + self._tf.sample_shape, dtype=np.float32)
            n, labels, bad = fill_batch(self.dataset, self._tf, epoch, indices, x)
            yield x[:n], labels, bad

    def _worker_pool(self):
        if self._pool is None or self._pool.closed:
            ctx = mp.get_context(self.start_method)
            self._pool = WorkerPool(ctx, self.dataset, self._tf, self.batch_size,
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
