// Per-channel bias: y[n, c, ...] = x[n, c, ...] + b[c] over NC(HW) layouts (fully connected
// layers are the case HW = 1), and its gradient db[c] = sum over n and HW of dy[n, c, ...]
// (dy fp32, or the bf16 gradient a bf16 layer's products read: kernels/storage.cuh).
#include "storage.cuh"

// In place: x += b over (N, C, inner). One grid-stride pass, coalesced along inner.
extern "C" __global__ void bias_add(float* __restrict__ x, const float* __restrict__ b, int C,
                                    long long inner, long long total) {
  PA_GRID_STRIDE(i, total) x[i] += b[(i / inner) % C];
}

// db[c] = sum_{n, j} dy[n, c, j]: one block per channel, a fixed-order tree reduction, so
// the result is the same on every run (no float atomics).
template <class T>
__device__ __forceinline__ void bias_bwd(const T* __restrict__ dy, float* __restrict__ db, int N,
                                         int C, long long inner) {
  __shared__ float scratch[32];
  int c = blockIdx.x;
  long long count = (long long)N * inner;
  float acc = 0.0f;
  for (long long t = threadIdx.x; t < count; t += blockDim.x) {
    long long n = t / inner, j = t - n * inner;
    acc += pa_to_f32(dy[(n * C + c) * inner + j]);
  }
  acc = pa_block_sum(acc, scratch);
  if (threadIdx.x == 0) db[c] = acc;
}

// v2: one block per (channel, chunk of `chunk` images): blockIdx.y = split writes
// partial[split * C + c], and bias_backward_reduce adds the splits in order. v1's one
// block per channel leaves most SMs idle for conv1 (96 channels on 132 SMs).
template <class T>
__device__ __forceinline__ void bias_bwd_split(const T* __restrict__ dy,
                                               float* __restrict__ partial, int N, int C,
                                               long long inner, int chunk) {
  __shared__ float scratch[32];
  const int c = blockIdx.x, n0 = blockIdx.y * chunk, n1 = min(N, n0 + chunk);
  const long long count = (long long)max(n1 - n0, 0) * inner;
  float acc = 0.0f;
  for (long long t = threadIdx.x; t < count; t += blockDim.x) {
    const long long q = t / inner, n = n0 + q, j = t - q * inner;
    acc += pa_to_f32(dy[(n * C + c) * inner + j]);
  }
  acc = pa_block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[(long long)blockIdx.y * C + c] = acc;
}

// db[c] = sum over s < splits of partial[s * C + c], in that order (deterministic).
extern "C" __global__ void bias_backward_reduce(const float* __restrict__ partial,
                                                float* __restrict__ db, int C, int splits) {
  PA_GRID_STRIDE(c, C) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) acc += partial[(long long)s * C + c];
    db[c] = acc;
  }
}

#define BIAS_ENTRIES(SUFFIX, T)                                                            \
  extern "C" __global__ void bias_backward##SUFFIX(const T* __restrict__ dy,              \
                                                    float* __restrict__ db, int N, int C,   \
                                                    long long inner) {                      \
    bias_bwd<T>(dy, db, N, C, inner);                                                      \
  }                                                                                        \
  extern "C" __global__ void bias_backward_v2##SUFFIX(const T* __restrict__ dy,           \
                                                       float* __restrict__ partial, int N,  \
                                                       int C, long long inner, int chunk) { \
    bias_bwd_split<T>(dy, partial, N, C, inner, chunk);                                    \
  }
PA_STORAGE_TYPES(BIAS_ENTRIES)
#undef BIAS_ENTRIES
