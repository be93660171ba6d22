// ReLU: y = max(x, 0) and its gradient dx = dy * (y > 0). x and y are stored as fp32 or
// bf16 (kernels/storage.cuh); dy is fp32, dx fp32 or, for a bf16 product that reads it
// next, bf16 (relu_backward*_to_bf16: the rounding in the same pass).
#include "storage.cuh"

// NaN passes through: a diverging run is noticed.
__device__ __forceinline__ float relu1(float v) { return v < 0.0f ? 0.0f : v; }

// [from, n): v1's whole pass, and v2's unaligned or tail part.
template <class T>
__device__ __forceinline__ void relu_fwd(const T* __restrict__ x, T* __restrict__ y, long long n,
                                         long long from = 0) {
  PA_GRID_STRIDE_FROM(i, from, n) pa_store(y + i, relu1(pa_to_f32(x[i])));
}

// Takes the forward output y (ReLU can run in place, so x may be gone).
template <class T, class TD>
__device__ __forceinline__ void relu_bwd(const T* __restrict__ y, const float* __restrict__ dy,
                                         TD* __restrict__ dx, long long n, long long from = 0) {
  PA_GRID_STRIDE_FROM(i, from, n) pa_store(dx + i, pa_to_f32(y[i]) > 0.0f ? dy[i] : 0.0f);
}

// v2: four consecutive elements a thread a step, each array read and written as one
// vector (pa_load4_f32 / pa_store4) where all of them are aligned to it, then the n % 4
// tail (or, unaligned, everything) as v1 does. v1 has one 4-byte load a thread in flight:
// a warp's 128 bytes, 8 KB an SM at 64 warps, too few bytes in flight to cover DRAM
// latency at full bandwidth (Little's law); v2 has 4 (relu_backward: 8) times as many.
// Same results as v1, element by element.
template <class T>
__device__ __forceinline__ void relu_fwd_v2(const T* __restrict__ x, T* __restrict__ y,
                                            long long n) {
  long long scalar_from = 0;
  if (pa_aligned(x, 4 * sizeof(T)) && pa_aligned(y, 4 * sizeof(T))) {
    const long long n4 = n / 4;
    PA_GRID_STRIDE(i, n4) {
      const float4 v = pa_load4_f32(x + 4 * i);
      pa_store4(y + 4 * i, make_float4(relu1(v.x), relu1(v.y), relu1(v.z), relu1(v.w)));
    }
    scalar_from = n4 * 4;
  }
  relu_fwd(x, y, n, scalar_from);
}

template <class T, class TD>
__device__ __forceinline__ void relu_bwd_v2(const T* __restrict__ y, const float* __restrict__ dy,
                                            TD* __restrict__ dx, long long n) {
  long long scalar_from = 0;
  if (pa_aligned(y, 4 * sizeof(T)) && pa_aligned(dy, 16) && pa_aligned(dx, 4 * sizeof(TD))) {
    const long long n4 = n / 4;
    PA_GRID_STRIDE(i, n4) {
      const float4 v = pa_load4_f32(y + 4 * i), d = pa_load4_f32(dy + 4 * i);
      pa_store4(dx + 4 * i, make_float4(v.x > 0.0f ? d.x : 0.0f, v.y > 0.0f ? d.y : 0.0f,
                                        v.z > 0.0f ? d.z : 0.0f, v.w > 0.0f ? d.w : 0.0f));
    }
    scalar_from = n4 * 4;
  }
  relu_bwd(y, dy, dx, n, scalar_from);
}

// V: "" (v1) or _v2.
#define RELU_VERSION_ENTRIES(V, SUFFIX, T)                                                  \
  extern "C" __global__ void relu_forward##V##SUFFIX(const T* __restrict__ x,               \
                                                     T* __restrict__ y, long long n) {      \
    relu_fwd##V<T>(x, y, n);                                                                \
  }                                                                                         \
  extern "C" __global__ void relu_backward##V##SUFFIX(                                      \
      const T* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx,        \
      long long n) {                                                                        \
    relu_bwd##V<T, float>(y, dy, dx, n);                                                    \
  }                                                                                         \
  extern "C" __global__ void relu_backward##V##SUFFIX##_to_bf16(                            \
      const T* __restrict__ y, const float* __restrict__ dy, unsigned short* __restrict__ dx, \
      long long n) {                                                                        \
    relu_bwd##V<T, unsigned short>(y, dy, dx, n);                                           \
  }
#define RELU_ENTRIES(SUFFIX, T) \
  RELU_VERSION_ENTRIES(, SUFFIX, T) RELU_VERSION_ENTRIES(_v2, SUFFIX, T)
PA_STORAGE_TYPES(RELU_ENTRIES)
#undef RELU_ENTRIES
#undef RELU_VERSION_ENTRIES
