"""SGD with momentum and weight decay, exactly as the AlexNet paper writes it:

    v <- momentum * v - weight_decay * lr * w - lr * dL/dw
    w <- w + v

(paper: momentum 0.9, weight decay 5e-4). One fused kernel per parameter tensor, in place
on w and the velocity v.
"""
import numpy as np

from ._launch import ELEMENTWISE_BLOCK, elementwise_grid, f32, i64, require_float32

KERNELS = "sgd.cu"


def sgd_update_reference(w, grad, velocity, lr, momentum=0.9, weight_decay=5e-4):
    """The new (w, v); inputs are not modified."""
    v = momentum * velocity - weight_decay * lr * w - lr * grad
    return w + v, v


def _check(w, grad, velocity):
    for a, name in ((w, "w"), (grad, "grad"), (velocity, "velocity")):
        require_float32(f"sgd_update: {name}", a)
    if grad.shape != w.shape or velocity.shape != w.shape:
        raise ValueError(f"sgd_update: w {tuple(w.shape)}, grad {tuple(grad.shape)} and velocity "
                         f"{tuple(velocity.shape)} must have the same shape")
    if velocity is w or grad is w or grad is velocity:
        raise ValueError("sgd_update: w, grad and velocity must be three different arrays")


def sgd_update(be, w, grad, velocity, lr, momentum=0.9, weight_decay=5e-4):
    """In place: velocity <- momentum*velocity - weight_decay*lr*w - lr*grad; w <- w + velocity."""
    _check(w, grad, velocity)
    if not be.runs_kernels:
        w[...], velocity[...] = sgd_update_reference(w, grad, velocity, np.float32(lr),
                                                     np.float32(momentum), np.float32(weight_decay))
        return None
    n = w.size
    if n == 0:
        return None
    # float4 lanes when aligned: a quarter of the threads suffice.
    be.launch(KERNELS, "sgd_update", elementwise_grid(max(1, n // 4)), ELEMENTWISE_BLOCK,
              [w, grad, velocity, i64(n), f32(lr), f32(momentum), f32(weight_decay)])
    return None
