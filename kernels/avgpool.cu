// Adaptive average pooling (torch.nn.AdaptiveAvgPool2d): an H x W map to P x Q outputs,
// output row p averaging input rows [floor(p*H/P), ceil((p+1)*H/P)), columns likewise.
// Windows may overlap (P does not divide H) and P may exceed H (rows then repeat).
//
// Forward: one thread per output, grid-stride; sums its window in row-major order and
// divides by the window's size.
//
// Backward is a gather, with no atomics: one thread per INPUT element sums dy / size over
// the windows (ascending p, then q) that hold it, so every dx is written once.
#include "common.cuh"

__device__ __forceinline__ int avgpool_start(int i, int in, int out) { return (i * in) / out; }
__device__ __forceinline__ int avgpool_end(int i, int in, int out) {
  return ((i + 1) * in + out - 1) / out;
}

extern "C" __global__ void avgpool_forward(const float* __restrict__ x, float* __restrict__ y,
                                           int H, int W, int P, int Q, int total) {
  PA_GRID_STRIDE(ii, total) {
    const int i = (int)ii;  // < total: 32-bit index math
    const int q = i % Q, t = i / Q, p = t % P, plane = t / P;
    const int h0 = avgpool_start(p, H, P), h1 = avgpool_end(p, H, P);
    const int w0 = avgpool_start(q, W, Q), w1 = avgpool_end(q, W, Q);
    const float* xp = x + (long long)plane * H * W;
    float acc = 0.0f;
    for (int h = h0; h < h1; ++h)
      for (int w = w0; w < w1; ++w) acc += __ldg(xp + h * W + w);
    y[i] = acc / (float)((h1 - h0) * (w1 - w0));
  }
}

extern "C" __global__ void avgpool_backward(const float* __restrict__ dy, float* __restrict__ dx,
                                            int H, int W, int P, int Q, int total) {
  PA_GRID_STRIDE(ii, total) {
    const int i = (int)ii;
    const int w = i % W, t = i / W, h = t % H, plane = t / H;
    // Windows holding row h: start(p) <= h < end(p), i.e. p in [h*P/H, ceil((h+1)*P/H)).
    const int p_lo = (h * P) / H, p_hi = min(((h + 1) * P + H - 1) / H, P);
    const int q_lo = (w * Q) / W, q_hi = min(((w + 1) * Q + W - 1) / W, Q);
    const float* g = dy + (long long)plane * P * Q;
    float acc = 0.0f;
    for (int p = p_lo; p < p_hi; ++p) {
      const int rows = avgpool_end(p, H, P) - avgpool_start(p, H, P);
      for (int q = q_lo; q < q_hi; ++q) {
        const int cols = avgpool_end(q, W, Q) - avgpool_start(q, W, Q);
        acc += __ldg(g + p * Q + q) / (float)(rows * cols);
      }
    }
    dx[i] = acc;
  }
}
