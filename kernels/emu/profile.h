// The emulator as a profiler: what a launch's memory accesses would cost on a GPU.
//
// Only the profiling build (pyalexnet._emu_profile, clang) has it. That build compiles the
// kernel translation unit with -fsanitize-coverage=trace-loads,trace-stores, so every load
// and store in kernel code calls back here with its address; the return address of the
// callback names the access site (one machine instruction of the CPU build, standing for
// one instruction of the GPU build). The callback sorts each access by address space:
//   shared  - inside this OS thread's TLS block (`__shared__` is `thread_local`);
//   global  - inside an array argument of the launch;
//   other   - fiber stacks (locals, register tiles), the runtime's own data: ignored.
// A warp instruction is the set of accesses of one warp's lanes with the same site, on
// the same trips of the loops around it and with the same occurrence count of that site
// within them (the k-th time each lane executed it there). The loops are the natural loops
// of the build's machine code (kernels/emu/build.py, loop_heads), so a load that some lanes
// skip on some trips still groups by trip, and lanes whose inner loops ran different trip
// counts meet again on the outer loop's, as a warp runs each trip for all its lanes at
// once. Lanes that diverge otherwise form their own (partial) instructions, as the GPU
// replays a diverged instruction per path.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace cuemu {
namespace prof {

enum { LOAD = 0, STORE = 1 };
enum { MMA_TF32 = 0, MMA_BF16 = 1, MMA_FORMATS = 2 };
// Reuse distance buckets: 0 holds distance 0, bucket b >= 1 distances in [2^(b-1), 2^b).
enum { REUSE_BUCKETS = 40 };

struct Buffer {
  uintptr_t lo, hi;  // [lo, hi)
  int arg;           // argument index
};

struct Counters {
  // [LOAD], [STORE]
  uint64_t g_requests[2] = {}, g_sectors[2] = {}, g_bytes[2] = {};
  uint64_t s_requests[2] = {}, s_wavefronts[2] = {}, s_ideal[2] = {}, s_bytes[2] = {};
  uint64_t barriers = 0, atomics_global = 0, atomics_shared = 0, blocks = 0;
  // tensor-core mma instructions (one per warp) and their FLOPs, per operand format
  uint64_t mma[MMA_FORMATS] = {}, tensor_flops[MMA_FORMATS] = {};
  // Global load sectors by reuse distance within their block: the distinct sectors (of
  // any array) the block loaded since it last loaded this one (LRU stack distance, so an
  // LRU cache of C sectors per block hits exactly the loads at distance < C); first loads
  // of a sector in the block are `load_first`.
  uint64_t load_reuse[REUSE_BUCKETS] = {}, load_first = 0;
  void add(const Counters& o);
};

struct ArrayTraffic {
  int arg;
  uint64_t bytes;
  uint64_t unique_sectors[2];     // distinct 32-byte sectors touched by the blocks run
  uint64_t block_unique_sectors[2];  // distinct within each block, summed over the blocks
  uint64_t requested_sectors[2];  // sectors of all its warp requests (with repeats)
};

struct Result {
  Counters c;
  int64_t flops = -1;  // -1: this build has no FLOP table
  // Machine instructions of the CPU build standing for the GPU's (-1: no table): summed
  // over threads, and over warps (a warp runs a basic block as often as its busiest lane).
  int64_t thread_instructions = -1, warp_instructions = -1;
  std::vector<ArrayTraffic> arrays;
};

// On the launching thread, around cuemu::launch(); one profiled launch at a time.
void launch_begin(const std::vector<Buffer>& buffers);
Result launch_end();

// Called by the runtime on each worker OS thread.
void worker_begin();
void block_begin(int nthreads);
void block_end();
void barrier();
void worker_end();

// An atomic operation of the current thread: counted once; the loads and stores inside
// its emulation are not memory requests of their own.
struct AtomicScope {
  explicit AtomicScope(const void* p);
  ~AtomicScope();
};

// One warp's tensor-core mma of `format` and its FLOPs (2 per multiply-add): counted once
// per warp by its emulation (kernels/emu/mma.cpp, not instrumented: the GPU runs one
// instruction, so the emulation's own work is none of the kernel's).
void mma_tile(int format, uint64_t flops);

}  // namespace prof
}  // namespace cuemu
