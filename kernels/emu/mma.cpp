// Emulation of a tensor-core mma (the dialect of kernels/mma.cuh; the kernels reach it
// through kernels/emu/mma_emu.cuh). It lives here, outside the kernel unit, so the
// profiling build does not count its work as the kernel's: the GPU runs one mma
// instruction, and the profiler counts one per warp with its FLOPs (prof::mma_tile).
//
// Each lane copies its fragments into a per-block slot table and waits at a warp barrier
// (the runtime's __syncwarp machinery, which fails when a lane of the warp has exited or
// waits elsewhere). The lane that arrives last -- it sees every other lane of its warp
// already waiting at this call site -- computes the whole tile from the slots, through the
// documented fragment layout, and writes each lane's four outputs into its slot; after the
// barrier every lane reads its own. One barrier per mma, and no state outlives a call: a
// lane rewrites its slot only after it has read its result.
//
// Arithmetic: TF32 and BF16 products are exact in fp32 (at most 22 significant bits), so
// each output is c + sum_k a_k b_k summed in fp32 in k order: fp32 accumulation.
//
// Contract checks (a violation turns the tile into NaN: a fiber cannot raise, and NaN fails
// every comparison loudly): a full warp, all lanes at the same call site and shape (a
// divergent warp leaves the tile uncomputed: NaN), and TF32 operands that are TF32 values
// (low 13 bits zero, as pa_cvt_tf32 makes them).
#include <algorithm>
#include <cstring>

#include "runtime.h"
#ifdef CUEMU_PROFILE
#include "profile.h"
#endif

namespace cuemu {
namespace {

struct MmaLane {
  unsigned a[4], b[2];
  float c[4], out[4];
  int shape;
  bool done;  // set by the lane that computed the tile
};

// One table per OS thread = per running block (blocks do not migrate between OS threads).
thread_local MmaLane tls_slots[1024];

float bits_to_float(unsigned v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}

// Element (row, k) of A and (k, col) of B as fp32, read from the owning lane's slot.
float element_a(const MmaLane* w, int shape, int row, int k, bool& bad) {
  if (shape == MMA_TF32_M16N8K8) {
    const unsigned v = w[(row & 7) * 4 + (k & 3)].a[(row >> 3) + 2 * (k >> 2)];
    bad |= (v & 0x1fffu) != 0;
    return bits_to_float(v);
  }
  const unsigned v = w[(row & 7) * 4 + ((k & 7) >> 1)].a[(row >> 3) + 2 * (k >> 3)];
  return bits_to_float((k & 1 ? v >> 16 : v & 0xffffu) << 16);
}

float element_b(const MmaLane* w, int shape, int k, int col, bool& bad) {
  if (shape == MMA_TF32_M16N8K8) {
    const unsigned v = w[col * 4 + (k & 3)].b[k >> 2];
    bad |= (v & 0x1fffu) != 0;
    return bits_to_float(v);
  }
  const unsigned v = w[col * 4 + ((k & 7) >> 1)].b[k >> 3];
  return bits_to_float((k & 1 ? v >> 16 : v & 0xffffu) << 16);
}

// The whole 16 x 8 tile from the 32 slots of warp w; `lanes` of them exist.
void compute_tile(MmaLane* w, int lanes, int shape) {
  bool bad = lanes != 32;
  for (int j = 0; j < lanes; ++j) bad |= w[j].shape != shape;
  const int kdim = shape == MMA_TF32_M16N8K8 ? 8 : 16;
  float a[16][16], b[16][8];
  if (!bad) {
    for (int row = 0; row < 16; ++row)
      for (int k = 0; k < kdim; ++k) a[row][k] = element_a(w, shape, row, k, bad);
    for (int k = 0; k < kdim; ++k)
      for (int col = 0; col < 8; ++col) b[k][col] = element_b(w, shape, k, col, bad);
  }
  for (int lane = 0; lane < lanes; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
      float acc = w[lane].c[i];
      if (!bad)
        for (int k = 0; k < kdim; ++k) acc += a[row][k] * b[k][col];
      w[lane].out[i] = bad ? bits_to_float(0x7fc00000u) : acc;
    }
    w[lane].done = true;
  }
}

}  // namespace

void mma(int shape, float d[4], const unsigned a[4], const unsigned b[2], const float c[4],
         const char* file, int line) {
  ThreadCtx* self = tls_cur.thread;
  const int me = self->linear, lane = me & 31;
  MmaLane* w = &tls_slots[me - lane];
  MmaLane& mine = w[lane];
  for (int i = 0; i < 4; ++i) mine.a[i] = a[i], mine.c[i] = c[i];
  mine.b[0] = b[0];
  mine.b[1] = b[1];
  mine.shape = shape;
  mine.done = false;
  // The block's threads are consecutive ThreadCtx entries (runtime.cpp), so the other lanes
  // of this warp are self[j - lane].
  const dim3 bd = tls_cur.block_dim;
  const int lanes = std::min(32, (int)(bd.x * bd.y * bd.z) - (me - lane));
  bool last = true;
  for (int j = 0; j < lanes && last; ++j) {
    if (j == lane) continue;
    const ThreadCtx& o = self[j - lane];
    last = o.state == WARP_WAIT && o.wop == SYNCWARP && o.line == line &&
           std::strcmp(o.file, file) == 0;
  }
  if (last) {
    compute_tile(w, lanes, shape);
#ifdef CUEMU_PROFILE
    const bool tf32 = shape == MMA_TF32_M16N8K8;
    prof::mma_tile(tf32 ? prof::MMA_TF32 : prof::MMA_BF16, 2ull * 16 * 8 * (tf32 ? 8 : 16));
#endif
  }
  WarpSite{file, line}.syncwarp(0xffffffffu);
  // Nobody computed when the warp's lanes met at different call sites (divergent mma).
  for (int i = 0; i < 4; ++i) d[i] = mine.done ? mine.out[i] : bits_to_float(0x7fc00000u);
}

}  // namespace cuemu
