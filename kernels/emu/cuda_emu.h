// CUDA host emulation: the kernel dialect (docs/ARCHITECTURE.md) for g++.
//
// Include this after every standard and pybind11 header: its macros (__shared__,
// threadIdx, ...) would clash with names there. The runtime behind it (fibers, barriers,
// warp operations) lives in runtime.cpp; see runtime.h.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include "runtime.h"

// ---- qualifiers -------------------------------------------------------------------
// Kernels become plain functions. Device helpers are `static inline` so every kernel
// file can be compiled into one translation unit; write `__device__` or
// `__device__ __forceinline__`, never an explicit `inline`/`static` beside them.
#define __global__
#define __device__ static inline
#define __host__
#define __forceinline__ __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ static
// A block-scope `thread_local` is implicitly static: one copy per OS thread, and one OS
// thread runs one block at a time, so this is exactly per-block shared memory. For
// `extern __shared__ T name[];` the binding unit defines `thread_local T name[MAX]`.
#define __shared__ thread_local

// ---- thread geometry --------------------------------------------------------------
#define threadIdx (::cuemu::tls_cur.thread->tid)
#define blockIdx (::cuemu::tls_cur.block_idx)
#define blockDim (::cuemu::tls_cur.block_dim)
#define gridDim (::cuemu::tls_cur.grid_dim)
#define warpSize 32

// ---- barriers and warp operations -------------------------------------------------
#define __syncthreads() ::cuemu::syncthreads(__FILE__, __LINE__)
// All user arguments go last, so optional ones (mask, width) need no comma tricks.
#define CUEMU_SITE ::cuemu::WarpSite{__FILE__, __LINE__}
#define __syncwarp(...) CUEMU_SITE.syncwarp(__VA_ARGS__)
#define __shfl_sync(...) CUEMU_SITE.shfl(::cuemu::SHFL_IDX, __VA_ARGS__)
#define __shfl_up_sync(...) CUEMU_SITE.shfl(::cuemu::SHFL_UP, __VA_ARGS__)
#define __shfl_down_sync(...) CUEMU_SITE.shfl(::cuemu::SHFL_DOWN, __VA_ARGS__)
#define __shfl_xor_sync(...) CUEMU_SITE.shfl(::cuemu::SHFL_XOR, __VA_ARGS__)
#define __ballot_sync(...) CUEMU_SITE.vote(::cuemu::VOTE_BALLOT, __VA_ARGS__)
#define __any_sync(...) ((int)CUEMU_SITE.vote(::cuemu::VOTE_ANY, __VA_ARGS__))
#define __all_sync(...) ((int)CUEMU_SITE.vote(::cuemu::VOTE_ALL, __VA_ARGS__))
#define __activemask() 0xffffffffu
#define __threadfence() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define __threadfence_block() __atomic_thread_fence(__ATOMIC_SEQ_CST)

// ---- vector types (aggregates, so they can live in __shared__) ----------------------
struct uint3;
struct dim3;
#ifdef CUEMU_PROFILE
// ---- profiling build: vector types copied whole -------------------------------------
// A copy of a plain struct of four floats is split into four 4-byte accesses before the
// coverage pass sees it; copying through a clang vector keeps it one 16-byte access, as
// the GPU's LDG.128/LDS.128. The source is read as volatile: otherwise the optimiser
// narrows a vector load whose fields are used one by one (a table entry's .x, .y, .z)
// back into scalar loads, each counted as a request. Same fields, same layout as the
// plain build's aggregates.
#define CUEMU_VEC(T, N, A, n, ...)                                                       \
  struct alignas(A) N {                                                                  \
    T __VA_ARGS__;                                                                       \
    typedef T V __attribute__((ext_vector_type(n)));                                     \
    N() = default;                                                                       \
    N(const N& o) { *reinterpret_cast<V*>(this) = *reinterpret_cast<const volatile V*>(&o); } \
    N& operator=(const N& o) {                                                           \
      *reinterpret_cast<V*>(this) = *reinterpret_cast<const volatile V*>(&o);            \
      return *this;                                                                      \
    }                                                                                    \
  };
CUEMU_VEC(float, float2, 8, 2, x, y)
CUEMU_VEC(float, float4, 16, 4, x, y, z, w)
CUEMU_VEC(int, int2, 8, 2, x, y)
CUEMU_VEC(int, int4, 16, 4, x, y, z, w)
CUEMU_VEC(unsigned, uint2, 8, 2, x, y)
CUEMU_VEC(unsigned, uint4, 16, 4, x, y, z, w)
#undef CUEMU_VEC
#define CUEMU_MAKE(T, N) \
  static inline N make_##N(T x, T y) { N v; v.x = x; v.y = y; return v; }
#define CUEMU_MAKE4(T, N) \
  static inline N make_##N(T x, T y, T z, T w) { N v; v.x = x; v.y = y; v.z = z; v.w = w; return v; }
CUEMU_MAKE(float, float2)
CUEMU_MAKE4(float, float4)
CUEMU_MAKE(int, int2)
CUEMU_MAKE4(int, int4)
CUEMU_MAKE(unsigned, uint2)
CUEMU_MAKE4(unsigned, uint4)
#undef CUEMU_MAKE
#undef CUEMU_MAKE4
#else  // ---- end of the profiling block -----------------------------------------------
#define CUEMU_VEC2(T, N, A) struct alignas(A) N { T x, y; }; \
  static inline N make_##N(T x, T y) { return N{x, y}; }
#define CUEMU_VEC4(T, N, A) struct alignas(A) N { T x, y, z, w; }; \
  static inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
CUEMU_VEC2(float, float2, 8)
CUEMU_VEC4(float, float4, 16)
CUEMU_VEC2(int, int2, 8)
CUEMU_VEC4(int, int4, 16)
CUEMU_VEC2(unsigned, uint2, 8)
CUEMU_VEC4(unsigned, uint4, 16)
#undef CUEMU_VEC2
#undef CUEMU_VEC4
#endif  // CUEMU_PROFILE

// ---- math intrinsics --------------------------------------------------------------
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
static inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
#define __expf expf
#define __logf logf
#define __powf powf
static inline float __fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
static inline unsigned __umulhi(unsigned a, unsigned b) {
  return (unsigned)(((unsigned long long)a * b) >> 32);
}
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
template <class T> static inline T __ldg(const T* p) { return *p; }
// CUDA's device code has overloaded min/max for every arithmetic type.
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return std::fmin(a, b); }
static inline float max(float a, float b) { return std::fmax(a, b); }

// ---- atomics: correct across blocks running on several OS threads ------------------
static inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline unsigned atomicAdd(unsigned* p, unsigned v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
static inline float atomicAdd(float* p, float v) {
  unsigned* u = reinterpret_cast<unsigned*>(p);
  unsigned old = __atomic_load_n(u, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(u, &old, __float_as_uint(__uint_as_float(old) + v), true,
                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return __uint_as_float(old);
}
static inline int atomicMax(int* p, int v) {
  int old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED,
                                                 __ATOMIC_RELAXED)) {
  }
  return old;
}
static inline int atomicMin(int* p, int v) {
  int old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED,
                                                 __ATOMIC_RELAXED)) {
  }
  return old;
}
static inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
static inline int atomicCAS(int* p, int cmp, int v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}
static inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}

#ifdef CUEMU_PROFILE
// ---- profiling build: atomics are counted -------------------------------------------
// Each atomic is one operation of the profile; the loads and stores of its emulation (the
// compare-and-swap loop of a float add) are not memory requests of their own.
#include "profile.h"
#define CUEMU_PROF_ATOMIC(name)                                        \
  template <class T, class... A>                                       \
  static inline T cuemu_prof_##name(T* p, A... a) {                    \
    ::cuemu::prof::AtomicScope scope(p);                               \
    return name(p, a...);                                              \
  }
CUEMU_PROF_ATOMIC(atomicAdd)
CUEMU_PROF_ATOMIC(atomicMax)
CUEMU_PROF_ATOMIC(atomicMin)
CUEMU_PROF_ATOMIC(atomicExch)
CUEMU_PROF_ATOMIC(atomicCAS)
#undef CUEMU_PROF_ATOMIC
#define atomicAdd cuemu_prof_atomicAdd
#define atomicMax cuemu_prof_atomicMax
#define atomicMin cuemu_prof_atomicMin
#define atomicExch cuemu_prof_atomicExch
#define atomicCAS cuemu_prof_atomicCAS
#endif  // CUEMU_PROFILE
