// How activations are stored between layers: fp32, or bf16 bits (unsigned short) in bf16
// training, which halves the traffic of the memory-bound kernels. Those kernels are
// templates on the storage type T: they load through pa_to_f32, compute in fp32 and store
// through pa_store (round to nearest even for bf16). PA_STORAGE_TYPES(ENTRY) makes
// one extern "C" entry per type: ENTRY(suffix, T) with suffix "" (fp32) or _bf16.
#pragma once
#include "mma.cuh"

__device__ __forceinline__ float pa_to_f32(float v) { return v; }
__device__ __forceinline__ float pa_to_f32(unsigned short h) { return pa_bf16_to_f32(h); }

// A read-only load (the texture path on the GPU), widened to fp32.
template <class T>
__device__ __forceinline__ float pa_ldg_f32(const T* p) { return pa_to_f32(__ldg(p)); }

__device__ __forceinline__ void pa_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void pa_store(unsigned short* p, float v) { *p = pa_f32_to_bf16(v); }

// Four consecutive values as one load or store: 16 bytes for fp32, 8 for bf16 (p aligned
// to that), so a warp moves 512 (256) bytes a request instead of 128 (64).
__device__ __forceinline__ float4 pa_load4_f32(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 pa_load4_f32(const unsigned short* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);  // little-endian: element 0 is u.x's low half
  return make_float4(pa_bf16_to_f32((unsigned short)(u.x & 0xffffu)),
                     pa_bf16_to_f32((unsigned short)(u.x >> 16)),
                     pa_bf16_to_f32((unsigned short)(u.y & 0xffffu)),
                     pa_bf16_to_f32((unsigned short)(u.y >> 16)));
}
__device__ __forceinline__ void pa_store4(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}
__device__ __forceinline__ void pa_store4(unsigned short* p, float4 v) {
  *reinterpret_cast<uint2*>(p) =
      make_uint2((unsigned)pa_f32_to_bf16(v.x) | ((unsigned)pa_f32_to_bf16(v.y) << 16),
                 (unsigned)pa_f32_to_bf16(v.z) | ((unsigned)pa_f32_to_bf16(v.w) << 16));
}

#define PA_STORAGE_TYPES(ENTRY) ENTRY(, float) ENTRY(_bf16, unsigned short)
