// Dropout with an in-kernel counter-based generator (Philox4x32-10, common.cuh).
//
// Mask rule (pyalexnet/ops/dropout.py mirrors it bit for bit in NumPy):
//   element i (flat index, 64-bit) belongs to group g = i / 4;
//   words = Philox4x32-10(counter = (g low 32, g high 32, 0, 0),
//                         key = (seed low 32, seed high 32));
//   u = (words[i % 4] >> 8) / 2^24, i.e. pa_uniform24;  keep iff u >= p.
// With an element offset o, element i of the array uses index o + i in this rule, so a
// batch split over ranks (o = the rank's first sample x features) draws the whole batch's
// mask; o = 0 is the rule above.
// The host passes the comparison as the integer threshold ceil(p * 2^24), so
// "keep iff (word >> 8) >= threshold" is exact on every backend (no float rounding or
// flush-to-zero can move it). Keep probability = 1 - threshold / 2^24 (1 - p to 2^-24).
//
// Forward and backward are the same map: out = in * mask * scale, where scale is 1/(1-p)
// (inverted) or 1 (classic) in training; the backward regenerates the mask from the seed,
// so no mask buffer exists. threshold == 0 keeps everything without drawing numbers: the
// test-time scaling (x * 1 or x * (1-p)) runs through the same kernel.
#include "common.cuh"

// One thread, one Philox call, four consecutive elements: the call's four words are
// exactly the four elements' words, so no generator output is wasted. float4 loads and
// stores when both pointers are 16-byte aligned (CuPy allocations always are; a view at an
// odd offset is not) and the group is whole; the scalar path handles the tail and the rest.
__device__ __forceinline__ void dropout_body(const float* __restrict__ in,
                                             float* __restrict__ out, long long n,
                                             unsigned threshold, float scale, unsigned key0,
                                             unsigned key1, long long offset) {
  const bool vec = ((reinterpret_cast<unsigned long long>(in) |
                     reinterpret_cast<unsigned long long>(out)) & 15ull) == 0 &&
                   (offset & 3ll) == 0;
  // Philox groups covering counter indices offset .. offset + n - 1
  const long long first = offset >> 2, groups = ((offset + n + 3) >> 2) - first;
  PA_GRID_STRIDE(t, groups) {
    const long long g = first + t;
    unsigned keep = 0xfu;  // bit j: counter index 4g + j is kept
    if (threshold != 0u) {  // uniform across the grid: no divergence
      pa_philox_out r = pa_philox4x32_10((unsigned)g, (unsigned)((unsigned long long)g >> 32),
                                         0u, 0u, key0, key1);
      keep = 0u;
#pragma unroll
      for (int j = 0; j < 4; ++j) keep |= (unsigned)((r.v[j] >> 8) >= threshold) << j;
    }
    const long long i = (g << 2) - offset;  // array index of counter index 4g (may be < 0)
    // A select, not a multiply by 0: a dropped unit contributes exactly 0 even if it held
    // inf or NaN (what the reference does too).
    if (vec && i + 4 <= n) {
      float4 v = reinterpret_cast<const float4*>(in)[i >> 2];
      v.x = (keep & 1u) ? v.x * scale : 0.0f;
      v.y = (keep & 2u) ? v.y * scale : 0.0f;
      v.z = (keep & 4u) ? v.z * scale : 0.0f;
      v.w = (keep & 8u) ? v.w * scale : 0.0f;
      reinterpret_cast<float4*>(out)[i >> 2] = v;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (i + j >= 0 && i + j < n) out[i + j] = ((keep >> j) & 1u) ? in[i + j] * scale : 0.0f;
    }
  }
}

extern "C" __global__ void __launch_bounds__(256)
dropout_apply(const float* __restrict__ in, float* __restrict__ out, long long n,
              unsigned threshold, float scale, unsigned key0, unsigned key1, long long offset) {
  dropout_body(in, out, n, threshold, scale, key0, key1, offset);
}

// The same, with the key made on the device from the training step's seed, read from
// memory: seed = splitmix64(splitmix64(*step_seed) ^ salt), salt = (layer << 8) | tower
// (pyalexnet.rng.dropout_seed). A captured step (CUDA graph) then draws new masks at each
// replay: the host writes only the step seed.
extern "C" __global__ void __launch_bounds__(256)
dropout_apply_step_seed(const float* __restrict__ in, float* __restrict__ out, long long n,
                        unsigned threshold, float scale,
                        const unsigned long long* __restrict__ step_seed,
                        unsigned long long salt, long long offset) {
  const unsigned long long seed = pa_splitmix64(pa_splitmix64(*step_seed) ^ salt);
  dropout_body(in, out, n, threshold, scale, (unsigned)seed, (unsigned)(seed >> 32), offset);
}

// Test hook: the raw generator, so its output can be checked against the published
// Random123 known-answer vectors. ck holds n rows of (c0, c1, c2, c3, k0, k1); words gets
// n rows of the 4 output words.
extern "C" __global__ void dropout_philox_words(const unsigned* __restrict__ ck,
                                                unsigned* __restrict__ words, int n) {
  PA_GRID_STRIDE(t, n) {
    const unsigned* a = ck + 6 * t;
    pa_philox_out r = pa_philox4x32_10(a[0], a[1], a[2], a[3], a[4], a[5]);
#pragma unroll
    for (int j = 0; j < 4; ++j) words[4 * t + j] = r.v[j];
  }
}
