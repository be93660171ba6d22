// Moving activations between tower slices: copy a channel range of (N, C, H*W) maps into
// another array's channel range, and add one array into another. Plain kernels (not
// library copies), so that every byte a training step moves is a kernel launch: a
// captured step (CUDA graph, or the emulator's recording) replays all of it.
// The channel copy moves x's storage (fp32 or bf16, kernels/storage.cuh) as it is.
#include "storage.cuh"

// dst[n, dst_off + c, p] = src[n, src_off + c, p] for c < channels, p < hw.
template <class T>
__device__ __forceinline__ void copy_channels_of(const T* __restrict__ src, T* __restrict__ dst,
                                                 long long total, int channels, int hw,
                                                 int src_c, int src_off, int dst_c,
                                                 int dst_off) {
  PA_GRID_STRIDE(i, total) {
    const long long p = i % hw, rest = i / hw;
    const long long c = rest % channels, n = rest / channels;
    dst[(n * dst_c + dst_off + c) * hw + p] = src[(n * src_c + src_off + c) * hw + p];
  }
}

#define COPY_ENTRIES(SUFFIX, T)                                                              \
  extern "C" __global__ void copy_channels##SUFFIX(const T* __restrict__ src,               \
                                                    T* __restrict__ dst, long long total,    \
                                                    int channels, int hw, int src_c,         \
                                                    int src_off, int dst_c, int dst_off) {   \
    copy_channels_of<T>(src, dst, total, channels, hw, src_c, src_off, dst_c, dst_off);      \
  }
PA_STORAGE_TYPES(COPY_ENTRIES)
#undef COPY_ENTRIES

// dst[a, c, b, p] = src[a, b, c, p] for an (A, B, C, P) src: its middle axes swapped. A
// conv weight (G, K/G, C/G, R*S) becomes (G, C/G, K/G, R*S), the tensor-core data
// gradient's operand with consecutive reduction indices adjacent (kernels/conv_mma.cu).
template <class T>
__device__ __forceinline__ void swap_middle_axes_of(const T* __restrict__ src, T* __restrict__ dst,
                                                    long long total, int B, int C, int P) {
  PA_GRID_STRIDE(i, total) {
    const long long p = i % P, r = i / P;
    const long long b = r % B, r2 = r / B;
    const long long c = r2 % C, a = r2 / C;
    dst[i] = src[((a * B + b) * C + c) * P + p];
  }
}

#define SWAP_ENTRIES(SUFFIX, T)                                                             \
  extern "C" __global__ void swap_middle_axes##SUFFIX(const T* __restrict__ src,           \
                                                       T* __restrict__ dst, long long total, \
                                                       int B, int C, int P) {               \
    swap_middle_axes_of<T>(src, dst, total, B, C, P);                                       \
  }
PA_STORAGE_TYPES(SWAP_ENTRIES)
#undef SWAP_ENTRIES

// acc += x, elementwise.
extern "C" __global__ void add_into(float* __restrict__ acc, const float* __restrict__ x,
                                    long long n) {
  PA_GRID_STRIDE(i, n) acc[i] += x[i];
}
