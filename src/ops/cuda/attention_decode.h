// Softmax attention of a few new query tokens against a bf16 KV cache, for generation on the GPU
// (teacher layers and the softmax layers of a hybrid). Plain C++ can include this header.
//
// KV cache: [B, Hkv, max_ctx, D] bf16, one region per batch slot. Split-K ("flash-decoding"): the valid
// keys of each slot are cut into chunks handled by separate CTAs, whose partial max / sum / output go to
// an fp32 workspace, then a combine kernel merges them. fp32 math throughout.
#pragma once
#include <cstddef>
#include <cstdint>

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace lizard::cuda {

// Token j of slot b (src [B, n, Hkv, D] bf16) goes to cache position pos0[b] + j. Slots with pos0[b] < 0
// are inactive and skipped; positions >= max_ctx are skipped too (the caller keeps within the cache).
// pos0: device [B].
void kv_cache_write(const void* src, void* cache, int B, int n, int Hkv, int D, int max_ctx, const int* pos0,
                    cudaStream_t s = nullptr);

struct AttentionDecodeArgs {
  int B = 0, n = 1, H = 0, Hkv = 0, D = 0;  // H % Hkv == 0 (GQA), D even and <= 256
  int max_ctx = 0;                          // the caches' position dimension
  const void* q = nullptr;                  // [B, n, H, D] bf16, RoPE applied
  const void* k_cache = nullptr;            // [B, Hkv, max_ctx, D] bf16
  const void* v_cache = nullptr;            // [B, Hkv, max_ctx, D] bf16
  // Device [B]: valid cache positions AFTER the n new tokens were written. Query j of slot b sits at
  // position lens[b] - n + j and attends to positions <= its own. Slots with lens <= 0: skipped (out
  // left as it is).
  const int* lens = nullptr;
  void* out = nullptr;         // [B, n, H, D] bf16
  float* workspace = nullptr;  // attention_decode_workspace_bytes(B, n, H, D, max_ctx) bytes
  float scale = 0.f;           // 0: 1 / sqrt(D)
  cudaStream_t stream = nullptr;
};

size_t attention_decode_workspace_bytes(int B, int n, int H, int D, int max_ctx);
void attention_decode(const AttentionDecodeArgs& a);

}  // namespace lizard::cuda
