"""Number formats of the tensor-core paths: ``fp32`` (CUDA cores), ``tf32`` and ``bf16``.

The rounding functions reproduce the hardware bit for bit: TF32 operands are made by
``cvt.rna.tf32.f32`` (10 explicit mantissa bits, round to nearest, ties away from zero),
BF16 values by ``cvt.rn.bf16.f32`` (round to nearest even). bf16 arrays are stored as
uint16 bit patterns (NumPy has no bfloat16), the upper half of the float32 they stand for.

``reduction_error_bound`` is the tolerance the tests use: the classic bound for a sum of
K products of rounded operands accumulated in fp32.
"""
import numpy as np

from ._launch import ELEMENTWISE_BLOCK, elementwise_grid, i64, require_float32

PRECISIONS = ("fp32", "tf32", "bf16")
# Unit roundoff u = 2^-(p) of each format with p significant bits including the hidden one
# (round to nearest: |fl(x) - x| <= u |x|).
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "tf32": 2.0 ** -11, "bf16": 2.0 ** -8}
BF16 = np.uint16  # storage type of bf16 arrays


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def round_tf32(x):
    """float32 values rounded as cvt.rna.tf32.f32 rounds them (ties away from zero)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    special = (u & 0x7F800000) == 0x7F800000
    r = np.where(special, np.where(u & 0x007FFFFF, np.uint32(0x7FFFE000), u),
                 (u + np.uint32(0x1000)) & np.uint32(0xFFFFE000))
    return r.astype(np.uint32).view(np.float32)


def to_bf16(x):
    """bf16 bit patterns (uint16) of x: round to nearest even, NaN -> 0x7fff."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where((u & 0x7FFFFFFF) > 0x7F800000, np.uint16(0x7FFF), r).astype(np.uint16)


def from_bf16(h):
    """float32 values of bf16 bit patterns (exact)."""
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_bf16(x):
    """float32 values rounded to bf16 (round to nearest even)."""
    return from_bf16(to_bf16(x))


def activation_dtype(precision):
    """How a convolution stores its output maps: bf16 bits in bf16 training (the maps are
    most of a step's memory traffic; the memory-bound layers after them read and write
    bf16 too), float32 otherwise. fc outputs stay float32 (small, and the logits)."""
    return BF16 if check_precision(precision) == "bf16" else np.float32


def storage_suffix(op, a, name="x", **same):
    """The kernel-name suffix of an activation's storage (kernels/storage.cuh): "" for
    float32, "_bf16" for bf16 bits (uint16). ``a`` is the op's argument ``name``; the
    arrays in ``same`` (argument name=array) must be stored as it is."""
    if a.dtype not in (np.float32, BF16):
        raise TypeError(f"{op}: {name} must be float32 or bf16 (uint16) for the kernels, "
                        f"got {a.dtype}")
    for other, b in same.items():
        if b.dtype != a.dtype:
            raise TypeError(f"{op}: {other} must have {name}'s dtype {a.dtype}, got {b.dtype}")
    return "" if a.dtype == np.float32 else "_bf16"


def widened(x):
    """x in float32 if it holds bf16 bits, else x itself (any dtype: float64 checks)."""
    return from_bf16(x) if np.asarray(x).dtype == BF16 else x


def stored_like(y, x):
    """A reference's result y stored as the input x is: bf16 bits if x holds them."""
    return to_bf16(y) if np.asarray(x).dtype == BF16 else y


def operand(x, precision):
    """x as the tensor cores see it, as float32: rounded to the format (bf16 bit arrays are
    widened). fp32 returns x unchanged (any dtype: the float64 gradient checks)."""
    check_precision(precision)
    if np.asarray(x).dtype == BF16:
        if precision != "bf16":
            raise TypeError(f"a bf16 (uint16) array cannot feed a {precision} product")
        return from_bf16(x)
    if precision == "fp32":
        return x
    return round_tf32(x) if precision == "tf32" else round_bf16(x)


def reduction_error_bound(abs_products, k, precision, rounded_inputs=False):
    """Elementwise bound on |computed - exact| for sums of k products accumulated in fp32.

    abs_products: sum_k |a_k| |b_k| per output (the same product on |a|, |b|). With
    rounded_inputs=False the exact result uses the unrounded inputs: each product carries
    the operands' rounding, (1 + u)^2 - 1 = 2u + u^2, and the fp32 sum adds
    gamma_k = k u32 / (1 - k u32) (Higham, Accuracy and Stability, 3.1). With
    rounded_inputs=True the exact result uses the rounded inputs: only gamma_k remains.
    """
    u32 = UNIT_ROUNDOFF["fp32"]
    k = max(int(k), 1)
    gamma = k * u32 / (1 - k * u32)
    u = 0.0 if rounded_inputs else UNIT_ROUNDOFF[check_precision(precision)]
    return ((1 + u) ** 2 * (1 + gamma) - 1) * np.asarray(abs_products, dtype=np.float64)


# ---- conversion kernels (kernels/convert.cu) ----------------------------------------------
KERNELS = "convert.cu"


def _convert(be, kernel, x, dtype):
    y = be.empty(x.shape, dtype=dtype)
    n = int(x.size)
    if n:
        be.launch(KERNELS, kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, [x, y, i64(n)])
    return y


def convert_to_bf16(be, x):
    """bf16 copy (uint16 bit patterns, round to nearest even) of a float32 array."""
    if not be.runs_kernels:
        return to_bf16(x)
    require_float32("convert_to_bf16: x", x)
    return _convert(be, "convert_f32_to_bf16", x, BF16)


def convert_from_bf16(be, h):
    """float32 values (exact) of a bf16 (uint16) array."""
    if not be.runs_kernels:
        return from_bf16(h)
    if h.dtype != BF16:
        raise TypeError(f"convert_from_bf16: expected a bf16 (uint16) array, got {h.dtype}")
    return _convert(be, "convert_bf16_to_f32", h, np.float32)


def float32_activations(be, x):
    """x as float32: bf16 activations widened (exact, by a kernel), float32 ones as they are;
    for the layers whose kernels read float32 only (dropout, average pooling)."""
    return convert_from_bf16(be, x) if x.dtype == BF16 else x


def convert_round_tf32(be, x):
    """float32 copy of x rounded to tf32 (cvt.rna.tf32.f32)."""
    if not be.runs_kernels:
        return round_tf32(x)
    require_float32("convert_round_tf32: x", x)
    return _convert(be, "convert_round_tf32", x, np.float32)


def fp32_operand(be, x, precision, what):
    """x as an fp32 kernel standing in for a tensor-core one takes it: float32 values of the
    format (tf32-rounded, or widened from bf16 bits)."""
    if precision == "bf16":
        return convert_from_bf16(be, mma_operand(be, x, precision, what))
    return convert_round_tf32(be, mma_operand(be, x, precision, what))


def mma_operand(be, x, precision, what):
    """x as a tensor-core kernel takes it: float32 for tf32 (the kernel rounds on load);
    bf16 bits for bf16 (a float32 array is converted here; a uint16 array is used as is)."""
    if precision == "bf16":
        if x.dtype == BF16:
            return x
        if x.dtype != np.float32:
            raise TypeError(f"{what} must be float32 or bf16 (uint16) for precision='bf16', "
                            f"got {x.dtype}")
        return convert_to_bf16(be, x)
    if x.dtype != np.float32:
        raise TypeError(f"{what} must be float32 for precision={precision!r}, got {x.dtype}")
    return x
