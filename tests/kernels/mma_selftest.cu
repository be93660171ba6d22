// Kernels that prove the tensor-core dialect (tests/test_mma.py): one warp loads one mma
// tile straight from global memory with the documented fragment layout of kernels/mma.cuh,
// or with a deliberately wrong lane mapping (`mode`), so the tests can show that the
// emulator computes the documented layout and nothing else. Compiled by NVRTC and nvcc too,
// so the same checks run on a GPU.
#include "mma.cuh"  // kernels/ is on the include path

// mode 0: the documented layout. 1: A's a[1] and a[2] exchanged (row + 8 read as col + 4).
// 2: B's (row, col) exchanged. 3: D stored with row and column roles exchanged.
#define MST_WRONG_A 1
#define MST_WRONG_B 2
#define MST_WRONG_D 3

__device__ __forceinline__ void mst_store_d(float* D, const float d[4], int g, int t, int mode) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    if (mode == MST_WRONG_D) D[(g + 8 * (i & 1)) * 8 + 2 * t + (i >> 1)] = d[i];
    else D[row * 8 + col] = d[i];
  }
}

// D (16x8) = A (16x8, row-major) B (8x8, row-major, B[k][n]) + C (16x8); inputs are fp32,
// rounded to tf32 here.
extern "C" __global__ void mma_selftest_tf32(const float* A, const float* B, const float* C,
                                             float* D, int mode) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  unsigned a[4], b[2];
  float c[4], d[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int j = mode == MST_WRONG_A ? ((i & 1) << 1 | (i >> 1)) : i;
    a[i] = pa_cvt_tf32(A[(g + 8 * (j & 1)) * 8 + t + 4 * (j >> 1)]);
    c[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
    b[i] = pa_cvt_tf32(mode == MST_WRONG_B ? B[g * 8 + t + 4 * i] : B[(t + 4 * i) * 8 + g]);
  pa_mma_m16n8k8_tf32(d, a, b, c);
  mst_store_d(D, d, g, t, mode);
}

// The same without the tf32 rounding: the emulator must reject the operands (NaN).
extern "C" __global__ void mma_selftest_tf32_unrounded(const float* A, const float* B,
                                                       const float* C, float* D) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  unsigned a[4], b[2];
  float c[4], d[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    a[i] = __float_as_uint(A[(g + 8 * (i & 1)) * 8 + t + 4 * (i >> 1)]);
    c[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) b[i] = __float_as_uint(B[(t + 4 * i) * 8 + g]);
  pa_mma_m16n8k8_tf32(d, a, b, c);
  mst_store_d(D, d, g, t, 0);
}

// Odd and even lanes reach the mma at different lines: undefined on the GPU (mma.sync is
// .aligned), so for the emulator only, which must refuse it (NaN).
extern "C" __global__ void mma_selftest_tf32_divergent(const float* A, float* D) {
  const int lane = threadIdx.x & 31;
  unsigned a[4] = {pa_cvt_tf32(A[lane]), 0u, 0u, 0u}, b[2] = {pa_cvt_tf32(1.0f), 0u};
  float c[4] = {0.0f, 0.0f, 0.0f, 0.0f}, d[4];
  if (lane & 1) pa_mma_m16n8k8_tf32(d, a, b, c);
  else pa_mma_m16n8k8_tf32(d, a, b, c);
  for (int i = 0; i < 4; ++i) D[lane * 4 + i] = d[i];
}

// D (16x8) = A (16x16) B (16x8) + C with A, B given as bf16 bits (uint16, row-major).
// mode 2 here packs B's pair in the wrong order (the higher row in the low half).
extern "C" __global__ void mma_selftest_bf16(const unsigned short* A, const unsigned short* B,
                                             const float* C, float* D, int mode) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  unsigned a[4], b[2];
  float c[4], d[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int j = mode == MST_WRONG_A ? ((i & 1) << 1 | (i >> 1)) : i;
    const int row = g + 8 * (j & 1), col = 2 * t + 8 * (j >> 1);
    a[i] = (unsigned)A[row * 16 + col] | ((unsigned)A[row * 16 + col + 1] << 16);
    c[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const unsigned lo = B[(2 * t + 8 * i) * 8 + g], hi = B[(2 * t + 8 * i + 1) * 8 + g];
    b[i] = mode == MST_WRONG_B ? (hi | lo << 16) : (lo | hi << 16);
  }
  pa_mma_m16n8k16_bf16(d, a, b, c);
  mst_store_d(D, d, g, t, mode);
}

// The conversions, element by element: tf32 bits and bf16 bits of x, and pa_pack_bf16x2 of
// (x[2i], x[2i+1]) (n even).
extern "C" __global__ void mma_selftest_convert(const float* x, unsigned* tf32,
                                                unsigned short* bf16, unsigned* packed, int n) {
  PA_GRID_STRIDE(i, n) {
    tf32[i] = pa_cvt_tf32(x[i]);
    bf16[i] = pa_f32_to_bf16(x[i]);
    if (i % 2 == 0) packed[i / 2] = pa_pack_bf16x2(x[i], x[i + 1]);
  }
}
