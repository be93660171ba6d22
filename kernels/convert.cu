// fp32 <-> bf16 conversion for the bf16 tensor-core path: activations and weight copies in
// bf16 (uint16 bit patterns), fp32 master weights. Round to nearest even (pa_f32_to_bf16);
// bf16 -> fp32 is exact. Two elements per thread step, one 32-bit bf16 pair store each.
#include "mma.cuh"

extern "C" __global__ void convert_f32_to_bf16(const float* __restrict__ x,
                                               unsigned short* __restrict__ y, long long n) {
  const long long pairs = n / 2;
  PA_GRID_STRIDE(i, pairs) {
    const float2 v = reinterpret_cast<const float2*>(x)[i];
    reinterpret_cast<unsigned*>(y)[i] = pa_pack_bf16x2(v.x, v.y);
  }
  // an odd last element (the arrays are allocator-aligned, so pairs are 8 / 4 bytes aligned)
  if (n & 1 && blockIdx.x == 0 && threadIdx.x == 0) y[n - 1] = pa_f32_to_bf16(x[n - 1]);
}

extern "C" __global__ void convert_bf16_to_f32(const unsigned short* __restrict__ x,
                                               float* __restrict__ y, long long n) {
  PA_GRID_STRIDE(i, n) y[i] = pa_bf16_to_f32(x[i]);
}

// fp32 values rounded to tf32 (cvt.rna), kept as fp32: the operands of an fp32 kernel that
// stands in for a tf32 tensor-core one.
extern "C" __global__ void convert_round_tf32(const float* __restrict__ x, float* __restrict__ y,
                                              long long n) {
  PA_GRID_STRIDE(i, n) y[i] = __uint_as_float(pa_cvt_tf32(x[i]));
}
