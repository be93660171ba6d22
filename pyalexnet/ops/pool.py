"""Max-pooling over square windows (AlexNet's overlapping 3x3 stride 2), and its gradient.

Output size P = (H - kernel) // stride + 1 (floor; no padding, so the last rows/columns
that do not fill a window are dropped, and with kernel < stride some inputs are in no
window at all and get zero gradient).

Winner rule: the FIRST maximum in row-major window order gets the whole gradient of its
window (numpy.argmax's rule). NaN counts as larger than every number: a window holding a
NaN outputs NaN and its first NaN gets the gradient. An input that wins several
overlapping windows gets the sum of their gradients; the kernel adds them in ascending
(p, q) order, one thread per input, so the backward pass is deterministic (no atomics).

Kernel versions (``version=``; every version of a pass gives the same bits). Forward: 1
loops over a window size known at run time; 2 (the default for the sizes in
COMPILED_WINDOWS) has it compiled in, so a thread's window loads are in flight at once
instead of one after another. The backward pass takes x, the forward output y and dy: 1
uses y as the window maximum and rescans a window from x where an input equals it, so y
must be ``maxpool_forward(x)``; 2 stages each window's winner, found from x as the forward
finds it, in shared memory per tile of input rows, and reads y only for its shape; 3 (the
default for COMPILED_WINDOWS) is 2 with the window size compiled in. The reference
recomputes the winner from x alone.

x and y may be float32 or bf16 bits (uint16; ops/precision.py): y has x's storage (a
maximum is one of its inputs, so nothing is rounded); dy and dx are float32.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._launch import ELEMENTWISE_BLOCK, ceil_div, elementwise_grid, i32, require_float32
from .precision import storage_suffix, stored_like, widened

KERNELS = "pool.cu"
FORWARD_VERSIONS = (1, 2)
BACKWARD_VERSIONS = (1, 2, 3)
COMPILED_WINDOWS = (2, 3)  # kernel sizes with entries of their own (kernels/pool.cu)
V2_THREADS = 256        # POOL_BWD_THREADS
V2_TILE_ELEMS = 2048    # input elements per v2 block: 8 per thread amortise the window pass
V2_MAX_SHARED = 48 * 1024  # stay within the default dynamic shared-memory limit


def maxpool_output_shape(x_shape, kernel=3, stride=2):
    """(N, C, P, Q) for an (N, C, H, W) input; raises ValueError for impossible arguments."""
    for what, v in (("kernel", kernel), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"max-pool {what} must be a positive integer, got {v!r}")
    if len(x_shape) != 4:
        raise ValueError(f"max-pool input must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    n, c, h, w = x_shape
    if kernel > h or kernel > w:
        raise ValueError(f"max-pool kernel {kernel} is larger than the {h}x{w} input")
    return n, c, (h - kernel) // stride + 1, (w - kernel) // stride + 1


def _winners(x, kernel, stride):
    """Row-major index (0 .. kernel^2-1) of each window's winner, shape (N, C, P, Q)."""
    n, c, p, q = maxpool_output_shape(x.shape, kernel, stride)
    win = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.argmax(win.reshape(n, c, p, q, kernel * kernel), axis=-1)


def maxpool_forward_reference(x, kernel=3, stride=2):
    n, c, p, q = maxpool_output_shape(x.shape, kernel, stride)
    xf = widened(x)
    win = sliding_window_view(xf, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    idx = _winners(xf, kernel, stride)
    y = np.take_along_axis(win.reshape(n, c, p, q, -1), idx[..., None], axis=-1)[..., 0]
    return stored_like(y, x)


def maxpool_backward_reference(x, y, dy, kernel=3, stride=2):
    """dx: each window's dy goes to its winner (recomputed from x; y is not used)."""
    n, c, p, q = maxpool_output_shape(x.shape, kernel, stride)
    if tuple(dy.shape) != (n, c, p, q):
        raise ValueError(f"max-pool dy has shape {dy.shape}, expected {(n, c, p, q)}")
    h, w = x.shape[2:]
    idx = _winners(widened(x), kernel, stride)
    rows = np.arange(p)[:, None] * stride + idx // kernel
    cols = np.arange(q)[None, :] * stride + idx % kernel
    planes = np.arange(n * c).reshape(n, c, 1, 1)
    flat = (planes * h + rows) * w + cols
    dx = np.zeros(x.size, dtype=dy.dtype)
    np.add.at(dx, flat.ravel(), dy.ravel())
    return dx.reshape(x.shape)


def _check_shape(what, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"max-pool {what} has shape {a.shape}, expected {tuple(shape)}")


def _check_version(what, version, versions, kernel, compiled):
    """The version to run: ``version``, checked, or the newest that serves this window size
    (``compiled``: the version that needs the window size in COMPILED_WINDOWS)."""
    if version is not None and version not in versions:
        raise ValueError(f"max-pool {what} version must be one of {versions}, got {version!r}")
    if version == compiled and kernel not in COMPILED_WINDOWS:
        raise ValueError(f"max-pool {what} v{compiled} is compiled for windows of "
                         f"{' or '.join(map(str, COMPILED_WINDOWS))}, not {kernel}; use an "
                         "earlier version")
    if version is None and kernel in COMPILED_WINDOWS:
        return compiled
    return version


def maxpool_forward(be, x, kernel=3, stride=2, version=None):
    """y[n, c, p, q] = max of x[n, c, p*stride : p*stride+kernel, q*stride : q*stride+kernel].

    version: 1 or 2 (kernel backends); by default 2 where the window size is compiled in."""
    shape = maxpool_output_shape(x.shape, kernel, stride)
    version = _check_version("forward", version, FORWARD_VERSIONS, kernel, compiled=2) or 1
    if not be.runs_kernels:
        return maxpool_forward_reference(x, kernel, stride)
    suffix = storage_suffix("max-pool", x)
    y = be.empty(shape, dtype=x.dtype)
    if y.size:
        n, c, h, w = x.shape
        name = "pool_max_forward" + (f"_v2_k{kernel}" if version == 2 else "")
        be.launch(KERNELS, name + suffix, elementwise_grid(y.size), ELEMENTWISE_BLOCK,
                  [x, y, i32(h), i32(w), i32(shape[2]), i32(shape[3]), i32(kernel),
                   i32(stride), i32(y.size)])
    return y


def backward_v2_tiles(x_shape, kernel=3, stride=2):
    """(band_rows, band_planes, win_cap, blocks) of pool_max_backward_v2 for an input shape,
    or None when even a one-row band's windows overflow V2_MAX_SHARED (then v1 runs).

    A block covers about V2_TILE_ELEMS inputs: whole planes when a plane is smaller, else
    equal bands of rows; win_cap counts the windows covering its inputs."""
    n, c, p, q = maxpool_output_shape(x_shape, kernel, stride)
    h, w = x_shape[2:]
    planes = n * c
    bands = max(1, min(h, ceil_div(h * w, V2_TILE_ELEMS)))
    while True:
        rows = ceil_div(h, bands)
        band_planes = max(1, V2_TILE_ELEMS // (h * w)) if rows == h else 1
        band_planes = min(band_planes, max(planes, 1))
        win_rows = 0
        for h0 in range(0, h, rows):
            h1 = min(h, h0 + rows)
            lo = 0 if h0 < kernel else (h0 - kernel) // stride + 1
            win_rows = max(win_rows, min((h1 - 1) // stride, p - 1) - lo + 1)
        win_cap = band_planes * win_rows * q
        if 8 * win_cap <= V2_MAX_SHARED:
            blocks = ceil_div(h, rows) * ceil_div(planes, band_planes)
            return rows, band_planes, win_cap, blocks
        if rows == 1:
            return None
        bands = min(h, 2 * bands)


def maxpool_backward(be, x, y, dy, kernel=3, stride=2, version=None):
    """dx: each window's dy goes to its first maximum; deterministic (see module doc).

    version: 1, 2 or 3 (kernel backends); by default 3 where the window size is compiled in,
    else 2, or 1 where the tile of 2 and 3 does not fit in shared memory (windows wider than
    about 3000 outputs)."""
    shape = maxpool_output_shape(x.shape, kernel, stride)
    requested, version = version, _check_version("backward", version, BACKWARD_VERSIONS,
                                                 kernel, compiled=3)
    if not be.runs_kernels:
        return maxpool_backward_reference(x, y, dy, kernel, stride)
    _check_shape("y", y, shape)
    _check_shape("dy", dy, shape)
    suffix = storage_suffix("max-pool", x, y=y)
    require_float32("max-pool dy", dy)
    tiles = backward_v2_tiles(x.shape, kernel, stride) if version != 1 else None
    if requested in (2, 3) and tiles is None:
        raise ValueError(f"max-pool backward v{requested}: the windows of one row of a "
                         f"{x.shape} input overflow shared memory; use version=1")
    dx = be.empty(x.shape)
    if not dx.size:
        return dx
    n, c, h, w = x.shape
    dims = [i32(h), i32(w), i32(shape[2]), i32(shape[3]), i32(kernel), i32(stride)]
    if tiles is None:
        be.launch(KERNELS, "pool_max_backward_v1" + suffix, elementwise_grid(dx.size), ELEMENTWISE_BLOCK,
                  [x, y, dy, dx, *dims, i32(dx.size)])
        return dx
    rows, band_planes, win_cap, blocks = tiles
    name = f"pool_max_backward_v3_k{kernel}" if version == 3 else "pool_max_backward_v2"
    be.launch(KERNELS, name + suffix, blocks, V2_THREADS,
              [x, dy, dx, *dims, i32(n * c), i32(rows), i32(band_planes), i32(win_cap)],
              shared_mem=8 * win_cap)
    return dx
