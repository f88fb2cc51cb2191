#include "ops/cpu/softmax_attention.h"

#include <cblas.h>
#include <omp.h>

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
  // Decode: one task per (query, head, key range). Long contexts with fewer heads than threads
  // split the keys (flash-decoding): each part keeps its max, sum and unnormalised output, and a
  // second pass merges them.
  const int threads = omp_get_max_threads();
  const int64_t heads = n * H, keys = pos0 + n;
  int64_t splits = 1;
  if (heads < 2 * threads && keys >= 512)
    splits = std::clamp<int64_t>((2 * threads + heads - 1) / heads, 1, keys / 256);
  const int64_t tasks = heads * splits, part = D + 2;
  thread_local std::vector<float> parts_buf;  // the caller's, shared by the team
  if (splits > 1 && static_cast<int64_t>(parts_buf.size()) < tasks * part) parts_buf.resize(tasks * part);
  float* parts = parts_buf.data();
#pragma omp parallel
  {
    // Per-thread score buffer, kept across calls so decoding allocates nothing.
    thread_local std::vector<float> scores;
    if (static_cast<int64_t>(scores.size()) < keys) scores.resize(keys);
    float* s = scores.data();
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t qh_index = task / splits, sp = task % splits;
      const int64_t i = qh_index / H;
      const int h = static_cast<int>(qh_index % H);
      const int64_t pos = pos0 + i;
      const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0, len = pos + 1 - first;
      const int64_t t0 = first + len * sp / splits, t1 = first + len * (sp + 1) / splits;  // [t0, t1)
      const float* qh = q + i * H * D + static_cast<int64_t>(h) * D;
      const int64_t kv_off = static_cast<int64_t>(h / group) * D;
      float* o = splits > 1 ? parts + task * part : out + i * H * D + static_cast<int64_t>(h) * D;
      // Four keys at a time: independent accumulators instead of one latency-bound chain.
      int64_t t = t0;
      for (; t + 4 <= t1; t += 4) {
        const float* k0 = k + t * kv_stride + kv_off;
        const float *k1 = k0 + kv_stride, *k2 = k1 + kv_stride, *k3 = k2 + kv_stride;
        float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
        for (int d = 0; d < D; ++d) {
          const float qd = qh[d];
          d0 += qd * k0[d];
          d1 += qd * k1[d];
          d2 += qd * k2[d];
          d3 += qd * k3[d];
        }
        s[t] = d0 * scale;
        s[t + 1] = d1 * scale;
        s[t + 2] = d2 * scale;
        s[t + 3] = d3 * scale;
      }
      for (; t < t1; ++t) {
        const float* kt = k + t * kv_stride + kv_off;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < D; ++d) dot += qh[d] * kt[d];
        s[t] = dot * scale;
      }
      float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
      for (int64_t u = t0; u < t1; ++u) mx = std::max(mx, s[u]);
#pragma omp simd
      for (int64_t u = t0; u < t1; ++u) s[u] = fast_exp(s[u] - mx);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t u = t0; u < t1; ++u) sum += s[u];
      std::fill(o, o + D, 0.0f);
      // Four values per pass over o: a quarter of the store-to-load round trips.
      for (t = t0; t + 4 <= t1; t += 4) {
        const float* v0 = v + t * kv_stride + kv_off;
        const float *v1 = v0 + kv_stride, *v2 = v1 + kv_stride, *v3 = v2 + kv_stride;
        const float p0 = s[t], p1 = s[t + 1], p2 = s[t + 2], p3 = s[t + 3];
#pragma omp simd
        for (int d = 0; d < D; ++d) o[d] += p0 * v0[d] + p1 * v1[d] + p2 * v2[d] + p3 * v3[d];
      }
      for (; t < t1; ++t) {
        const float* vt = v + t * kv_stride + kv_off;
        const float p = s[t];
#pragma omp simd
        for (int d = 0; d < D; ++d) o[d] += p * vt[d];
      }
      if (splits == 1) {
        const float inv = 1.0f / sum;
        for (int d = 0; d < D; ++d) o[d] *= inv;
      } else {
        o[D] = mx;  // -inf for an empty range, whose sum and output are 0
        o[D + 1] = sum;
      }
    }
    if (splits > 1) {
#pragma omp for schedule(static)
      for (int64_t qi = 0; qi < heads; ++qi) {
        const float* pp = parts + qi * splits * part;
        float m = -INFINITY;
        for (int64_t sp = 0; sp < splits; ++sp) m = std::max(m, pp[sp * part + D]);
        float* o = out + (qi / H) * H * D + (qi % H) * D;
        std::fill(o, o + D, 0.0f);
        float total = 0.0f;
        for (int64_t sp = 0; sp < splits; ++sp) {
          const float* p = pp + sp * part;
          if (p[D + 1] == 0.0f) continue;
          const float w = std::exp(p[D] - m);
          total += w * p[D + 1];
#pragma omp simd
          for (int d = 0; d < D; ++d) o[d] += w * p[d];
        }
        const float inv = 1.0f / total;
        for (int d = 0; d < D; ++d) o[d] *= inv;
      }
    }
  }
}

}  // namespace lizard
