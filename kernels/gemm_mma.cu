// Tensor-core GEMM for the fully connected layers: C (M x N, fp32) = op(A) op(B), with A, B
// fp32 rounded to tf32 on load (gemm_mma_tf32_*) or bf16 bit arrays (gemm_mma_bf16_*), fp32
// accumulation. The main loop is kernels/mma_tile.cuh; this file maps op(A) and op(B)
// onto its operand descriptors and writes the accumulators.
//
//   name  op(A)        op(B)        used by
//   nt    A (M x K)    B^T, B N x K linear forward   y  = x @ w.T
//   nn    A (M x K)    B (K x N)    linear backward data    dx = dy @ w
//   tn    A^T, A K x M B (K x N)    linear backward weight  dw = dy.T @ x
//
// Split-K: blockIdx.z takes K range [z k_chunk, (z + 1) k_chunk) and writes partial z of
// C (C + z M N); gemm_splitk_reduce (kernels/gemm.cu) adds them in fixed order.
// Tiles: _128 (128 x 128, 8 warps of 64 x 32) and _64 (64 x 64, 4 warps of 32 x 32).
#include "mma_tile.cuh"

template <int PREC, bool TA, bool TB, int BM, int BN, int WM, int WN>
__device__ __forceinline__ void gemm_mma(const typename mt_types<PREC>::src* __restrict__ a,
                                         const typename mt_types<PREC>::src* __restrict__ b,
                                         float* __restrict__ c, int M, int N, int K,
                                         int k_chunk) {
  // operand A: rows m; stored M x K (k adjacent) or, transposed, K x M (m adjacent)
  mt_operand<PREC> A = {a, TA ? 1 : K, TA ? M : 1, 0, 0, M, 0, 0, 1};
  // operand B: rows n; stored K x N (n adjacent) or, transposed, N x K (k adjacent)
  mt_operand<PREC> B = {b, TB ? K : 1, TB ? 1 : N, 0, 0, N, 0, 0, 1};
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int kbeg = blockIdx.z * k_chunk, kend = min(K, kbeg + k_chunk);
  float acc[WM / 16][WN / 8][4];
  mt_mainloop<PREC, BM, BN, WM, WN, TA ? MT_RFAST : MT_KFAST, TB ? MT_KFAST : MT_RFAST>(
      A, B, m0, n0, kbeg, kend, acc);
  mt_store_rows<BM, BN, WM, WN>(acc, c + (long long)blockIdx.z * M * N, N, m0, n0, M, N);
}

#define GEMM_MMA_ENTRY(PNAME, PREC, TNAME, TA, TB, TILE, BM, BN, WM, WN, MINB)                 \
  extern "C" __global__ void MT_LAUNCH_BOUNDS(BM, BN, WM, WN, MINB)                            \
      gemm_mma_##PNAME##_##TNAME##_##TILE(const mt_types<PREC>::src* __restrict__ a,           \
                                           const mt_types<PREC>::src* __restrict__ b,           \
                                           float* __restrict__ c, int M, int N, int K,         \
                                           int k_chunk) {                                      \
    gemm_mma<PREC, TA, TB, BM, BN, WM, WN>(a, b, c, M, N, K, k_chunk);                         \
  }
// MIN128: the tile-128 entry's minimum blocks per SM (see MT_LAUNCH_BOUNDS)
#define GEMM_MMA_TILES(PNAME, PREC, TNAME, TA, TB, MIN128)                  \
  GEMM_MMA_ENTRY(PNAME, PREC, TNAME, TA, TB, 128, 128, 128, 64, 32, MIN128) \
  GEMM_MMA_ENTRY(PNAME, PREC, TNAME, TA, TB, 64, 64, 64, 32, 32, 4)
// NN_MIN128: tf32's nn tile-128 spills at 128 registers, bf16's (its fetched elements two
// to a register) does not.
#define GEMM_MMA_ALL(PNAME, PREC, NN_MIN128)                  \
  GEMM_MMA_TILES(PNAME, PREC, nt, false, true, 2)           \
  GEMM_MMA_TILES(PNAME, PREC, nn, false, false, NN_MIN128) \
  GEMM_MMA_TILES(PNAME, PREC, tn, true, false, 2)

GEMM_MMA_ALL(tf32, MT_TF32, 0)
GEMM_MMA_ALL(bf16, MT_BF16, 2)
#undef GEMM_MMA_ALL
#undef GEMM_MMA_TILES
#undef GEMM_MMA_ENTRY
