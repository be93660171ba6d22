// The tensor-core GEMM main loop shared by kernels/gemm_mma.cu (FC layers) and
// kernels/conv_mma.cu (implicit-GEMM convolution): acc = sum over k in [kbeg, kend) of
// A(m, k) B(k, n) for one BM x BN block tile, TF32 (m16n8k8) or BF16 (m16n8k16) operands,
// fp32 accumulation in registers. The caller stores acc through mt_acc_row / mt_acc_col.
//
// Block: (BM/WM) x (BN/WN) warps, each owning a WM x WN warp tile of (WM/16) x (WN/8) mma
// tiles. The reduction advances in chunks of MT_BK = 16 (two tf32 mma k-steps or one bf16)
// through double-buffered shared memory; the next chunk is fetched into registers while
// the current one is multiplied, so one barrier per chunk suffices.
//
// Operands are gathered element by element through a small descriptor (mt_operand), so
// one loop serves dense matrices (either orientation) and convolution windows:
//   offset(row, k) = row part + k part, each either idx * stride or a table entry
//   (int4 {offset, y, z, spare}, computed once per shape on the host: no integer division
//   in the loop); a window check tests y = row.y + k.y and z = row.z + k.z against the
//   image (MT_CHECK_WIN), or against a strided output grid (MT_CHECK_STRIDED: y, z must
//   be multiples of the stride; the offset adds (y / st) * W + z / st).
// Out-of-range rows, k or window positions read as zero, so no size needs to be a
// multiple of the tile.
//
// Shared-memory layout per operand follows its global layout (MT_KFAST: tile[row][k] when
// consecutive k are adjacent in memory; MT_RFAST: tile[k][row] when consecutive rows are),
// so a warp's 32 consecutive fetches are one coalesced run and its stores are contiguous.
// Row padding makes the fragment reads conflict-free: lanes read (row g, word t) for
// g < 8, t < 4; with a [row][k] stride of 20 words (tf32) or 12 words (24 bf16) the banks
// 20 g + t and 12 g + t are all distinct mod 32; with a [k][row] stride of ROWS + 8
// elements they are 8 t + g (tf32) or 8 t + g / 2 (bf16: two lanes share a word).
#pragma once
#include "mma.cuh"

#define MT_TF32 0
#define MT_BF16 1
#define MT_BK(PREC) 16  // reduction chunk: two tf32 or one bf16 mma k-step
#define MT_MMA_K(PREC) ((PREC) == MT_BF16 ? 16 : 8)

// operand spec bits
#define MT_KFAST 0          // shared tile [row][k]
#define MT_RFAST 1          // shared tile [k][row]
#define MT_ROW_TABLE 2      // row part from a table, else row * rstride
#define MT_K_TABLE 4        // k part from a table, else k * kstride
#define MT_CHECK_WIN 8      // 0 <= y < H and 0 <= z < W
#define MT_CHECK_STRIDED 16 // y, z >= 0, multiples of st, y / st < H, z / st < W

// Launch bounds of a kernel on a BM x BN block tile of WM x WN warp tiles, at least
// MIN_BLOCKS resident per SM (0: no minimum). A minimum holds ptxas to 65536 / (threads *
// MIN_BLOCKS) registers a thread; each entry asks for what fits without spilling
// (tests/test_compile.py): 4 blocks (16 warps) for the 4-warp tile-64 kernels, 2 for the
// 8-warp tile-128 GEMMs nt and tn and for bf16's tile-128 GEMM nn and conv filter
// gradient, none for the other tile-128 kernels, which spill at 128 registers (and a
// minimum of 1 lets ptxas take more registers than it does without one).
#define MT_THREADS(BM, BN, WM, WN) ((BM / WM) * (BN / WN) * 32)
#define MT_LAUNCH_BOUNDS(BM, BN, WM, WN, MIN_BLOCKS) \
  __launch_bounds__(MT_THREADS(BM, BN, WM, WN), MIN_BLOCKS)

template <int PREC> struct mt_types;
template <> struct mt_types<MT_TF32> { typedef float src; typedef unsigned elem; };
template <> struct mt_types<MT_BF16> { typedef unsigned short src; typedef unsigned short elem; };

template <int PREC>
struct mt_operand {
  const typename mt_types<PREC>::src* p;
  int rstride, kstride;  // operands hold < 2^31 elements (checked by the ops)
  const int* rtab;  // int4 per row: {offset, y, z, spare}
  const int* ktab;  // int4 per k
  int rows;         // valid rows are [0, rows)
  int H, W, st;     // window check
};

__device__ __forceinline__ int4 mt_entry(const int* tab, int i) {
  return __ldg(reinterpret_cast<const int4*>(tab) + i);
}

// Element (row, k) as the tile stores it: tf32 bits rounded by pa_cvt_tf32, or bf16 bits.
__device__ __forceinline__ unsigned mt_convert(float v) { return pa_cvt_tf32(v); }
__device__ __forceinline__ unsigned short mt_convert(unsigned short v) { return v; }

// One index's share of an element's address: offset and window position. `ok` is false for
// an index outside the operand (that element reads as zero, and no table is read for it).
struct mt_part {
  int off, y, z;
  bool ok;
};

template <int PREC, int SPEC>
__device__ __forceinline__ mt_part mt_row_part(const mt_operand<PREC>& o, int row) {
  mt_part p = {0, 0, 0, row < o.rows};
  if (p.ok) {
    if (SPEC & MT_ROW_TABLE) {
      const int4 e = mt_entry(o.rtab, row);
      p.off = e.x; p.y = e.y; p.z = e.z;
    } else {
      p.off = row * o.rstride;
    }
  }
  return p;
}

template <int PREC, int SPEC>
__device__ __forceinline__ mt_part mt_k_part(const mt_operand<PREC>& o, int k, int kend) {
  mt_part p = {0, 0, 0, k < kend};
  if (p.ok) {
    if (SPEC & MT_K_TABLE) {
      const int4 e = mt_entry(o.ktab, k);
      p.off = e.x; p.y = e.y; p.z = e.z;
    } else {
      p.off = k * o.kstride;
    }
  }
  return p;
}

template <int PREC, int SPEC>
__device__ __forceinline__ typename mt_types<PREC>::elem mt_fetch(const mt_operand<PREC>& o,
                                                                  const mt_part& r,
                                                                  const mt_part& k) {
  typedef typename mt_types<PREC>::src src;
  src v = (src)0;
  int off = r.off + k.off;
  const int y = r.y + k.y, z = r.z + k.z;
  bool ok = r.ok && k.ok;
  if (SPEC & MT_CHECK_WIN) ok = ok && (unsigned)y < (unsigned)o.H && (unsigned)z < (unsigned)o.W;
  if (SPEC & MT_CHECK_STRIDED) {
    const int py = y / o.st, pz = z / o.st;
    ok = ok && y >= 0 && z >= 0 && py * o.st == y && pz * o.st == z && py < o.H && pz < o.W;
    off += py * o.W + pz;
  }
  if (ok) v = __ldg(o.p + off);
  return mt_convert(v);
}

template <int PREC, int SPEC, int ROWS, int THREADS>
struct mt_tile {
  enum {
    BK = MT_BK(PREC),
    RFAST = SPEC & MT_RFAST,
    // row stride in elements; see the bank argument at the top
    STRIDE = RFAST ? ROWS + 8 : BK + (PREC == MT_BF16 ? 8 : 4),
    SIZE = RFAST ? BK * STRIDE : ROWS * STRIDE,
    PER_THREAD = ROWS * BK / THREADS,
  };
  static_assert(ROWS * BK % THREADS == 0, "tile elements must split evenly over the threads");
  static_assert(RFAST || ROWS % 8 == 0, "mt_elem_pos permutes rows in groups of 8");
};

// Tile position of this thread's i-th fetched element: consecutive threads take
// consecutive k (KFAST) or consecutive rows (RFAST). KFAST rows of a dense matrix: a
// warp's two half-warps take rows 4 apart (bits 0 and 2 of the row swapped), so their
// stores land 4 * 20 = 80 = 16 mod 32 banks apart (tf32) and do not conflict; adjacent
// rows are 20 words apart and share 4 banks, a 2-way conflict. Rows from a table (the
// filter gradient's window taps) stay adjacent: neighbouring taps read overlapping
// sectors, which saves more than the conflict costs.
template <int SPEC, int ROWS, int BK, int THREADS>
__device__ __forceinline__ void mt_elem_pos(int i, int& row, int& k) {
  const int e = threadIdx.x + i * THREADS;
  if (SPEC & MT_RFAST) { row = e % ROWS; k = e / ROWS; }
  else {
    const int q = e / BK;
    row = (SPEC & MT_ROW_TABLE) ? q : (q & ~5) | ((q & 1) << 2) | ((q >> 2) & 1);
    k = e % BK;
  }
}

// A thread's fetched elements between the global loads and the shared-memory stores:
// bf16 elements two to a register (half the registers of one each: the bf16 tile-128 data
// gradient, filter gradient and GEMM nn fit 128 registers, 2 blocks an SM).
// (Free functions, not members: the emulator compiles __device__ as `static inline`.)
template <int PREC, int N> struct mt_stage { unsigned w[N]; };
template <int N> struct mt_stage<MT_BF16, N> { unsigned w[(N + 1) / 2]; };
template <int PREC, int SPEC, int ROWS, int THREADS>
using mt_stage_of = mt_stage<PREC, mt_tile<PREC, SPEC, ROWS, THREADS>::PER_THREAD>;

template <int N>
__device__ __forceinline__ void mt_set(mt_stage<MT_TF32, N>& r, int i, unsigned v) { r.w[i] = v; }
template <int N>
__device__ __forceinline__ unsigned mt_get(const mt_stage<MT_TF32, N>& r, int i) { return r.w[i]; }
template <int N>
__device__ __forceinline__ void mt_set(mt_stage<MT_BF16, N>& r, int i, unsigned short v) {
  r.w[i / 2] = (i & 1) ? (r.w[i / 2] & 0xffffu) | ((unsigned)v << 16) : (unsigned)v;
}
template <int N>
__device__ __forceinline__ unsigned short mt_get(const mt_stage<MT_BF16, N>& r, int i) {
  return (unsigned short)((i & 1) ? r.w[i / 2] >> 16 : r.w[i / 2] & 0xffffu);
}

// This thread's share of one chunk. When every element a thread fetches has the same row
// (RFAST) or the same k (KFAST), that index's part (a table entry) is read once per chunk.
template <int PREC, int SPEC, int ROWS, int THREADS>
__device__ __forceinline__ void mt_load(const mt_operand<PREC>& o, int row0, int kt, int kend,
                                        mt_stage_of<PREC, SPEC, ROWS, THREADS>& r) {
  typedef mt_tile<PREC, SPEC, ROWS, THREADS> T;
  enum { ROW_FIXED = T::RFAST && THREADS % ROWS == 0, K_FIXED = !T::RFAST && THREADS % T::BK == 0 };
  int row, k;
  mt_elem_pos<SPEC, ROWS, T::BK, THREADS>(0, row, k);
  const mt_part rp0 = ROW_FIXED ? mt_row_part<PREC, SPEC>(o, row0 + row) : mt_part{0, 0, 0, false};
  const mt_part kp0 = K_FIXED ? mt_k_part<PREC, SPEC>(o, kt + k, kend) : mt_part{0, 0, 0, false};
#pragma unroll
  for (int i = 0; i < T::PER_THREAD; ++i) {
    mt_elem_pos<SPEC, ROWS, T::BK, THREADS>(i, row, k);
    const mt_part rp = ROW_FIXED ? rp0 : mt_row_part<PREC, SPEC>(o, row0 + row);
    const mt_part kp = K_FIXED ? kp0 : mt_k_part<PREC, SPEC>(o, kt + k, kend);
    mt_set(r, i, mt_fetch<PREC, SPEC>(o, rp, kp));
  }
}

template <int PREC, int SPEC, int ROWS, int THREADS>
__device__ __forceinline__ void mt_store(typename mt_types<PREC>::elem* s,
                                         const mt_stage_of<PREC, SPEC, ROWS, THREADS>& r) {
  typedef mt_tile<PREC, SPEC, ROWS, THREADS> T;
#pragma unroll
  for (int i = 0; i < T::PER_THREAD; ++i) {
    int row, k;
    mt_elem_pos<SPEC, ROWS, T::BK, THREADS>(i, row, k);
    s[T::RFAST ? k * T::STRIDE + row : row * T::STRIDE + k] = mt_get(r, i);
  }
}

// One fragment register: tf32 element (row, k), or the bf16 pair (row, k), (row, k + 1)
// with k even, the lower k in the low half.
template <int PREC, int RFAST, int STRIDE>
__device__ __forceinline__ unsigned mt_frag(const typename mt_types<PREC>::elem* s, int row, int k) {
  if (PREC == MT_TF32) return s[RFAST ? k * STRIDE + row : row * STRIDE + k];
  if (!RFAST) return *reinterpret_cast<const unsigned*>(s + row * STRIDE + k);  // 4-byte aligned
  return (unsigned)s[k * STRIDE + row] | ((unsigned)s[(k + 1) * STRIDE + row] << 16);
}

template <int PREC>
__device__ __forceinline__ void mt_mma(float d[4], const unsigned a[4], const unsigned b[2]) {
  if (PREC == MT_TF32) pa_mma_m16n8k8_tf32(d, a, b, d);
  else pa_mma_m16n8k16_bf16(d, a, b, d);
}

// Rows and columns (inside the block tile) of accumulator acc[mf][nf][i].
template <int BN, int WM, int WN>
__device__ __forceinline__ int mt_acc_row(int mf, int i) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  return (warp / (BN / WN)) * WM + mf * 16 + (lane >> 2) + 8 * (i >> 1);
}
template <int BN, int WM, int WN>
__device__ __forceinline__ int mt_acc_col(int nf, int i) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  return (warp % (BN / WN)) * WN + nf * 8 + 2 * (lane & 3) + (i & 1);
}

// Store a block's accumulators into a row-major rows x cols matrix (leading dimension ld)
// whose (0, 0) is the tile's (m0, n0) corner shifted to out, skipping what lies outside.
template <int BM, int BN, int WM, int WN>
__device__ __forceinline__ void mt_store_rows(const float (&acc)[WM / 16][WN / 8][4],
                                              float* __restrict__ out, long long ld, int m0,
                                              int n0, int rows, int cols) {
#pragma unroll
  for (int mf = 0; mf < WM / 16; ++mf)
#pragma unroll
    for (int nf = 0; nf < WN / 8; ++nf)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = m0 + mt_acc_row<BN, WM, WN>(mf, i), n = n0 + mt_acc_col<BN, WM, WN>(nf, i);
        if (m < rows && n < cols) out[(long long)m * ld + n] = acc[mf][nf][i];
      }
}

template <int PREC, int BM, int BN, int WM, int WN, int SPEC_A, int SPEC_B>
__device__ __forceinline__ void mt_mainloop(const mt_operand<PREC>& A, const mt_operand<PREC>& B,
                                            int m0, int n0, int kbeg, int kend,
                                            float acc[WM / 16][WN / 8][4]) {
  enum { THREADS = MT_THREADS(BM, BN, WM, WN), BK = MT_BK(PREC), KSTEP = MT_MMA_K(PREC),
         MF = WM / 16, NF = WN / 8 };
  typedef typename mt_types<PREC>::elem elem;
  typedef mt_tile<PREC, SPEC_A, BM, THREADS> TA;
  typedef mt_tile<PREC, SPEC_B, BN, THREADS> TB;
  __shared__ __align__(16) elem As[2][TA::SIZE];
  __shared__ __align__(16) elem Bs[2][TB::SIZE];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wm0 = (warp / (BN / WN)) * WM, wn0 = (warp % (BN / WN)) * WN;
#pragma unroll
  for (int mf = 0; mf < MF; ++mf)
#pragma unroll
    for (int nf = 0; nf < NF; ++nf)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mf][nf][i] = 0.0f;
  if (kbeg >= kend) return;

  mt_stage_of<PREC, SPEC_A, BM, THREADS> ra;
  mt_stage_of<PREC, SPEC_B, BN, THREADS> rb;
  mt_load<PREC, SPEC_A, BM, THREADS>(A, m0, kbeg, kend, ra);
  mt_load<PREC, SPEC_B, BN, THREADS>(B, n0, kbeg, kend, rb);
  int buf = 0;
  for (int kt = kbeg;; kt += BK) {
    mt_store<PREC, SPEC_A, BM, THREADS>(As[buf], ra);
    mt_store<PREC, SPEC_B, BN, THREADS>(Bs[buf], rb);
    __syncthreads();
    const bool more = kt + BK < kend;
    if (more) {  // in flight during the mma below
      mt_load<PREC, SPEC_A, BM, THREADS>(A, m0, kt + BK, kend, ra);
      mt_load<PREC, SPEC_B, BN, THREADS>(B, n0, kt + BK, kend, rb);
    }
#pragma unroll
    for (int ks = 0; ks < BK; ks += KSTEP) {
      // b for the whole warp tile, a one row of mma tiles at a time: 4 fragment registers
      // live instead of 4 MF, so more kernels fit MT_LAUNCH_BOUNDS' 128 registers
      unsigned b[NF][2];
#pragma unroll
      for (int nf = 0; nf < NF; ++nf)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int col = wn0 + nf * 8 + g;
          const int k = PREC == MT_TF32 ? ks + t + 4 * i : ks + 2 * t + 8 * i;
          b[nf][i] = mt_frag<PREC, TB::RFAST, TB::STRIDE>(Bs[buf], col, k);
        }
#pragma unroll
      for (int mf = 0; mf < MF; ++mf) {
        unsigned a[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = wm0 + mf * 16 + g + 8 * (i & 1);
          const int k = PREC == MT_TF32 ? ks + t + 4 * (i >> 1) : ks + 2 * t + 8 * (i >> 1);
          a[i] = mt_frag<PREC, TA::RFAST, TA::STRIDE>(As[buf], row, k);
        }
#pragma unroll
        for (int nf = 0; nf < NF; ++nf) mt_mma<PREC>(acc[mf][nf], a, b[nf]);
      }
    }
    if (!more) break;
    buf ^= 1;
  }
}
