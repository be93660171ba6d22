// Kernels whose memory traffic is known exactly, for the emulator's profiler
// (tests/test_profiler.py). Each is one warp instruction per thread unless noted.
#include "mma.cuh"  // and common.cuh

// Thread i loads x[i * stride]: stride 1 is one 128-byte line per warp (4 sectors), stride
// 32 is 32 sectors (one 4-byte word in each). The store y[i] is unit stride either way.
extern "C" __global__ void prof_strided_load(const float* x, float* y, int stride) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  y[i] = x[i * stride];
}

// One float4 per thread: 512 bytes per warp, 16 sectors, all bytes used.
extern "C" __global__ void prof_float4_copy(const float* x, float* y) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  reinterpret_cast<float4*>(y)[i] = reinterpret_cast<const float4*>(x)[i];
}

// An int4 table entry read with __ldg, its fields then used one by one (the conv gathers'
// tables): still one 16-byte load per thread, 16 sectors per warp, as the GPU's LDG.128.
extern "C" __global__ void prof_int4_fields(const int* tab, int* y) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int4 e = __ldg(reinterpret_cast<const int4*>(tab) + i);
  y[i] = e.x * 3 + e.y * 5 + e.z * 7;
}

// Shared memory read at word i * stride (mod 1024): stride 1 conflict-free, 2 two-way,
// 32 thirty-two-way; stride 0 is a broadcast (one word for every lane), no conflict.
extern "C" __global__ void prof_shared_stride(float* y, int stride) {
  __shared__ float s[1024];
  for (int k = threadIdx.x; k < 1024; k += blockDim.x) s[k] = (float)k;
  __syncthreads();
  y[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x * stride) & 1023];
}

// One float atomic per thread on one counter.
extern "C" __global__ void prof_atomic(float* sum) { atomicAdd(sum, 1.0f); }

// n fused multiply-adds per thread (2 FLOPs each), then n multiplies and n adds.
extern "C" __global__ void prof_flops(const float* x, float* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  float acc = 0.0f, sq = 0.0f;
  for (int k = 0; k < n; ++k) acc = fmaf(x[k], 2.0f, acc);
  for (int k = 0; k < n; ++k) sq += x[k] * x[k];
  y[i] = acc + sq;
}

// Lanes below `active` of each warp sum n values, the rest skip the loop: the same code
// for every `active`, so only the counts of its basic blocks change.
extern "C" __global__ void prof_divergent_loop(const float* x, float* y, int n, int active) {
  const int reps = (int)(threadIdx.x % 32) < active ? n : 0;
  float acc = 0.0f;
  for (int k = 0; k < reps; ++k) acc += x[k];
  y[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

// A grid-stride loop over n = 32 * trips floats with one warp: on trip t lane l copies
// x[32t + l] when (l + t) is even, else writes -1. The load is skipped by half the lanes on
// every trip, a different half each time; the GPU issues it once a trip, for the lanes
// taking it, so each request touches the 4 sectors of that trip's 128 bytes.
extern "C" __global__ void prof_masked_trips(const float* x, float* y, int n) {
  for (int i = threadIdx.x; i < n; i += 32) {
    if (((i & 31) + i / 32) % 2 == 0) y[i] = x[i];
    else y[i] = -1.0f;
  }
}

// One warp, `trips` trips of an outer loop; inside, lane l runs inner[l] trips (1 + l % 2,
// read from memory so that the compiler keeps a loop) of an inner loop, each reading
// x[64 t + 32 i + l]. The warp runs inner trip 0 for all lanes and trip 1 for the odd ones:
// two requests of 4 sectors per outer trip. Counting each lane's executions of the load
// would pair an even lane's outer trip k with an odd lane's inner trip k % 2 of outer trip
// k / 2; counting each lane's jumps back would leave the odd lanes ever further ahead.
extern "C" __global__ void prof_uneven_inner_trips(const float* x, const int* inner, float* y,
                                                   int trips) {
  const int lane = threadIdx.x, n = inner[lane];
  float s = 0.0f;
  for (int t = 0; t < trips; ++t)
    for (int i = 0; i < n; ++i) s += x[64 * t + 32 * i + lane];
  y[lane] = s;
}

// n tensor-core mma per warp on operands held in registers (tf32 m16n8k8 when bf16 is 0,
// else bf16 m16n8k16): each is one mma instruction of 2*16*8*K FLOPs, no shared memory.
extern "C" __global__ void prof_mma_chain(const float* x, float* y, int n, int bf16) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x & 31;
  const float v = x[lane];
  unsigned a[4], b[2];
  for (int k = 0; k < 4; ++k) a[k] = bf16 ? pa_pack_bf16x2(v, v) : pa_cvt_tf32(v);
  for (int k = 0; k < 2; ++k) b[k] = a[k];
  float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int k = 0; k < n; ++k) {
    if (bf16) pa_mma_m16n8k16_bf16(d, a, b, d);
    else pa_mma_m16n8k8_tf32(d, a, b, d);
  }
  y[i] = d[0];
}

// Each block's one warp reads x[0, n) `passes` times over, lane l the floats l, l + 32, ...
extern "C" __global__ void prof_passes(const float* x, float* y, int n, int passes) {
  float s = 0.0f;
  for (int p = 0; p < passes; ++p)
    for (int i = threadIdx.x; i < n; i += 32) s += x[i];
  y[blockIdx.x * 32 + threadIdx.x] = s;
}

// One warp: lanes 0-15 load x[8 l] (one sector each) before a barrier, then every lane
// loads x[8 l]. The first load is a partial warp instruction (16 sectors), finished at the
// barrier that no lane can pass back over: the second request then re-reads its 16
// sectors at reuse distance 15 and loads 16 new ones.
extern "C" __global__ void prof_partial_before_barrier(const float* x, float* y) {
  const int l = threadIdx.x;
  float s = 0.0f;
  if (l < 16) s = x[8 * l];
  __syncthreads();
  y[l] = s + x[8 * l];
}
