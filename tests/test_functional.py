"""pyalexnet.functional: NumPy in, NumPy out, every op, backend by argument."""
import inspect

import numpy as np
import pytest
from conftest import assert_matches_reference

import pyalexnet.functional as F
from pyalexnet.ops import conv, linear, lrn, pool, softmax, sgd

BACKENDS = ["numpy", "emu"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_forward_and_backward(backend, rng):
    x = rng.standard_normal((2, 4, 11, 9)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    y = F.conv2d_forward(x, w, b, stride=2, pad=1, groups=2, backend=backend)
    assert isinstance(y, np.ndarray) and y.shape == (2, 6, 6, 5)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    assert_matches_reference(y, conv.conv2d_forward_reference(x64, w64, b, 2, 1, 2), reduction=18)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = F.conv2d_backward_data(dy, w, x.shape, stride=2, pad=1, groups=2, backend=backend)
    assert_matches_reference(dx, conv.conv2d_backward_data_reference(dy.astype(np.float64), w64, x.shape, 2, 1, 2),
                             reduction=27)
    dw = F.conv2d_backward_filter(x, dy, w.shape, stride=2, pad=1, groups=2, backend=backend)
    assert_matches_reference(dw, conv.conv2d_backward_filter_reference(x64, dy.astype(np.float64), w.shape, 2, 1, 2),
                             reduction=60)
    np.testing.assert_allclose(F.conv2d_backward_bias(dy, backend=backend), dy.sum(axis=(0, 2, 3)), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_other_op(backend, rng):
    x = rng.standard_normal((3, 8, 7, 7)).astype(np.float32)
    y, scale = F.lrn_forward(x, size=3, alpha=0.5, backend=backend)
    ref_y, ref_scale = lrn.lrn_forward_reference(x.astype(np.float64), 3, 0.5)
    assert_matches_reference(y, ref_y, reduction=3)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    assert_matches_reference(F.lrn_backward(x, y, scale, dy, size=3, alpha=0.5, backend=backend),
                             lrn.lrn_backward_reference(x.astype(np.float64), ref_y, ref_scale, dy, 3, 0.5),
                             reduction=3)
    p = F.maxpool_forward(x, kernel=3, stride=2, backend=backend)
    np.testing.assert_array_equal(p, pool.maxpool_forward_reference(x, 3, 2))
    dp = rng.standard_normal(p.shape).astype(np.float32)
    assert_matches_reference(F.maxpool_backward(x, p, dp, kernel=3, stride=2, backend=backend),
                             pool.maxpool_backward_reference(x, p, dp, 3, 2))
    r = F.relu_forward(x, backend=backend)
    np.testing.assert_array_equal(r, np.maximum(x, 0))
    np.testing.assert_array_equal(F.relu_backward(r, dy, backend=backend), np.where(r > 0, dy, 0))
    d = F.dropout_forward(x, p=0.5, seed=3, backend=backend)
    np.testing.assert_array_equal(d, x * F.dropout_backward(np.ones_like(x), p=0.5, seed=3, backend=backend))

    a = rng.standard_normal((5, 7)).astype(np.float32)
    bm = rng.standard_normal((9, 7)).astype(np.float32)
    c = rng.standard_normal((5, 9)).astype(np.float32)
    out = F.gemm(a, bm, trans_b=True, alpha=2.0, beta=0.5, c=c, backend=backend)
    assert_matches_reference(out, 2.0 * a.astype(np.float64) @ bm.T + 0.5 * c, reduction=7)
    assert_matches_reference(F.linear_forward(a, bm, np.ones(9, np.float32), backend=backend),
                             linear.linear_forward_reference(a.astype(np.float64), bm, np.ones(9)), reduction=7)

    logits = rng.standard_normal((4, 10)).astype(np.float32)
    labels = np.array([1, 2, 3, 9], np.int32)
    loss, probs = F.softmax_cross_entropy_forward(logits, labels, backend=backend)
    ref_loss, ref_probs = softmax.softmax_cross_entropy_reference(logits.astype(np.float64), labels)
    assert abs(loss - ref_loss) < 1e-5
    assert_matches_reference(F.softmax_cross_entropy_backward(probs, labels, backend=backend),
                             softmax.softmax_cross_entropy_backward_reference(probs.astype(np.float64), labels))
    assert F.topk_errors(logits, labels, backend=backend) == softmax.topk_errors_reference(logits, labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_ops_return_new_arrays(backend, rng):
    w, g, v = (rng.standard_normal((4, 6)).astype(np.float32) for _ in range(3))
    before = w.copy(), v.copy()
    w2, v2 = F.sgd_update(w, g, v, 0.1, momentum=0.9, weight_decay=5e-4, backend=backend)
    np.testing.assert_array_equal(w, before[0])
    np.testing.assert_array_equal(v, before[1])
    rw, rv = sgd.sgd_update_reference(w, g, v, 0.1, 0.9, 5e-4)
    np.testing.assert_allclose(w2, rw, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v2, rv, rtol=1e-6, atol=1e-7)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    b = np.arange(3, dtype=np.float32)
    y = F.bias_add(x, b, backend=backend)
    np.testing.assert_allclose(y, x + b[None, :, None], rtol=1e-6)
    assert not np.shares_memory(y, x)


def test_signatures_drop_the_backend_argument():
    sig = inspect.signature(F.conv2d_forward)
    assert list(sig.parameters)[:2] == ["x", "w"] and "be" not in sig.parameters
    assert sig.parameters["backend"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "conv2d_forward" in F.__all__ and F.conv2d_forward.__doc__ == conv.conv2d_forward.__doc__
