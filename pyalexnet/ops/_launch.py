"""Launch-geometry helpers shared by the op modules."""
import numpy as np

ELEMENTWISE_BLOCK = 256
# Enough blocks to fill any GPU; grid-stride loops cover larger arrays.
ELEMENTWISE_MAX_BLOCKS = 8192
TARGET_SMS = 132       # H200. Kernel choices depend on shapes only, never on the device, so
                       # every backend runs (and tests) the same kernels and split counts.


def elementwise_grid(n: int, block: int = ELEMENTWISE_BLOCK) -> int:
    return max(1, min(ELEMENTWISE_MAX_BLOCKS, ceil_div(n, block)))


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def waves(blocks: int, per_sm: int, sms: int) -> float:
    """A grid's time in units of one full wave of resident blocks (sms x per_sm). A last,
    partial wave costs in proportion to the blocks it puts on the busiest SM, plus a tenth
    for the tail (one block alone on an SM runs at about half its share of a full wave):
    the launchers' cost models (gemm_plan, the conv filter gradient, Winograd) share it."""
    full, rest = divmod(blocks, per_sm * sms)
    return full + (0.1 + 0.9 * ceil_div(rest, sms) / per_sm if rest else 0.0)


def require_float32(what, a):
    """The kernels read float32: say which array is not."""
    if a.dtype != np.float32:
        raise TypeError(f"{what} must be float32 for the kernels, got {a.dtype}")


def i32(v) -> np.int32:
    """A launch argument that the kernel declares as int, range-checked."""
    v = int(v)
    if not -2**31 <= v < 2**31:
        raise OverflowError(f"{v} does not fit the kernel's 32-bit int parameter")
    return np.int32(v)


def f32(v) -> np.float32:
    return np.float32(v)


def i64(v) -> np.int64:
    return np.int64(int(v))
