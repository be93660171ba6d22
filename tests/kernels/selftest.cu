// Kernels that prove the emulator itself (tests/test_emulator.py). Only the test suite's
// own emulator builds have them (kernels/emu/build.py: test_module), never pyalexnet._emu.
// They are plain CUDA and compile with nvcc (-I kernels) too.
#include "common.cuh"

#define ST_TILE 16

// C = A @ B for n x n matrices with 16x16 shared-memory tiles. With SYNC_AFTER_LOAD false
// the barrier between loading a tile and using it is missing: a data race that forward
// order may hide, but reverse or random thread order exposes.
template <bool SYNC_AFTER_LOAD>
__device__ __forceinline__ void st_tiled_matmul(const float* A, const float* B, float* C, int n) {
  __shared__ float As[ST_TILE][ST_TILE];
  __shared__ float Bs[ST_TILE][ST_TILE];
  int tx = threadIdx.x, ty = threadIdx.y;
  int row = blockIdx.y * ST_TILE + ty, col = blockIdx.x * ST_TILE + tx;
  float acc = 0.0f;
  for (int t = 0; t < n; t += ST_TILE) {
    As[ty][tx] = (row < n && t + tx < n) ? A[row * n + t + tx] : 0.0f;
    Bs[ty][tx] = (t + ty < n && col < n) ? B[(t + ty) * n + col] : 0.0f;
    if (SYNC_AFTER_LOAD) __syncthreads();
    for (int k = 0; k < ST_TILE; ++k) acc += As[ty][k] * Bs[k][tx];
    __syncthreads();
  }
  if (row < n && col < n) C[row * n + col] = acc;
}

extern "C" __global__ void selftest_tiled_matmul(const float* A, const float* B, float* C, int n) {
  st_tiled_matmul<true>(A, B, C, n);
}

extern "C" __global__ void selftest_tiled_matmul_missing_barrier(const float* A, const float* B,
                                                                 float* C, int n) {
  st_tiled_matmul<false>(A, B, C, n);
}

// Only even warps reduce with shuffles; odd warps take a plain loop. Shuffles are
// barriers among the lanes of one warp only, so this must not hang or mix warps.
extern "C" __global__ void selftest_some_warps_shuffle(const float* x, float* out) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float v = x[blockIdx.x * blockDim.x + threadIdx.x];
  if (warp % 2 == 0) {
    v = pa_warp_sum(v);
    if (lane == 0) out[blockIdx.x * (blockDim.x / 32) + warp] = v;
  } else if (lane == 0) {
    float s = 0.0f;
    for (int i = 0; i < 32; ++i) s += x[blockIdx.x * blockDim.x + warp * 32 + i];
    out[blockIdx.x * (blockDim.x / 32) + warp] = s;
  }
}

// Every warp operation, so the emulator's results can be compared with their definitions.
// out has 7 ints per thread.
extern "C" __global__ void selftest_warp_ops(const int* x, int* out, int delta, int width) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  int v = x[i];
  int* o = out + 7 * i;
  o[0] = __shfl_sync(PA_FULL_MASK, v, delta, width);
  o[1] = __shfl_up_sync(PA_FULL_MASK, v, delta, width);
  o[2] = __shfl_down_sync(PA_FULL_MASK, v, delta, width);
  o[3] = __shfl_xor_sync(PA_FULL_MASK, v, delta, width);
  o[4] = (int)__ballot_sync(PA_FULL_MASK, v & 1);
  o[5] = __any_sync(PA_FULL_MASK, v > 1000);
  o[6] = __all_sync(PA_FULL_MASK, v >= 0);
  __syncwarp();
}

// Threads of the first half-warp wait at one barrier, the rest at another: a bug the
// emulator must report with both lines.
extern "C" __global__ void selftest_divergent_barrier(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
    out[threadIdx.x] = 1.0f;
  } else {
    __syncthreads();
    out[threadIdx.x] = 2.0f;
  }
}

// Threads past n exit before the barrier; the live ones all reach it: allowed.
extern "C" __global__ void selftest_early_exit_barrier(const float* x, float* y, int n) {
  __shared__ float s[256];
  int i = threadIdx.x;
  if (i >= n) return;
  s[i] = x[i];
  __syncthreads();
  y[i] = s[n - 1 - i];
}

// Every thread of every block adds 1 to an int counter and 1.0f to a float sum; each
// block also writes its own slot without atomics.
extern "C" __global__ void selftest_atomics(int* counter, float* fsum, int* per_block) {
  atomicAdd(counter, 1);
  atomicAdd(fsum, 1.0f);
  if (threadIdx.x == 0) per_block[blockIdx.x] = (int)(blockIdx.x * 7 + 3);
}

// A reversal through dynamic shared memory declared inside a function template, as the
// storage-typed kernels declare it. When such a declaration is the unit's first of the
// name (hence a name of its own here), g++ calls a TLS init function that does not exist,
// a null call, unless built with -fno-extern-tls-init (kernels/emu/build.py).
template <class T>
__device__ __forceinline__ void selftest_reverse_in_shared(const T* x, T* y, int n) {
  extern __shared__ __align__(16) float selftest_template_smem[];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  selftest_template_smem[threadIdx.x] = i < n ? (float)x[i] : 0.0f;
  __syncthreads();
  if (i < n) y[i] = (T)selftest_template_smem[blockDim.x - 1 - threadIdx.x];
}

extern "C" __global__ void selftest_dynamic_shared_in_template(const int* x, int* y, int n) {
  selftest_reverse_in_shared(x, y, n);
}

// Reverses each block's slice through dynamic shared memory, then sums it with a
// block reduction: exercises extern __shared__ and pa_block_sum.
extern "C" __global__ void selftest_dynamic_shared(const float* x, float* y, float* sums, int n) {
  extern __shared__ __align__(16) float pa_smem[];
  int base = blockIdx.x * blockDim.x, i = base + threadIdx.x;
  pa_smem[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
  int j = blockDim.x - 1 - threadIdx.x;
  if (i < n) y[i] = pa_smem[j];
  float total = pa_block_sum(pa_smem[threadIdx.x], pa_smem + blockDim.x);
  if (threadIdx.x == 0) sums[blockIdx.x] = total;
}

// Writes each thread's coordinates: the geometry of 3-D grids and blocks.
extern "C" __global__ void selftest_geometry(int* out) {
  int bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  int tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int i = bx * (blockDim.x * blockDim.y * blockDim.z) + tx;
  int* o = out + 6 * i;
  o[0] = blockIdx.x; o[1] = blockIdx.y; o[2] = blockIdx.z;
  o[3] = threadIdx.x; o[4] = threadIdx.y; o[5] = threadIdx.z;
}

// Writes y[i] for i in [0, n + extra): with extra > 0, past the end of y (a bug the
// emulator's bounds check must report).
extern "C" __global__ void selftest_write_past_end(float* y, int n, int extra) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n + extra) y[i] = 1.0f;
}

// Writes far outside any array: a segmentation fault on the CPU, which the emulator must
// report as a kernel error instead of ending the process.
extern "C" __global__ void selftest_segfault(float* y, long long offset) {
  if (threadIdx.x == 5) y[offset] = 1.0f;
}

// Recurses with a kilobyte per frame: past the fiber's stack for a large depth.
__device__ __noinline__ int st_recurse(int depth, volatile char* prev) {
  volatile char frame[1024];
  frame[0] = (char)depth;
  frame[1023] = prev ? prev[0] : 0;
  return depth <= 0 ? frame[0] + frame[1023] : st_recurse(depth - 1, frame) + 1;
}

extern "C" __global__ void selftest_deep_recursion(int* out, int depth) {
  out[threadIdx.x] = st_recurse(depth, nullptr);
}
