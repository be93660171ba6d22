"""Dropout with a counter-based generator (Philox4x32-10), identical on every backend.

Mask rule (kernels/dropout.cu implements the same, bit for bit): element ``i`` of the
flattened array is in group ``g = i // 4``; the generator's four words for
counter ``(g & 0xffffffff, g >> 32, 0, 0)`` under key ``(seed & 0xffffffff, seed >> 32)``
belong to elements ``4g .. 4g+3``; with ``u = (word >> 8) / 2**24`` the element is kept iff
``u >= p``, evaluated exactly as ``(word >> 8) >= ceil(p * 2**24)``. So the mask is a pure
function of (shape size, p, seed): the backward pass regenerates it, and the numpy, emu and
cuda backends draw the same mask on every run. With ``offset`` o, element i uses index o + i
in this rule: a rank holding samples s.. of a batch passes o = s x (features per sample) and
draws its part of the whole batch's mask (o = 0 is the rule as stated).

Modes: ``"inverted"`` scales kept units by 1/(1-p) in training and is the identity at test
time; ``"classic"`` (the paper) keeps units unscaled in training and multiplies by (1-p) at
test time. Dropped units are exactly 0, even where the input was inf or NaN.
"""
from typing import NamedTuple

import numpy as np

from ._launch import ELEMENTWISE_BLOCK, ceil_div, elementwise_grid, f32, i32, i64, require_float32

KERNELS = "dropout.cu"
MODES = ("inverted", "classic")

# Philox4x32-10 constants (Salmon et al. 2011; Random123).
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_U32 = 0xFFFFFFFF


def philox4x32_10_reference(counter, key):
    """Philox4x32-10 in NumPy, vectorised over any number of counters.

    counter: 4 uint32 arrays (or a (4, ...) array), key: 2 uint32 arrays or ints, all
    broadcastable. Returns a (4, ...) uint32 array of output words. The 32x32->64-bit
    products are done in uint64, so every step is exact integer arithmetic.
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _U32 for c in counter)
    k0, k1 = (np.asarray(k, dtype=np.uint64) & _U32 for k in key)
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    w0, w1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
    mask, shift = np.uint64(_U32), np.uint64(32)
    for _ in range(10):
        p0, p1 = m0 * c0, m1 * c2  # < 2**64: no wrap-around
        c0, c1, c2, c3 = ((p1 >> shift) ^ c1 ^ k0, p1 & mask, (p0 >> shift) ^ c3 ^ k1, p0 & mask)
        k0, k1 = (k0 + w0) & mask, (k1 + w1) & mask
    return np.stack(np.broadcast_arrays(c0, c1, c2, c3)).astype(np.uint32)


def _check_p(p):
    p = float(p)
    if not 0.0 <= p < 1.0:  # also rejects NaN
        raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
    return p


def _seed_key(seed):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"dropout seed must be an integer, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"dropout seed must be in [0, 2**64), got {seed}")
    return seed & _U32, seed >> 32


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"dropout mode must be one of {MODES}, got {mode!r}")
    return mode


def _threshold(p):
    """ceil(p * 2**24): exact in float64, since scaling by a power of two is exact."""
    return int(np.ceil(p * 2.0**24))


def _train_scale(p, mode):
    return 1.0 / (1.0 - p) if mode == "inverted" else 1.0


def _test_scale(p, mode):
    return 1.0 if mode == "inverted" else 1.0 - p


def _check_offset(offset):
    if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, (int, np.integer)) \
            or not 0 <= int(offset) < 2**62:
        raise ValueError(f"dropout offset must be an integer in [0, 2**62), got {offset!r}")
    return int(offset)


def dropout_mask_reference(shape, p, seed, offset=0):
    """The keep mask (True = kept) for an array of ``shape`` whose first element has counter
    index ``offset``, as the kernel draws it."""
    p, (k0, k1), offset = _check_p(p), _seed_key(seed), _check_offset(offset)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    n = int(np.prod(shape, dtype=np.int64))
    g = np.arange(offset // 4, ceil_div(offset + n, 4), dtype=np.uint64)
    zero = np.zeros_like(g)
    words = philox4x32_10_reference((g & np.uint64(_U32), g >> np.uint64(32), zero, zero),
                                    (k0, k1))
    # words[j, g] is counter index 4g + j: transpose to index order, keep this array's part.
    start = offset % 4
    return ((words.T.reshape(-1)[start:start + n] >> 8) >= _threshold(p)).reshape(shape)


def dropout_forward_reference(x, p=0.5, seed=0, mode="inverted", train=True, offset=0):
    p, mode = _check_p(p), _check_mode(mode)
    if not train:
        return x * x.dtype.type(_test_scale(p, mode))
    keep = dropout_mask_reference(x.shape, p, seed, offset)
    return np.where(keep, x * x.dtype.type(_train_scale(p, mode)), 0).astype(x.dtype)


def dropout_backward_reference(dy, p=0.5, seed=0, mode="inverted", offset=0):
    """dx = dy * mask * scale (the training-mode map, which is linear in its input)."""
    return dropout_forward_reference(dy, p, seed, mode, train=True, offset=offset)


class StepSeed(NamedTuple):
    """A seed the kernel reads from device memory: splitmix64(splitmix64(buffer[0]) ^ salt),
    i.e. pyalexnet.rng.dropout_seed(step seed, layer, tower) with salt = (layer << 8) |
    tower, made on the device (a captured graph draws each replay's masks)."""

    buffer: object  # one uint64 on the backend: the step's seed
    salt: int


def _apply(be, x, threshold, scale, seed, offset):
    require_float32("dropout: x", x)
    y = be.empty(x.shape)
    groups = ceil_div(offset + x.size, 4) - offset // 4
    if isinstance(seed, StepSeed):
        key = [seed.buffer, np.uint64(seed.salt)]
        kernel = "dropout_apply_step_seed"
    else:
        key = [np.uint32(k) for k in _seed_key(seed)]
        kernel = "dropout_apply"
    be.launch(KERNELS, kernel, elementwise_grid(groups), ELEMENTWISE_BLOCK,
              [x, y, i64(x.size), np.uint32(threshold), f32(scale), *key, i64(offset)])
    return y


def dropout_forward(be, x, p=0.5, seed=0, mode="inverted", train=True, offset=0):
    """Training: y = x * mask * (1/(1-p) if inverted else 1). Test: y = x (inverted) or
    x * (1-p) (classic). Same seed, same mask, on every backend; ``offset``: the counter
    index of x's first element (see the module doc)."""
    p, mode, offset = _check_p(p), _check_mode(mode), _check_offset(offset)
    if not isinstance(seed, StepSeed):
        _seed_key(seed)
    if not be.runs_kernels:
        if isinstance(seed, StepSeed):
            raise TypeError("a StepSeed is for the kernel backends (captured steps)")
        return dropout_forward_reference(x, p, seed, mode, train, offset)
    if not train:  # threshold 0 keeps every unit and draws no numbers
        return _apply(be, x, 0, _test_scale(p, mode), seed, offset)
    return _apply(be, x, _threshold(p), _train_scale(p, mode), seed, offset)


def dropout_backward(be, dy, p=0.5, seed=0, mode="inverted", offset=0):
    """dx = dy * mask * scale, the mask regenerated from ``seed`` and ``offset`` (pass the
    forward's)."""
    return dropout_forward(be, dy, p, seed, mode, train=True, offset=offset)


def philox_words(be, counters, keys):
    """Run the kernel's generator on (n, 4) counters and (n, 2) keys: (n, 4) uint32 words.

    A test hook, so the kernel's Philox can be checked against known-answer vectors."""
    ck = np.concatenate([np.asarray(counters, np.uint32).reshape(-1, 4),
                         np.asarray(keys, np.uint32).reshape(-1, 2)], axis=1)
    if not be.runs_kernels:
        return philox4x32_10_reference(ck[:, :4].T, ck[:, 4:].T).T.copy()
    out = be.empty((ck.shape[0], 4), dtype=np.uint32)
    be.launch(KERNELS, "dropout_philox_words", elementwise_grid(ck.shape[0]), ELEMENTWISE_BLOCK,
              [be.asarray(ck, dtype=np.uint32), out, i32(ck.shape[0])])
    return be.to_numpy(out)
