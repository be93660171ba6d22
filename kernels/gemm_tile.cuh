// The SGEMM block tile shared by kernels/gemm.cu (the fully connected layers) and
// kernels/winograd.cu (the batched products between Winograd transforms); the design is
// described at the top of gemm.cu. BATCHED: blockIdx.z indexes a batch whose operands the
// caller has already offset to, and the whole K range is reduced (no split-K).
#pragma once
#include "common.cuh"

// Thread t's i-th coordinate (row or column) inside the block tile along a dimension where
// THREADS_DIM threads each own T entries: groups of 4 consecutive entries strided by
// THREADS_DIM*4, so a warp's float4 fragment reads cover contiguous shared memory.
template <int T, int THREADS_DIM>
__device__ __forceinline__ int gemm_frag_pos(int t, int i) {
  if constexpr (T % 4 == 0) {
    return (i / 4) * THREADS_DIM * 4 + t * 4 + (i % 4);
  } else {
    return t * T + i;
  }
}

// Fragment of T values of row `row` (one k of a staged tile) for thread t.
template <int T, int THREADS_DIM>
__device__ __forceinline__ void gemm_load_frag(float (&f)[T], const float* row, int t) {
  if constexpr (T % 4 == 0) {
#pragma unroll
    for (int g = 0; g < T / 4; ++g) {
      float4 v = *reinterpret_cast<const float4*>(row + g * THREADS_DIM * 4 + t * 4);
      f[g * 4 + 0] = v.x;
      f[g * 4 + 1] = v.y;
      f[g * 4 + 2] = v.z;
      f[g * 4 + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < T; ++i) f[i] = row[t * T + i];
  }
}

// A tile of R (rows of op(A), or columns of op(B)) x BK of a stored matrix X, handled in
// chunks of 4 consecutive stored elements. K_CONTIG: X is stored R-major with K contiguous
// (element (r, k) at X[r*ld + k]); otherwise X is stored K-major (element (k, r) at
// X[k*ld + r]). Chunks are assigned to threads in order, so a warp reads consecutive
// addresses of each stored row (coalesced).
template <bool K_CONTIG, int R, int BK, int THREADS>
struct gemm_tile_io {
  static constexpr int CHUNKS = R * BK / 4;
  static constexpr int LOADS = (CHUNKS + THREADS - 1) / THREADS;
  static constexpr int LD_S = R + 4;  // shared row stride: float4-aligned, see file header
};

// Fetch the tile at (k0, r0) into registers; out-of-range elements read as 0.
template <bool K_CONTIG, int R, int BK, int THREADS, int LOADS>
__device__ __forceinline__ void gemm_fetch(float4 (&reg)[LOADS], const float* __restrict__ X,
                                           int ld, int rows, int k0, int k_end, int r0,
                                           bool vec, int tid) {
  constexpr int CHUNKS = gemm_tile_io<K_CONTIG, R, BK, THREADS>::CHUNKS;
#pragma unroll
  for (int l = 0; l < LOADS; ++l) {
    int c = tid + l * THREADS;
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (CHUNKS % THREADS == 0 || c < CHUNKS) {
      int r, k;  // coordinates of the chunk's first element
      if constexpr (K_CONTIG) {
        r = r0 + c / (BK / 4);
        k = k0 + (c % (BK / 4)) * 4;
      } else {
        k = k0 + c / (R / 4);
        r = r0 + (c % (R / 4)) * 4;
      }
      const float* p = K_CONTIG ? X + (long long)r * ld + k : X + (long long)k * ld + r;
      bool full = K_CONTIG ? (r < rows && k + 3 < k_end) : (k < k_end && r + 3 < rows);
      if (vec && full) {
        float4 q = __ldg(reinterpret_cast<const float4*>(p));
        v[0] = q.x;
        v[1] = q.y;
        v[2] = q.z;
        v[3] = q.w;
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          bool ok = K_CONTIG ? (r < rows && k + j < k_end) : (k < k_end && r + j < rows);
          if (ok) v[j] = __ldg(p + j);
        }
      }
    }
    reg[l] = make_float4(v[0], v[1], v[2], v[3]);
  }
}

// Store fetched registers k-major into the shared tile S[BK][LD_S] (transposing when the
// stored matrix is K-contiguous).
template <bool K_CONTIG, int R, int BK, int THREADS, int LOADS>
__device__ __forceinline__ void gemm_stage(float* S, const float4 (&reg)[LOADS], int tid) {
  using Io = gemm_tile_io<K_CONTIG, R, BK, THREADS>;
#pragma unroll
  for (int l = 0; l < LOADS; ++l) {
    int c = tid + l * THREADS;
    if (Io::CHUNKS % THREADS == 0 || c < Io::CHUNKS) {
      if constexpr (K_CONTIG) {
        int r = c / (BK / 4), k = (c % (BK / 4)) * 4;
        S[(k + 0) * Io::LD_S + r] = reg[l].x;
        S[(k + 1) * Io::LD_S + r] = reg[l].y;
        S[(k + 2) * Io::LD_S + r] = reg[l].z;
        S[(k + 3) * Io::LD_S + r] = reg[l].w;
      } else {
        int k = c / (R / 4), r = (c % (R / 4)) * 4;
        *reinterpret_cast<float4*>(S + k * Io::LD_S + r) = reg[l];
      }
    }
  }
}

__device__ __forceinline__ bool gemm_aligned16(const float* p) {
  return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}

template <bool TRANS_A, bool TRANS_B, int BM, int BN, int BK, int TM, int TN,
          bool BATCHED = false>
__device__ __forceinline__ void gemm_tile(const float* __restrict__ A, const float* __restrict__ B,
                                          float* __restrict__ C, int M, int N, int K,
                                          float alpha, float beta, int k_chunk) {
  constexpr int THREADS_M = BM / TM, THREADS_N = BN / TN, THREADS = THREADS_M * THREADS_N;
  static_assert(BM % TM == 0 && BN % TN == 0 && TN % 4 == 0, "bad gemm tile");
  static_assert(BM % 4 == 0 && BN % 4 == 0 && BK % 4 == 0, "tiles are handled in float4");
  static_assert(TM % 4 == 0 || TM < 4, "row fragments are float4 groups or a few scalars");
  // op(A) is K-contiguous in memory unless transposed; op(B) is K-contiguous if transposed.
  using IoA = gemm_tile_io<!TRANS_A, BM, BK, THREADS>;
  using IoB = gemm_tile_io<TRANS_B, BN, BK, THREADS>;
  __shared__ __align__(16) float As[2][BK * IoA::LD_S];
  __shared__ __align__(16) float Bs[2][BK * IoB::LD_S];

  const int tid = threadIdx.x;
  const int tx = tid % THREADS_N, ty = tid / THREADS_N;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int k_begin = BATCHED ? 0 : blockIdx.z * k_chunk;
  const int k_end = BATCHED ? K : min(K, k_begin + k_chunk);
  const int lda = TRANS_A ? M : K, ldb = TRANS_B ? K : N;
  const bool vec_a = gemm_aligned16(A) && lda % 4 == 0;
  const bool vec_b = gemm_aligned16(B) && ldb % 4 == 0;

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

  float4 ra[IoA::LOADS], rb[IoB::LOADS];
  const int tiles = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
  if (tiles > 0) {
    gemm_fetch<!TRANS_A, BM, BK, THREADS>(ra, A, lda, M, k_begin, k_end, m0, vec_a, tid);
    gemm_fetch<TRANS_B, BN, BK, THREADS>(rb, B, ldb, N, k_begin, k_end, n0, vec_b, tid);
    gemm_stage<!TRANS_A, BM, BK, THREADS>(As[0], ra, tid);
    gemm_stage<TRANS_B, BN, BK, THREADS>(Bs[0], rb, tid);
  }
  __syncthreads();
  for (int t = 0; t < tiles; ++t) {
    const int buf = t & 1;
    const bool more = t + 1 < tiles;
    if (more) {  // global loads in flight while this tile is multiplied
      int k0 = k_begin + (t + 1) * BK;
      gemm_fetch<!TRANS_A, BM, BK, THREADS>(ra, A, lda, M, k0, k_end, m0, vec_a, tid);
      gemm_fetch<TRANS_B, BN, BK, THREADS>(rb, B, ldb, N, k0, k_end, n0, vec_b, tid);
    }
    const float* as = As[buf];
    const float* bs = Bs[buf];
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], b[TN];
      gemm_load_frag<TM, THREADS_M>(a, as + kk * IoA::LD_S, ty);
      gemm_load_frag<TN, THREADS_N>(b, bs + kk * IoB::LD_S, tx);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (more) {  // the other buffer was last read before the previous barrier
      gemm_stage<!TRANS_A, BM, BK, THREADS>(As[buf ^ 1], ra, tid);
      gemm_stage<TRANS_B, BN, BK, THREADS>(Bs[buf ^ 1], rb, tid);
    }
    __syncthreads();
  }

  // Epilogue. Split-K blocks write raw partials to their slice of the workspace.
  const bool split = !BATCHED && gridDim.z > 1;
  float* out = split ? C + (long long)blockIdx.z * M * N : C;
  const float al = split ? 1.0f : alpha, be = split ? 0.0f : beta;
  const bool vec_c = gemm_aligned16(out) && N % 4 == 0;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    int m = m0 + gemm_frag_pos<TM, THREADS_M>(ty, i);
    if (m >= M) continue;
    float* row = out + (long long)m * N;
#pragma unroll
    for (int g = 0; g < TN / 4; ++g) {
      int n = n0 + g * THREADS_N * 4 + tx * 4;
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = al * acc[i][g * 4 + j];
      if (vec_c && n + 3 < N) {
        float4* p = reinterpret_cast<float4*>(row + n);
        if (be != 0.0f) {
          float4 c = *p;
          v[0] = fmaf(be, c.x, v[0]);
          v[1] = fmaf(be, c.y, v[1]);
          v[2] = fmaf(be, c.z, v[2]);
          v[3] = fmaf(be, c.w, v[3]);
        }
        *p = make_float4(v[0], v[1], v[2], v[3]);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (n + j < N) row[n + j] = be != 0.0f ? fmaf(be, row[n + j], v[j]) : v[j];
        }
      }
    }
  }
}
