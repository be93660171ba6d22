// Winograd convolution F(m x m, 3 x 3), m = 2 or 4 (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016), for 3x3 stride-1 layers, any padding <= 2 and
// any number of groups. alpha = m + 2 is the input tile; per tile and channel pair
//
//   forward          y  = AT [ (G g G^T) . (BT d BT^T) ] AT^T      (. = elementwise)
//   backward data    the forward of dy with the flipped, transposed filters, pad 2 - pad
//   backward filter  dw = G^T [ (A dy A^T) . (BT d BT^T) ] G       (A = AT^T)
//
// The sums over channels (forward) or over tiles (filter gradient) become alpha^2
// independent GEMMs per group, one per point (xi, nu) of the transformed tile; they run
// through gemm_tile (kernels/gemm_tile.cuh) as one batched launch. The transforms are
// separate elementwise kernels writing point-major buffers, so each GEMM reads contiguous
// rows:
//   U [point][g][rows][cols]        filters (rows x cols = Kg x Cg, or Cg x Kg flipped)
//   V [s][point][g][Cg][Pc]         input tiles, the P = N*TH*TW tiles cut into chunks of
//                                   Pc (s = tile / Pc; the forward uses one chunk)
//   Z [s][point][g][Kg][Pc]         output-gradient tiles (filter gradient)
//   Mo[point][g][Kg][P]             products before the output transform
//   dW[s][point][g][Kg][Cg]         filter-gradient products per chunk, summed over s in
//                                   fixed order by the output transform (deterministic)
// Tiles beyond P (the last chunk's padding) and pixels outside the image read as zero.
#include "common.cuh"
#include "gemm_tile.cuh"

// Transform matrices. F(2,3): points 0, 1, -1 and infinity; F(4,3): 0, +-1, +-2, infinity.
__constant__ float wino2_BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
__constant__ float wino2_G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
__constant__ float wino2_AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
__constant__ float wino4_BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0},
                                     {0, 4, -4, -1, 1, 0}, {0, -2, -1, 2, 1, 0},
                                     {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
__constant__ float wino4_G[6][3] = {{1.0f / 4, 0, 0},
                                    {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                                    {-1.0f / 6, 1.0f / 6, -1.0f / 6},
                                    {1.0f / 24, 1.0f / 12, 1.0f / 6},
                                    {1.0f / 24, -1.0f / 12, 1.0f / 6},
                                    {0, 0, 1}};
__constant__ float wino4_AT[4][6] = {
    {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};

template <int M>
__device__ __forceinline__ float wino_bt(int i, int j) {
  if constexpr (M == 2) return wino2_BT[i][j];
  else return wino4_BT[i][j];
}
template <int M>
__device__ __forceinline__ float wino_g(int i, int j) {
  if constexpr (M == 2) return wino2_G[i][j];
  else return wino4_G[i][j];
}
template <int M>
__device__ __forceinline__ float wino_at(int i, int j) {
  if constexpr (M == 2) return wino2_AT[i][j];
  else return wino4_AT[i][j];
}

// out = Left x Right^T, Left(i, k) and Right(l, j) given as functions; every sum runs in
// increasing index order.
template <int I, int K, int J, int L, class LeftF, class RightF>
__device__ __forceinline__ void wino_sandwich(const float (&x)[K][J], float (&out)[I][L],
                                              LeftF left, RightF right) {
  float t[I][J];
#pragma unroll
  for (int i = 0; i < I; ++i)
#pragma unroll
    for (int j = 0; j < J; ++j) {
      float s = 0.0f;
#pragma unroll
      for (int k = 0; k < K; ++k) s += left(i, k) * x[k][j];
      t[i][j] = s;
    }
#pragma unroll
  for (int i = 0; i < I; ++i)
#pragma unroll
    for (int l = 0; l < L; ++l) {
      float s = 0.0f;
#pragma unroll
      for (int j = 0; j < J; ++j) s += t[i][j] * right(l, j);
      out[i][l] = s;
    }
}

// U = G g G^T for every (group, row, col); flip: the backward-data filters g'[c][k] =
// w[k][c] rotated by 180 degrees (rows = Cg, cols = Kg), else rows = Kg, cols = Cg.
template <int M>
__device__ __forceinline__ void wino_filter_transform(const float* __restrict__ w,
                                                      float* __restrict__ U, int Kg, int Cg,
                                                      int groups, int flip) {
  constexpr int AL = M + 2;
  const int rows = flip ? Cg : Kg, cols = flip ? Kg : Cg;
  const long long total = (long long)groups * rows * cols, plane = total;
  PA_GRID_STRIDE(i, total) {
    const int col = (int)(i % cols), row = (int)(i / cols % rows), g = (int)(i / cols / rows);
    const int k = flip ? col : row, c = flip ? row : col;
    const float* src = w + ((long long)(g * Kg + k) * Cg + c) * 9;
    float f[3][3];
#pragma unroll
    for (int r = 0; r < 3; ++r)
#pragma unroll
      for (int s = 0; s < 3; ++s) f[r][s] = __ldg(src + (flip ? (2 - r) * 3 + 2 - s : r * 3 + s));
    float u[AL][AL];
    wino_sandwich<AL, 3, 3, AL>(f, u, [](int a, int b) { return wino_g<M>(a, b); },
                                [](int a, int b) { return wino_g<M>(a, b); });
#pragma unroll
    for (int a = 0; a < AL; ++a)
#pragma unroll
      for (int b = 0; b < AL; ++b) U[(a * AL + b) * plane + i] = u[a][b];
  }
}

// Tile geometry shared by the tile transforms: tile t of S*Pc -> chunk s, index in chunk,
// and its image n and tile row / column (valid only when t < N*TH*TW).
struct wino_tile {
  int s, b, n, th, tw;
  bool valid;
};

__device__ __forceinline__ wino_tile wino_locate(long long t, int N, int TH, int TW, int Pc) {
  wino_tile w;
  w.s = (int)(t / Pc);
  w.b = (int)(t - (long long)w.s * Pc);
  w.valid = t < (long long)N * TH * TW;
  const int tt = (int)t, per = TH * TW;
  w.n = tt / per;
  w.th = (tt - w.n * per) / TW;
  w.tw = tt - w.n * per - w.th * TW;
  return w;
}

// V = BT d BT^T for every (channel, tile); d is the alpha x alpha patch at (th*m - pad,
// tw*m - pad) of x (N, C, H, W). Threads run along tiles: contiguous stores.
template <int M>
__device__ __forceinline__ void wino_input_transform(const float* __restrict__ x,
                                                     float* __restrict__ V, int N, int C, int H,
                                                     int W, int groups, int pad, int TH, int TW,
                                                     int Pc, int S) {
  constexpr int AL = M + 2;
  const int Cg = C / groups;
  const long long tiles = (long long)S * Pc, total = (long long)C * tiles;
  PA_GRID_STRIDE(i, total) {
    const long long t = i % tiles;
    const int c = (int)(i / tiles), g = c / Cg, cg = c - g * Cg;
    const wino_tile tl = wino_locate(t, N, TH, TW, Pc);
    float d[AL][AL];
    const int h0 = tl.th * M - pad, w0 = tl.tw * M - pad;
    const float* src = x + ((long long)tl.n * C + c) * H * W;
#pragma unroll
    for (int a = 0; a < AL; ++a)
#pragma unroll
      for (int b = 0; b < AL; ++b) {
        const bool ok = tl.valid && (unsigned)(h0 + a) < (unsigned)H &&
                        (unsigned)(w0 + b) < (unsigned)W;
        d[a][b] = ok ? __ldg(src + (h0 + a) * W + w0 + b) : 0.0f;
      }
    float v[AL][AL];
    wino_sandwich<AL, AL, AL, AL>(d, v, [](int a, int b) { return wino_bt<M>(a, b); },
                                  [](int a, int b) { return wino_bt<M>(a, b); });
    float* dst = V + ((long long)tl.s * AL * AL * groups + g) * Cg * Pc + (long long)cg * Pc + tl.b;
    const long long point = (long long)groups * Cg * Pc;
#pragma unroll
    for (int a = 0; a < AL; ++a)
#pragma unroll
      for (int b = 0; b < AL; ++b) dst[(a * AL + b) * point] = v[a][b];
  }
}

// y = AT Mo AT^T per (filter, tile), cropped to P x Q, + bias, then ReLU if asked.
template <int M>
__device__ __forceinline__ void wino_output_transform(const float* __restrict__ Mo,
                                                      float* __restrict__ y,
                                                      const float* __restrict__ bias, int N,
                                                      int K, int P, int Q, int TH, int TW,
                                                      int has_bias, int relu) {
  constexpr int AL = M + 2;
  const long long tiles = (long long)N * TH * TW, total = (long long)K * tiles;
  PA_GRID_STRIDE(i, total) {
    const long long t = i % tiles;
    const int k = (int)(i / tiles);
    const wino_tile tl = wino_locate(t, N, TH, TW, (int)tiles);
    float m[AL][AL];
    // Mo's (group, filter-in-group) rows are consecutive: index k * tiles + t per point.
#pragma unroll
    for (int a = 0; a < AL; ++a)
#pragma unroll
      for (int b = 0; b < AL; ++b) m[a][b] = __ldg(Mo + (a * AL + b) * K * tiles + i);
    float out[M][M];
    wino_sandwich<M, AL, AL, M>(m, out, [](int a, int b) { return wino_at<M>(a, b); },
                                [](int a, int b) { return wino_at<M>(a, b); });
    const float add = has_bias ? __ldg(bias + k) : 0.0f;
    float* dst = y + ((long long)tl.n * K + k) * P * Q;
#pragma unroll
    for (int a = 0; a < M; ++a)
#pragma unroll
      for (int b = 0; b < M; ++b) {
        const int p = tl.th * M + a, q = tl.tw * M + b;
        if (p < P && q < Q) {
          float v = out[a][b] + add;
          if (relu) v = v < 0.0f ? 0.0f : v;  // NaN passes, as in relu_forward
          dst[p * Q + q] = v;
        }
      }
  }
}

// Z = A dy A^T per (filter, tile): dy's m x m tile at (th*m, tw*m), zero outside P x Q.
template <int M>
__device__ __forceinline__ void wino_dy_transform(const float* __restrict__ dy,
                                                  float* __restrict__ Z, int N, int K, int P,
                                                  int Q, int groups, int TH, int TW, int Pc,
                                                  int S) {
  constexpr int AL = M + 2;
  const int Kg = K / groups;
  const long long tiles = (long long)S * Pc, total = (long long)K * tiles;
  PA_GRID_STRIDE(i, total) {
    const long long t = i % tiles;
    const int k = (int)(i / tiles), g = k / Kg, kg = k - g * Kg;
    const wino_tile tl = wino_locate(t, N, TH, TW, Pc);
    float e[M][M];
    const float* src = dy + ((long long)tl.n * K + k) * P * Q;
#pragma unroll
    for (int a = 0; a < M; ++a)
#pragma unroll
      for (int b = 0; b < M; ++b) {
        const int p = tl.th * M + a, q = tl.tw * M + b;
        e[a][b] = tl.valid && p < P && q < Q ? __ldg(src + p * Q + q) : 0.0f;
      }
    float z[AL][AL];
    wino_sandwich<AL, M, M, AL>(e, z, [](int a, int b) { return wino_at<M>(b, a); },
                                [](int a, int b) { return wino_at<M>(b, a); });
    float* dst = Z + ((long long)tl.s * AL * AL * groups + g) * Kg * Pc + (long long)kg * Pc + tl.b;
    const long long point = (long long)groups * Kg * Pc;
#pragma unroll
    for (int a = 0; a < AL; ++a)
#pragma unroll
      for (int b = 0; b < AL; ++b) dst[(a * AL + b) * point] = z[a][b];
  }
}

// dw = G^T (sum over chunks s, in order, of dW[s]) G per (group, filter, channel).
template <int M>
__device__ __forceinline__ void wino_filter_grad_output(const float* __restrict__ dW,
                                                        float* __restrict__ dw, int Kg, int Cg,
                                                        int groups, int S) {
  constexpr int AL = M + 2;
  const long long total = (long long)groups * Kg * Cg;  // = dw's filters x channels
  PA_GRID_STRIDE(i, total) {
    float acc[AL][AL];
#pragma unroll
    for (int a = 0; a < AL; ++a)
#pragma unroll
      for (int b = 0; b < AL; ++b) {
        float s = 0.0f;
        for (int c = 0; c < S; ++c) s += __ldg(dW + ((long long)c * AL * AL + a * AL + b) * total + i);
        acc[a][b] = s;
      }
    float f[3][3];
    wino_sandwich<3, AL, AL, 3>(acc, f, [](int a, int b) { return wino_g<M>(b, a); },
                                [](int a, int b) { return wino_g<M>(b, a); });
#pragma unroll
    for (int r = 0; r < 3; ++r)
#pragma unroll
      for (int s = 0; s < 3; ++s) dw[i * 9 + r * 3 + s] = f[r][s];
  }
}

#define WINO_ENTRY_POINTS(M)                                                                 \
  extern "C" __global__ void wino##M##_filter_transform(const float* __restrict__ w,          \
                                                        float* __restrict__ U, int Kg, int Cg, \
                                                        int groups, int flip) {               \
    wino_filter_transform<M>(w, U, Kg, Cg, groups, flip);                                     \
  }                                                                                           \
  extern "C" __global__ void wino##M##_input_transform(                                       \
      const float* __restrict__ x, float* __restrict__ V, int N, int C, int H, int W,         \
      int groups, int pad, int TH, int TW, int Pc, int S) {                                   \
    wino_input_transform<M>(x, V, N, C, H, W, groups, pad, TH, TW, Pc, S);                    \
  }                                                                                           \
  extern "C" __global__ void wino##M##_output_transform(                                      \
      const float* __restrict__ Mo, float* __restrict__ y, const float* __restrict__ bias,    \
      int N, int K, int P, int Q, int TH, int TW, int has_bias, int relu) {                   \
    wino_output_transform<M>(Mo, y, bias, N, K, P, Q, TH, TW, has_bias, relu);                \
  }                                                                                           \
  extern "C" __global__ void wino##M##_dy_transform(                                          \
      const float* __restrict__ dy, float* __restrict__ Z, int N, int K, int P, int Q,        \
      int groups, int TH, int TW, int Pc, int S) {                                            \
    wino_dy_transform<M>(dy, Z, N, K, P, Q, groups, TH, TW, Pc, S);                           \
  }                                                                                           \
  extern "C" __global__ void wino##M##_filter_grad_output(                                    \
      const float* __restrict__ dW, float* __restrict__ dw, int Kg, int Cg, int groups,       \
      int S) {                                                                                \
    wino_filter_grad_output<M>(dW, dw, Kg, Cg, groups, S);                                    \
  }

WINO_ENTRY_POINTS(2)
WINO_ENTRY_POINTS(4)
#undef WINO_ENTRY_POINTS

// Batched products between the transforms: C[z] = A[z] op(B[z]) for z = blockIdx.z, each
// operand advanced by its batch stride. nn: the forward (U x V); nt: the filter gradient
// (Z x V^T, both stored with the tile index contiguous).
#define WINO_BGEMM_PARAMS                                                                  \
  const float *__restrict__ A, const float *__restrict__ B, float *__restrict__ C, int M,   \
      int N, int K, long long sa, long long sb, long long sc
#define WINO_BGEMM(NAME, TB, CFG, MIN_BLOCKS)                                                \
  extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS) NAME(WINO_BGEMM_PARAMS) {   \
    const long long z = blockIdx.z;                                                          \
    gemm_tile<false, TB, CFG, true>(A + z * sa, B + z * sb, C + z * sc, M, N, K, 1.0f, 0.0f, \
                                    K);                                                      \
  }
#define WINO_CFG_128 128, 128, 8, 8, 8
#define WINO_CFG_64 64, 64, 16, 4, 4
WINO_BGEMM(wino_bgemm_nn_128, false, WINO_CFG_128, 2)
WINO_BGEMM(wino_bgemm_nt_128, true, WINO_CFG_128, 2)
WINO_BGEMM(wino_bgemm_nn_64, false, WINO_CFG_64, 4)
WINO_BGEMM(wino_bgemm_nt_64, true, WINO_CFG_64, 4)
#undef WINO_BGEMM
#undef WINO_BGEMM_PARAMS
#undef WINO_CFG_128
#undef WINO_CFG_64
