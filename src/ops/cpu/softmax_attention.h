// Causal softmax attention with grouped-query heads over a token-major KV cache.
#pragma once
#include <cstdint>

namespace lizard {

struct AttentionDims {
  int n_heads = 0;     // query heads H
  int n_kv_heads = 0;  // key/value heads; H % n_kv_heads == 0, query head h reads kv head h / (H / Hkv)
  int head_dim = 0;
};

// q: [n, H*D] (RoPE already applied), query i at position pos0 + i.
// k, v: caches of rows [pos, Hkv*D] (row stride kv_stride floats) holding positions 0 .. pos0+n-1.
// out: [n, H*D]. Query i attends to positions t <= pos0+i, and only t > pos0+i-window when window > 0.
// scale multiplies q.k (usually 1/sqrt(D)). Numerically stable (running max); threads over (i, h).
void softmax_attention(const float* q, int64_t n, int64_t pos0, const float* k, const float* v,
                       int64_t kv_stride, const AttentionDims& dims, float scale, float* out,
                       int64_t window = 0);

}  // namespace lizard
