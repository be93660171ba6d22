// Helpers shared by every kernel file: index math, the Philox4x32-10 generator and
// warp/block reductions. Compiled by NVRTC and, through kernels/emu/cuda_emu.h, by g++.
#pragma once

#define PA_FULL_MASK 0xffffffffu

__device__ __forceinline__ int pa_ceil_div(int a, int b) { return (a + b - 1) / b; }

// Whether p is aligned to `bytes` (a power of two), for a vector load or store through it.
__device__ __forceinline__ bool pa_aligned(const void* p, unsigned bytes) {
  return (reinterpret_cast<unsigned long long>(p) & (bytes - 1ull)) == 0;
}

// Grid-stride loop over [0, n): every elementwise kernel uses it, so any grid size works.
// PA_GRID_STRIDE_FROM starts at `from` (a vectorised pass's scalar tail).
#define PA_GRID_STRIDE_FROM(i, from, n)                                                  \
  for (long long i = (from) + (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)
#define PA_GRID_STRIDE(i, n) PA_GRID_STRIDE_FROM(i, 0, n)

// SplitMix64 (Steele, Lea & Flood 2014), as pyalexnet.rng.splitmix64.
__device__ __forceinline__ unsigned long long pa_splitmix64(unsigned long long z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// ---- Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3") ----
// Counter-based: the random words for counter c under key k are a pure function of (c, k),
// so a mask can be regenerated anywhere (the backward pass, another backend) bit for bit.
struct pa_philox_out { unsigned v[4]; };

__device__ __forceinline__ pa_philox_out pa_philox4x32_10(unsigned c0, unsigned c1, unsigned c2,
                                                          unsigned c3, unsigned k0, unsigned k1) {
  const unsigned M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    unsigned hi0 = __umulhi(M0, c0), lo0 = M0 * c0;
    unsigned hi1 = __umulhi(M1, c2), lo1 = M1 * c2;
    unsigned n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += W0; k1 += W1;
  }
  pa_philox_out o;
  o.v[0] = c0; o.v[1] = c1; o.v[2] = c2; o.v[3] = c3;
  return o;
}

// Uniform in [0, 1) from the top 24 bits: exact in float32 on every backend.
__device__ __forceinline__ float pa_uniform24(unsigned bits) {
  return (float)(bits >> 8) * (1.0f / 16777216.0f);
}

// ---- reductions -----------------------------------------------------------------------
__device__ __forceinline__ float pa_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(PA_FULL_MASK, v, o);
  return v;
}

__device__ __forceinline__ float pa_warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(PA_FULL_MASK, v, o));
  return v;
}

// Sum over a 1-D block whose size is a multiple of 32 (at most 1024). `scratch` holds 32
// floats of shared memory. Every thread gets the total. Contains barriers: call it from
// all threads of the block.
__device__ __forceinline__ float pa_block_sum(float v, float* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = pa_warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.0f;
  return pa_warp_sum(v);
}

__device__ __forceinline__ float pa_block_max(float v, float* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = pa_warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : -__int_as_float(0x7f800000);
  return pa_warp_max(v);
}
