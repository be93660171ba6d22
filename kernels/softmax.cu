// Softmax with cross-entropy over rows of (N, C) logits, its gradient, and top-k ranks.
//
// Forward, per row:  m = max_j x_j,  s = sum_j exp(x_j - m),  p_j = exp(x_j - m) / s,
// loss = log(s) - (x_label - m). Subtracting the max keeps every exp in (0, 1], so logits
// of any magnitude are safe. The batch mean is a second, single-block kernel with a fixed
// summation order: the same logits give the same loss bit for bit on every run.
// Backward: dlogits = (p - onehot(label)) / N.
// Labels are validated on the host before launch (pyalexnet/ops/softmax.py); the kernels
// still never read outside a row, and a label out of range gives a NaN loss.
#include "common.cuh"

// One block per row; the block size is a multiple of 32 (pa_block_* need whole warps).
// Loads are coalesced along the row; the row is read twice (max, then exp) and the
// exponentials are stored into probs and rescaled in place by the thread that wrote them,
// so each exp is computed once and no barrier is needed between those two passes.
extern "C" __global__ void __launch_bounds__(256)
softmax_xent_forward(const float* __restrict__ logits, const int* __restrict__ labels,
                     float* __restrict__ probs, float* __restrict__ loss, int C) {
  __shared__ float scratch[32];
  const long long row = blockIdx.x;
  const float* x = logits + row * C;
  float* p = probs + row * C;

  float m = -__int_as_float(0x7f800000);
  for (int j = threadIdx.x; j < C; j += blockDim.x) m = fmaxf(m, __ldg(x + j));
  m = pa_block_max(m, scratch);

  float s = 0.0f;
  for (int j = threadIdx.x; j < C; j += blockDim.x) {
    float e = expf(__ldg(x + j) - m);  // accurate expf: probs feed the gradient
    p[j] = e;
    s += e;
  }
  s = pa_block_sum(s, scratch);

  const float inv = 1.0f / s;
  for (int j = threadIdx.x; j < C; j += blockDim.x) p[j] *= inv;

  if (threadIdx.x == 0) {
    int label = labels[row];
    loss[row] = (label >= 0 && label < C) ? logf(s) - (x[label] - m)
                                          : __int_as_float(0x7fc00000);  // NaN
  }
}

// mean = (sum of loss[0..N)) / N in one block: each thread sums a fixed strided subset,
// then a fixed-shape tree (pa_block_sum). No atomics, so the order never changes.
extern "C" __global__ void __launch_bounds__(256)
softmax_loss_mean(const float* __restrict__ loss, float* __restrict__ mean, int N) {
  __shared__ float scratch[32];
  float s = 0.0f;
  for (int i = threadIdx.x; i < N; i += blockDim.x) s += loss[i];
  s = pa_block_sum(s, scratch);
  if (threadIdx.x == 0) mean[0] = s / (float)N;
}

// dlogits = (probs - onehot(label)) * (1/N). Grid: x covers columns (coalesced), y strides
// over rows, so there is no per-element division by C.
extern "C" __global__ void __launch_bounds__(256)
softmax_xent_backward(const float* __restrict__ probs, const int* __restrict__ labels,
                      float* __restrict__ dlogits, int N, int C, float inv_n) {
  for (int row = blockIdx.y; row < N; row += gridDim.y) {
    const int label = labels[row];
    const long long base = (long long)row * C;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < C; j += blockDim.x * gridDim.x)
      dlogits[base + j] = (probs[base + j] - (j == label ? 1.0f : 0.0f)) * inv_n;
  }
}

// rank[row] = number of classes ranked before the label: logits strictly greater than the
// label's, plus equal ones with a smaller class index (ties go to the lower index, like a
// stable sort). The label is in the top k iff rank < k. A NaN label logit gets rank C
// (always an error); NaN elsewhere never outranks the label. Counts go through a float
// block sum: exact because the host requires C < 2^24.
extern "C" __global__ void __launch_bounds__(256)
softmax_topk_rank(const float* __restrict__ logits, const int* __restrict__ labels,
                  int* __restrict__ rank, int C) {
  __shared__ float scratch[32];
  const long long row = blockIdx.x;
  const float* x = logits + row * C;
  const int label = labels[row];
  const bool valid = label >= 0 && label < C;
  const float v = valid ? x[label] : 0.0f;
  int count = 0;
  for (int j = threadIdx.x; j < C; j += blockDim.x) {
    float xj = __ldg(x + j);
    count += (xj > v) || (xj == v && j < label);
  }
  float total = pa_block_sum((float)count, scratch);
  if (threadIdx.x == 0) rank[row] = (valid && v == v) ? (int)total : C;
}
