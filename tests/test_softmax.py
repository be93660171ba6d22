import numpy as np
import pytest
from conftest import assert_matches_reference

from pyalexnet.gradcheck import assert_gradient_close, numeric_gradient
from pyalexnet.ops.softmax import (softmax_cross_entropy_backward,
                                   softmax_cross_entropy_backward_reference,
                                   softmax_cross_entropy_forward,
                                   softmax_cross_entropy_reference, topk_errors,
                                   topk_errors_reference, topk_ranks_reference)

# AlexNet's fc8 at batch 2 and 128; odd class counts around the 32-thread warp and the
# 256-thread block (1, 37, 257, 1001); a single class.
SHAPES = [(2, 1000), (128, 1000), (3, 10), (5, 1001), (1, 1), (7, 37), (4, 257)]
SCALES = [1.0, 80.0, 1000.0]  # 80 and 1000: exp without the max shift would overflow


def _logits(rng, shape, scale):
    x = rng.standard_normal(shape) * 3 if scale == 1.0 else rng.uniform(-scale, scale, shape)
    return x.astype(np.float32)


def _labels(rng, n, c):
    return rng.integers(0, c, n).astype(np.int32)


@pytest.mark.parametrize("shape", [(3, 10), (4, 7), (2, 1)])
def test_reference_gradient(rng, shape):
    x = rng.standard_normal(shape) * 2
    labels = _labels(rng, *shape)
    numeric = numeric_gradient(lambda v: softmax_cross_entropy_reference(v, labels)[0], x, 1.0)
    _, probs = softmax_cross_entropy_reference(x, labels)
    analytic = softmax_cross_entropy_backward_reference(probs, labels)
    assert_gradient_close(analytic, numeric, what="softmax cross-entropy dlogits")


def test_reference_is_stable_and_shift_invariant(rng):
    x = rng.uniform(-80, 80, (6, 50))
    labels = _labels(rng, 6, 50)
    loss, probs = softmax_cross_entropy_reference(x, labels)
    loss_big, probs_big = softmax_cross_entropy_reference(x + 1e4, labels)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_allclose(probs_big, probs, atol=1e-11)
    np.testing.assert_allclose(loss_big, loss, rtol=1e-9)
    # Against the textbook formula on a row small enough not to overflow.
    y = rng.standard_normal((3, 5))
    lab = np.array([0, 4, 2])
    direct = np.mean(-np.log(np.exp(y[np.arange(3), lab]) / np.exp(y).sum(axis=1)))
    np.testing.assert_allclose(softmax_cross_entropy_reference(y, lab)[0], direct, rtol=1e-12)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(kernel_backend, rng, shape, scale):
    be = kernel_backend
    n, c = shape
    x = _logits(rng, shape, scale)
    labels = _labels(rng, n, c)
    loss, probs = softmax_cross_entropy_forward(be, be.asarray(x), be.asarray(labels, np.int32))
    ref_loss, ref_probs = softmax_cross_entropy_reference(x.astype(np.float64), labels)
    assert isinstance(loss, float)
    assert_matches_reference(np.array(loss), np.array(ref_loss), reduction=max(n, c),
                             what="loss")
    probs = be.to_numpy(probs)
    assert_matches_reference(probs, ref_probs, reduction=c, what="probs")
    # The backward takes probs as its input: compare with the reference on the same probs
    # (from float64 probs, p - 1 near p = 1 would measure float32 cancellation, not the
    # kernel).
    d = softmax_cross_entropy_backward(be, be.asarray(probs), be.asarray(labels, np.int32))
    assert_matches_reference(be.to_numpy(d), softmax_cross_entropy_backward_reference(
        probs.astype(np.float64), labels), what="dlogits")


def test_loss_is_deterministic(kernel_backend, rng):
    be = kernel_backend
    x, labels = be.asarray(_logits(rng, (300, 37), 1.0)), be.asarray(_labels(rng, 300, 37), np.int32)
    a = softmax_cross_entropy_forward(be, x, labels)[0]
    b = softmax_cross_entropy_forward(be, x, labels)[0]
    assert a == b


def test_extreme_rows(backend):
    # One dominant class: probs exactly one-hot in float32, loss 0 or the full gap.
    x = np.full((2, 1000), -80.0, np.float32)
    x[:, 3] = 80.0
    loss, probs = softmax_cross_entropy_forward(backend, backend.asarray(x),
                                                backend.asarray(np.array([3, 4]), np.int32))
    probs = backend.to_numpy(probs)
    assert np.all(np.isfinite(probs)) and np.allclose(probs[:, 3], 1)
    assert abs(loss - 80.0) < 1e-3  # rows: ~0 and 160, mean 80


def _stable_sort_rank(x, label):
    """Independent rank: position of the label in a stable descending sort."""
    order = np.lexsort((np.arange(x.size), -x))
    return int(np.nonzero(order == label)[0][0])


def test_topk_reference_tie_rule(rng):
    x = rng.integers(0, 4, (40, 12)).astype(np.float64)  # many ties
    labels = _labels(rng, 40, 12)
    ranks = topk_ranks_reference(x, labels)
    assert list(ranks) == [_stable_sort_rank(x[i], labels[i]) for i in range(40)]
    row = np.ones((1, 10))
    assert topk_errors_reference(row, np.array([4]), ks=(1, 4, 5)) == (1, 1, 0)


@pytest.mark.parametrize("shape", [(2, 1000), (128, 1000), (7, 37), (1, 1), (5, 1001)])
def test_topk_kernel_matches_reference(kernel_backend, rng, shape):
    be = kernel_backend
    n, c = shape
    x = _logits(rng, shape, 1.0)
    x[:, ::3] = np.round(x[:, ::3])  # some ties
    labels = _labels(rng, n, c)
    labels[0] = 0
    x[0, 0] = x[0].max()  # a row the classifier gets right
    ks = (1, 5, c)
    got = topk_errors(be, be.asarray(x), be.asarray(labels, np.int32), ks)
    assert got == topk_errors_reference(x, labels, ks)
    assert got[-1] == 0 and got[0] < n


def test_topk_nan_and_ties(backend):
    x = np.array([[1, 1, 1, 1, 1, 1, 1],       # label 5: rank 5
                  [0, 2, 2, 0, 0, 0, 0],       # label 2: rank 1 (tie with class 1)
                  [0, 0, np.nan, 0, 0, 0, 0],  # NaN label logit: always an error
                  [np.nan, 0, 0, 0, 0, 0, 0],  # NaN elsewhere does not outrank the label
                  [9, 0, 0, 0, 0, 0, 0]], np.float32)
    labels = np.array([5, 2, 2, 1, 0], np.int32)
    got = topk_errors(backend, backend.asarray(x), backend.asarray(labels, np.int32),
                      ks=(1, 2, 5, 6, 7))
    # ranks 5, 1, 7, 0, 0
    assert got == (3, 2, 2, 1, 1)


@pytest.mark.parametrize("bad", [[0, 10], [-1, 0], [0, 2**31]])
def test_labels_out_of_range(backend, bad):
    x = backend.asarray(np.zeros((2, 10), np.float32))
    labels = np.array(bad, np.int64)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        softmax_cross_entropy_forward(backend, x, labels)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        softmax_cross_entropy_backward(backend, x, labels)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        topk_errors(backend, x, labels)


def test_bad_shapes_and_dtypes(backend):
    x = backend.asarray(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        softmax_cross_entropy_forward(backend, x, np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="integer"):
        softmax_cross_entropy_forward(backend, x, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        softmax_cross_entropy_forward(backend, backend.asarray(np.zeros(10, np.float32)),
                                      np.zeros(1, np.int32))
    with pytest.raises(ValueError, match="k >= 1"):
        topk_errors(backend, x, np.zeros(2, np.int32), ks=(0,))


def test_kernel_rejects_float64(kernel_backend):
    be = kernel_backend
    with pytest.raises(TypeError, match="float32"):
        softmax_cross_entropy_forward(be, be.asarray(np.zeros((2, 3)), np.float64),
                                      np.zeros(2, np.int32))


def test_int64_labels_accepted(kernel_backend, rng):
    be = kernel_backend
    x = _logits(rng, (4, 9), 1.0)
    labels = _labels(rng, 4, 9)
    a = softmax_cross_entropy_forward(be, be.asarray(x), labels.astype(np.int64))[0]
    b = softmax_cross_entropy_forward(be, be.asarray(x), be.asarray(labels, np.int32))[0]
    assert a == b
