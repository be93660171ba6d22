// Tensor-core convolution over NCHW tensors (any stride, padding, groups) as implicit GEMM
// on kernels/mma_tile.cuh: TF32 (fp32 tensors rounded on load) or BF16 (bf16 bit tensors),
// fp32 accumulation and fp32 outputs; the bf16 forward may also store its maps as bf16
// (conv_mma_fwd_bf16_to_bf16_*: the activations of bf16 training, kernels/storage.cuh).
// The three products, per group g = blockIdx.z:
//
//   pass            rows m          columns n           reduction kk
//   forward         filter (K/g)    output pixel n,p,q  (c,r,s)  C/g*R*S
//   backward data   channel (C/g)   input pixel n,h,w   (k,r,s)  K/g*R*S
//   backward filter filter (K/g)    weight (c,r,s)      (n,p,q)  N*P*Q, split
//
// The gathers never divide: the host computes, once per shape, a table entry per column and
// per reduction index (pyalexnet/ops/conv.py, _mma_tables), int4 {offset, y, z, spare},
// whose sums give the element's offset and its window position (see mma_tile.cuh).
// Window tables (forward input, filter-gradient input): column / kk entry
// {n C H W + (p st - pad) W + q st - pad, p st - pad, q st - pad, output offset} and
// filter-tap entry {c H W + r W + s, r, s, 0}. Backward data gathers dy on the strided
// output grid: pixel {n K P Q, h + pad, w + pad, dx offset} plus tap {k P Q, -r, -s, 0};
// its weights come channels first (see conv_mma_bwd_data), read densely.
//
// The filter gradient's reduction is cut into split_len chunks (blockIdx.z = split *
// groups + g) written to a workspace and summed in order by conv_bwd_filter_reduce
// (kernels/conv.cu): deterministic, no atomics.
#include "mma_tile.cuh"
#include "storage.cuh"

#define CM_DIM_PARAMS                                                                    \
  int N, int C, int H, int W, int K, int R, int S, int P, int Q, int stride, int pad, \
      int groups

// Store a block's accumulators into NCHW maps: row m is a channel (plane elements apart),
// column n an output pixel whose offset ntab gives; optional bias per row and ReLU; the
// maps are stored as T (fp32, or bf16 rounded to nearest even).
template <int BM, int BN, int WM, int WN, class T>
__device__ __forceinline__ void cm_store_maps(const float (&acc)[WM / 16][WN / 8][4],
                                              T* __restrict__ out0,
                                              const int* __restrict__ ntab, int m0, int n0,
                                              int rows, int ncol, int plane,
                                              const float* __restrict__ bias, int relu) {
#pragma unroll
  for (int nf = 0; nf < WN / 8; ++nf)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int n = n0 + mt_acc_col<BN, WM, WN>(nf, j);
      if (n >= ncol) continue;
      T* out = out0 + mt_entry(ntab, n).w;
#pragma unroll
      for (int mf = 0; mf < WM / 16; ++mf)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int i = 2 * h + j, m = m0 + mt_acc_row<BN, WM, WN>(mf, i);
          if (m >= rows) continue;
          const float v = bias ? acc[mf][nf][i] + bias[m] : acc[mf][nf][i];
          pa_store(out + m * plane, relu ? fmaxf(v, 0.0f) : v);
        }
    }
}

template <int PREC, int BM, int BN, int WM, int WN, class TY>
__device__ __forceinline__ void conv_mma_fwd(const typename mt_types<PREC>::src* __restrict__ x,
                                             const typename mt_types<PREC>::src* __restrict__ w,
                                             const float* __restrict__ bias, TY* __restrict__ y,
                                             const int* __restrict__ ntab,
                                             const int* __restrict__ ktab, CM_DIM_PARAMS,
                                             int has_bias, int relu) {
  const int g = blockIdx.z, Kg = K / groups, Cg = C / groups, CgRS = Cg * R * S;
  const int PQ = P * Q, ncol = N * PQ;
  mt_operand<PREC> A = {w + g * Kg * CgRS, CgRS, 1, 0, 0, Kg, 0, 0, 1};
  mt_operand<PREC> B = {x + g * Cg * H * W, 0, 0, ntab, ktab, ncol, H, W, 1};
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  float acc[WM / 16][WN / 8][4];
  mt_mainloop<PREC, BM, BN, WM, WN, MT_KFAST,
              MT_RFAST | MT_ROW_TABLE | MT_K_TABLE | MT_CHECK_WIN>(A, B, m0, n0, 0, CgRS, acc);
  cm_store_maps<BM, BN, WM, WN>(acc, y + g * Kg * PQ, ntab, m0, n0, Kg, ncol, PQ,
                                has_bias ? bias + g * Kg : nullptr, relu);
}

// wt: the weights with channels first, (G, C/G, K/G, R*S) (ops/copy.py swap_middle_axes),
// so a row c of A is one run of K/G*R*S elements and a warp's fetches are coalesced (in
// the (G, K/G, C/G, R*S) layout a run of 16 reduction indices crosses filters, each
// R*S elements long and C/G*R*S apart).
template <int PREC, int BM, int BN, int WM, int WN>
__device__ __forceinline__ void conv_mma_bwd_data(
    const typename mt_types<PREC>::src* __restrict__ dy,
    const typename mt_types<PREC>::src* __restrict__ wt, float* __restrict__ dx,
    const int* __restrict__ ntab, const int* __restrict__ kbtab, CM_DIM_PARAMS) {
  const int g = blockIdx.z, Kg = K / groups, Cg = C / groups, RS = R * S, HW = H * W;
  const int ncol = N * HW;
  mt_operand<PREC> A = {wt + g * Cg * Kg * RS, Kg * RS, 1, 0, 0, Cg, 0, 0, 1};
  mt_operand<PREC> B = {dy + g * Kg * P * Q, 0, 0, ntab, kbtab, ncol, P, Q, stride};
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  float acc[WM / 16][WN / 8][4];
  mt_mainloop<PREC, BM, BN, WM, WN, MT_KFAST,
              MT_RFAST | MT_ROW_TABLE | MT_K_TABLE | MT_CHECK_STRIDED>(A, B, m0, n0, 0, Kg * RS,
                                                                       acc);
  cm_store_maps<BM, BN, WM, WN>(acc, dx + g * Cg * HW, ntab, m0, n0, Cg, ncol, HW, nullptr, 0);
}

template <int PREC, int BM, int BN, int WM, int WN>
__device__ __forceinline__ void conv_mma_bwd_filter(
    const typename mt_types<PREC>::src* __restrict__ x,
    const typename mt_types<PREC>::src* __restrict__ dy, float* __restrict__ ws,
    const int* __restrict__ ntab, const int* __restrict__ katab, const int* __restrict__ kbtab,
    CM_DIM_PARAMS, int split_len) {
  const int split = blockIdx.z / groups, g = blockIdx.z % groups;
  const int Kg = K / groups, Cg = C / groups, CgRS = Cg * R * S, PQ = P * Q;
  mt_operand<PREC> A = {dy + g * Kg * PQ, PQ, 0, 0, katab, Kg, 0, 0, 1};
  mt_operand<PREC> B = {x + g * Cg * H * W, 0, 0, ntab, kbtab, CgRS, H, W, 1};
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int kbeg = split * split_len, kend = min(N * PQ, kbeg + split_len);
  float acc[WM / 16][WN / 8][4];
  mt_mainloop<PREC, BM, BN, WM, WN, MT_KFAST | MT_K_TABLE,
              MT_KFAST | MT_ROW_TABLE | MT_K_TABLE | MT_CHECK_WIN>(A, B, m0, n0, kbeg, kend,
                                                                  acc);
  mt_store_rows<BM, BN, WM, WN>(acc, ws + (long long)split * K * CgRS + (long long)g * Kg * CgRS,
                                CgRS, m0, n0, Kg, CgRS);
}

#define CM_FWD_ENTRY(NAME, PREC, TY, BM, BN, WM, WN, MINB)                                       \
  extern "C" __global__ void MT_LAUNCH_BOUNDS(BM, BN, WM, WN, MINB)                              \
      NAME(const mt_types<PREC>::src* __restrict__ x, const mt_types<PREC>::src* __restrict__ w, \
           const float* __restrict__ bias, TY* __restrict__ y, const int* __restrict__ ntab,    \
           const int* __restrict__ ktab, CM_DIM_PARAMS, int has_bias, int relu) {               \
    conv_mma_fwd<PREC, BM, BN, WM, WN, TY>(x, w, bias, y, ntab, ktab, N, C, H, W, K, R, S, P, Q, \
                                           stride, pad, groups, has_bias, relu);                \
  }
#define CM_ENTRY(PNAME, PREC, TILE, BM, BN, WM, WN, MINB, MINB_DATA, MINB_FILTER)               \
  CM_FWD_ENTRY(conv_mma_fwd_##PNAME##_##TILE, PREC, float, BM, BN, WM, WN, MINB)                \
  extern "C" __global__ void MT_LAUNCH_BOUNDS(BM, BN, WM, WN, MINB_DATA)                        \
      conv_mma_bwd_data_##PNAME##_##TILE(                                                       \
          const mt_types<PREC>::src* __restrict__ dy, const mt_types<PREC>::src* __restrict__ wt, \
          float* __restrict__ dx, const int* __restrict__ ntab, const int* __restrict__ kbtab,  \
          CM_DIM_PARAMS) {                                                                      \
    conv_mma_bwd_data<PREC, BM, BN, WM, WN>(dy, wt, dx, ntab, kbtab, N, C, H, W, K, R, S, P, Q, \
                                            stride, pad, groups);                               \
  }                                                                                             \
  extern "C" __global__ void MT_LAUNCH_BOUNDS(BM, BN, WM, WN, MINB_FILTER)                      \
      conv_mma_bwd_filter_##PNAME##_##TILE(                                                     \
          const mt_types<PREC>::src* __restrict__ x, const mt_types<PREC>::src* __restrict__ dy, \
          float* __restrict__ ws, const int* __restrict__ ntab, const int* __restrict__ katab,  \
          const int* __restrict__ kbtab, CM_DIM_PARAMS, int split_len) {                        \
    conv_mma_bwd_filter<PREC, BM, BN, WM, WN>(x, dy, ws, ntab, katab, kbtab, N, C, H, W, K, R,  \
                                              S, P, Q, stride, pad, groups, split_len);         \
  }
// MIN128_FILTER: the tile-128 filter gradient's minimum blocks per SM (MT_LAUNCH_BOUNDS).
// The bf16 tile-128 data gradient needs no minimum: it takes 128 registers unasked (2
// blocks an SM; with a minimum of 2 ptxas spills 12 bytes), checked in tests/test_compile.py.
#define CM_TILES(PNAME, PREC, MIN128_FILTER)                           \
  CM_ENTRY(PNAME, PREC, 128, 128, 128, 64, 32, 0, 0, MIN128_FILTER) \
  CM_ENTRY(PNAME, PREC, 64, 64, 64, 32, 32, 4, 4, 4)

CM_TILES(tf32, MT_TF32, 0)
CM_TILES(bf16, MT_BF16, 2)
CM_FWD_ENTRY(conv_mma_fwd_bf16_to_bf16_128, MT_BF16, unsigned short, 128, 128, 64, 32, 0)
CM_FWD_ENTRY(conv_mma_fwd_bf16_to_bf16_64, MT_BF16, unsigned short, 64, 64, 32, 32, 4)
#undef CM_TILES
#undef CM_ENTRY
#undef CM_FWD_ENTRY
