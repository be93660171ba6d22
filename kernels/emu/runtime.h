// The CUDA host-emulation runtime: what the dialect macros of cuda_emu.h call into.
//
// Model: one fiber per CUDA thread; one OS thread runs one block at a time, so block
// shared memory can be thread_local; blocks run in parallel on several OS threads.
// Threads of a block run as a plain loop until one reaches a barrier (a finished thread
// gives its stack to the next), then as fibers resumed in a selectable order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

// Largest dynamic shared memory a launch may ask for (an sm_90 block's opt-in limit).
#define CUEMU_MAX_DYN_SMEM 232448

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuemu {

enum ThreadState { NOT_STARTED, READY, BAR_WAIT, WARP_WAIT, DONE };
enum WarpOp { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, VOTE_BALLOT, VOTE_ANY, VOTE_ALL, SYNCWARP };

struct Stack;

struct ThreadCtx {
  uint3 tid;
  int linear;
  int state;
  void* sp;            // saved stack pointer (asm switch) while suspended
  void* uctx;          // ucontext_t* (portable switch)
  Stack* stack;
  // where it waits
  const char* file;
  int line;
  // warp operation in flight
  int wop;
  unsigned wmask;
  unsigned long long wval;
  int warg, wwidth;
  unsigned long long wresult;
  void* asan_fake;     // AddressSanitizer's fake stack while suspended (ASan builds only)
};

struct Current {
  ThreadCtx* thread;
  uint3 block_idx;
  dim3 block_dim, grid_dim;
};
extern thread_local Current tls_cur;

void syncthreads(const char* file, int line);
unsigned long long warp_exchange(int op, unsigned mask, unsigned long long bits, int arg, int width,
                                 const char* file, int line);

// The source location of a warp operation, for error messages; its methods are the
// operations themselves.
struct WarpSite {
  const char* file;
  int line;
  template <class T>
  T shfl(int op, unsigned mask, T v, int arg, int width = 32) const {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 64 bits");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = warp_exchange(op, mask, bits, arg, width, file, line);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
  }
  unsigned vote(int op, unsigned mask, int pred) const {
    return (unsigned)warp_exchange(op, mask, pred ? 1 : 0, 0, 32, file, line);
  }
  void syncwarp(unsigned mask = 0xffffffffu) const {
    warp_exchange(SYNCWARP, mask, 0, 0, 32, file, line);
  }
};

// A warp's tensor-core mma (kernels/mma.cuh's pa_mma_*, emulated in mma.cpp): every lane
// calls it with its fragments; d = a * b + c with fp32 accumulation, d may be c.
enum MmaShape { MMA_TF32_M16N8K8 = 1, MMA_BF16_M16N8K16 = 2 };
void mma(int shape, float d[4], const unsigned a[4], const unsigned b[2], const float c[4],
         const char* file, int line);

// Thread order between barriers.
enum Order { FORWARD = 0, REVERSE = 1, RANDOM = 2 };

struct LaunchOptions {
  int threads = 1;       // OS threads running blocks in parallel
  int order = FORWARD;
  unsigned long long seed = 0;
  // Run only this many blocks, evenly spaced over the grid (0: all). The profiler samples
  // a grid this way; the results of the blocks not run are missing.
  unsigned long long max_blocks = 0;
};

// Runs body() once per CUDA thread of the grid. Throws std::runtime_error on a divergent
// barrier, a warp operation that can never complete, or a fault (segmentation fault, a
// fiber stack overflow, a C++ exception) inside a kernel: none of them ends the process. Returns the most fiber stacks one
// block held at once: 1 means every thread ran straight through (no barrier reached).
int launch(const std::string& name, const std::function<void()>& body, dim3 grid, dim3 block,
            const LaunchOptions& opt);

// "asm" (hand-written x86-64 switch) or "ucontext" (portable). Returns false if unknown.
bool set_switch(const std::string& kind);
std::string get_switch();

// Bytes of each fiber's stack (kernels keep their register tiles on it).
size_t fiber_stack_bytes();

}  // namespace cuemu
