#include "ops/cpu/softmax_attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/fast_exp.h"
#include "ops/cpu/matmul.h"

namespace lizard {

namespace {

constexpr int64_t kBlock = 32;  // query rows per task of the blocked (prefill) path

// Prefill: per (query head, block of queries) two sgemms, S = Q K^T and O = P V, over the keys the
// block can see, with the causal/window mask and a stable softmax on S in between.
void attention_blocked(const float* q, int64_t n, int64_t pos0, const float* k, const float* v, int64_t kv_stride,
                       const AttentionDims& dims, float scale, float* out, int64_t window) {
  const int H = dims.n_heads, D = dims.head_dim, group = dims.n_heads / dims.n_kv_heads;
  blas_single_threaded();
  const int64_t n_blocks = (n + kBlock - 1) / kBlock, tasks = n_blocks * H, ld = static_cast<int64_t>(H) * D;
#pragma omp parallel
  {
    thread_local std::vector<float> sbuf;
    const int64_t need = kBlock * (pos0 + n);
    if (static_cast<int64_t>(sbuf.size()) < need) sbuf.resize(need);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      // Late blocks first: they see the most keys.
      const int64_t b = n_blocks - 1 - task / H;
      const int h = static_cast<int>(task % H);
      const int64_t i0 = b * kBlock, rows = std::min(kBlock, n - i0);
      const int64_t t_end = pos0 + i0 + rows;  // keys [t_begin, t_end) cover the whole block
      const int64_t t_begin = window > 0 ? std::max<int64_t>(0, pos0 + i0 - window + 1) : 0;
      const int64_t T = t_end - t_begin;
      const float* kb = k + t_begin * kv_stride + static_cast<int64_t>(h / group) * D;
      const float* vb = v + t_begin * kv_stride + static_cast<int64_t>(h / group) * D;
      float* S = sbuf.data();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(T), D, scale,
                  q + i0 * ld + static_cast<int64_t>(h) * D, static_cast<int>(ld), kb, static_cast<int>(kv_stride),
                  0.0f, S, static_cast<int>(T));
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = S + r * T;
        const int64_t pos = pos0 + i0 + r;
        const int64_t lo = (window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0) - t_begin;
        const int64_t hi = pos - t_begin;  // inclusive
        float mx = -INFINITY;
        for (int64_t t = lo; t <= hi; ++t) mx = std::max(mx, sr[t]);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = lo; t <= hi; ++t) sum += (sr[t] = fast_exp(sr[t] - mx));
        const float inv = 1.0f / sum;
        for (int64_t t = 0; t < lo; ++t) sr[t] = 0.0f;
        for (int64_t t = lo; t <= hi; ++t) sr[t] *= inv;
        for (int64_t t = hi + 1; t < T; ++t) sr[t] = 0.0f;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows), D, static_cast<int>(T), 1.0f, S,
                  static_cast<int>(T), vb, static_cast<int>(kv_stride), 0.0f, out + i0 * ld + static_cast<int64_t>(h) * D,
                  static_cast<int>(ld));
    }
  }
}

}  // namespace

void softmax_attention(const float* q, int64_t n, int64_t pos0, const float* k, const float* v,
                       int64_t kv_stride, const AttentionDims& dims, float scale, float* out,
                       int64_t window) {
  if (n >= 8) {
    attention_blocked(q, n, pos0, k, v, kv_stride, dims, scale, out, window);
    return;
  }
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
#pragma omp simd reduction(+ : sum)
      for (int64_t t = t0; t <= pos; ++t) sum += (s[t] = fast_exp(s[t] - mx));
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
