"""Memory-bound kernels on bf16 activations (kernels/storage.cuh): outputs stored as bf16
bits, compared with the references on the same bits. ReLU and max-pooling round nothing,
so they must agree bit for bit. Every emulator thread order, with bounds checking."""
import numpy as np
import pytest

from conftest import assert_matches_reference
from pyalexnet.backends import get_backend
from pyalexnet.ops import bias, conv, lrn, pool, relu
from pyalexnet.ops.precision import BF16, UNIT_ROUNDOFF, from_bf16, to_bf16


def _bits(rng, shape):
    return to_bf16(rng.standard_normal(shape, dtype=np.float32))


def test_relu_bf16(checked_backend, rng):
    be = checked_backend
    x = _bits(rng, (3, 5, 7, 9))
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    y = relu.relu_forward(be, be.asarray(x, dtype=BF16))
    assert y.dtype == BF16
    np.testing.assert_array_equal(be.to_numpy(y), relu.relu_forward_reference(x))
    np.testing.assert_array_equal(be.to_numpy(relu.relu_backward(be, y, be.asarray(dy))),
                                  relu.relu_backward_reference(relu.relu_forward_reference(x), dy))


@pytest.mark.parametrize("version", pool.BACKWARD_VERSIONS)
def test_maxpool_bf16(checked_backend, rng, version):
    """A maximum is one of its inputs: forward and backward agree with the reference bit
    for bit (ties included: bf16 has many)."""
    be = checked_backend
    x = _bits(rng, (2, 3, 13, 11))
    y_ref = pool.maxpool_forward_reference(x)
    dy = rng.standard_normal(y_ref.shape, dtype=np.float32)
    y = pool.maxpool_forward(be, be.asarray(x, dtype=BF16))
    assert y.dtype == BF16
    np.testing.assert_array_equal(be.to_numpy(y), y_ref)
    dx = pool.maxpool_backward(be, be.asarray(x, dtype=BF16), y, be.asarray(dy), version=version)
    np.testing.assert_array_equal(be.to_numpy(dx), pool.maxpool_backward_reference(x, y_ref, dy))


def test_lrn_bf16(checked_backend, rng):
    """y is the fp32 result rounded to bf16 (relative error <= the bf16 unit roundoff plus
    fp32's); scale and dx are fp32 and match a float64 reference on the same bf16 inputs."""
    be = checked_backend
    x = _bits(rng, (2, 9, 5, 6))
    x64 = from_bf16(x).astype(np.float64)
    y64, scale64 = lrn.lrn_forward_reference(x64)
    y, scale = lrn.lrn_forward(be, be.asarray(x, dtype=BF16))
    assert y.dtype == BF16 and scale.dtype == np.float32
    err = np.abs(from_bf16(be.to_numpy(y)) - y64)
    assert np.all(err <= (UNIT_ROUNDOFF["bf16"] + 64 * UNIT_ROUNDOFF["fp32"]) * np.abs(y64))
    assert_matches_reference(be.to_numpy(scale), scale64, reduction=5, what="scale")
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    dx = lrn.lrn_backward(be, be.asarray(x, dtype=BF16), y, scale, be.asarray(dy))
    y_used = from_bf16(be.to_numpy(y)).astype(np.float64)  # the backward sees the stored y
    dx64 = lrn.lrn_backward_reference(x64, y_used, scale64, dy.astype(np.float64))
    assert_matches_reference(be.to_numpy(dx), dx64, reduction=5, what="dx")


@pytest.mark.parametrize("tile", [128, 64])
def test_conv_forward_stores_bf16_maps(checked_backend, rng, tile):
    """The bf16 forward's epilogue rounds the finished fp32 value (bias and ReLU applied):
    bit for bit the fp32-output kernel's result rounded to nearest even."""
    be = checked_backend
    x = _bits(rng, (2, 6, 11, 9))
    w = _bits(rng, (10, 3, 3, 3))
    b = rng.standard_normal(10, dtype=np.float32)
    args = (be, be.asarray(x, dtype=BF16), be.asarray(w, dtype=BF16), be.asarray(b))
    opts = dict(stride=2, pad=1, groups=2, relu=True, precision="bf16", tile=tile)
    y = conv.conv2d_forward(*args, **opts, out_dtype=BF16)
    assert y.dtype == BF16
    y32 = conv.conv2d_forward(*args, **opts)
    np.testing.assert_array_equal(be.to_numpy(y), to_bf16(be.to_numpy(y32)))


def test_conv_bf16_maps_need_bf16_products():
    be = get_backend("numpy")
    x = np.zeros((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="out_dtype"):
        conv.conv2d_forward(be, x, x, precision="tf32", out_dtype=BF16)
    assert conv.conv2d_forward(be, x, x, precision="bf16", out_dtype=BF16).dtype == BF16


def test_relu_backward_stores_a_bf16_gradient(checked_backend, rng):
    """The gradient a bf16 product reads next, rounded in the ReLU's own pass: bit for bit
    the fp32 gradient rounded to nearest even, from fp32 or bf16 outputs y."""
    be = checked_backend
    dy = rng.standard_normal((4, 7, 9), dtype=np.float32)
    for y in (rng.standard_normal(dy.shape, dtype=np.float32), _bits(rng, dy.shape)):
        dx = relu.relu_backward(be, be.asarray(y, dtype=y.dtype), be.asarray(dy), out_dtype=BF16)
        assert dx.dtype == BF16
        np.testing.assert_array_equal(be.to_numpy(dx), to_bf16(relu.relu_backward_reference(y, dy)))
    with pytest.raises(ValueError, match="out_dtype"):
        relu.relu_backward(be, be.asarray(dy), be.asarray(dy), out_dtype=np.float16)


def test_bias_gradient_of_a_bf16_gradient(checked_backend, rng):
    be = checked_backend
    dy = _bits(rng, (3, 5, 6, 7))
    db = bias.bias_backward(be, be.asarray(dy, dtype=BF16))
    exact = from_bf16(dy).astype(np.float64).sum(axis=(0, 2, 3))
    assert_matches_reference(be.to_numpy(db), exact, reduction=3 * 6 * 7, what="db")
