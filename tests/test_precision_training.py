"""Training in tf32 and bf16: the precision reaches every conv and fc pass of the net, on
one and two devices, on the NumPy references and on the kernels, and the net still learns."""
import numpy as np
import pytest

from pyalexnet.backends import get_backend
from pyalexnet.layers import Pass, build_steps
from pyalexnet.model import layer_params
from pyalexnet.net import Net
from pyalexnet.ops.precision import BF16, UNIT_ROUNDOFF


def batch(config, n, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n,) + config.input_shape).astype(np.float32),
            rng.integers(0, config.num_classes, n).astype(np.int32))


def losses(net, steps=6, n=8):
    out = []
    x, labels = batch(net.config, n, 0)  # one batch, memorised: the loss must fall
    for step in range(steps):
        loss, _ = net.train_step_grads(x, net.backend.asarray(labels, dtype=np.int32), seed=step)
        net.sgd_step(0.01)
        out.append(float(loss))
    return out


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_numpy_backend_trains_in_each_precision(precision):
    fp32 = Net("cifar-small", backend="numpy", seed=3)
    low = Net("cifar-small", backend="numpy", seed=3, precision=precision)
    a, b = losses(fp32), losses(low)
    assert a[-1] < a[0] * 0.8 and b[-1] < b[0] * 0.8, f"the loss did not fall: {a}, {b}"
    # the first loss (the same weights) differs from fp32's by the format's rounding only:
    # a few roundings of the format per layer on the way to the logits
    u = UNIT_ROUNDOFF[precision]
    assert a[0] != b[0] and abs(a[0] - b[0]) <= 16 * u * abs(a[0]), (a, b)
    sa, sb = fp32.state_dict(), low.state_dict()
    assert any(not np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("devices", [1, 2])
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_kernels_agree_with_the_references_in_each_precision(precision, devices):
    """emu (the tensor-core kernels, emulated) against numpy (the references rounding the
    same operands): one step's loss and gradients, two towers on one and two devices."""
    ref = Net("cifar-towers", backend="numpy", devices=devices, seed=4, precision=precision)
    emu = Net("cifar-towers", backend=get_backend("emu", order="random", seed=2),
              devices=devices, seed=4, precision=precision)
    x, labels = batch(ref.config, 4, 1)
    (la, _), (lb, _) = (net.train_step_grads(x, net.backend.asarray(labels, dtype=np.int32),
                                             seed=9) for net in (ref, emu))
    u = UNIT_ROUNDOFF[precision]
    assert abs(la - lb) <= 8 * u * abs(la), (la, lb)
    ga, gb = ref.grad_state_dict(), emu.grad_state_dict()
    for k in ga:
        # Operands rounded from activations that differ in the last fp32 bit can round to
        # neighbouring values of the format: a few units of its roundoff, relative to the
        # tensor's scale.
        scale = float(np.abs(ga[k]).max()) or 1.0
        assert float(np.abs(ga[k] - gb[k]).max()) <= 16 * u * scale, k


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision must be one of"):
        Net("cifar-small", backend="numpy", precision="fp16")


@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_bf16_training_stores_the_maps_in_bf16(backend):
    """In bf16 the conv layers' maps, and the ReLU, pooling and LRN outputs after them, are
    bf16 bits (half the bytes the memory-bound kernels move); fc outputs, the logits among
    them, stay float32."""
    net = Net("cifar-small", backend=backend, seed=3, precision="bf16")
    be = net.backend
    params = {k: be.asarray(v) for k, v in net.state_dict().items()}
    ctx = Pass(precision="bf16")
    h = be.asarray(batch(net.config, 2, 0)[0])
    stored = []
    for step in build_steps(net.config.layers):
        h, _ = step.forward(be, h, layer_params(params, step.layer), ctx)
        stored.append((step.layer.type, np.dtype(h.dtype)))
    assert stored == [(t, np.dtype(np.float32 if t == "fc" else BF16)) for t, _ in stored]
    assert {t for t, _ in stored} == {"conv", "maxpool", "lrn", "fc"}
