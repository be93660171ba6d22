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

#define PA_STORAGE_TYPES(ENTRY) ENTRY(, float) ENTRY(_bf16, unsigned short)
