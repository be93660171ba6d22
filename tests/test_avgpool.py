import numpy as np
import pytest
from conftest import assert_matches_reference

from pyalexnet.backends import get_backend
from pyalexnet.gradcheck import assert_gradient_close, numeric_gradient
from pyalexnet.ops.avgpool import (adaptive_windows, avgpool_backward, avgpool_backward_reference,
                                   avgpool_forward, avgpool_forward_reference,
                                   avgpool_output_shape)

# (shape, output): torchvision's 6x6 -> 6x6 and 13x13 -> 6x6 (overlapping windows), output
# larger than the input (rows repeat), 1x1 global pooling, non-square maps.
CASES = [
    ((2, 3, 6, 6), 6),
    ((1, 5, 13, 13), 6),
    ((2, 4, 7, 9), 3),
    ((1, 3, 4, 5), 6),
    ((3, 2, 8, 8), 1),
    ((1, 7, 1, 1), 2),
    ((1, 2, 11, 3), 4),
]


def _id(case):
    return f"{'x'.join(map(str, case[0]))}to{case[1]}"


def test_windows_follow_torch_rule():
    assert adaptive_windows(13, 6) == [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 13)]
    assert adaptive_windows(4, 6) == [(0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4)]
    assert adaptive_windows(6, 6) == [(i, i + 1) for i in range(6)]


@pytest.mark.parametrize("case", CASES[1:5], ids=_id)
def test_reference_gradient(rng, case):
    shape, out = case
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(avgpool_output_shape(shape, out))
    numeric = numeric_gradient(lambda xx: avgpool_forward_reference(xx, out), x, dy)
    assert_gradient_close(avgpool_backward_reference(shape, dy, out), numeric, what="avgpool dx")


def test_reference_is_the_mean_of_its_window(rng):
    x = rng.standard_normal((1, 1, 13, 13))
    y = avgpool_forward_reference(x, 6)
    assert y[0, 0, 1, 2] == pytest.approx(x[0, 0, 2:5, 4:7].mean())


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_kernel_matches_reference(kernel_backend, rng, case):
    be = kernel_backend
    shape, out = case
    x = rng.standard_normal(shape).astype(np.float32)
    y = be.to_numpy(avgpool_forward(be, be.asarray(x), out))
    h, w = shape[2:]
    window = max(-(-h // out) + 1, 1) * max(-(-w // out) + 1, 1)
    assert_matches_reference(y, avgpool_forward_reference(x.astype(np.float64), out),
                             reduction=window, what="y")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = be.to_numpy(avgpool_backward(be, shape, be.asarray(dy), out))
    ref = avgpool_backward_reference(shape, dy.astype(np.float64), out)
    assert_matches_reference(dx, ref, reduction=4 * max(1, out // min(h, w)) ** 2, what="dx")


def test_layer_in_a_config():
    from pyalexnet.config import load_config
    cfg = load_config("alexnet-torchvision")
    pool = next(layer for layer in cfg.layers if layer.type == "avgpool")
    assert pool.in_shape == (256, 6, 6) and pool.out_shape == (256, 6, 6)
    assert cfg.num_params == 61_100_840
    assert cfg.with_input(size=256, resize=256).param_shapes == cfg.param_shapes


@pytest.mark.parametrize("shape,out,match", [
    ((1, 1, 5, 5), 0, "positive integer"),
    ((1, 5, 5), 2, "4-D"),
])
def test_bad_arguments(shape, out, match):
    with pytest.raises(ValueError, match=match):
        avgpool_forward(get_backend("emu"), np.zeros(shape, np.float32), out)
