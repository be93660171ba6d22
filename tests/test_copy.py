"""Channel-slice copies and in-place addition (kernels/copy.cu): exact on every backend."""
import numpy as np
import pytest

from pyalexnet.devices import channel_copy, join_towers
from pyalexnet.ops.copy import add_into, copy_channels, swap_middle_axes
from pyalexnet.ops.precision import BF16


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


@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(2, 5, 3, 9), (1, 96, 48, 25), (3, 1, 4, 1)])
def test_swap_middle_axes(backend, rng, shape, dtype):
    """A conv weight (G, K/G, C/G, R*S) to channels first, as the tensor-core data gradient
    reads it; bf16 bits move as they are."""
    x = rng.integers(0, 1 << 16, shape).astype(dtype) if dtype == BF16 else \
        rng.standard_normal(shape).astype(dtype)
    dst = backend.asarray(np.zeros((shape[0], shape[2], shape[1], shape[3]), dtype))
    out = swap_middle_axes(backend, backend.asarray(x), dst)
    np.testing.assert_array_equal(backend.to_numpy(out), x.transpose(0, 2, 1, 3))
    with pytest.raises(ValueError, match="does not swap into"):
        swap_middle_axes(backend, backend.asarray(x), backend.asarray(x.copy()))  # B != C
