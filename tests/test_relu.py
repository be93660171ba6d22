import numpy as np
import pytest
from conftest import assert_matches_reference

from pyalexnet.backends import EmuBackend, get_backend
from pyalexnet.gradcheck import assert_gradient_close, numeric_gradient
from pyalexnet.ops.precision import BF16, to_bf16
from pyalexnet.ops.relu import (VERSIONS as VERSION_LIST, relu_backward,
                                relu_backward_reference, relu_forward, relu_forward_reference)

VERSIONS = pytest.mark.parametrize("version", VERSION_LIST, ids=lambda v: f"v{v}")

SHAPES = [(1,), (7,), (256,), (1000, 3), (2, 96, 55, 55), (3, 5, 7, 11)]


def test_reference_gradient(rng):
    x = rng.standard_normal((4, 5, 6))
    x[np.abs(x) < 1e-3] = 0.5  # away from the kink
    dy = rng.standard_normal(x.shape)
    numeric = numeric_gradient(relu_forward_reference, x, dy)
    analytic = relu_backward_reference(relu_forward_reference(x), dy)
    assert_gradient_close(analytic, numeric, what="relu dx")


@VERSIONS
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(kernel_backend, rng, shape, version):
    be = kernel_backend
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y = relu_forward(be, be.asarray(x), version=version)
    assert_matches_reference(be.to_numpy(y), relu_forward_reference(x.astype(np.float64)))
    dx = relu_backward(be, y, be.asarray(dy), version=version)
    assert_matches_reference(be.to_numpy(dx), relu_backward_reference(x, dy))


@VERSIONS
def test_in_place(kernel_backend, rng, version):
    be = kernel_backend
    x = rng.standard_normal((3, 17)).astype(np.float32)
    xd = be.asarray(x)
    out = relu_forward(be, xd, out=xd, version=version)
    assert out is xd
    np.testing.assert_array_equal(be.to_numpy(xd), np.maximum(x, 0))


@pytest.mark.parametrize("storage", ["fp32", "bf16"])
@pytest.mark.parametrize("offset", [0, 1, 2, 4], ids=lambda o: f"offset{o}")
def test_versions_give_the_same_bits(kernel_backend, rng, storage, offset):
    """v2's vector path (offset 0, and 4 for bf16) and its scalar fallback for views that
    are not aligned to a vector (the others) against v1, with a tail of n % 4 = 3."""
    be = kernel_backend
    x = rng.standard_normal(offset + 4 * 50 + 3).astype(np.float32)
    x[::7] = 0.0  # y = 0 exactly: the backward's strict > matters
    x[5] = np.nan
    dy = rng.standard_normal(x.size).astype(np.float32)
    xs = be.asarray(to_bf16(x) if storage == "bf16" else x)[offset:]
    dys = be.asarray(dy)[offset:]
    outs = {}
    for version in VERSION_LIST:
        y = relu_forward(be, xs, version=version)
        outs[version] = [be.to_numpy(a) for a in (
            y, relu_backward(be, y, dys, version=version),
            relu_backward(be, y, dys, out_dtype=BF16, version=version))]
    for a, b in zip(outs[1], outs[2]):
        np.testing.assert_array_equal(a.view(np.uint32 if a.dtype == np.float32 else a.dtype),
                                      b.view(np.uint32 if b.dtype == np.float32 else b.dtype))


def test_v2_moves_four_elements_a_request(rng):
    """On the profiling build: aligned fp32 arrays go as 16-byte accesses (16 sectors a
    warp request), a quarter of v1's requests."""
    try:
        be = EmuBackend(threads=2, profile=True)
    except Exception as e:  # built only where clang++ is installed
        pytest.skip(str(e))
    x = rng.standard_normal(1 << 12).astype(np.float32)
    requests = {}
    for version in VERSION_LIST:
        relu_forward(be, x, version=version)
        p = be.last_profile
        assert p["global_load_bytes"] == p["global_store_bytes"] == x.nbytes
        assert p["global_load_sectors"] == x.nbytes // 32
        requests[version] = p["global_load_requests"]
    assert requests == {1: x.size // 32, 2: x.size // 128}


def test_bad_version_is_reported():
    be = get_backend("emu")
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"version must be one of \(1, 2\)"):
        relu_forward(be, x, version=3)
    with pytest.raises(ValueError, match=r"version must be one of \(1, 2\)"):
        relu_backward(be, x, x, version=0)


def test_nan_propagates(kernel_backend):
    be = kernel_backend
    y = be.to_numpy(relu_forward(be, be.asarray(np.array([np.nan, -1.0, 2.0]))))
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == 2
