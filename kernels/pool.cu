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
//  v1: the window size is a run-time loop bound;
//  v2: the window size is compiled in, so a thread's window loads are in flight together
//      (pool_window_max). Same bits.
//
// Backward is a gather, with no atomics, in three versions; all have one thread per INPUT
// element sum dy over the windows (ascending p, then q) that it wins, so every dx is
// written once, in a fixed order, and all give the same bits.
//  v1: a window is won by x[h,w] iff x[h,w] equals the window's maximum y[p,q] and no
//      earlier element of the window does; the window is rescanned (up to x[h,w]) on
//      every match, and every winner matches, so a quarter of the threads rescan with
//      divergent loops. y must be the forward output of x.
//  v2: a block owns a tile of input rows (a band of one plane, or whole small planes);
//      it first finds each covering window's winner (an index, from x as the forward
//      does) and stages it with the window's dy in shared memory, then every thread
//      compares its own index with its <= ceil(kernel/stride)^2 windows' winners. No
//      rescans, y is not read, and consecutive threads write consecutive dx.
//  v3: v2 with the window size compiled in, as the forward's v2.
// x and y are stored as fp32 or bf16 (kernels/storage.cuh; a maximum is one of its inputs,
// so bf16 loses nothing); dy and dx are fp32.
#include "storage.cuh"

// v is the window maximum m for the winner rule: equal, or both NaN.
__device__ __forceinline__ bool pool_same(float v, float m) { return v == m || (v != v && m != m); }

// x[i] beats the running maximum m under the winner rule: strict >, so ties keep the first;
// the first NaN wins and stays (NaN > m is false).
__device__ __forceinline__ bool pool_beats(float v, float m) { return v > m || (v != v && m == m); }

// The winner of the window whose top-left input is xp[origin]: its value, and its index in
// *best_i. KS > 0: a KS x KS window fixed at compile time, whose KS^2 loads are all issued
// before the first compare (they overlap in flight). KS = 0: a `kernel` x `kernel` window
// known at run time; nvcc then issues a 3-wide row's loads one at a time, each waiting for
// the compare before it (seen in the SASS), so a warp has one load in flight.
template <int KS, class T>
__device__ __forceinline__ float pool_window_max(const T* __restrict__ xp, int origin, int W,
                                                 int kernel, int* best_i) {
  int bi = origin;
  float best;
  if constexpr (KS > 0) {
    float v[KS * KS];
#pragma unroll
    for (int r = 0; r < KS; ++r)
#pragma unroll
      for (int s = 0; s < KS; ++s) v[r * KS + s] = pa_ldg_f32(xp + origin + r * W + s);
    best = v[0];
#pragma unroll
    for (int j = 1; j < KS * KS; ++j)
      if (pool_beats(v[j], best)) {
        best = v[j];
        bi = origin + (j / KS) * W + j % KS;
      }
  } else {
    best = pa_ldg_f32(xp + origin);
    for (int r = 0; r < kernel; ++r)
      for (int s = 0; s < kernel; ++s) {
        const int i = origin + r * W + s;
        const float v = pa_ldg_f32(xp + i);
        if (pool_beats(v, best)) {
          best = v;
          bi = i;
        }
      }
  }
  *best_i = bi;
  return best;
}

// KS: as pool_window_max (v1: 0, v2: the window size).
template <int KS, class T>
__device__ __forceinline__ void pool_max_fwd(const T* __restrict__ x, T* __restrict__ y, int H,
                                             int W, int P, int Q, int kernel, int stride,
                                             int total) {
  PA_GRID_STRIDE(ii, total) {
    const int i = (int)ii;  // < total: 32-bit index math, the 64-bit loop cannot overflow
    const int q = i % Q, t = i / Q, p = t % P, plane = t / P;
    int unused;
    pa_store(y + i, pool_window_max<KS>(x + (long long)plane * H * W, p * stride * W + q * stride,
                                        W, kernel, &unused));
  }
}

template <class T>
__device__ __forceinline__ void pool_max_bwd_v1(const T* __restrict__ x, const T* __restrict__ y,
                                                const float* __restrict__ dy,
                                                float* __restrict__ dx, int H, int W, int P,
                                                int Q, int kernel, int stride, int total) {
  PA_GRID_STRIDE(ii, total) {
    const int i = (int)ii;  // < total: 32-bit index math, the 64-bit loop cannot overflow
    const int w = i % W, t = i / W, h = t % H, plane = t / H;
    // Windows holding row h: p*stride <= h <= p*stride + kernel - 1, clipped to [0, P).
    const int p_lo = h < kernel ? 0 : (h - kernel) / stride + 1;
    const int p_hi = min(h / stride, P - 1);
    const int q_lo = w < kernel ? 0 : (w - kernel) / stride + 1;
    const int q_hi = min(w / stride, Q - 1);
    const float v = pa_ldg_f32(x + i);
    const T* xplane = x + (long long)plane * H * W;
    const long long yplane = (long long)plane * P * Q;
    float acc = 0.0f;
    for (int p = p_lo; p <= p_hi; ++p) {
      for (int q = q_lo; q <= q_hi; ++q) {
        const float m = pa_ldg_f32(y + yplane + p * Q + q);
        if (!pool_same(v, m)) continue;
        // Tie check: does an element before (h, w) in row-major window order match too?
        bool first = true;
        const int r0 = p * stride, s0 = q * stride;
        for (int r = r0; r <= h && first; ++r) {
          const int s_end = r < h ? s0 + kernel : w;
          for (int s = s0; s < s_end; ++s) {
            if (pool_same(pa_ldg_f32(xplane + r * W + s), m)) {
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

// v2 (see the file comment). Block b covers planes [plane0, plane0 + band_planes) and input
// rows [h0, h0 + band_rows) of each (band_planes > 1 only with band_rows = H). Dynamic
// shared memory: win_cap ints (winner index within the plane) then win_cap floats (dy),
// win_cap >= band_planes * (covering window rows) * Q; the launcher sizes it.
#define POOL_BWD_THREADS 256
template <int KS, class T>
__device__ __forceinline__ void pool_max_bwd_v2(const T* __restrict__ x,
                                                const float* __restrict__ dy,
                                                float* __restrict__ dx, int H, int W, int P,
                                                int Q, int kernel, int stride, int planes,
                                                int band_rows, int band_planes, int win_cap) {
  extern __shared__ __align__(16) float pa_smem[];
  int* win = reinterpret_cast<int*>(pa_smem);
  float* gwin = pa_smem + win_cap;
  const int bands = pa_ceil_div(H, band_rows);
  const int band = blockIdx.x % bands, plane0 = (blockIdx.x / bands) * band_planes;
  const int h0 = band * band_rows, h1 = min(H, h0 + band_rows);
  const int nplanes = min(band_planes, planes - plane0);
  // Window rows holding some row of [h0, h1): p*stride <= h1-1 and p*stride+kernel-1 >= h0.
  const int p_lo = h0 < kernel ? 0 : (h0 - kernel) / stride + 1;
  const int p_hi = min((h1 - 1) / stride, P - 1);
  const int nwin = max(p_hi - p_lo + 1, 0) * Q;  // windows per plane (0: rows in no window)
  for (int t = threadIdx.x; t < nplanes * nwin; t += blockDim.x) {
    const int pl = t / nwin, o = t - pl * nwin, pr = o / Q, q = o - pr * Q, p = p_lo + pr;
    const T* xp = x + (long long)(plane0 + pl) * H * W;
    const int origin = p * stride * W + q * stride;
    int best_i;
    pool_window_max<KS>(xp, origin, W, kernel, &best_i);  // the forward's winner
    win[t] = best_i;
    gwin[t] = __ldg(dy + (long long)(plane0 + pl) * P * Q + p * Q + q);
  }
  __syncthreads();
  const int rows_w = (h1 - h0) * W;
  float* out = dx + ((long long)plane0 * H + h0) * W;  // rows_w contiguous per plane
  for (int t = threadIdx.x; t < nplanes * rows_w; t += blockDim.x) {
    const int pl = t / rows_w, o = t - pl * rows_w, hh = o / W, w = o - hh * W, h = h0 + hh;
    const int pa = h < kernel ? 0 : (h - kernel) / stride + 1, pb = min(h / stride, P - 1);
    const int qa = w < kernel ? 0 : (w - kernel) / stride + 1, qb = min(w / stride, Q - 1);
    const int me = h * W + w;
    const int* wp = win + pl * nwin - p_lo * Q;
    const float* gp = gwin + pl * nwin - p_lo * Q;
    float acc = 0.0f;
    for (int p = pa; p <= pb; ++p)
      for (int q = qa; q <= qb; ++q)
        if (wp[p * Q + q] == me) acc += gp[p * Q + q];
    out[(long long)pl * H * W + o] = acc;
  }
}

// v1 and v2 of the backward pass, and v1 of the forward, take the window size at run time;
// the forward's v2 and the backward's v3 are the same code with a KS x KS window compiled
// in (POOL_WINDOW_ENTRIES, for the sizes ops/pool.py's COMPILED_WINDOWS lists).
#define POOL_ENTRIES(SUFFIX, T)                                                              \
  extern "C" __global__ void pool_max_forward##SUFFIX(const T* __restrict__ x,              \
                                                       T* __restrict__ y, int H, int W, int P, \
                                                       int Q, int kernel, int stride,         \
                                                       int total) {                           \
    pool_max_fwd<0, T>(x, y, H, W, P, Q, kernel, stride, total);                             \
  }                                                                                           \
  extern "C" __global__ void pool_max_backward_v1##SUFFIX(                                    \
      const T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ dy,        \
      float* __restrict__ dx, int H, int W, int P, int Q, int kernel, int stride, int total) { \
    pool_max_bwd_v1<T>(x, y, dy, dx, H, W, P, Q, kernel, stride, total);                     \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(POOL_BWD_THREADS) pool_max_backward_v2##SUFFIX( \
      const T* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx, int H,  \
      int W, int P, int Q, int kernel, int stride, int planes, int band_rows,                \
      int band_planes, int win_cap) {                                                         \
    pool_max_bwd_v2<0, T>(x, dy, dx, H, W, P, Q, kernel, stride, planes, band_rows,          \
                          band_planes, win_cap);                                              \
  }                                                                                           \
  POOL_WINDOW_ENTRIES(2, SUFFIX, T)                                                           \
  POOL_WINDOW_ENTRIES(3, SUFFIX, T)
#define POOL_WINDOW_ENTRIES(KS, SUFFIX, T)                                                   \
  extern "C" __global__ void pool_max_forward_v2_k##KS##SUFFIX(                               \
      const T* __restrict__ x, T* __restrict__ y, int H, int W, int P, int Q, int kernel,    \
      int stride, int total) {                                                                \
    pool_max_fwd<KS, T>(x, y, H, W, P, Q, kernel, stride, total);                            \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(POOL_BWD_THREADS)                              \
      pool_max_backward_v3_k##KS##SUFFIX(const T* __restrict__ x, const float* __restrict__ dy, \
                                         float* __restrict__ dx, int H, int W, int P, int Q,  \
                                         int kernel, int stride, int planes, int band_rows,   \
                                         int band_planes, int win_cap) {                      \
    pool_max_bwd_v2<KS, T>(x, dy, dx, H, W, P, Q, kernel, stride, planes, band_rows,         \
                           band_planes, win_cap);                                             \
  }
PA_STORAGE_TYPES(POOL_ENTRIES)
#undef POOL_ENTRIES
#undef POOL_WINDOW_ENTRIES
