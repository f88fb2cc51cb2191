#include "ops/cpu/softmax_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lizard {

void softmax_attention(const float* q, int64_t n, int64_t pos0, const float* k, const float* v,
                       int64_t kv_stride, const AttentionDims& dims, float scale, float* out,
                       int64_t window) {
  const int H = dims.n_heads, D = dims.head_dim, group = dims.n_heads / dims.n_kv_heads;
  const int64_t tasks = n * H;
#pragma omp parallel
  {
    // Per-thread score buffer, kept across calls so decoding allocates nothing.
    thread_local std::vector<float> scores;
    const int64_t need = pos0 + n;
    if (static_cast<int64_t>(scores.size()) < need) scores.resize(need);
    float* s = scores.data();
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t i = task / H;
      const int h = static_cast<int>(task % H);
      const int64_t pos = pos0 + i;
      const int64_t t0 = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
      const float* qh = q + i * H * D + static_cast<int64_t>(h) * D;
      const int64_t kv_off = static_cast<int64_t>(h / group) * D;
      float mx = -INFINITY;
      for (int64_t t = t0; t <= pos; ++t) {
        const float* kt = k + t * kv_stride + kv_off;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < D; ++d) dot += qh[d] * kt[d];
        dot *= scale;
        s[t] = dot;
        mx = std::max(mx, dot);
      }
      float sum = 0.0f;
      for (int64_t t = t0; t <= pos; ++t) {
        s[t] = std::exp(s[t] - mx);
        sum += s[t];
      }
      float* o = out + i * H * D + static_cast<int64_t>(h) * D;
      std::fill(o, o + D, 0.0f);
      for (int64_t t = t0; t <= pos; ++t) {
        const float* vt = v + t * kv_stride + kv_off;
        const float p = s[t];
#pragma omp simd
        for (int d = 0; d < D; ++d) o[d] += p * vt[d];
      }
      const float inv = 1.0f / sum;
      for (int d = 0; d < D; ++d) o[d] *= inv;
    }
  }
}

}  // namespace lizard
