// ReLU: y = max(x, 0) and its gradient dx = dy * (y > 0). x and y are stored as fp32 or
// bf16 (kernels/storage.cuh); dy is fp32, dx fp32 or, for a bf16 product that reads it
// next, bf16 (relu_backward*_to_bf16: the rounding in the same pass).
#include "storage.cuh"

template <class T>
__device__ __forceinline__ void relu_fwd(const T* __restrict__ x, T* __restrict__ y,
                                         long long n) {
  PA_GRID_STRIDE(i, n) {
    const float v = pa_to_f32(x[i]);
    pa_store(y + i, v < 0.0f ? 0.0f : v);  // NaN passes through: a diverging run is noticed
  }
}

// Takes the forward output y (ReLU can run in place, so x may be gone).
template <class T, class TD>
__device__ __forceinline__ void relu_bwd(const T* __restrict__ y, const float* __restrict__ dy,
                                         TD* __restrict__ dx, long long n) {
  PA_GRID_STRIDE(i, n) pa_store(dx + i, pa_to_f32(y[i]) > 0.0f ? dy[i] : 0.0f);
}

#define RELU_ENTRIES(SUFFIX, T)                                                             \
  extern "C" __global__ void relu_forward##SUFFIX(const T* __restrict__ x, T* __restrict__ y, \
                                                  long long n) {                            \
    relu_fwd<T>(x, y, n);                                                                   \
  }                                                                                         \
  extern "C" __global__ void relu_backward##SUFFIX(                                         \
      const T* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx,        \
      long long n) {                                                                        \
    relu_bwd<T, float>(y, dy, dx, n);                                                       \
  }                                                                                         \
  extern "C" __global__ void relu_backward##SUFFIX##_to_bf16(                               \
      const T* __restrict__ y, const float* __restrict__ dy, unsigned short* __restrict__ dx, \
      long long n) {                                                                        \
    relu_bwd<T, unsigned short>(y, dy, dx, n);                                              \
  }
PA_STORAGE_TYPES(RELU_ENTRIES)
#undef RELU_ENTRIES
