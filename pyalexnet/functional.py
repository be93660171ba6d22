"""The public functional API: NumPy arrays in, NumPy arrays out, every op forward and
backward, the backend chosen by argument.

    >>> import numpy as np, pyalexnet.functional as F
    >>> x = np.random.rand(2, 3, 227, 227).astype(np.float32)
    >>> w = np.random.rand(96, 3, 11, 11).astype(np.float32) * 0.01
    >>> y = F.conv2d_forward(x, w, stride=4, backend="emu")   # (2, 96, 55, 55)

Each function takes the same arguments as its op in ``pyalexnet.ops`` without the leading
backend, plus ``backend=`` (a name or a Backend; default: $PYALEXNET_BACKEND or auto).
Ops that update in place on a backend (bias_add, sgd_update) return new arrays here and
leave their inputs untouched.
"""
import functools
import importlib
import inspect

import numpy as np

from .backends import get_backend

__all__ = []


def _to_backend(be, a, copy):
    if not isinstance(a, np.ndarray):
        return a
    dtype = np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32
    return be.asarray(a.copy() if copy else a, dtype=dtype)


def _to_numpy(be, out):
    if isinstance(out, tuple):
        return tuple(_to_numpy(be, o) for o in out)
    if isinstance(out, (np.ndarray, be.xp.ndarray)):
        return be.to_numpy(out)
    return out


def _expose(module, name, updates=None):
    """Publish ops.<module>.<name> as a NumPy-in, NumPy-out function.

    updates: indices of the arguments the op changes in place; those are copied in and
    returned (in that order) instead of the op's own return value.
    """
    op = getattr(importlib.import_module(f"{__package__}.ops.{module}"), name)

    @functools.wraps(op)
    def wrapper(*args, backend=None, **kwargs):
        be = get_backend(backend)
        moved = [_to_backend(be, a, copy=updates is not None and i in updates)
                 for i, a in enumerate(args)]
        # array keywords (gemm's c) may be written: always copied
        kwargs = {k: _to_backend(be, v, copy=True) for k, v in kwargs.items()}
        out = op(be, *moved, **kwargs)
        if updates is not None:
            out = tuple(moved[i] for i in updates)
            out = out[0] if len(out) == 1 else out
        return _to_numpy(be, out)

    sig = inspect.signature(op)
    params = list(sig.parameters.values())[1:]  # drop the backend
    params.append(inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None))
    wrapper.__signature__ = sig.replace(parameters=params)
    globals()[name] = wrapper
    __all__.append(name)


for _module, _names in {
    "relu": ["relu_forward", "relu_backward"],
    "bias": ["bias_backward"],
    "conv": ["conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter",
             "conv2d_backward_bias"],
    "linear": ["gemm", "linear_forward", "linear_backward_data", "linear_backward_weight",
               "linear_backward_bias"],
    "lrn": ["lrn_forward", "lrn_backward"],
    "pool": ["maxpool_forward", "maxpool_backward"],
    "dropout": ["dropout_forward", "dropout_backward"],
    "softmax": ["softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "topk_errors"],
}.items():
    for _name in _names:
        _expose(_module, _name)
_expose("bias", "bias_add", updates=(0,))
_expose("sgd", "sgd_update", updates=(0, 2))  # returns (w, velocity)
del _module, _names, _name
