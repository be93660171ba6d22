// Max-pooling over kernel x kernel windows at a stride (overlapping when stride < kernel,
// as in AlexNet's 3x3 stride 2), no padding: P = (H - kernel) / stride + 1, floor.
//
// Winner rule (forward and backward agree on it): the FIRST maximum in row-major window
// order, i.e. scanning with a strict `>`. NaN counts as larger than every number, so a
// window with a NaN outputs NaN and its first NaN is the winner (matches numpy.argmax).
// +0 and -0 compare equal, so the first of them wins.
//
// Forward: one thread per output, grid-stride; a warp's loads are rows of `stride`-strided
// floats along W (coalesced up to the stride), and overlapping windows hit in L1.
//
// Backward is a gather, with no atomics: one thread per INPUT element sums dy over the
// windows (ascending p, then q) that it wins, so every dx is written once, in a fixed
// order. A window is won by x[h,w] iff x[h,w] equals the window's maximum y[p,q] and no
// earlier element of the window does; the forward output y gives the maximum, so the
// window is only rescanned (up to x[h,w]) in the rare case of a match (ties, constant
// regions such as ReLU zeros). y must be the forward output of x (max is exact, so every
// backend produces the same y bitwise).
#include "common.cuh"

// v is the window maximum m for the winner rule: equal, or both NaN.
__device__ __forceinline__ bool pool_same(float v, float m) { return v == m || (v != v && m != m); }

extern "C" __global__ void pool_max_forward(const float* __restrict__ x, float* __restrict__ y,
                                            int H, int W, int P, int Q, int kernel, int stride,
                                            int total) {
  PA_GRID_STRIDE(ii, total) {
    const int i = (int)ii;  // < total: 32-bit index math, the 64-bit loop cannot overflow
    const int q = i % Q, t = i / Q, p = t % P, plane = t / P;
    const float* win = x + (long long)plane * H * W + (long long)(p * stride) * W + q * stride;
    float best = __ldg(win);
    for (int r = 0; r < kernel; ++r) {
      for (int s = 0; s < kernel; ++s) {
        const float v = __ldg(win + r * W + s);
        // strict >: ties keep the first; the first NaN wins and stays (NaN > m is false).
        if (v > best || (v != v && best == best)) best = v;
      }
    }
    y[i] = best;
  }
}

extern "C" __global__ void pool_max_backward(const float* __restrict__ x,
                                             const float* __restrict__ y,
                                             const float* __restrict__ dy,
                                             float* __restrict__ dx, int H, int W, int P, int Q,
                                             int kernel, int stride, int total) {
  PA_GRID_STRIDE(ii, total) {
    const int i = (int)ii;  // < total: 32-bit index math, the 64-bit loop cannot overflow
    const int w = i % W, t = i / W, h = t % H, plane = t / H;
    // Windows holding row h: p*stride <= h <= p*stride + kernel - 1, clipped to [0, P).
    const int p_lo = h < kernel ? 0 : (h - kernel) / stride + 1;
    const int p_hi = min(h / stride, P - 1);
    const int q_lo = w < kernel ? 0 : (w - kernel) / stride + 1;
    const int q_hi = min(w / stride, Q - 1);
    const float v = __ldg(x + i);
    const float* xplane = x + (long long)plane * H * W;
    const long long yplane = (long long)plane * P * Q;
    float acc = 0.0f;
    for (int p = p_lo; p <= p_hi; ++p) {
      for (int q = q_lo; q <= q_hi; ++q) {
        const float m = __ldg(y + yplane + p * Q + q);
        if (!pool_same(v, m)) continue;
        // Tie check: does an element before (h, w) in row-major window order match too?
        bool first = true;
        const int r0 = p * stride, s0 = q * stride;
        for (int r = r0; r <= h && first; ++r) {
          const int s_end = r < h ? s0 + kernel : w;
          for (int s = s0; s < s_end; ++s) {
            if (pool_same(__ldg(xplane + r * W + s), m)) {
              first = false;
              break;
            }
          }
        }
        if (first) acc += __ldg(dy + yplane + p * Q + q);
      }
    }
    dx[i] = acc;
  }
}
