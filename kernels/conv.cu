// 2-D convolution over NCHW tensors, any stride, padding and number of groups, as implicit
// GEMM: the im2col matrix is never built, each tile gathers its operand straight from the
// tensor (zero where the window leaves the image). Three products, one main loop:
//
//   pass            GEMM rows (m)        GEMM columns (j)        reduction (kk)
//   forward         filter k  (K/g)      output pixel (n,p,q)    (c,r,s)  C/g*R*S
//   backward data   channel c (C/g)      input pixel (n,h,w)     (k,r,s)  K/g*R*S
//   backward filter filter k  (K/g)      weight (c,r,s)          (n,p,q)  N*P*Q, split
//
// Block: 256 threads computing a BM x BN tile (BM, BN in {64, 128}), each thread a
// (BM/16) x (BN/16) register tile (8x8 for 128x128). The reduction advances in chunks of
// CONV_BK = 8 staged in double-buffered shared memory; the next chunk is fetched into
// registers while the current one is multiplied, so one barrier per chunk suffices.
// Group g is blockIdx.z (times the split index for the filter gradient).
//
// Global loads: every thread owns fixed GEMM columns (or rows) for the whole reduction and
// precomputes their pixel decomposition once; per chunk it decomposes one reduction index.
// Warps read 32 consecutive output pixels (forward, backward data) or 8 consecutive pixels
// x 4 rows (filter gradient), so loads run along the contiguous q / w axis.
//
// Determinism: every output is one thread's fixed-order sum. The filter gradient's long
// reduction is split into a fixed number of chunks (chosen from the shape only) written to a
// workspace and summed in chunk order by conv_bwd_filter_reduce: no atomics anywhere.
#include "common.cuh"

#define CONV_THREADS 256
#define CONV_BK 8    // reduction chunk per shared-memory stage (= 256 threads / 32 lanes)
#define CONV_SPAD 4  // row padding: stores with the reduction index fastest hit 32 banks
#define CONV_FAR (-(1 << 28))  // a pixel origin that fails every bounds test (no column)

struct conv_dims {
  int N, C, H, W, K, R, S, P, Q, stride, pad;
  int Cg, Kg, RS, HW, PQ;
};

__device__ __forceinline__ conv_dims conv_make_dims(int N, int C, int H, int W, int K, int R,
                                                    int S, int P, int Q, int stride, int pad,
                                                    int groups) {
  conv_dims d;
  d.N = N; d.C = C; d.H = H; d.W = W; d.K = K; d.R = R; d.S = S; d.P = P; d.Q = Q;
  d.stride = stride; d.pad = pad;
  d.Cg = C / groups; d.Kg = K / groups; d.RS = R * S; d.HW = H * W; d.PQ = P * Q;
  return d;
}

// ---- operand gathers, one state type per pass ----------------------------------------
// conv_load(state, kt, ra, rb) fetches this thread's share of the A (BM x 8) and B (8 x BN)
// tiles for the chunk starting at reduction index kt; out-of-range elements read as 0.
// A is always stored "kk-fast" (reduction index t % 8, row t / 8 + 32 i).

// Forward. A = filters (row m = filter, contiguous along kk = (c,r,s));
// B = input window gather (row kk = t / 32, column j = t % 32 + 32 i).
template <int BM, int BN>
struct conv_fwd_state {
  const float* w;  // this group's first filter
  const float* x;  // this group's first input channel of image 0
  int m_left;      // filters left in the group from this thread's first A row
  int kred, RS, S, HW, H, W;
  int a_kk, b_kk;
  int boff[BN / 32], ih0[BN / 32], iw0[BN / 32];  // per column: window origin
};

template <int BM, int BN>
__device__ __forceinline__ void conv_fwd_init(conv_fwd_state<BM, BN>& st, const conv_dims& d,
                                              const float* x, const float* w, int g, int m0,
                                              int j0) {
  const int t = threadIdx.x;
  st.kred = d.Cg * d.RS;
  st.w = w + (long long)(g * d.Kg + m0 + t / CONV_BK) * st.kred;
  st.x = x + (long long)g * d.Cg * d.HW;
  st.m_left = d.Kg - m0 - t / CONV_BK;
  st.RS = d.RS; st.S = d.S; st.HW = d.HW; st.H = d.H; st.W = d.W;
  st.a_kk = t % CONV_BK;
  st.b_kk = t / 32;
  const int ncol = d.N * d.PQ;
#pragma unroll
  for (int i = 0; i < BN / 32; ++i) {
    const int j = j0 + t % 32 + 32 * i;
    const int n = j / d.PQ, pq = j - n * d.PQ, p = pq / d.Q, q = pq - p * d.Q;
    st.ih0[i] = j < ncol ? p * d.stride - d.pad : CONV_FAR;
    st.iw0[i] = q * d.stride - d.pad;
    st.boff[i] = n * d.C * d.HW + st.ih0[i] * d.W + st.iw0[i];
  }
}

template <int BM, int BN>
__device__ __forceinline__ void conv_load(const conv_fwd_state<BM, BN>& st, int kt,
                                          float (&ra)[BM / 32], float (&rb)[BN / 32]) {
  const int ka = kt + st.a_kk;
#pragma unroll
  for (int i = 0; i < BM / 32; ++i)
    ra[i] = (ka < st.kred && 32 * i < st.m_left) ? __ldg(st.w + (32 * i * st.kred + ka)) : 0.0f;
  const int kb = kt + st.b_kk;
  const int c = kb / st.RS, rs = kb - c * st.RS, r = rs / st.S, s = rs - r * st.S;
  const int coff = c * st.HW + r * st.W + s;
  const bool kok = kb < st.kred;
#pragma unroll
  for (int i = 0; i < BN / 32; ++i) {
    const bool ok = kok && (unsigned)(st.ih0[i] + r) < (unsigned)st.H &&
                    (unsigned)(st.iw0[i] + s) < (unsigned)st.W;
    rb[i] = ok ? __ldg(st.x + (st.boff[i] + coff)) : 0.0f;
  }
}

// Backward data (gather: no atomics). dx[n,c,h,w] = sum over k,r,s of w[k,c,r,s] *
// dy[n,k,p,q] where h + pad - r = p * stride (and likewise w, q). A = filters read as
// (c) x (k,r,s); B = dy gather (row kk = t / 32, column j = t % 32 + 32 i).
// UNIT: the caller guarantees stride 1, so the gather has no lattice test and no division.
template <int BM, int BN, bool UNIT = false>
struct conv_bwd_data_state {
  const float* w;   // this group's first filter, channel of this thread's first A row
  const float* dy;  // this group's first gradient map of image 0
  int c_left;       // channels left in the group from this thread's first A row
  int kred, RS, S, CgRS, PQ, P, Q, stride;
  int a_kk, b_kk;
  int boff[BN / 32], hp[BN / 32], wp[BN / 32];  // per column: image offset, h + pad, w + pad
};

template <int BM, int BN, bool UNIT>
__device__ __forceinline__ void conv_bwd_data_init(conv_bwd_data_state<BM, BN, UNIT>& st,
                                                   const conv_dims& d, const float* dy,
                                                   const float* w, int g, int m0, int j0) {
  const int t = threadIdx.x;
  st.kred = d.Kg * d.RS;
  st.CgRS = d.Cg * d.RS;
  st.w = w + (long long)g * d.Kg * st.CgRS + (long long)(m0 + t / CONV_BK) * d.RS;
  st.dy = dy + (long long)g * d.Kg * d.PQ;
  st.c_left = d.Cg - m0 - t / CONV_BK;
  st.RS = d.RS; st.S = d.S; st.PQ = d.PQ; st.P = d.P; st.Q = d.Q; st.stride = d.stride;
  st.a_kk = t % CONV_BK;
  st.b_kk = t / 32;
  const int ncol = d.N * d.HW;
#pragma unroll
  for (int i = 0; i < BN / 32; ++i) {
    const int j = j0 + t % 32 + 32 * i;
    const int n = j / d.HW, hw = j - n * d.HW, h = hw / d.W, ww = hw - h * d.W;
    st.boff[i] = n * d.K * d.PQ;
    st.hp[i] = j < ncol ? h + d.pad : CONV_FAR;
    st.wp[i] = ww + d.pad;
  }
}

template <int BM, int BN, bool UNIT>
__device__ __forceinline__ void conv_load(const conv_bwd_data_state<BM, BN, UNIT>& st, int kt,
                                          float (&ra)[BM / 32], float (&rb)[BN / 32]) {
  const int ka = kt + st.a_kk;
  const int k_a = ka / st.RS, rs_a = ka - k_a * st.RS;
#pragma unroll
  for (int i = 0; i < BM / 32; ++i)
    ra[i] = (ka < st.kred && 32 * i < st.c_left)
                ? __ldg(st.w + (k_a * st.CgRS + 32 * i * st.RS + rs_a)) : 0.0f;
  const int kb = kt + st.b_kk;
  const int k = kb / st.RS, rs = kb - k * st.RS, r = rs / st.S, s = rs - r * st.S;
  const bool kok = kb < st.kred;
#pragma unroll
  for (int i = 0; i < BN / 32; ++i) {
    int p = st.hp[i] - r, q = st.wp[i] - s;
    bool ok = kok;
    if (!UNIT && st.stride != 1) {  // only pixels on the stride lattice receive this (r, s) tap
      ok = ok && p >= 0 && q >= 0 && p % st.stride == 0 && q % st.stride == 0;
      p /= st.stride;
      q /= st.stride;
    }
    ok = ok && (unsigned)p < (unsigned)st.P && (unsigned)q < (unsigned)st.Q;
    rb[i] = ok ? __ldg(st.dy + (st.boff[i] + k * st.PQ + p * st.Q + q)) : 0.0f;
  }
}

// Backward filter over the reduction range [kbeg, kend) of (n,p,q). A = dy (row m = filter,
// contiguous along pq); B = input gather with kk fastest (column j = (c,r,s) = t / 8 + 32 i),
// so a warp reads 8 consecutive output pixels for 4 taps.
template <int BM, int BN>
struct conv_bwd_filter_state {
  const float* dy;  // this group's gradient map of this thread's first A row, image 0
  const float* x;   // this group's first input channel of image 0
  int m_left, kend;
  int K, C, PQ, Q, HW, H, W, stride, pad;
  int kk;  // this thread's reduction index within a chunk (A and B share it)
  int joff[BN / 32], jr[BN / 32], js[BN / 32];  // per column: c*HW + r*W + s, r, s
};

template <int BM, int BN>
__device__ __forceinline__ void conv_bwd_filter_init(conv_bwd_filter_state<BM, BN>& st,
                                                     const conv_dims& d, const float* x,
                                                     const float* dy, int g, int m0, int j0,
                                                     int kend) {
  const int t = threadIdx.x;
  st.dy = dy + (long long)(g * d.Kg + m0 + t / CONV_BK) * d.PQ;
  st.x = x + (long long)g * d.Cg * d.HW;
  st.m_left = d.Kg - m0 - t / CONV_BK;
  st.kend = kend;
  st.K = d.K; st.C = d.C; st.PQ = d.PQ; st.Q = d.Q; st.HW = d.HW; st.H = d.H; st.W = d.W;
  st.stride = d.stride; st.pad = d.pad;
  st.kk = t % CONV_BK;
  const int ncol = d.Cg * d.RS;
#pragma unroll
  for (int i = 0; i < BN / 32; ++i) {
    const int j = j0 + t / CONV_BK + 32 * i;
    const int c = j / d.RS, rs = j - c * d.RS, r = rs / d.S, s = rs - r * d.S;
    st.jr[i] = j < ncol ? r : CONV_FAR;
    st.js[i] = s;
    st.joff[i] = c * d.HW + r * d.W + s;
  }
}

template <int BM, int BN>
__device__ __forceinline__ void conv_load(const conv_bwd_filter_state<BM, BN>& st, int kt,
                                          float (&ra)[BM / 32], float (&rb)[BN / 32]) {
  const int kk = kt + st.kk;
  const int n = kk / st.PQ, pq = kk - n * st.PQ, p = pq / st.Q, q = pq - p * st.Q;
  const bool kok = kk < st.kend;
  const int aoff = n * st.K * st.PQ + pq;
#pragma unroll
  for (int i = 0; i < BM / 32; ++i)
    ra[i] = (kok && 32 * i < st.m_left) ? __ldg(st.dy + (aoff + 32 * i * st.PQ)) : 0.0f;
  const int ih0 = p * st.stride - st.pad, iw0 = q * st.stride - st.pad;
  const int boff = n * st.C * st.HW + ih0 * st.W + iw0;
#pragma unroll
  for (int i = 0; i < BN / 32; ++i) {
    const bool ok = kok && (unsigned)(ih0 + st.jr[i]) < (unsigned)st.H &&
                    (unsigned)(iw0 + st.js[i]) < (unsigned)st.W;
    rb[i] = ok ? __ldg(st.x + (boff + st.joff[i])) : 0.0f;
  }
}

// ---- the shared main loop --------------------------------------------------------------
// acc[i][jj] accumulates GEMM row m0 + conv_row<BM>(i) and column j0 + conv_col<BN>(jj)
// over kk in [kbeg, kend), in increasing kk order. Thread (ty, tx) = (t / 16, t % 16)
// owns rows 64 a + 4 ty + {0..3} and columns 64 b + 4 tx + {0..3}: the shared-memory reads
// are float4 broadcasts (A) and 256 contiguous bytes per warp (B).
__device__ __forceinline__ int conv_row(int i) { return (i / 4) * 64 + (threadIdx.x / 16) * 4 + i % 4; }
__device__ __forceinline__ int conv_col(int j) { return (j / 4) * 64 + (threadIdx.x % 16) * 4 + j % 4; }

template <int BM, int BN, bool B_KK_FAST, class State>
__device__ __forceinline__ void conv_mainloop(const State& st, int kbeg, int kend,
                                              float (&acc)[BM / 16][BN / 16]) {
  __shared__ __align__(16) float As[2][CONV_BK][BM + CONV_SPAD];
  __shared__ __align__(16) float Bs[2][CONV_BK][BN + CONV_SPAD];
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;
#pragma unroll
  for (int i = 0; i < BM / 16; ++i)
#pragma unroll
    for (int j = 0; j < BN / 16; ++j) acc[i][j] = 0.0f;
  float ra[BM / 32], rb[BN / 32];
  conv_load(st, kbeg, ra, rb);
  int buf = 0;
  for (int kt = kbeg;; kt += CONV_BK) {
#pragma unroll
    for (int i = 0; i < BM / 32; ++i) As[buf][t % CONV_BK][t / CONV_BK + 32 * i] = ra[i];
#pragma unroll
    for (int i = 0; i < BN / 32; ++i) {
      if (B_KK_FAST) Bs[buf][t % CONV_BK][t / CONV_BK + 32 * i] = rb[i];
      else Bs[buf][t / 32][t % 32 + 32 * i] = rb[i];
    }
    // The other buffer was last read before the previous barrier, so one barrier per
    // chunk separates both the stores above from the reads below and vice versa.
    __syncthreads();
    const bool more = kt + CONV_BK < kend;
    if (more) conv_load(st, kt + CONV_BK, ra, rb);  // in flight during the FMAs below
#pragma unroll
    for (int k = 0; k < CONV_BK; ++k) {
      float a[BM / 16], b[BN / 16];
#pragma unroll
      for (int i = 0; i < BM / 64; ++i) {
        const float4 v = *reinterpret_cast<const float4*>(&As[buf][k][64 * i + 4 * ty]);
        a[4 * i] = v.x; a[4 * i + 1] = v.y; a[4 * i + 2] = v.z; a[4 * i + 3] = v.w;
      }
#pragma unroll
      for (int j = 0; j < BN / 64; ++j) {
        const float4 v = *reinterpret_cast<const float4*>(&Bs[buf][k][64 * j + 4 * tx]);
        b[4 * j] = v.x; b[4 * j + 1] = v.y; b[4 * j + 2] = v.z; b[4 * j + 3] = v.w;
      }
#pragma unroll
      for (int i = 0; i < BM / 16; ++i)
#pragma unroll
        for (int j = 0; j < BN / 16; ++j) acc[i][j] += a[i] * b[j];  // FFMA (nvcc contracts);
                                                                     // fmaf is a libm call in g++
    }
    if (!more) break;
    buf ^= 1;
  }
}

// ---- the three passes ------------------------------------------------------------------
#define CONV_DIM_PARAMS                                                                    \
  int N, int C, int H, int W, int K, int R, int S, int P, int Q, int stride, int pad, int groups
#define CONV_DIM_ARGS N, C, H, W, K, R, S, P, Q, stride, pad, groups

// y = conv(x, w) (+ bias) (then ReLU): grid (ceil(N*P*Q / BN), ceil(K/g / BM), groups).
template <int BM, int BN>
__device__ __forceinline__ void conv_fwd(const float* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ bias, float* __restrict__ y,
                                         CONV_DIM_PARAMS, int has_bias, int relu) {
  const conv_dims d = conv_make_dims(CONV_DIM_ARGS);
  const int g = blockIdx.z, m0 = blockIdx.y * BM, j0 = blockIdx.x * BN;
  conv_fwd_state<BM, BN> st;
  conv_fwd_init(st, d, x, w, g, m0, j0);
  float acc[BM / 16][BN / 16];
  conv_mainloop<BM, BN, false>(st, 0, d.Cg * d.RS, acc);
#pragma unroll
  for (int jj = 0; jj < BN / 16; ++jj) {
    const int j = j0 + conv_col(jj);
    if (j >= d.N * d.PQ) continue;
    const int n = j / d.PQ, pq = j - n * d.PQ;
    float* out = y + ((long long)n * d.K + g * d.Kg) * d.PQ + pq;
#pragma unroll
    for (int i = 0; i < BM / 16; ++i) {
      const int m = m0 + conv_row(i);
      if (m >= d.Kg) continue;
      float v = acc[i][jj];
      if (has_bias) v += __ldg(bias + g * d.Kg + m);
      if (relu) v = v < 0.0f ? 0.0f : v;  // NaN passes, as in relu_forward
      out[(long long)m * d.PQ] = v;
    }
  }
}

// dx = conv_transpose(dy, w): grid (ceil(N*H*W / BN), ceil(C/g / BM), groups).
template <int BM, int BN, bool UNIT = false>
__device__ __forceinline__ void conv_bwd_data(const float* __restrict__ dy,
                                              const float* __restrict__ w,
                                              float* __restrict__ dx, CONV_DIM_PARAMS) {
  const conv_dims d = conv_make_dims(CONV_DIM_ARGS);
  const int g = blockIdx.z, m0 = blockIdx.y * BM, j0 = blockIdx.x * BN;
  conv_bwd_data_state<BM, BN, UNIT> st;
  conv_bwd_data_init(st, d, dy, w, g, m0, j0);
  float acc[BM / 16][BN / 16];
  conv_mainloop<BM, BN, false>(st, 0, d.Kg * d.RS, acc);
#pragma unroll
  for (int jj = 0; jj < BN / 16; ++jj) {
    const int j = j0 + conv_col(jj);
    if (j >= d.N * d.HW) continue;
    const int n = j / d.HW, hw = j - n * d.HW;
    float* out = dx + ((long long)n * d.C + g * d.Cg) * d.HW + hw;
#pragma unroll
    for (int i = 0; i < BM / 16; ++i) {
      const int m = m0 + conv_row(i);
      if (m < d.Cg) out[(long long)m * d.HW] = acc[i][jj];
    }
  }
}

// Partial filter gradient of reduction chunk `split` (blockIdx.z = split * groups + g):
// ws[split][k][c,r,s] over (n,p,q) in [split * split_len, (split + 1) * split_len).
// grid (ceil(C/g*R*S / BN), ceil(K/g / BM), splits * groups).
template <int BM, int BN>
__device__ __forceinline__ void conv_bwd_filter(const float* __restrict__ x,
                                                const float* __restrict__ dy,
                                                float* __restrict__ ws, CONV_DIM_PARAMS,
                                                int split_len) {
  const conv_dims d = conv_make_dims(CONV_DIM_ARGS);
  const int g = blockIdx.z % groups, split = blockIdx.z / groups;
  const int m0 = blockIdx.y * BM, j0 = blockIdx.x * BN;
  const int kbeg = split * split_len, kend = min(d.N * d.PQ, kbeg + split_len);
  conv_bwd_filter_state<BM, BN> st;
  conv_bwd_filter_init(st, d, x, dy, g, m0, j0, kend);
  float acc[BM / 16][BN / 16];
  conv_mainloop<BM, BN, true>(st, kbeg, kend, acc);
  const int ncol = d.Cg * d.RS;
  float* out = ws + ((long long)split * d.K + g * d.Kg) * ncol;
#pragma unroll
  for (int i = 0; i < BM / 16; ++i) {
    const int m = m0 + conv_row(i);
    if (m >= d.Kg) continue;
#pragma unroll
    for (int jj = 0; jj < BN / 16; ++jj) {
      const int j = j0 + conv_col(jj);
      if (j < ncol) out[(long long)m * ncol + j] = acc[i][jj];
    }
  }
}

// Backward data for few channels per group (conv1's C = 3, where a 64-row GEMM tile would
// be 95% padding): one thread per input pixel and CONV_DIRECT_CB channels, visiting only
// the taps on the stride lattice (h + pad - r = p * stride), so no work is wasted on
// strides either. Grid-stride over (n, g, channel block, h, w), w fastest: coalesced dx
// stores and dy loads.
#define CONV_DIRECT_CB 4
extern "C" __global__ void conv_bwd_data_direct(const float* __restrict__ dy,
                                                const float* __restrict__ w,
                                                float* __restrict__ dx, CONV_DIM_PARAMS) {
  const conv_dims d = conv_make_dims(CONV_DIM_ARGS);
  const int nblk = pa_ceil_div(d.Cg, CONV_DIRECT_CB);
  const long long total = (long long)N * groups * nblk * d.HW;
  PA_GRID_STRIDE(idx, total) {
    const int hw = (int)(idx % d.HW);
    long long rest = idx / d.HW;
    const int cb = (int)(rest % nblk);
    rest /= nblk;
    const int g = (int)(rest % groups), n = (int)(rest / groups);
    const int c0 = cb * CONV_DIRECT_CB, hp = hw / W + pad, wp = hw % W + pad;
    // Output rows that see this pixel: p * stride = hp - r for a tap r in [0, R).
    const int p_lo = max(0, (hp - R + stride) / stride), p_hi = min(P - 1, hp / stride);
    const int q_lo = max(0, (wp - S + stride) / stride), q_hi = min(Q - 1, wp / stride);
    float acc[CONV_DIRECT_CB];
#pragma unroll
    for (int cc = 0; cc < CONV_DIRECT_CB; ++cc) acc[cc] = 0.0f;
    for (int k = 0; k < d.Kg; ++k) {
      const float* dyk = dy + ((long long)n * K + g * d.Kg + k) * d.PQ;
      const float* wk = w + ((long long)(g * d.Kg + k) * d.Cg + c0) * d.RS;
      for (int p = p_lo; p <= p_hi; ++p) {
        const int r = hp - p * stride;
        for (int q = q_lo; q <= q_hi; ++q) {
          const float v = __ldg(dyk + p * Q + q);
          const int tap = r * S + wp - q * stride;
#pragma unroll
          for (int cc = 0; cc < CONV_DIRECT_CB; ++cc)
            if (c0 + cc < d.Cg) acc[cc] += v * __ldg(wk + cc * d.RS + tap);
        }
      }
    }
    float* out = dx + ((long long)n * C + g * d.Cg + c0) * d.HW + hw;
#pragma unroll
    for (int cc = 0; cc < CONV_DIRECT_CB; ++cc)
      if (c0 + cc < d.Cg) out[(long long)cc * d.HW] = acc[cc];
  }
}

// ---- entry points: each pass in four tile shapes (the launcher picks by problem size) ----
// The forward and backward-data products accumulate every output in the same kk order
// whatever the tile, so the tile choice never changes their results.
#define CONV_ENTRY_POINTS(BM, BN)                                                            \
  extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_fwd_##BM##x##BN(           \
      const float* __restrict__ x, const float* __restrict__ w,                             \
      const float* __restrict__ bias, float* __restrict__ y, CONV_DIM_PARAMS, int has_bias, \
      int relu) {                                                                           \
    conv_fwd<BM, BN>(x, w, bias, y, CONV_DIM_ARGS, has_bias, relu);                         \
  }                                                                                         \
  extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_bwd_data_##BM##x##BN(      \
      const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,    \
      CONV_DIM_PARAMS) {                                                                    \
    conv_bwd_data<BM, BN>(dy, w, dx, CONV_DIM_ARGS);                                        \
  }                                                                                         \
  extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_bwd_filter_##BM##x##BN(    \
      const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ ws,    \
      CONV_DIM_PARAMS, int split_len) {                                                     \
    conv_bwd_filter<BM, BN>(x, dy, ws, CONV_DIM_ARGS, split_len);                           \
  }

CONV_ENTRY_POINTS(128, 128)
CONV_ENTRY_POINTS(128, 64)
CONV_ENTRY_POINTS(64, 128)
CONV_ENTRY_POINTS(64, 64)
#undef CONV_ENTRY_POINTS

// Forward and backward data v2: the 128x128 tile (an 8x8 register tile a thread: 4 FMAs
// per shared-memory word read, against 2.7 for 128x64's 8x4) held to 128 registers so
// that two blocks (16 warps) stay resident per SM; v1's 128x128 takes 137 (forward) and
// 147 (data) registers on sm_90, one block an SM. Backward data v2 is the unit-stride
// gather (strided, the lattice test's divisions spill at 128). sm_90's ptxas fits 128
// without spilling only when asked; sm_80's uses 128 unasked and spills when asked.
// Same kk order as every tile of v1: the same bits.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define CONV_V2_BOUNDS __launch_bounds__(CONV_THREADS, 2)
#else
#define CONV_V2_BOUNDS __launch_bounds__(CONV_THREADS)
#endif
extern "C" __global__ void CONV_V2_BOUNDS conv_fwd_v2_128x128(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    float* __restrict__ y, CONV_DIM_PARAMS, int has_bias, int relu) {
  conv_fwd<128, 128>(x, w, bias, y, CONV_DIM_ARGS, has_bias, relu);
}
extern "C" __global__ void CONV_V2_BOUNDS conv_bwd_data_v2_128x128(
    const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
    CONV_DIM_PARAMS) {
  conv_bwd_data<128, 128, true>(dy, w, dx, CONV_DIM_ARGS);
}
#undef CONV_V2_BOUNDS

// Filter gradient v2: the same product, with a register cap per tile so that a known
// number of blocks stays resident per SM (the launcher's split model counts on it:
// FILTER_V2_BLOCKS_PER_SM in pyalexnet/ops/conv.py). v1's 128x128 tile takes 129
// registers on sm_90, so one block (8 warps) per SM; capped at 128 it spills, so v2 has
// no 128x128 tile. Partials go to a caller-owned workspace (the launcher's job).
#define CONV_FILTER_V2(BM, BN, MIN_BLOCKS)                                                  \
  extern "C" __global__ void __launch_bounds__(CONV_THREADS, MIN_BLOCKS)                    \
      conv_bwd_filter_v2_##BM##x##BN(const float* __restrict__ x, const float* __restrict__ dy, \
                                     float* __restrict__ ws, CONV_DIM_PARAMS, int split_len) { \
    conv_bwd_filter<BM, BN>(x, dy, ws, CONV_DIM_ARGS, split_len);                           \
  }

CONV_FILTER_V2(128, 64, 3)
CONV_FILTER_V2(64, 128, 3)
CONV_FILTER_V2(64, 64, 5)
#undef CONV_FILTER_V2

// dw[i] = sum over splits s = 0, 1, ... of ws[s][i], always in that order (deterministic).
extern "C" __global__ void conv_bwd_filter_reduce(const float* __restrict__ ws,
                                                  float* __restrict__ dw, int splits,
                                                  long long total) {
  PA_GRID_STRIDE(i, total) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) acc += ws[s * total + i];
    dw[i] = acc;
  }
}

#undef CONV_DIM_PARAMS
#undef CONV_DIM_ARGS

// v2 reduction: four consecutive weights per thread (float4 loads and store) when the
// filter tensor's size is a multiple of 4, so each split's slice is read in 16-byte
// pieces; the same order of additions as conv_bwd_filter_reduce, hence the same bits.
extern "C" __global__ void conv_bwd_filter_reduce_v2(const float* __restrict__ ws,
                                                     float* __restrict__ dw, int splits,
                                                     long long total) {
  if (total % 4 == 0) {
    const float4* w4 = reinterpret_cast<const float4*>(ws);
    PA_GRID_STRIDE(i, total / 4) {
      float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      for (int s = 0; s < splits; ++s) {
        const float4 v = __ldg(w4 + (s * (total / 4) + i));
        acc.x += v.x; acc.y += v.y; acc.z += v.z; acc.w += v.w;
      }
      reinterpret_cast<float4*>(dw)[i] = acc;
    }
  } else {
    PA_GRID_STRIDE(i, total) {
      float acc = 0.0f;
      for (int s = 0; s < splits; ++s) acc += __ldg(ws + (s * total + i));
      dw[i] = acc;
    }
  }
}
