// Tiled SGEMM for the fully connected layers (no cuBLAS):
//   C = alpha * op(A) * op(B) + beta * C,   all matrices row-major and densely packed,
//   op(A) is M x K (A stored M x K, or K x M when transposed), op(B) is K x N (B stored
//   K x N, or N x K when transposed), C is M x N.
//
// One templated implementation (gemm_tile) with compile-time transposes and tile shape;
// the extern "C" kernels below instantiate it per transpose combination (nn, nt, tn, tt)
// and per tile configuration:
//   _128: 128x128 block tile, BK 8, 256 threads, 8x8 outputs per thread (large products)
//   _64 :  64x64  block tile, BK 16, 256 threads, 4x4 outputs per thread (mid sizes)
//   _8  :   8x256 block tile, BK 16, 256 threads, 1x8 outputs per thread (M <= 8: the
//          batch-2 layers, where op(B) -- the weights -- is streamed once)
//   _64k:  64x64  block tile, BK 32, 256 threads, 4x4 outputs per thread: a K-contiguous
//          operand is read in 128-byte runs of each row (a whole cache line), where the
//          other tiles read 32 (BK 8) or 64 bytes (BK 16) of a row per K tile
//
// Per block: op(A) and op(B) tiles are staged k-major in shared memory, As[k][m] and
// Bs[k][n] (rows padded by 4 floats), so the inner loop reads each thread's fragment as
// float4 (or a broadcast scalar for the 1-row tile), without bank conflicts. Global loads
// are float4 along the stored matrix's contiguous dimension when the leading dimension and
// pointer allow it, else scalar; every load and store is bounds-checked, so M, N, K need not
// be multiples of the tile. Shared memory is double-buffered: the next K tile is fetched
// into registers while the current one is multiplied, one barrier per K tile.
//
// Split-K: with gridDim.z = S > 1, block z multiplies the K range [z*k_chunk, ...) and
// writes its raw partial product to C + z*M*N (C is then a workspace of S*M*N floats);
// gemm_splitk_reduce sums the S partials in fixed order z = 0..S-1 and applies alpha/beta.
// No float atomics, so results are bitwise reproducible.
//
// beta == 0 means C is not read (BLAS convention: it may hold garbage or NaN).
#include "gemm_tile.cuh"  // the block tile (gemm_tile) and its helpers

// C = alpha * sum_{z < splits} ws[z] + beta * C, summed in fixed order (deterministic).
extern "C" __global__ void gemm_splitk_reduce(const float* __restrict__ ws, float* __restrict__ C,
                                              long long mn, int splits, float alpha, float beta) {
  PA_GRID_STRIDE(i, mn) {
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += ws[z * mn + i];
    C[i] = beta != 0.0f ? fmaf(beta, C[i], alpha * s) : alpha * s;
  }
}

// ---- instantiations: gemm_<op(A)><op(B)>_<tile>, n = as stored, t = transposed ----------
// (Written out one by one: the emulator build finds kernels by their declarations.) The
// __launch_bounds__ minimum blocks per SM keep registers at <= 128 (128x128 tile) and <= 64
// (the others) so that 2 or 4 blocks stay resident; pyalexnet/ops/linear.py plans with this.
// gemm_nn_128 fits in 128 without the hint (125 on sm_90), but spills with it; so no hint.
#define GEMM_PARAMS                                                                    \
  const float *__restrict__ A, const float *__restrict__ B, float *__restrict__ C, int M, \
      int N, int K, float alpha, float beta, int k_chunk
#define GEMM_ARGS A, B, C, M, N, K, alpha, beta, k_chunk
#define GEMM_CFG_128 128, 128, 8, 8, 8
#define GEMM_CFG_64 64, 64, 16, 4, 4
#define GEMM_CFG_8 8, 256, 16, 1, 8
#define GEMM_CFG_64k 64, 64, 32, 4, 4

extern "C" __global__ void __launch_bounds__(256) gemm_nn_128(GEMM_PARAMS) {
  gemm_tile<false, false, GEMM_CFG_128>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemm_nt_128(GEMM_PARAMS) {
  gemm_tile<false, true, GEMM_CFG_128>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemm_tn_128(GEMM_PARAMS) {
  gemm_tile<true, false, GEMM_CFG_128>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemm_tt_128(GEMM_PARAMS) {
  gemm_tile<true, true, GEMM_CFG_128>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_nn_64(GEMM_PARAMS) {
  gemm_tile<false, false, GEMM_CFG_64>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_nt_64(GEMM_PARAMS) {
  gemm_tile<false, true, GEMM_CFG_64>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_tn_64(GEMM_PARAMS) {
  gemm_tile<true, false, GEMM_CFG_64>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_tt_64(GEMM_PARAMS) {
  gemm_tile<true, true, GEMM_CFG_64>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_nn_8(GEMM_PARAMS) {
  gemm_tile<false, false, GEMM_CFG_8>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_nt_8(GEMM_PARAMS) {
  gemm_tile<false, true, GEMM_CFG_8>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_tn_8(GEMM_PARAMS) {
  gemm_tile<true, false, GEMM_CFG_8>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_tt_8(GEMM_PARAMS) {
  gemm_tile<true, true, GEMM_CFG_8>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_nn_64k(GEMM_PARAMS) {
  gemm_tile<false, false, GEMM_CFG_64k>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_nt_64k(GEMM_PARAMS) {
  gemm_tile<false, true, GEMM_CFG_64k>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_tn_64k(GEMM_PARAMS) {
  gemm_tile<true, false, GEMM_CFG_64k>(GEMM_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 4) gemm_tt_64k(GEMM_PARAMS) {
  gemm_tile<true, true, GEMM_CFG_64k>(GEMM_ARGS);
}

#undef GEMM_PARAMS
#undef GEMM_ARGS
#undef GEMM_CFG_128
#undef GEMM_CFG_64
#undef GEMM_CFG_8
#undef GEMM_CFG_64k
