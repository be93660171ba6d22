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

// The backward terms r = dy*y/scale and g = dy*scale^-beta of one channel from its loads.
__device__ __forceinline__ void lrn_terms(float s, float d, float yv, float beta, float* r,
                                          float* g) {
  *r = d * yv / s;
  *g = d * powf(s, -beta);
}

// Channel c's backward terms (0 outside [0, C)).
template <class T>
__device__ __forceinline__ void lrn_backward_term(const T* __restrict__ y,
                                                  const float* __restrict__ scale,
                                                  const float* __restrict__ dy, long long base,
                                                  int c, int C, int HW, float beta, float* r,
                                                  float* g) {
  float rv = 0.0f, gv = 0.0f;
  if (c >= 0 && c < C) {
    const long long o = base + (long long)c * HW;
    lrn_terms(__ldg(scale + o), __ldg(dy + o), pa_ldg_f32(y + o), beta, &rv, &gv);
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

// v2: the ring length R = 2*half + 1 is compiled in (LRN_V2_ENTRIES), so the window lives
// in registers: win[t] holds channel c - half + t and shifts down one slot a channel (the
// unrolled loop's moves are register renames), with no shared-memory ring and no slot
// arithmetic. v1's SASS for R = 5 runs about 150 instructions a channel and one load in
// flight a thread: each channel's load waited for the previous channel's stores. v2 issues
// the loads of LRN_AHEAD channels before it computes any of them. Sums run oldest channel
// first, as in v1: the same bits.
#define LRN_AHEAD 4

template <int R, class T>
__device__ __forceinline__ void lrn_fwd_v2(const T* __restrict__ x, T* __restrict__ y,
                                           float* __restrict__ scale, int C, int HW,
                                           int pixels, int chunk, float k, float a,
                                           float beta) {
  constexpr int half = R / 2;
  lrn_column col;
  if (!lrn_column_of(C, HW, pixels, half, chunk, &col)) return;
  const long long base = col.base;
  const int c0 = col.c0, c1 = col.c1;
  float win[R];
#pragma unroll
  for (int j = 0; j < R - 1; ++j) {
    const int c = c0 - half + j;
    win[j] = (c >= 0 && c < C) ? pa_ldg_f32(x + base + (long long)c * HW) : 0.0f;
  }
  for (int c = c0; c < c1; c += LRN_AHEAD) {
    float next[LRN_AHEAD];
#pragma unroll
    for (int u = 0; u < LRN_AHEAD; ++u) {
      const int cn = c + u + half;
      next[u] = (c + u < c1 && cn < C) ? pa_ldg_f32(x + base + (long long)cn * HW) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < LRN_AHEAD; ++u) {
      if (c + u >= c1) break;
      win[R - 1] = next[u];
      float sum = 0.0f;
#pragma unroll
      for (int t = 0; t < R; ++t) sum = fmaf(win[t], win[t], sum);
      const float s = fmaf(a, sum, k);
      const long long o = base + (long long)(c + u) * HW;
      scale[o] = s;
      pa_store(y + o, win[half] * powf(s, -beta));
#pragma unroll
      for (int t = 0; t < R - 1; ++t) win[t] = win[t + 1];
    }
  }
}

// The backward pass's v2: windows of the terms r and g in registers, as lrn_fwd_v2's.
template <int R, class T>
__device__ __forceinline__ void lrn_bwd_v2(const T* __restrict__ x, const T* __restrict__ y,
                                           const float* __restrict__ scale,
                                           const float* __restrict__ dy, float* __restrict__ dx,
                                           int C, int HW, int pixels, int chunk,
                                           float two_a_beta, float beta) {
  constexpr int half = R / 2;
  lrn_column col;
  if (!lrn_column_of(C, HW, pixels, half, chunk, &col)) return;
  const long long base = col.base;
  const int c0 = col.c0, c1 = col.c1;
  float rw[R], gw[R];
#pragma unroll
  for (int j = 0; j < R - 1; ++j)
    lrn_backward_term(y, scale, dy, base, c0 - half + j, C, HW, beta, &rw[j], &gw[j]);
  for (int c = c0; c < c1; c += LRN_AHEAD) {
    // All loads first: computing a term (powf's and the division's slow paths are
    // branches) between them would keep them from being in flight together.
    float sv[LRN_AHEAD], dv[LRN_AHEAD], yv[LRN_AHEAD], xc[LRN_AHEAD];
#pragma unroll
    for (int u = 0; u < LRN_AHEAD; ++u) {
      const int cn = c + u + half;
      const bool in = c + u < c1, ok = in && cn < C;  // channels past the chunk are not used
      const long long o = base + (long long)cn * HW, oc = base + (long long)(c + u) * HW;
      sv[u] = ok ? __ldg(scale + o) : 1.0f;
      dv[u] = ok ? __ldg(dy + o) : 0.0f;
      yv[u] = ok ? pa_ldg_f32(y + o) : 0.0f;
      xc[u] = in ? pa_ldg_f32(x + oc) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < LRN_AHEAD; ++u) {
      if (c + u >= c1) break;
      if (c + u + half < C) {
        lrn_terms(sv[u], dv[u], yv[u], beta, &rw[R - 1], &gw[R - 1]);
      } else {
        rw[R - 1] = gw[R - 1] = 0.0f;
      }
      float sum = 0.0f;
#pragma unroll
      for (int t = 0; t < R; ++t) sum += rw[t];
      const long long o = base + (long long)(c + u) * HW;
      dx[o] = gw[half] - two_a_beta * xc[u] * sum;
#pragma unroll
      for (int t = 0; t < R - 1; ++t) {
        rw[t] = rw[t + 1];
        gw[t] = gw[t + 1];
      }
    }
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

// v2's entries for the ring lengths ops/lrn.py's COMPILED_RINGS lists (sizes 3 and 5).
#define LRN_V2_ENTRIES(R, SUFFIX, T)                                                         \
  extern "C" __global__ void __launch_bounds__(LRN_MAX_BLOCK) lrn_forward_v2_r##R##SUFFIX(   \
      const T* __restrict__ x, T* __restrict__ y, float* __restrict__ scale, int C, int HW,   \
      int pixels, int half, int chunk, float k, float a, float beta) {                        \
    lrn_fwd_v2<R, T>(x, y, scale, C, HW, pixels, chunk, k, a, beta);                          \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(LRN_MAX_BLOCK) lrn_backward_v2_r##R##SUFFIX(  \
      const T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ scale,      \
      const float* __restrict__ dy, float* __restrict__ dx, int C, int HW, int pixels,        \
      int half, int chunk, float two_a_beta, float beta) {                                    \
    lrn_bwd_v2<R, T>(x, y, scale, dy, dx, C, HW, pixels, chunk, two_a_beta, beta);            \
  }
#define LRN_V2_RINGS(SUFFIX, T) LRN_V2_ENTRIES(3, SUFFIX, T) LRN_V2_ENTRIES(5, SUFFIX, T)
PA_STORAGE_TYPES(LRN_V2_RINGS)
#undef LRN_V2_RINGS
#undef LRN_V2_ENTRIES
#undef LRN_MAX_BLOCK
