// fp32 <-> bf16 conversion for the bf16 tensor-core path: activations and weight copies in
// bf16 (uint16 bit patterns), fp32 master weights. Round to nearest even (pa_f32_to_bf16);
// bf16 -> fp32 is exact. Scalar accesses: the arrays may be views at any element offset.
#include "mma.cuh"

extern "C" __global__ void convert_f32_to_bf16(const float* __restrict__ x,
                                               unsigned short* __restrict__ y, long long n) {
  PA_GRID_STRIDE(i, n) y[i] = pa_f32_to_bf16(x[i]);
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
