"""Softmax with cross-entropy over (N, C) logits, its gradient, and top-k error counts.

loss = mean over rows of -log softmax(logits)[label], computed stably (max subtracted).
The mean is a fixed-order reduction, so a batch gives the same loss on every run.

Labels are integer arrays of shape (N,) (int32 on the kernel backends; any integer dtype is
accepted and converted after validation). They are checked against [0, C) on the host
before every launch: on the cuda backend that copies the N labels to the host, unless they
come as `Labels` (`prepare_labels`: the host copy checked once, the device copy made once
per batch), as a training step passes them, which then needs no device-to-host copy. A bad
label raises ValueError.

Top-k: a row is correct at k when fewer than k classes rank before its label, where a class
ranks before the label if its logit is strictly greater, or equal with a smaller class
index (ties go to the lower index). A NaN label logit is always an error.
"""
from typing import NamedTuple

import numpy as np

from ._launch import ceil_div, f32, i32, require_float32

KERNELS = "softmax.cu"
MAX_BLOCK = 256
MAX_GRID_Y = 65535


def _check(logits, labels_host, need_float32):
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {logits.shape}")
    n, c = logits.shape
    if n < 1 or c < 1:
        raise ValueError(f"logits must have at least one row and one class, got {logits.shape}")
    if c >= 2**24:  # the rank kernel counts through an exact float sum
        raise ValueError(f"at most 2**24 - 1 classes are supported, got {c}")
    if need_float32:
        require_float32("softmax: logits", logits)
    check_labels(c, labels_host, n, f" for logits {logits.shape}")


def check_labels(classes, labels_host, n, what=""):
    """Labels (on the host) must be N integers in [0, classes)."""
    if not np.issubdtype(labels_host.dtype, np.integer):
        raise TypeError(f"labels must be an integer array, got {labels_host.dtype}")
    if labels_host.shape != (n,):
        raise ValueError(f"labels must have shape ({n},){what}, got {labels_host.shape}")
    bad = (labels_host < 0) | (labels_host >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"labels must be in [0, {classes}): labels[{i}] = {labels_host[i]} "
                         f"({int(bad.sum())} out of range)")


class Labels(NamedTuple):
    """A batch's labels on the host and on the backend, made once by `prepare_labels`."""

    host: np.ndarray
    device: object


def prepare_labels(be, labels) -> Labels:
    """Labels for every op of one batch: the host copy, and the backend's int32 copy."""
    host = np.asarray(be.to_numpy(labels) if not isinstance(labels, np.ndarray) else labels)
    return Labels(host, be.asarray(host, dtype=np.int32) if be.runs_kernels else host)


def _labels(be, logits, labels):
    """Validated labels: (host copy, backend int32 array)."""
    if isinstance(labels, Labels):
        _check(logits, labels.host, be.runs_kernels)
        return labels
    host = be.to_numpy(labels)
    _check(logits, host, be.runs_kernels)
    return host, (be.asarray(labels, dtype=np.int32) if be.runs_kernels else host)


def _row_block(c):
    """Threads per row: whole warps, no more than the row needs, at most MAX_BLOCK."""
    return min(MAX_BLOCK, 32 * ceil_div(c, 32))


# ---- NumPy references (dtype-generic: float64 for gradient checks) ------------------------

def softmax_cross_entropy_reference(logits, labels):
    """(mean loss, probs) in the dtype of ``logits``."""
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(logits.shape[0])
    loss = np.log(s[:, 0]) - (logits[rows, labels] - m[:, 0])
    return loss.mean(), e / s


def softmax_cross_entropy_backward_reference(probs, labels):
    d = probs.copy()
    d[np.arange(probs.shape[0]), labels] -= 1
    return d / probs.shape[0]


def topk_ranks_reference(logits, labels):
    """Per row, how many classes rank before the label (the module docstring's rule)."""
    n, c = logits.shape
    v = logits[np.arange(n), labels][:, None]
    before = (logits > v) | ((logits == v) & (np.arange(c)[None, :] < labels[:, None]))
    return np.where(np.isnan(v[:, 0]), c, before.sum(axis=1))


def _check_ks(ks):
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"top-k needs every k >= 1, got ks={ks}")
    return ks


def _count(ranks, ks):
    return tuple(int(np.sum(ranks >= k)) for k in _check_ks(ks))


def topk_errors_reference(logits, labels, ks=(1, 5)):
    return _count(topk_ranks_reference(logits, labels), ks)


# ---- launchers -----------------------------------------------------------------------------

def softmax_cross_entropy_forward(be, logits, labels, sync=True):
    """(loss, probs): loss the mean over the batch, a Python float, or with ``sync=False`` a
    one-element float32 array on the backend (no device-to-host copy); probs (N, C)."""
    host, labels = _labels(be, logits, labels)
    if not be.runs_kernels:
        loss, probs = softmax_cross_entropy_reference(logits, host)
        return (float(loss) if sync else np.array([loss], dtype=np.float32)), probs
    n, c = logits.shape
    probs, loss_rows, mean = be.empty((n, c)), be.empty((n,)), be.empty((1,))
    be.launch(KERNELS, "softmax_xent_forward", n, _row_block(c),
              [logits, labels, probs, loss_rows, i32(c)])
    be.launch(KERNELS, "softmax_loss_mean", 1, MAX_BLOCK, [loss_rows, mean, i32(n)])
    return (float(be.to_numpy(mean)[0]) if sync else mean), probs


def softmax_cross_entropy_backward(be, probs, labels):
    """dlogits = (probs - onehot(labels)) / N."""
    host, labels = _labels(be, probs, labels)
    if not be.runs_kernels:
        return softmax_cross_entropy_backward_reference(probs, host)
    n, c = probs.shape
    d = be.empty((n, c))
    block = _row_block(c)
    be.launch(KERNELS, "softmax_xent_backward", (ceil_div(c, block), min(n, MAX_GRID_Y)), block,
              [probs, labels, d, i32(n), i32(c), f32(1.0 / n)])
    return d


def topk_ranks(be, logits, labels):
    """Per row, how many classes rank before the label (int32, on the backend)."""
    host, labels = _labels(be, logits, labels)
    if not be.runs_kernels:
        return topk_ranks_reference(logits, host)
    n, c = logits.shape
    ranks = be.empty((n,), dtype=np.int32)
    be.launch(KERNELS, "softmax_topk_rank", n, _row_block(c), [logits, labels, ranks, i32(c)])
    return ranks


def count_errors(ranks, ks=(1, 5)):
    """Top-k error counts from host `topk_ranks`."""
    return _count(np.asarray(ranks), ks)


def topk_errors(be, logits, labels, ks=(1, 5)):
    """Number of rows whose label is not in the top k, for each k in ``ks``.

    The kernel computes each row's label rank; the N ranks come back to the host, which
    counts them for every k."""
    _check_ks(ks)
    return count_errors(be.to_numpy(topk_ranks(be, logits, labels)), ks)
