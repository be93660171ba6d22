// Probes of the device, not of AlexNet: the rates and latencies that the emulator's H200
// model (benchmarks/emu_model.py) otherwise assumes, measured by benchmarks/bench_device.py.
//   probe_read_<ILP>  memory read rate against the loads a warp keeps in flight: each
//                     thread has ILP independent 4-byte loads outstanding per step (a warp
//                     request is 128 bytes, as in most of our kernels);
//   probe_chase       latency: one thread follows a chain of indices (each load's address
//                     is the previous load's value);
//   probe_fma         FP32 FMA rate (8 independent chains per thread);
//   probe_smem        shared-memory rate in conflict-free 4-byte wavefronts;
//   probe_mma_*       the tensor-core rate of the mma.sync shapes our kernels use.
// Every probe writes a result that depends on all its work, so nothing is optimised
// away, and that the benchmark checks (the emulator runs the probes too, untimed).
#include "mma.cuh"

// sink[thread] = sum over passes of src[i] for the thread's grid-stride i, n a multiple of
// ILP * threads (the launcher rounds it), so the loop has no tail.
template <int ILP>
__device__ __forceinline__ void probe_read(const float* __restrict__ src,
                                           float* __restrict__ sink, long long n, int passes) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  float acc[ILP];
#pragma unroll
  for (int j = 0; j < ILP; ++j) acc[j] = 0.0f;
  for (int p = 0; p < passes; ++p) {
    for (long long i = first; i < n; i += ILP * stride) {
      float v[ILP];
#pragma unroll
      for (int j = 0; j < ILP; ++j) v[j] = __ldg(src + i + j * stride);  // all in flight
#pragma unroll
      for (int j = 0; j < ILP; ++j) acc[j] += v[j];
    }
  }
  float total = 0.0f;
#pragma unroll
  for (int j = 0; j < ILP; ++j) total += acc[j];
  sink[first] = total;
}

#define PROBE_READ(ILP)                                                                  \
  extern "C" __global__ void probe_read_##ILP(const float* __restrict__ src,            \
                                              float* __restrict__ sink, long long n,    \
                                              int passes) {                             \
    probe_read<ILP>(src, sink, n, passes);                                              \
  }
PROBE_READ(1)
PROBE_READ(2)
PROBE_READ(4)
PROBE_READ(8)
#undef PROBE_READ

// out[0] = the index reached after `steps` hops from 0 through next[].
extern "C" __global__ void probe_chase(const unsigned* __restrict__ next,
                                       unsigned* __restrict__ out, int steps) {
  unsigned j = 0;
  for (int s = 0; s < steps; ++s) j = next[j];
  out[0] = j;
}

// out[thread] = the sum of 8 chains of `iters` FMAs each: a = a * m + c.
extern "C" __global__ void probe_fma(float* __restrict__ out, int iters, float m, float c) {
  float a[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) a[j] = (float)(threadIdx.x + j);
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) a[j] = fmaf(a[j], m, c);
  }
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < 8; ++j) s += a[j];
  out[(long long)blockIdx.x * blockDim.x + threadIdx.x] = s;
}

// Each thread reads 4 words a step from a 32 KiB shared table, lane l of a warp at word
// base + l + 32 j (base a multiple of 128, so the offsets are immediates): one wavefront
// per warp request, no conflict. out[thread] = their sum.
#define PROBE_SMEM_WORDS 8192
extern "C" __global__ void probe_smem(float* __restrict__ out, int iters) {
  __shared__ float table[PROBE_SMEM_WORDS];
  for (int i = threadIdx.x; i < PROBE_SMEM_WORDS; i += blockDim.x) table[i] = (float)(i & 7);
  __syncthreads();
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const int lane = threadIdx.x & 31;
  for (int i = 0; i < iters; ++i) {
    const float* row = table + ((i * 128) & (PROBE_SMEM_WORDS - 1)) + lane;
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[j] += row[j * 32];
  }
  out[(long long)blockIdx.x * blockDim.x + threadIdx.x] = acc[0] + acc[1] + acc[2] + acc[3];
}

// Each warp runs 4 independent accumulator tiles through `iters` mma steps with fixed
// operands (a = 1/256 and b = 1 everywhere), so every tile ends at
// iters * K * a * b per element; out[thread] = the sum of its 16 accumulator values.
template <bool BF16>
__device__ __forceinline__ void probe_mma(float* __restrict__ out, int iters) {
  const float av = 1.0f / 256.0f;
  const unsigned a1 = BF16 ? pa_pack_bf16x2(av, av) : pa_cvt_tf32(av);
  const unsigned a[4] = {a1, a1, a1, a1};
  const unsigned b1 = BF16 ? pa_pack_bf16x2(1.0f, 1.0f) : pa_cvt_tf32(1.0f);
  const unsigned b[2] = {b1, b1};
  float d[4][4] = {};
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      if (BF16) pa_mma_m16n8k16_bf16(d[t], a, b, d[t]);
      else pa_mma_m16n8k8_tf32(d[t], a, b, d[t]);
    }
  }
  float s = 0.0f;
#pragma unroll
  for (int t = 0; t < 4; ++t) s += d[t][0] + d[t][1] + d[t][2] + d[t][3];
  out[(long long)blockIdx.x * blockDim.x + threadIdx.x] = s;
}

extern "C" __global__ void probe_mma_tf32(float* __restrict__ out, int iters) {
  probe_mma<false>(out, iters);
}
extern "C" __global__ void probe_mma_bf16(float* __restrict__ out, int iters) {
  probe_mma<true>(out, iters);
}
