import numpy as np
import pytest
from conftest import assert_matches_reference, record_launches

from pyalexnet.gradcheck import assert_gradient_close, numeric_gradient
from pyalexnet.backends import get_backend
from pyalexnet.ops.bias import (BACKWARD_VERSIONS, backward_splits, bias_add, bias_add_reference,
                                bias_backward, bias_backward_reference)

SHAPES = [(2, 96, 55, 55), (2, 4096), (5, 7), (3, 13, 5, 9), (1, 1, 1, 1), (2, 3, 300)]


def test_reference_gradient(rng):
    x = rng.standard_normal((3, 4, 5))
    b = rng.standard_normal(4)
    dy = rng.standard_normal(x.shape)
    numeric = numeric_gradient(lambda bb: bias_add_reference(x, bb), b, dy)
    assert_gradient_close(bias_backward_reference(dy), numeric, what="bias db")
    numeric_x = numeric_gradient(lambda xx: bias_add_reference(xx, b), x, dy)
    assert_gradient_close(dy, numeric_x, what="bias dx")


@pytest.mark.parametrize("version", [None, *BACKWARD_VERSIONS])
@pytest.mark.parametrize("shape", SHAPES + [(9, 3, 5, 7), (128, 96, 3, 3)])
def test_kernel_matches_reference(kernel_backend, rng, shape, version):
    be = kernel_backend
    x = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    xd = be.asarray(x.copy())  # on numpy/emu asarray may alias x; bias_add is in place
    assert bias_add(be, xd, be.asarray(b)) is xd
    assert_matches_reference(be.to_numpy(xd), bias_add_reference(x.astype(np.float64), b))
    per_channel = int(np.prod(shape)) // shape[1]
    db = bias_backward(be, be.asarray(x), version=version)
    assert_matches_reference(be.to_numpy(db), bias_backward_reference(x.astype(np.float64)),
                             reduction=per_channel)


def test_backward_v2_splits_over_images():
    """conv1's 96 channels: 6 chunks of 22 images, 576 blocks; fc6's 4096: no split."""
    assert backward_splits((128, 96, 55, 55)) == 6
    assert backward_splits((128, 4096)) == 1
    assert backward_splits((3, 2, 5, 5)) == 3  # never more chunks than images
    with pytest.raises(ValueError, match="version must be one of"):
        bias_backward(get_backend("numpy"), np.zeros((2, 3), np.float32), version=3)


@pytest.mark.parametrize("shape,version", [((8, 96, 5, 5), 2), ((2, 4096), 1)])
def test_backward_default_splits_where_the_shape_gives_chunks(kernel_backend, rng, monkeypatch,
                                                              shape, version):
    """The default is v2 where there is more than one chunk of images (its bits: the
    partial sums' order), else v1."""
    be = kernel_backend
    dy = be.asarray(rng.standard_normal(shape).astype(np.float32))
    assert (backward_splits(shape) > 1) == (version == 2)
    np.testing.assert_array_equal(be.to_numpy(bias_backward(be, dy)),
                                  be.to_numpy(bias_backward(be, dy, version=version)))
    launched = record_launches(monkeypatch, be)
    bias_backward(be, dy)
    assert launched == (["bias_backward_v2", "bias_backward_reduce"] if version == 2
                        else ["bias_backward"])


@pytest.mark.parametrize("version", BACKWARD_VERSIONS)
def test_backward_is_deterministic(kernel_backend, rng, version):
    be = kernel_backend
    dy = be.asarray(rng.standard_normal((4, 8, 31, 29)).astype(np.float32))
    first = be.to_numpy(bias_backward(be, dy, version=version))
    for _ in range(3):
        np.testing.assert_array_equal(be.to_numpy(bias_backward(be, dy, version=version)), first)


def test_channel_mismatch_is_reported():
    with pytest.raises(ValueError, match="bias of 3 channels"):
        bias_add(get_backend("numpy"), np.zeros((2, 4, 5), np.float32), np.zeros(3, np.float32))
