"""A steady-state training step does no host work: from the second step on it allocates
nothing and copies nothing back to the host (the loop reads the loss once, after the step
is queued; see pyalexnet.memory).

Counted on the emu backend, where the kernels' buffers are NumPy arrays: the backend's
allocator (`Backend.empty`/`zeros`/`asarray`, the device allocator on cuda) must not be
called for a new buffer, no device-to-host copy may happen (`Backend.syncs`), and the
Python heap may not grow by an activation's worth during a step (tracemalloc's peak, which
sees every NumPy allocation, also ones that bypass the backend)."""
import tracemalloc

import numpy as np
import pytest

from pyalexnet.backends import get_backend
from pyalexnet.net import Net
from pyalexnet.ops.softmax import prepare_labels, topk_ranks


def one_step(net, x, labels, seed):
    be = net.backend
    with net.repeated_step(x.shape) as memory:
        lab = prepare_labels(be, labels)
        loss, logits = net.train_step_grads(x, lab, seed=seed, sync=False)
        ranks = topk_ranks(be, logits, lab)
        net.sgd_step(0.01)
    return memory, loss, ranks


@pytest.mark.parametrize("config, devices, conv_algo", [
    ("cifar-small", 1, "gemm"), ("cifar-towers", 1, "gemm"), ("cifar-towers", 2, "gemm"),
    ("cifar-towers", 2, "auto")])  # auto: Winograd's transforms and workspaces too
def test_steps_after_the_first_allocate_and_sync_nothing(config, devices, conv_algo, request):
    if conv_algo == "auto":
        request.getfixturevalue("winograd_where_it_applies")
    be = get_backend("emu", order="forward")
    net = Net(config, backend=be, devices=devices, seed=1, conv_algo=conv_algo)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16,) + net.config.input_shape).astype(np.float32)
    labels = rng.integers(0, net.config.num_classes, 16)
    memory, _, _ = one_step(net, x, labels, seed=0)
    first = memory.allocations
    assert first > 20  # activations, gradients, staged labels ... came from the memory
    syncs = be.syncs
    tracemalloc.start()
    try:
        for step in range(1, 4):
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            memory, loss, ranks = one_step(net, x, labels, seed=step)
            _, peak = tracemalloc.get_traced_memory()
            # Python objects take about 25 KiB; the image alone is 16 x 3 x 32 x 32 floats =
            # 192 KiB, one tower's slice of pool2 49 KiB.
            assert peak - before < 40 * 1024, f"step {step + 1} allocated {peak - before} bytes"
    finally:
        tracemalloc.stop()
    assert memory.allocations == first and memory.misses == 0
    assert be.syncs == syncs, "a steady-state step copied something back to the host"
    assert np.isfinite(be.to_numpy(loss)[0]) and be.to_numpy(ranks).shape == (16,)


def test_fixed_buffers_give_the_same_weights(rng):
    """Reusing the buffers changes nothing: the same steps without step memory give the
    same bits (emu), and a changed batch shape gets new buffers rather than wrong ones."""
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, 3)
    nets = [Net("cifar-towers", backend="emu", devices=2, seed=5) for _ in range(2)]
    for step in range(3):
        one_step(nets[0], x, labels, seed=step)
        lab = nets[1].backend.asarray(labels, dtype=np.int32)
        nets[1].train_step_grads(x, lab, seed=step)
        nets[1].sgd_step(0.01)
    a, b = nets[0].state_dict(), nets[1].state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    memory, _, _ = one_step(nets[0], x[:2], labels[:2], seed=9)  # another shape, another key
    assert memory.allocations > 0 and memory.misses == 0


def test_a_slot_of_another_shape_is_replaced():
    from pyalexnet.memory import StepMemory

    be = get_backend("numpy")
    memory = StepMemory()
    with memory.active([be]):
        a = be.empty((2, 3))
        b = be.zeros(4)
    with memory.active([be]):
        assert be.empty((2, 3)) is a
        c = be.zeros((5,))  # slot 1 asked with another shape: a new buffer
        with memory.persistent():
            d = be.zeros(4)
    assert c is not b and c.shape == (5,) and memory.misses == 1 and memory.allocations == 3
    assert d is not b and len(memory.slots) == 2
