// SGD with momentum and weight decay exactly as the AlexNet paper writes it:
//   v <- momentum * v - weight_decay * lr * w - lr * dL/dw
//   w <- w + v
// One fused pass per parameter tensor, in place on w and v: each element is read once
// (w, grad, v) and written once (w, v), so the update runs at memory bandwidth.
#include "common.cuh"

__device__ __forceinline__ void sgd_step(float& w, float g, float& v, float lr, float momentum,
                                         float decay) {
  v = momentum * v - decay * w - lr * g;
  w = w + v;
}

// When w, grad and v are all 16-byte aligned, the first n/4*4 elements go as float4 and the
// n%4 tail as scalars; otherwise (views at odd offsets) everything goes scalar.
extern "C" __global__ void sgd_update(float* __restrict__ w, const float* __restrict__ grad,
                                      float* __restrict__ v, long long n, float lr,
                                      float momentum, float weight_decay) {
  const float decay = weight_decay * lr;
  long long scalar_from = 0;
  if (pa_aligned(w, 16) && pa_aligned(grad, 16) && pa_aligned(v, 16)) {
    long long n4 = n / 4;
    float4* w4 = reinterpret_cast<float4*>(w);
    float4* v4 = reinterpret_cast<float4*>(v);
    const float4* g4 = reinterpret_cast<const float4*>(grad);
    PA_GRID_STRIDE(i, n4) {
      float4 a = w4[i], b = v4[i], g = __ldg(g4 + i);
      sgd_step(a.x, g.x, b.x, lr, momentum, decay);
      sgd_step(a.y, g.y, b.y, lr, momentum, decay);
      sgd_step(a.z, g.z, b.z, lr, momentum, decay);
      sgd_step(a.w, g.w, b.w, lr, momentum, decay);
      w4[i] = a;
      v4[i] = b;
    }
    scalar_from = n4 * 4;
  }
  PA_GRID_STRIDE_FROM(i, scalar_from, n) {
    float a = w[i], b = v[i];
    sgd_step(a, __ldg(grad + i), b, lr, momentum, decay);
    w[i] = a;
    v[i] = b;
  }
}
