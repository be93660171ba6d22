"""Two-device model parallelism: the two-device net equals the single-device grouped net
on logits, loss and every gradient (dropout on), over SGD steps, on every backend."""
import numpy as np
import pytest
from conftest import assert_matches_reference
from test_model import assert_state_close, batch, max_reduction, tiny_alexnet

from pyalexnet.backends import get_backend
from pyalexnet.config import load_config
from pyalexnet.devices import Device, Link
from pyalexnet.engines import TwoDeviceEngine
from pyalexnet.net import Net


def test_two_device_equals_grouped(backend):
    config = tiny_alexnet()
    n = 2
    one = Net(config, backend=backend, devices=1, seed=11)
    two = Net(config, backend=backend, devices=2, seed=11)
    assert two.devices == 2 and len(two.engine.devices) == 2
    start = one.state_dict()
    assert_state_close(two.state_dict(), start, 1, "initial params")  # same weights, exactly
    k = max_reduction(config, n)
    for step in range(2):
        x, labels = batch(config, n, seed=20 + step)
        (loss1, logits1), (loss2, logits2) = (net.train_step_grads(x, labels, seed=100 + step)
                                              for net in (one, two))
        logits1, logits2 = backend.to_numpy(logits1), two.backend.to_numpy(logits2)
        assert logits2.shape == (n, config.num_classes)
        assert_matches_reference(logits2, logits1, k, what=f"step {step} logits")
        assert abs(loss2 - loss1) <= 1e-5 * max(1.0, abs(loss1))
        assert_state_close(two.grad_state_dict(), one.grad_state_dict(), k, f"step {step} grads")
        for net in (one, two):
            net.sgd_step(lr=0.02, momentum=0.9, weight_decay=5e-4)
    deltas = [{key: v - start[key] for key, v in net.state_dict().items()} for net in (one, two)]
    assert_state_close(deltas[1], deltas[0], k, "parameter change after 2 SGD steps")
    # Test mode (no dropout) too.
    x, _ = batch(config, n, seed=30)
    assert_matches_reference(two.backend.to_numpy(two.forward(x, train=False)),
                             backend.to_numpy(one.forward(x, train=False)), k, what="eval logits")


def test_dropout_masks_are_per_tower():
    """The grouped net draws each tower's dropout mask from that tower's seed, so a change
    of the seed changes both towers' masks, and the two-device net reproduces them exactly
    (numpy: identical bits, as every other op in this path is bitwise the same)."""
    config = tiny_alexnet()
    x, labels = batch(config, 2, seed=3)
    one = Net(config, backend="numpy", devices=1, seed=2)
    two = Net(config, backend="numpy", devices=2, seed=2)
    a, b = one.forward(x, seed=5), two.forward(x, seed=5)
    assert np.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(one.forward(x, seed=6), a, rtol=1e-3, atol=1e-3)


def test_parameter_layout_alexnet():
    """The paper's split: tower-local layers hold half the filters; conv3/fc6/fc7/fc8 hold a
    block per (own tower, source tower); conv1 reads the image on both devices."""
    engine = TwoDeviceEngine(load_config("alexnet"), "numpy", "inverted", None)
    shapes = {}
    for name, (tower, gname, index) in engine.placement.items():
        full = {f"{layer.name}.{k}": s for layer in engine.config.layers
                for k, s in layer.param_shapes.items()}[gname]
        shapes[name] = (tower, np.empty(full, dtype=np.uint8)[index].shape)
    assert shapes["conv1.w@A"] == (0, (48, 3, 11, 11))
    assert shapes["conv2.w@B"] == (1, (128, 48, 5, 5))
    assert shapes["conv3.w@A<B"] == (0, (192, 128, 3, 3))
    assert shapes["conv3.w@B<A"] == (1, (192, 128, 3, 3))
    assert shapes["conv4.w@A"] == (0, (192, 192, 3, 3))
    assert shapes["conv5.b@B"] == (1, (128,))
    assert shapes["fc6.w@A<B"] == (0, (2048, 4608))
    assert shapes["fc8.w@B<A"] == (1, (500, 2048))
    assert sum(int(np.prod(s)) for _, s in shapes.values()) == 60_965_224
    assert engine.kinds[:3] == ["whole", "local", "local"]  # conv1, norm1, pool1


def test_state_dicts_are_interchangeable():
    config = tiny_alexnet()
    one = Net(config, backend="numpy", devices=1, seed=1)
    two = Net(config, backend="numpy", devices=2, seed=2)
    two.load_state_dict(one.state_dict())
    sd1, sd2 = one.state_dict(), two.state_dict()
    assert list(sd1) == list(sd2)
    assert all(np.array_equal(sd1[k], sd2[k]) for k in sd1)
    assert set(two.params) == set(two.grads)
    assert "conv3.w@A<B" in two.params and "conv2.w@A" in two.params
    assert all(two.params[k].shape == two.grads[k].shape for k in two.params)
    assert two.param_backend("conv2.w@B") is two.engine.devices[1].backend
    x, _ = batch(config, 2)
    assert np.allclose(two.forward(x, train=False), one.forward(x, train=False),
                       rtol=1e-5, atol=1e-5)


def test_two_devices_need_two_towers():
    with pytest.raises(ValueError, match="two-tower config"):
        Net("cifar-small", backend="numpy", devices=2)
    with pytest.raises(ValueError, match="2 backends"):
        Net(tiny_alexnet(), backend=["numpy"], devices=2)


def test_explicit_backend_pair():
    """devices=2 takes a backend per device too (here two emulated devices)."""
    net = Net(tiny_alexnet(), backend=[get_backend("numpy"), get_backend("numpy")], devices=2)
    x, labels = batch(net.config, 2)
    loss, logits = net.train_step_grads(x, labels)
    assert np.isfinite(loss) and logits.shape == (2, 7)


def test_link_copies_on_cpu():
    be = get_backend("numpy")
    devs = [Device(0, be, streams=True), Device(1, be, streams=True)]
    link = Link(devs)
    src = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = link.send(src, devs[0], devs[1]).get()
    assert got is not src and np.array_equal(got, src)
    src[0, 0] = 99  # a copy, not a view
    assert got[0, 0] == 0
    link.settle()
