// Cross-channel local response normalisation (Krizhevsky et al. 2012, section 3.3):
//   scale[c] = k + a * sum_{c' = c-half}^{c+half} x[c']^2   (channels outside [0, C) are 0)
//   y[c]     = x[c] * scale[c]^-beta
// and its gradient
//   dx[c] = dy[c] * scale[c]^-beta - 2 a beta x[c] * sum_{c' = c-half}^{c+half} dy[c'] y[c'] / scale[c']
// (the window is symmetric, so "the c' whose window holds c" is the window of c).
// `a` is alpha or alpha/size; the launcher (pyalexnet/ops/lrn.py) decides.
//
// Layout: one thread per (image, pixel) column and per chunk of channels, so a warp reads
// 32 consecutive pixels of one channel plane (coalesced) and walks down the channels.
// Each channel term is loaded and computed once and kept in a per-thread ring of the last
// R = 2*half + 1 terms. R is a runtime value and registers cannot be indexed dynamically,
// so the ring lives in shared memory: thread t owns column t (slot j at ring[j*blockDim.x]),
// a warp touches 32 consecutive words (no bank conflicts) and no barrier is needed.
// The window is summed afresh from the ring for every channel, in ascending channel order:
// a running add/subtract sum would be cheaper but loses precision by cancellation after
// a large value leaves the window. Sums are float32.
//
// powf (not __powf): __powf is exp2(y * log2(x)) with an approximate log2 whose relative
// error grows with |beta * log2(scale)|; powf is accurate to a few ulp for every scale,
// and these kernels are memory-bound, so its extra instructions are free.
//
// x and y are stored as fp32 or bf16 (kernels/storage.cuh); scale, dy and dx are fp32.
#include "storage.cuh"

#define LRN_MAX_BLOCK 128

// Priming: loads channels c0-half .. c0+half-1 into slots 0 .. R-2; the main loop then
// puts channel c+half into slot `head` before computing channel c.

// This thread's pixel column: where channel 0 of it starts, its chunk [c0, c1) of channels
// and the ring length R. False for threads past the last pixel.
struct lrn_column {
  long long base;
  int c0, c1, R;
};

__device__ __forceinline__ bool lrn_column_of(int C, int HW, int pixels, int half, int chunk,
                                              lrn_column* col) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= pixels) return false;
  const int n = p / HW;
  col->base = (long long)n * C * HW + (p - n * HW);
  col->c0 = blockIdx.y * chunk;
  col->c1 = min(C, col->c0 + chunk);
  col->R = 2 * half + 1;
  return true;
}

template <class T>
__device__ __forceinline__ void lrn_fwd(const T* __restrict__ x, T* __restrict__ y,
                                        float* __restrict__ scale, int C, int HW, int pixels,
                                        int half, int chunk, float k, float a, float beta) {
  extern __shared__ __align__(16) float pa_smem[];
  lrn_column col;
  if (!lrn_column_of(C, HW, pixels, half, chunk, &col)) return;
  const long long base = col.base;
  const int c0 = col.c0, c1 = col.c1, R = col.R, B = blockDim.x;
  float* ring = pa_smem + threadIdx.x;
  for (int j = 0; j < R - 1; ++j) {
    const int c = c0 - half + j;
    ring[j * B] = (c >= 0 && c < C) ? pa_ldg_f32(x + base + (long long)c * HW) : 0.0f;
  }
  int head = R - 1;
  for (int c = c0; c < c1; ++c) {
    const int cn = c + half;
    ring[head * B] = cn < C ? pa_ldg_f32(x + base + (long long)cn * HW) : 0.0f;
    float sum = 0.0f;
    int j = head;
    for (int t = 0; t < R; ++t) {  // oldest (channel c-half) first
      if (++j == R) j = 0;
      const float v = ring[j * B];
      sum = fmaf(v, v, sum);
    }
    int centre = head - half;
    if (centre < 0) centre += R;
    const float s = fmaf(a, sum, k);
    const long long o = base + (long long)c * HW;
    scale[o] = s;
    pa_store(y + o, ring[centre * B] * powf(s, -beta));
    if (++head == R) head = 0;
  }
}

// Channel c's backward terms r = dy*y/scale and g = dy*scale^-beta (0 outside [0, C)).
template <class T>
__device__ __forceinline__ void lrn_backward_term(const T* __restrict__ y,
                                                  const float* __restrict__ scale,
                                                  const float* __restrict__ dy, long long base,
                                                  int c, int C, int HW, float beta, float* r,
                                                  float* g) {
  float rv = 0.0f, gv = 0.0f;
  if (c >= 0 && c < C) {
    const long long o = base + (long long)c * HW;
    const float s = __ldg(scale + o), d = __ldg(dy + o);
    rv = d * pa_ldg_f32(y + o) / s;
    gv = d * powf(s, -beta);
  }
  *r = rv;
  *g = gv;
}

// Two rings: r = dy*y/scale (summed over the window) and g = dy*scale^-beta (used at the
// centre only, but it needs the same loads, so it is computed when the channel arrives).
template <class T>
__device__ __forceinline__ void lrn_bwd(const T* __restrict__ x, const T* __restrict__ y,
                                        const float* __restrict__ scale,
                                        const float* __restrict__ dy, float* __restrict__ dx,
                                        int C, int HW, int pixels, int half, int chunk,
                                        float two_a_beta, float beta) {
  extern __shared__ __align__(16) float pa_smem[];
  lrn_column col;
  if (!lrn_column_of(C, HW, pixels, half, chunk, &col)) return;
  const long long base = col.base;
  const int c0 = col.c0, c1 = col.c1, R = col.R, B = blockDim.x;
  float* ring_r = pa_smem + threadIdx.x;
  float* ring_g = ring_r + R * B;
  for (int j = 0; j < R - 1; ++j)
    lrn_backward_term(y, scale, dy, base, c0 - half + j, C, HW, beta, ring_r + j * B,
                      ring_g + j * B);
  int head = R - 1;
  for (int c = c0; c < c1; ++c) {
    lrn_backward_term(y, scale, dy, base, c + half, C, HW, beta, ring_r + head * B,
                      ring_g + head * B);
    float sum = 0.0f;
    int j = head;
    for (int t = 0; t < R; ++t) {  // oldest (channel c-half) first
      if (++j == R) j = 0;
      sum += ring_r[j * B];
    }
    int centre = head - half;
    if (centre < 0) centre += R;
    const long long o = base + (long long)c * HW;
    dx[o] = ring_g[centre * B] - two_a_beta * pa_ldg_f32(x + o) * sum;
    if (++head == R) head = 0;
  }
}

#define LRN_ENTRIES(SUFFIX, T)                                                               \
  extern "C" __global__ void __launch_bounds__(LRN_MAX_BLOCK) lrn_forward##SUFFIX(           \
      const T* __restrict__ x, T* __restrict__ y, float* __restrict__ scale, int C, int HW,   \
      int pixels, int half, int chunk, float k, float a, float beta) {                        \
    lrn_fwd<T>(x, y, scale, C, HW, pixels, half, chunk, k, a, beta);                          \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(LRN_MAX_BLOCK) lrn_backward##SUFFIX(          \
      const T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ scale,      \
      const float* __restrict__ dy, float* __restrict__ dx, int C, int HW, int pixels,        \
      int half, int chunk, float two_a_beta, float beta) {                                    \
    lrn_bwd<T>(x, y, scale, dy, dx, C, HW, pixels, half, chunk, two_a_beta, beta);            \
  }
PA_STORAGE_TYPES(LRN_ENTRIES)
#undef LRN_ENTRIES
#undef LRN_MAX_BLOCK
