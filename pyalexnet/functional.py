"""The public functional API: NumPy arrays in, NumPy arrays out, every op forward and
backward, the backend chosen by argument.

    >>> import numpy as np, pyalexnet.functional as F
    >>> x = np.random.rand(2, 3, 227, 227).astype(np.float32)
    >>> w = np.random.rand(96, 3, 11, 11).astype(np.float32) * 0.01
    >>> y = F.conv2d_forward(x, w, stride=4, backend="emu")   # (2, 96, 55, 55)

Each function takes the same arguments as its op in ``pyalexnet.ops`` without the leading
backend, plus ``backend=`` (a name or a Backend; default: $PYALEXNET_BACKEND or auto), and
has the op's docstring. Ops that update in place on a backend (bias_add, sgd_update)
return new arrays here and leave their inputs untouched.
"""
import numpy as np

from .backends import get_backend
from .ops import avgpool as _avgpool
from .ops import bias as _bias
from .ops import conv as _conv
from .ops import dropout as _dropout
from .ops import linear as _linear
from .ops import lrn as _lrn
from .ops import pool as _pool
from .ops import relu as _relu
from .ops import sgd as _sgd
from .ops import softmax as _softmax

__all__ = ["relu_forward", "relu_backward", "bias_add", "bias_backward", "conv2d_forward",
           "conv2d_backward_data", "conv2d_backward_filter", "conv2d_backward_bias", "gemm",
           "linear_forward", "linear_backward_data", "linear_backward_weight",
           "linear_backward_bias", "lrn_forward", "lrn_backward", "maxpool_forward",
           "maxpool_backward", "avgpool_forward", "avgpool_backward", "dropout_forward", "dropout_backward",
           "softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "topk_errors",
           "sgd_update"]


def _to_backend(be, a, copy=False):
    """A NumPy argument as a backend array (int32 for integer arrays, float32 otherwise);
    anything else as it is."""
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


def _run(op, backend, *arrays, **options):
    """op(be, *arrays, **options) with NumPy in and out. Array options (gemm's c, relu's
    out) may be written by the op, so they are copied in."""
    be = get_backend(backend)
    args = [_to_backend(be, a) for a in arrays]
    options = {k: _to_backend(be, v, copy=True) for k, v in options.items()}
    return _to_numpy(be, op(be, *args, **options))


def _mirrors(op):
    """Give the wrapper the op's docstring."""
    def stamp(f):
        f.__doc__ = op.__doc__
        return f
    return stamp


# ---- elementwise -------------------------------------------------------------------------

@_mirrors(_relu.relu_forward)
def relu_forward(x, out=None, *, backend=None):
    return _run(_relu.relu_forward, backend, x, out=out)


@_mirrors(_relu.relu_backward)
def relu_backward(y, dy, *, backend=None):
    return _run(_relu.relu_backward, backend, y, dy)


@_mirrors(_bias.bias_add)
def bias_add(x, b, *, backend=None):
    be = get_backend(backend)
    y = _to_backend(be, x, copy=True)  # the op adds in place
    _bias.bias_add(be, y, _to_backend(be, b))
    return be.to_numpy(y)


@_mirrors(_bias.bias_backward)
def bias_backward(dy, *, backend=None):
    return _run(_bias.bias_backward, backend, dy)


# ---- convolution -------------------------------------------------------------------------

@_mirrors(_conv.conv2d_forward)
def conv2d_forward(x, w, b=None, stride=1, pad=0, groups=1, relu=False, tile=None, *,
                   backend=None):
    return _run(_conv.conv2d_forward, backend, x, w, b, stride=stride, pad=pad, groups=groups,
                relu=relu, tile=tile)


@_mirrors(_conv.conv2d_backward_data)
def conv2d_backward_data(dy, w, x_shape, stride=1, pad=0, groups=1, tile=None, *,
                         backend=None):
    return _run(_conv.conv2d_backward_data, backend, dy, w, x_shape, stride=stride, pad=pad,
                groups=groups, tile=tile)


@_mirrors(_conv.conv2d_backward_filter)
def conv2d_backward_filter(x, dy, w_shape, stride=1, pad=0, groups=1, tile=None, splits=None,
                           *, backend=None):
    return _run(_conv.conv2d_backward_filter, backend, x, dy, w_shape, stride=stride, pad=pad,
                groups=groups, tile=tile, splits=splits)


@_mirrors(_conv.conv2d_backward_bias)
def conv2d_backward_bias(dy, *, backend=None):
    return _run(_conv.conv2d_backward_bias, backend, dy)


# ---- fully connected ---------------------------------------------------------------------

@_mirrors(_linear.gemm)
def gemm(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None, *, tile=None,
         splits=None, backend=None):
    return _run(_linear.gemm, backend, a, b, trans_a, trans_b, alpha, beta, c=c, tile=tile,
                splits=splits)


@_mirrors(_linear.linear_forward)
def linear_forward(x, w, b=None, *, backend=None):
    return _run(_linear.linear_forward, backend, x, w, b)


@_mirrors(_linear.linear_backward_data)
def linear_backward_data(dy, w, *, backend=None):
    return _run(_linear.linear_backward_data, backend, dy, w)


@_mirrors(_linear.linear_backward_weight)
def linear_backward_weight(x, dy, *, backend=None):
    return _run(_linear.linear_backward_weight, backend, x, dy)


@_mirrors(_linear.linear_backward_bias)
def linear_backward_bias(dy, *, backend=None):
    return _run(_linear.linear_backward_bias, backend, dy)


# ---- normalisation, pooling, dropout -------------------------------------------------------

@_mirrors(_lrn.lrn_forward)
def lrn_forward(x, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_n=False, *, backend=None):
    return _run(_lrn.lrn_forward, backend, x, size=size, alpha=alpha, beta=beta, k=k,
                alpha_over_n=alpha_over_n)


@_mirrors(_lrn.lrn_backward)
def lrn_backward(x, y, scale, dy, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_n=False, *,
                 backend=None):
    return _run(_lrn.lrn_backward, backend, x, y, scale, dy, size=size, alpha=alpha, beta=beta,
                k=k, alpha_over_n=alpha_over_n)


@_mirrors(_pool.maxpool_forward)
def maxpool_forward(x, kernel=3, stride=2, *, backend=None):
    return _run(_pool.maxpool_forward, backend, x, kernel=kernel, stride=stride)


@_mirrors(_pool.maxpool_backward)
def maxpool_backward(x, y, dy, kernel=3, stride=2, *, backend=None):
    return _run(_pool.maxpool_backward, backend, x, y, dy, kernel=kernel, stride=stride)


@_mirrors(_avgpool.avgpool_forward)
def avgpool_forward(x, output, *, backend=None):
    return _run(_avgpool.avgpool_forward, backend, x, output)


@_mirrors(_avgpool.avgpool_backward)
def avgpool_backward(x_shape, dy, output, *, backend=None):
    return _run(_avgpool.avgpool_backward, backend, tuple(x_shape), dy, output)


@_mirrors(_dropout.dropout_forward)
def dropout_forward(x, p=0.5, seed=0, mode="inverted", train=True, *, backend=None):
    return _run(_dropout.dropout_forward, backend, x, p=p, seed=seed, mode=mode, train=train)


@_mirrors(_dropout.dropout_backward)
def dropout_backward(dy, p=0.5, seed=0, mode="inverted", *, backend=None):
    return _run(_dropout.dropout_backward, backend, dy, p=p, seed=seed, mode=mode)


# ---- loss and update ---------------------------------------------------------------------

@_mirrors(_softmax.softmax_cross_entropy_forward)
def softmax_cross_entropy_forward(logits, labels, *, backend=None):
    return _run(_softmax.softmax_cross_entropy_forward, backend, logits, labels)


@_mirrors(_softmax.softmax_cross_entropy_backward)
def softmax_cross_entropy_backward(probs, labels, *, backend=None):
    return _run(_softmax.softmax_cross_entropy_backward, backend, probs, labels)


@_mirrors(_softmax.topk_errors)
def topk_errors(logits, labels, ks=(1, 5), *, backend=None):
    return _run(_softmax.topk_errors, backend, logits, labels, ks=ks)


@_mirrors(_sgd.sgd_update)
def sgd_update(w, grad, velocity, lr, momentum=0.9, weight_decay=5e-4, *, backend=None):
    # returns the updated (w, velocity); the arguments are not changed
    be = get_backend(backend)
    w2, v2 = _to_backend(be, w, copy=True), _to_backend(be, velocity, copy=True)
    _sgd.sgd_update(be, w2, _to_backend(be, grad), v2, lr, momentum=momentum,
                    weight_decay=weight_decay)
    return be.to_numpy(w2), be.to_numpy(v2)
