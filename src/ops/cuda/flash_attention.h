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

// Kernel variants, process-wide (for benchmarks and tests; all compute the same function).
//   fwd 0: 64-query CTAs (4 warps), mask on every block; 1: 128-query CTAs (8 warps), mask only on
//          blocks crossing the diagonal, fully masked warps skip the block; 2: as 1 with 4 warps x 32
//          query rows (each K/V fragment feeds twice the mma); 3: Hopper wgmma (sm_90a), 2 warpgroups x
//          64 query rows, K/V blocks of 64 (D 128) or 128 (D 64) keys, 2 CTAs per SM; 4: as 3 with 3
//          warpgroups (192 query rows) and 128-key blocks at both D, 1 CTA per SM.
//   bwd 0: dk/dv kernel + separate dq kernel (recomputes S and dP; no atomics, deterministic);
//          1: dq accumulated with fp32 atomics inside the dk/dv kernel (5 products instead of 7) into
//          FlashBwdArgs::dq_accum (or a stream-ordered allocation), then converted to bf16;
//          2: as 1 with 128 keys (8 warps) per dk/dv CTA.
//   fwd -1 (the default): 3, the fastest on the H200 at both head dims (bench_lizard.py --flash,
//          2026-11-27, same run): B16 H32 D128 L2048 v3 1.690 ms, v4 2.022, v2 2.269, SDPA 1.745;
//          B8 H9 D64 L2048 v3 0.153 ms, v4 0.233, v1 0.232, SDPA 0.174.
//          bwd 0 stays the default: 1 and 2 were slower there (atomics).
constexpr int kFlashFwdVariants = 5, kFlashBwdVariants = 3, kFlashFwdAuto = -1;
struct FlashVariant {
  int fwd = kFlashFwdAuto, bwd = 0;
};
void flash_set_variant(int fwd, int bwd);
FlashVariant flash_variant();

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
  float* dq_accum = nullptr;  // bwd variants 1, 2 only: workspace of B * L * H * D floats (null: allocated per call)
};

void flash_attention_bwd(const FlashBwdArgs& a, cudaStream_t stream = nullptr);

}  // namespace lizard::cuda
