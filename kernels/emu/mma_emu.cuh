// Emulation of the tensor-core dialect of kernels/mma.cuh: included by it when compiling for
// the CPU, after cuda_emu.h (so no headers of its own: setup.py preprocesses kernel files
// without system headers).
//
// pa_mma_* is a warp-wide operation, emulated by cuemu::mma (kernels/emu/mma.cpp: the
// warp's fragments meet at a warp barrier and the tile is computed through the documented
// fragment layout, with fp32 accumulation).
#pragma once

static inline void pa_mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2],
                                       const float c[4], const char* file = __builtin_FILE(),
                                       int line = __builtin_LINE()) {
  ::cuemu::mma(::cuemu::MMA_TF32_M16N8K8, d, a, b, c, file, line);
}

static inline void pa_mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                                        const float c[4], const char* file = __builtin_FILE(),
                                        int line = __builtin_LINE()) {
  ::cuemu::mma(::cuemu::MMA_BF16_M16N8K16, d, a, b, c, file, line);
}

// cvt.rna.tf32.f32: add half an ulp of the 10-bit mantissa to the magnitude and truncate
// (ties away from zero; overflow rounds to infinity). NaN stays a quiet NaN.
static inline unsigned pa_cvt_tf32(float x) {
  const unsigned u = __float_as_uint(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) ? 0x7fffe000u : u;
  return (u + 0x1000u) & 0xffffe000u;
}

// cvt.rn.bf16.f32: round to nearest, ties to even. NaN -> the canonical bf16 NaN.
static inline unsigned short pa_f32_to_bf16(float x) {
  const unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)0x7fffu;
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline unsigned pa_pack_bf16x2(float lo, float hi) {
  return (unsigned)pa_f32_to_bf16(lo) | ((unsigned)pa_f32_to_bf16(hi) << 16);
}
