import numpy as np
import pytest
from conftest import assert_matches_reference

from pyalexnet.gradcheck import assert_gradient_close, numeric_gradient
from pyalexnet.ops.dropout import (dropout_backward, dropout_backward_reference,
                                   dropout_forward, dropout_forward_reference,
                                   dropout_mask_reference, philox4x32_10_reference, philox_words)

# Random123's kat_vectors for philox4x32 10: counter (4 words), key (2 words) -> 4 words.
PHILOX_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]
KAT_COUNTERS = np.array([c for c, _, _ in PHILOX_KAT], np.uint32)
KAT_KEYS = np.array([k for _, k, _ in PHILOX_KAT], np.uint32)
KAT_WORDS = np.array([w for _, _, w in PHILOX_KAT], np.uint32)

# Not multiples of 4 (one Philox call) nor of the 256-thread block; fc6/fc7 at batch 2.
SHAPES = [(1,), (3,), (7,), (1021,), (2, 4096), (3, 5, 7, 11), (2, 256, 6, 6)]
MODES = ("inverted", "classic")


def test_numpy_philox_known_answers():
    words = philox4x32_10_reference(KAT_COUNTERS.T, KAT_KEYS.T).T
    np.testing.assert_array_equal(words, KAT_WORDS)


def test_kernel_philox_known_answers(backend):
    # Also runs the kernel's generator on counters that use the high words and a 2**32 carry.
    counters = np.concatenate([KAT_COUNTERS, [[0xffffffff, 1, 0, 0], [0, 0xffffffff, 7, 9]]])
    keys = np.concatenate([KAT_KEYS, [[5, 0x80000000], [0xdeadbeef, 1]]])
    words = philox_words(backend, counters, keys)
    np.testing.assert_array_equal(words[:3], KAT_WORDS)
    np.testing.assert_array_equal(words, philox4x32_10_reference(counters.T, keys.T).T)


def test_mask_layout():
    # Element i is word i % 4 of the call with counter i // 4: spell it out for a few.
    p, seed = 0.3, 0x0123456789abcdef
    mask = dropout_mask_reference((9,), p, seed)
    for i in range(9):
        w = philox4x32_10_reference(([i // 4], [0], [0], [0]), (seed & 0xffffffff, seed >> 32))
        assert mask[i] == ((int(w[i % 4, 0]) >> 8) / 2**24 >= p)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_kernel_bit_identical_to_reference(kernel_backend, rng, shape, mode):
    be = kernel_backend
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    seed = 2**40 + 12345  # uses the key's high word
    y = be.to_numpy(dropout_forward(be, be.asarray(x), 0.5, seed, mode))
    # float32 x * float32 scale is correctly rounded everywhere: exact equality holds.
    np.testing.assert_array_equal(y, dropout_forward_reference(x, 0.5, seed, mode))
    mask = dropout_mask_reference(shape, 0.5, seed)
    np.testing.assert_array_equal(y != 0, mask)
    dx = be.to_numpy(dropout_backward(be, be.asarray(dy), 0.5, seed, mode))
    np.testing.assert_array_equal(dx, dropout_backward_reference(dy, 0.5, seed, mode))


def test_unaligned_views_take_the_scalar_path(kernel_backend, rng):
    # A view one float in is not 16-byte aligned: the kernel must not use float4 there.
    be = kernel_backend
    base = be.asarray(rng.standard_normal(1 + 4 * 67).astype(np.float32))
    x = base[1:]
    ptr = x.data.ptr if hasattr(x.data, "ptr") else x.ctypes.data  # CuPy or NumPy
    assert ptr % 16 != 0
    y = be.to_numpy(dropout_forward(be, x, 0.25, 9))
    np.testing.assert_array_equal(y, dropout_forward_reference(be.to_numpy(x), 0.25, 9))


def test_threshold_boundary_is_kept(kernel_backend, rng):
    # Choose p so that an element's uniform equals p exactly: the rule "keep iff u >= p"
    # keeps it; a kernel comparing with ">" (or rounding p differently) would drop it.
    be = kernel_backend
    seed, n = 4242, 37
    g = np.arange(10, dtype=np.uint32)
    words = philox4x32_10_reference((g, 0 * g, 0 * g, 0 * g), (seed, 0)).T.reshape(-1)[:n]
    u24 = words >> 8
    i = int(np.argmax((u24 > 2**20) & (u24 < 2**24 - 2**20)))  # a middling one
    p = float(u24[i]) / 2**24
    x = rng.standard_normal(n).astype(np.float32) + 10  # never 0
    y = be.to_numpy(dropout_forward(be, be.asarray(x), p, seed))
    mask = dropout_mask_reference(n, p, seed)
    assert mask[i] and y[i] != 0
    assert np.array_equal(y != 0, mask) and np.array_equal(u24 >= u24[i], mask)


def test_same_seed_same_mask_different_seed_differs(kernel_backend):
    be = kernel_backend
    x = be.asarray(np.ones(5000, np.float32))
    a = be.to_numpy(dropout_forward(be, x, 0.5, 1))
    b = be.to_numpy(dropout_forward(be, x, 0.5, 1))
    c = be.to_numpy(dropout_forward(be, x, 0.5, 2))
    np.testing.assert_array_equal(a, b)
    # Independent masks agree on about half the entries; 5000 draws: std 35, bound 10 sd.
    assert abs(np.sum((a != 0) == (c != 0)) - 2500) < 350


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction(p):
    # Binomial(n, 1-p): the bound is 8 standard deviations, so a correct generator never
    # fails it, while a p/(1-p) mix-up or a biased word is off by hundreds of sd.
    n = 1 << 20
    kept = dropout_mask_reference((n,), p, 77).sum()
    sd = np.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 8 * sd
    # Within each word slot too (a bug that reuses one word would show here).
    per_slot = dropout_mask_reference((n,), p, 77).reshape(-1, 4).sum(axis=0)
    assert np.all(np.abs(per_slot - n / 4 * (1 - p)) < 8 * np.sqrt(n / 4 * p * (1 - p)))


def test_inverted_preserves_expectation_classic_scales_at_test(kernel_backend):
    be = kernel_backend
    n, p = 1 << 16, 0.5
    x = np.full(n, 3.0, np.float32)
    y = be.to_numpy(dropout_forward(be, be.asarray(x), p, 5, "inverted"))
    # Mean of 3 * Bernoulli(1-p) / (1-p): sd 3 sqrt(p/(1-p)/n) ~ 0.012; bound 8 sd.
    assert abs(y.mean() - 3.0) < 8 * 3.0 * np.sqrt(p / (1 - p) / n)
    assert set(np.unique(y)) <= {0.0, 6.0}
    yc = be.to_numpy(dropout_forward(be, be.asarray(x), p, 5, "classic"))
    assert set(np.unique(yc)) <= {0.0, 3.0}
    np.testing.assert_array_equal(yc != 0, y != 0)
    # Test time: inverted is the identity, classic multiplies by the keep probability, so
    # both match the training-time expectation.
    rng = np.random.default_rng(3)
    z = rng.standard_normal((7, 13)).astype(np.float32)
    zi = be.to_numpy(dropout_forward(be, be.asarray(z), 0.3, 5, "inverted", train=False))
    np.testing.assert_array_equal(zi, z)
    zc = be.to_numpy(dropout_forward(be, be.asarray(z), 0.3, 5, "classic", train=False))
    assert_matches_reference(zc, z.astype(np.float64) * 0.7)


def test_p_zero_keeps_everything(backend, rng):
    x = rng.standard_normal((5, 33)).astype(np.float32)
    for mode in MODES:
        y = backend.to_numpy(dropout_forward(backend, backend.asarray(x), 0.0, 3, mode))
        np.testing.assert_array_equal(y, x)


def test_dropped_units_are_exact_zeros_even_for_nan(kernel_backend):
    be = kernel_backend
    x = np.full(64, np.nan, np.float32)
    y = be.to_numpy(dropout_forward(be, be.asarray(x), 0.5, 11))
    mask = dropout_mask_reference(64, 0.5, 11)
    assert np.all(y[~mask] == 0) and np.all(np.isnan(y[mask]))


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_p(backend, p):
    x = backend.asarray(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout_forward(backend, x, p)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout_backward(backend, x, p)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout_mask_reference((4,), p, 0)


def test_bad_seed_and_mode(backend):
    x = backend.asarray(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="seed"):
        dropout_forward(backend, x, 0.5, -1)
    with pytest.raises(ValueError, match="seed"):
        dropout_forward(backend, x, 0.5, 2**64)
    with pytest.raises(TypeError, match="seed"):
        dropout_forward(backend, x, 0.5, 1.5)
    with pytest.raises(ValueError, match="mode"):
        dropout_forward(backend, x, 0.5, 0, "paper")


def test_kernel_rejects_float64(kernel_backend):
    be = kernel_backend
    with pytest.raises(TypeError, match="float32"):
        dropout_forward(be, be.asarray(np.ones(4), dtype=np.float64))


@pytest.mark.parametrize("mode", MODES)
def test_reference_gradient(rng, mode):
    # The same seed for every evaluation makes the map linear: y = x * mask * scale.
    x = rng.standard_normal((3, 4, 5))
    dy = rng.standard_normal(x.shape)
    f = lambda v: dropout_forward_reference(v, 0.4, 99, mode)  # noqa: E731
    numeric = numeric_gradient(f, x, dy)
    assert_gradient_close(dropout_backward_reference(dy, 0.4, 99, mode), numeric,
                          what=f"dropout dx ({mode})")


@pytest.mark.parametrize("split", [0, 1, 3, 4, 6, 13])
def test_offset_slice_draws_the_whole_arrays_mask(backend, rng, split):
    # A rank holding elements split.. of a batch draws exactly that part of the one-process
    # mask, whatever the split's alignment to Philox's groups of four (vector and tail paths).
    n, p, seed = 45, 0.4, 99
    x = rng.standard_normal(n).astype(np.float32) + 10
    whole = dropout_forward_reference(x, p, seed)
    for lo, hi in ((0, split), (split, n)):
        part = backend.asarray(np.ascontiguousarray(x[lo:hi]))
        y = backend.to_numpy(dropout_forward(backend, part, p, seed, offset=lo))
        np.testing.assert_array_equal(y, whole[lo:hi])
        dx = backend.to_numpy(dropout_backward(backend, part, p, seed, offset=lo))
        np.testing.assert_array_equal(dx, whole[lo:hi])


def test_offset_zero_is_the_plain_rule_and_bad_offsets_are_refused():
    np.testing.assert_array_equal(dropout_mask_reference(10, 0.5, 3, offset=0),
                                  dropout_mask_reference(10, 0.5, 3))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="offset"):
            dropout_mask_reference(10, 0.5, 3, offset=bad)


def test_dropout_layer_follows_the_sample_not_the_split():
    # The layer's per-tower masks with a pass starting at sample s equal rows s.. of the
    # whole batch's masks (what data-parallel ranks rely on).
    from pyalexnet.backends import get_backend
    from pyalexnet.layers import Pass
    from pyalexnet.layers.dropout import Dropout

    be = get_backend("numpy")
    layer = Dropout(name="drop", index=3, in_shape=(12,), out_shape=(12,), p=0.5)
    x = np.random.default_rng(1).standard_normal((6, 12)).astype(np.float32) + 5
    whole, _ = layer.forward(be, x, {}, Pass(seed=8, towers=(0, 1)))
    for lo, hi in ((0, 2), (2, 6)):
        part, _ = layer.forward(be, x[lo:hi].copy(), {}, Pass(seed=8, towers=(0, 1),
                                                              sample_offset=lo))
        np.testing.assert_array_equal(part, whole[lo:hi])


def test_step_seed_in_device_memory_draws_the_layer_seed_mask(kernel_backend, rng):
    """A captured step's dropout reads the step's seed from memory and makes the layer's
    key on the device: the same mask as the key made on the host (rng.dropout_seed)."""
    from pyalexnet.ops.dropout import StepSeed
    from pyalexnet.rng import dropout_seed

    be = kernel_backend
    x = be.asarray(rng.standard_normal((5, 37)).astype(np.float32))
    for step_seed, layer, tower in [(0, 0, 0), (12345, 13, 1), (2**63 + 7, 255, 0)]:
        buf = be.asarray(np.array([step_seed], np.uint64), dtype=np.uint64)
        got = dropout_forward(be, x, p=0.5, seed=StepSeed(buf, (layer << 8) | tower), offset=8)
        want = dropout_forward(be, x, p=0.5, seed=dropout_seed(step_seed, layer, tower), offset=8)
        np.testing.assert_array_equal(be.to_numpy(got), be.to_numpy(want))
