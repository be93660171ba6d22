"""Channel-slice copies and in-place addition (kernels/copy.cu): exact on every backend."""
import numpy as np
import pytest

from pyalexnet.devices import channel_copy, join_towers
from pyalexnet.ops.copy import add_into, copy_channels


@pytest.mark.parametrize("shape", [(3, 7, 5, 4), (2, 11), (1, 1, 1, 1)])
def test_channel_slices_round_trip(backend, rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    cut = c // 2
    xd = backend.asarray(x)
    a, b = channel_copy(backend, xd, 0, cut), channel_copy(backend, xd, cut)
    np.testing.assert_array_equal(backend.to_numpy(a), x[:, :cut])
    np.testing.assert_array_equal(backend.to_numpy(b), x[:, cut:])
    np.testing.assert_array_equal(backend.to_numpy(join_towers(backend, [a, b])), x)


def test_copy_into_an_offset_leaves_the_rest(backend, rng):
    src = rng.standard_normal((2, 5, 3, 3)).astype(np.float32)
    dst = np.full((2, 9, 3, 3), 7.0, np.float32)
    out = backend.to_numpy(copy_channels(backend, backend.asarray(src), backend.asarray(dst),
                                         1, 4, 3))
    want = dst.copy()
    want[:, 4:7] = src[:, 1:4]
    np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="do not fit"):
        copy_channels(backend, backend.asarray(src), backend.asarray(dst), 3, 0, 3)
    with pytest.raises(ValueError, match="differ beyond axis 1"):
        copy_channels(backend, backend.asarray(src), backend.asarray(dst[:, :, :2]), 0, 0, 1)


def test_add_into(backend, rng):
    a = rng.standard_normal((4, 3, 5)).astype(np.float32)
    b = rng.standard_normal((4, 3, 5)).astype(np.float32)
    acc = backend.asarray(a.copy())
    assert add_into(backend, acc, backend.asarray(b)) is acc
    np.testing.assert_array_equal(backend.to_numpy(acc), a + b)  # one rounding, like NumPy's
