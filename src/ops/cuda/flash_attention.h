// Causal softmax attention with grouped-query heads on the GPU, flash style (the teacher's layers
// and the softmax layers of a hybrid). Device pointers, contiguous:
//   q, out [B, L, H, D] bf16; k, v [B, L, Hkv, D] bf16 (RoPE already applied); lse [B, H, L] fp32
//   (optional: natural-log row normaliser, for a backward pass). D in {64, 128}.
#pragma once
#include <cstdint>

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace lizard::cuda {

struct FlashArgs {
  int B = 0, L = 0, H = 0, Hkv = 0, D = 0;
  float scale = 0.f;  // 0: 1/sqrt(D)
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
};

void flash_attention_fwd(const FlashArgs& a, cudaStream_t stream = nullptr);

// Forward: one kernel on Hopper wgmma (sm_90a), 2 warpgroups x 64 query rows per CTA. Backward:
// dk/dv kernel + separate dq kernel (recomputes S and dP; no atomics, deterministic), one warpgroup
// per CTA on wgmma (sm_90a). The other variants (the mma.sync backward among them) lost on the H200
// and were deleted on 2026-11-27 (cuda_notes.md).

// Backward of flash_attention_fwd. Inputs: q, k, v, out (the forward's output), dout [B, L, H, D]
// bf16 and lse [B, H, L] (the forward's, natural log). Outputs (bf16, written, not accumulated):
// dq [B, L, H, D], dk and dv [B, L, Hkv, D] (summed over the query heads of each group).
// delta: fp32 workspace of B * H * L floats (rowsum(dout .* out)); no L x L matrix is stored.
struct FlashBwdArgs {
  int B = 0, L = 0, H = 0, Hkv = 0, D = 0;
  float scale = 0.f;  // 0: 1/sqrt(D)
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;
  const void* dout = nullptr;
  const float* lse = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  float* delta = nullptr;  // workspace, B * H * L floats
};

void flash_attention_bwd(const FlashBwdArgs& a, cudaStream_t stream = nullptr);

}  // namespace lizard::cuda
