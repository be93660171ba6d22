"""Cross-channel local response normalisation (AlexNet, section 3.3).

    scale[n,c,h,w] = k + a * sum_{c'=max(0,c-size//2)}^{min(C-1,c+size//2)} x[n,c',h,w]^2
    y = x * scale^-beta

with ``a = alpha`` by default, which is the paper's formula (k=2, n=5, alpha=1e-4,
beta=0.75). cuda-convnet, Caffe and PyTorch divide alpha by the window size instead;
``alpha_over_n=True`` gives their ``a = alpha / size`` (use it to import their weights or
compare against them). The forward pass also returns ``scale`` because the backward pass
needs it:

    dx[c] = dy[c] * scale[c]^-beta - 2 a beta x[c] * sum_{c' in window(c)} dy[c'] y[c'] / scale[c']

(the window is symmetric, so the channels whose window contains c are the window of c).
``size`` must be odd: for even sizes the paper's ``n/2`` on both sides, Caffe and PyTorch
all disagree about the window. Windows larger than the channel count are allowed (they
clip to the channels that exist). ``k > 0`` and ``alpha >= 0`` keep scale positive.

The kernels (kernels/lrn.cu) sum in float32, each window afresh in ascending channel
order, and use the accurate ``powf``. x and y may be float32 or bf16 bits (uint16;
ops/precision.py): y has x's storage; scale, dy and dx are float32.

Kernel versions (``version=``; both give the same bits): 1 keeps each thread's window in a
shared-memory ring of any length; 2 (the default where the window, clipped to the channels
there are, is one of COMPILED_RINGS) has its length compiled in, keeps it in registers and
loads several channels ahead.
"""
import numpy as np

from ._launch import ceil_div, f32, i32, require_float32
from .precision import storage_suffix, stored_like, widened

KERNELS = "lrn.cu"
VERSIONS = (1, 2)
COMPILED_RINGS = (3, 5)  # window lengths (2 * half + 1) with v2 entries (kernels/lrn.cu)
MAX_BLOCK = 128          # threads per block (pixels); the kernels' __launch_bounds__
SHARED_LIMIT = 48 * 1024  # the per-thread channel rings stay under the default opt-in limit
# Channels per thread: long chunks amortise loading the 2*half halo channels; shorter ones
# are used when there are too few pixels to fill the GPU (small batches).
MAX_CHUNK, MIN_CHUNK, TARGET_THREADS = 32, 8, 1 << 17


def _a(alpha, size, alpha_over_n):
    return alpha / size if alpha_over_n else alpha


def _check_params(size, alpha, beta, k):
    integer = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
    if not integer or size < 1 or size % 2 == 0:
        raise ValueError(f"LRN size must be a positive odd integer (a window centred on the "
                         f"channel), got {size!r}")
    if not k > 0:
        raise ValueError(f"LRN k must be > 0 so that scale stays positive, got {k!r}")
    if not alpha >= 0:
        raise ValueError(f"LRN alpha must be >= 0 so that scale stays positive, got {alpha!r}")
    if not np.isfinite(beta):
        raise ValueError(f"LRN beta must be finite, got {beta!r}")


def _check_4d(what, a, shape=None):
    if a.ndim != 4:
        raise ValueError(f"LRN {what} must be 4-D (N, C, H, W), got shape {a.shape}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"LRN {what} has shape {a.shape}, expected {tuple(shape)} like x")


def _window_sum(v, size):
    """sum over channels c-size//2 .. c+size//2 (zero outside), ascending c'."""
    half = min(size // 2, v.shape[1] - 1)  # larger windows clip to the channels there are
    c = v.shape[1]
    padded = np.zeros((v.shape[0], c + 2 * half) + v.shape[2:], dtype=v.dtype)
    padded[:, half:half + c] = v
    out = np.zeros_like(v)
    for d in range(2 * half + 1):
        out += padded[:, d:d + c]
    return out


def lrn_forward_reference(x, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_n=False):
    """(y, scale) in x's dtype (y stored as x, scale float32, for bf16 x)."""
    _check_params(size, alpha, beta, k)
    _check_4d("x", x)
    a = _a(alpha, size, alpha_over_n)
    xf = widened(x)
    scale = k + a * _window_sum(xf * xf, size)
    return stored_like(xf * scale ** -beta, x), scale


def lrn_backward_reference(x, y, scale, dy, size=5, alpha=1e-4, beta=0.75, k=2.0,
                           alpha_over_n=False):
    _check_params(size, alpha, beta, k)
    a = _a(alpha, size, alpha_over_n)
    return (dy * scale ** -beta
            - (2 * a * beta) * widened(x) * _window_sum(dy * widened(y) / scale, size))


def _geometry(shape, size, rings):
    """grid, block, shared bytes and the kernel's int arguments for an (N, C, H, W) tensor."""
    n, c, h, w = shape
    half = min(size // 2, c - 1)
    ring = 2 * half + 1
    block = MAX_BLOCK
    while block > 32 and rings * ring * block * 4 > SHARED_LIMIT:
        block //= 2
    shared = rings * ring * block * 4
    if shared > SHARED_LIMIT:
        raise ValueError(f"LRN window of {ring} channels is too large for the kernel's "
                         f"shared-memory ring (at most {SHARED_LIMIT // (rings * 32 * 4)})")
    pixels = n * h * w
    chunk = MAX_CHUNK
    while chunk > MIN_CHUNK and pixels * ceil_div(c, chunk) < TARGET_THREADS:
        chunk //= 2
    grid = (ceil_div(pixels, block), ceil_div(c, chunk))
    if grid[1] > 65535:
        raise ValueError(f"LRN over {c} channels needs {grid[1]} blocks along grid.y "
                         "(at most 65535)")
    args = [i32(c), i32(h * w), i32(pixels), i32(half), i32(chunk)]
    return grid, block, shared, args


def _version(version, shape, size):
    """The version to run for an (N, C, H, W) tensor: ``version``, checked, or the newest
    that serves its window (clipped to the channels there are)."""
    ring = 2 * min(size // 2, shape[1] - 1) + 1
    if version is not None and version not in VERSIONS:
        raise ValueError(f"LRN version must be one of {VERSIONS}, got {version!r}")
    if version == 2 and ring not in COMPILED_RINGS:
        sizes = " or ".join(map(str, COMPILED_RINGS))
        raise ValueError(f"LRN v2 is compiled for windows of {sizes} channels, not {ring}; "
                         "use version=1")
    if version is None:
        version = 2 if ring in COMPILED_RINGS else 1
    return version, ring


def _launch(be, name, suffix, shape, size, rings, version, ring, arrays, floats):
    """Launch ``version`` (resolved by _version, with its ring length)."""
    grid, block, shared, args = _geometry(shape, size, rings)
    if version == 2:  # no ring in shared memory
        name, shared = f"{name}_v2_r{ring}", 0
    be.launch(KERNELS, name + suffix, grid, block, arrays + args + floats, shared_mem=shared)


def lrn_forward(be, x, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_n=False,
                version=None):
    """(y, scale): y = x * scale^-beta, scale = k + a * (window sum of x^2); see module doc.
    version: 1 or 2 (kernel backends; see module doc)."""
    _check_params(size, alpha, beta, k)
    _check_4d("x", x)
    version, ring = _version(version, x.shape, size)
    if not be.runs_kernels:
        return lrn_forward_reference(x, size, alpha, beta, k, alpha_over_n)
    suffix = storage_suffix("LRN", x)
    y, scale = be.empty(x.shape, dtype=x.dtype), be.empty(x.shape)
    if x.size == 0:
        return y, scale
    _launch(be, "lrn_forward", suffix, x.shape, size, 1, version, ring, [x, y, scale],
            [f32(k), f32(_a(alpha, size, alpha_over_n)), f32(beta)])
    return y, scale


def lrn_backward(be, x, y, scale, dy, size=5, alpha=1e-4, beta=0.75, k=2.0,
                 alpha_over_n=False, version=None):
    """dx from the forward input x, its outputs y and scale, and dy (same parameters).
    version: 1 or 2 (kernel backends; see module doc)."""
    _check_params(size, alpha, beta, k)
    _check_4d("x", x)
    for what, arr in (("y", y), ("scale", scale), ("dy", dy)):
        _check_4d(what, arr, x.shape)
    version, ring = _version(version, x.shape, size)
    if not be.runs_kernels:
        return lrn_backward_reference(x, y, scale, dy, size, alpha, beta, k, alpha_over_n)
    suffix = storage_suffix("LRN", x, y=y)
    for what, arr in (("scale", scale), ("dy", dy)):
        require_float32(f"LRN {what}", arr)
    dx = be.empty(x.shape)
    if x.size == 0:
        return dx
    a = _a(alpha, size, alpha_over_n)
    _launch(be, "lrn_backward", suffix, x.shape, size, 2, version, ring,
            [x, y, scale, dy, dx], [f32(2 * a * beta), f32(beta)])
    return dx
