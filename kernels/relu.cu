// ReLU: y = max(x, 0) and its gradient dx = dy * (y > 0).
#include "common.cuh"

extern "C" __global__ void relu_forward(const float* __restrict__ x, float* __restrict__ y,
                                        long long n) {
  PA_GRID_STRIDE(i, n) {
    float v = x[i];
    y[i] = v < 0.0f ? 0.0f : v;  // NaN passes through, so a diverging run is noticed
  }
}

// Takes the forward output y (ReLU can run in place, so x may be gone).
extern "C" __global__ void relu_backward(const float* __restrict__ y, const float* __restrict__ dy,
                                         float* __restrict__ dx, long long n) {
  PA_GRID_STRIDE(i, n) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}
