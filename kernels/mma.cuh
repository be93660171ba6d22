// The tensor-core step of the kernel dialect: one inline function per mma shape, plus the
// conversions that produce its operands. On the GPU each is one PTX instruction; under the
// emulator (kernels/emu/mma_emu.cuh) the same call gathers the warp's fragments at a warp
// barrier and computes the tile with the documented fragment layout, so a kernel that puts
// the wrong element in the wrong lane computes the wrong answer on the CPU too.
//
// Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k8 / mma.m16n8k16"), with
// g = lane / 4 and t = lane % 4, A row-major 16 x K, B K x 8 ("col": stored by column),
// C/D 16 x 8 row-major:
//
//   m16n8k8 .tf32   a[i]: row g + 8 (i & 1), col t + 4 (i >> 1)          i = 0..3
//                   b[i]: row t + 4 i,       col g                       i = 0..1
//   m16n8k16 .bf16  a[i]: row g + 8 (i & 1), cols 2t + 8 (i >> 1) + {0,1} i = 0..3
//                   b[i]: rows 2t + 8 i + {0,1}, col g                  i = 0..1
//                   (two bf16 per register, the lower column / row in the low half)
//   both   c/d[i]: row g + 8 (i >> 1), col 2t + (i & 1)                  i = 0..3
//
// Operands of the TF32 mma must be TF32 values (pa_cvt_tf32): the emulator poisons the
// tile with NaN otherwise, so a missing conversion fails a test rather than passing on the
// hardware's unspecified handling of the low 13 bits.
#pragma once
#include "common.cuh"

#if defined(__CUDA_ARCH__)

// fp32 -> tf32 (bits in a 32-bit register): round to nearest, ties away from zero, keep
// 10 explicit mantissa bits (cvt.rna.tf32.f32; sm_80+).
__device__ __forceinline__ unsigned pa_cvt_tf32(float x) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// fp32 -> bf16 bits, round to nearest even (cvt.rn.bf16.f32; sm_80+).
__device__ __forceinline__ unsigned short pa_f32_to_bf16(float x) {
  unsigned short r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
  return r;
}

// Two fp32 -> one register of two bf16, `lo` in the low half (cvt.rn.bf16x2.f32 puts its
// first source in the high half).
__device__ __forceinline__ unsigned pa_pack_bf16x2(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// d = a (16x8 tf32) * b (8x8 tf32) + c, fp32 accumulation. d may be c.
__device__ __forceinline__ void pa_mma_m16n8k8_tf32(float d[4], const unsigned a[4],
                                                    const unsigned b[2], const float c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
        "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// d = a (16x16 bf16) * b (16x8 bf16) + c, fp32 accumulation. d may be c.
__device__ __forceinline__ void pa_mma_m16n8k16_bf16(float d[4], const unsigned a[4],
                                                     const unsigned b[2], const float c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
        "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

#else
#include "emu/mma_emu.cuh"
#endif

// bf16 bits -> fp32: exact (bf16 is the top half of an fp32), the same on every backend.
__device__ __forceinline__ float pa_bf16_to_f32(unsigned short h) {
  return __uint_as_float((unsigned)h << 16);
}
