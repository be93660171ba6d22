// Emulation of the tensor-core dialect of kernels/mma.cuh: included by it when compiling for
// the CPU, after cuda_emu.h (so no headers of its own: setup.py preprocesses kernel files
// without system headers).
//
// pa_mma_* is a warp-wide operation. Each lane copies its fragments into a per-block slot
// table and waits at a warp barrier (the runtime's __syncwarp machinery, which fails when a
// lane of the warp has exited or waits elsewhere). The lane that arrives last -- it sees
// every other lane of its warp already waiting at this call site -- computes the whole
// tile from the slots, through the documented fragment layout, and writes each lane's four
// outputs into its slot; after the barrier every lane reads its own. One barrier per mma,
// and no state outlives a call: a lane rewrites its slot only after it has read its result.
//
// Arithmetic: TF32 and BF16 products are exact in fp32 (at most 22 significant bits), so
// each output is c + sum_k a_k b_k summed in fp32 in k order: fp32 accumulation.
//
// Contract checks (a violation turns the tile into NaN: a fiber cannot raise, and NaN fails
// every comparison loudly): a full warp, all lanes at the same call site and shape (a
// divergent warp leaves the tile uncomputed: NaN), and TF32 operands that are TF32 values (low 13 bits zero, as pa_cvt_tf32 makes them).
#pragma once

struct cuemu_mma_lane {
  unsigned a[4], b[2];
  float c[4], out[4];
  int shape;
  bool done;  // set by the lane that computed the tile
};

struct cuemu_mma_table {
  cuemu_mma_lane slot[1024];
};

// One table per OS thread = per running block (blocks do not migrate between OS threads).
static inline cuemu_mma_table& cuemu_mma_tables() {
  static thread_local cuemu_mma_table t;
  return t;
}

enum { CUEMU_MMA_TF32_K8 = 1, CUEMU_MMA_BF16_K16 = 2 };

// Element (row, k) of A and (k, col) of B as fp32, read from the owning lane's slot.
static inline float cuemu_mma_a(const cuemu_mma_lane* w, int shape, int row, int k, bool& bad) {
  if (shape == CUEMU_MMA_TF32_K8) {
    const unsigned v = w[(row & 7) * 4 + (k & 3)].a[(row >> 3) + 2 * (k >> 2)];
    bad |= (v & 0x1fffu) != 0;
    return __uint_as_float(v);
  }
  const unsigned v = w[(row & 7) * 4 + ((k & 7) >> 1)].a[(row >> 3) + 2 * (k >> 3)];
  return __uint_as_float((k & 1 ? v >> 16 : v & 0xffffu) << 16);
}

static inline float cuemu_mma_b(const cuemu_mma_lane* w, int shape, int k, int col, bool& bad) {
  if (shape == CUEMU_MMA_TF32_K8) {
    const unsigned v = w[col * 4 + (k & 3)].b[k >> 2];
    bad |= (v & 0x1fffu) != 0;
    return __uint_as_float(v);
  }
  const unsigned v = w[col * 4 + ((k & 7) >> 1)].b[k >> 3];
  return __uint_as_float((k & 1 ? v >> 16 : v & 0xffffu) << 16);
}

// The whole 16 x 8 tile from the 32 slots of warp w; `lanes` of them exist.
static inline void cuemu_mma_tile(cuemu_mma_lane* w, int lanes, int shape) {
  bool bad = lanes != 32;
  for (int j = 0; j < lanes; ++j) bad |= w[j].shape != shape;
  const int kdim = shape == CUEMU_MMA_TF32_K8 ? 8 : 16;
  float a[16][16], b[16][8];
  if (!bad) {
    for (int row = 0; row < 16; ++row)
      for (int k = 0; k < kdim; ++k) a[row][k] = cuemu_mma_a(w, shape, row, k, bad);
    for (int k = 0; k < kdim; ++k)
      for (int col = 0; col < 8; ++col) b[k][col] = cuemu_mma_b(w, shape, k, col, bad);
  }
  for (int lane = 0; lane < lanes; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
      float acc = w[lane].c[i];
      if (!bad)
        for (int k = 0; k < kdim; ++k) acc += a[row][k] * b[k][col];
      w[lane].out[i] = bad ? __uint_as_float(0x7fc00000u) : acc;
    }
    w[lane].done = true;
  }
}

static inline void cuemu_mma(int shape, float d[4], const unsigned a[4], const unsigned b[2],
                             const float c[4], const char* file, int line) {
  ::cuemu::ThreadCtx* self = ::cuemu::tls_cur.thread;
  const int me = self->linear, lane = me & 31;
  cuemu_mma_lane* w = &cuemu_mma_tables().slot[me - lane];
  cuemu_mma_lane& mine = w[lane];
  for (int i = 0; i < 4; ++i) mine.a[i] = a[i], mine.c[i] = c[i];
  mine.b[0] = b[0];
  mine.b[1] = b[1];
  mine.shape = shape;
  mine.done = false;
  // The block's threads are consecutive ThreadCtx entries (runtime.cpp), so the other lanes
  // of this warp are self[j - lane].
  const dim3 bd = ::cuemu::tls_cur.block_dim;
  const int lanes = min(32, (int)(bd.x * bd.y * bd.z) - (me - lane));
  bool last = true;
  for (int j = 0; j < lanes && last; ++j) {
    if (j == lane) continue;
    const ::cuemu::ThreadCtx& o = self[j - lane];
    last = o.state == ::cuemu::WARP_WAIT && o.wop == ::cuemu::SYNCWARP && o.line == line &&
           std::strcmp(o.file, file) == 0;
  }
  if (last) cuemu_mma_tile(w, lanes, shape);
  ::cuemu::WarpSite{file, line}.syncwarp(0xffffffffu);
  // Nobody computed when the warp's lanes met at different call sites (divergent mma).
  for (int i = 0; i < 4; ++i) d[i] = mine.done ? mine.out[i] : __uint_as_float(0x7fc00000u);
}

static inline void pa_mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2],
                                       const float c[4], const char* file = __builtin_FILE(),
                                       int line = __builtin_LINE()) {
  cuemu_mma(CUEMU_MMA_TF32_K8, d, a, b, c, file, line);
}

static inline void pa_mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                                        const float c[4], const char* file = __builtin_FILE(),
                                        int line = __builtin_LINE()) {
  cuemu_mma(CUEMU_MMA_BF16_K16, d, a, b, c, file, line);
}

// cvt.rna.tf32.f32: add half an ulp of the 10-bit mantissa to the magnitude and truncate
// (ties away from zero; overflow rounds to infinity). NaN stays a quiet NaN.
static inline unsigned pa_cvt_tf32(float x) {
  const unsigned u = __float_as_uint(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) ? 0x7fffe000u : u;
  return (u + 0x1000u) & 0xffffe000u;
}

// cvt.rn.bf16.f32: round to nearest, ties to even. NaN -> the canonical bf16 NaN.
static inline unsigned short pa_f32_to_bf16(float x) {
  const unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)0x7fffu;
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline unsigned pa_pack_bf16x2(float lo, float hi) {
  return (unsigned)pa_f32_to_bf16(lo) | ((unsigned)pa_f32_to_bf16(hi) << 16);
}
