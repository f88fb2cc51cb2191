// LoLCATs attention on the GPU (LIZARD.md section 4, combine = lolcats): the baseline Lizard is
// compared with. Same math as the CPU reference (ops/cpu/lizard_attention.h, lolcats combine):
//   s_it = q_i . k_t * scale over the window t in [i-w+1, i],  M_i = max(0, max_t s_it)
//   lin_it = phi_q(q_i) . phi_k(k_t) for t <= i - w (keys that have left the window), no gate
//   y_i = [sg sum_win e^{s_it-M_i} v_t + (1-sg) e^{-M_i} sum_lin lin_it v_t]
//         / [sg sum_win e^{s_it-M_i}   + (1-sg) e^{-M_i} sum_lin lin_it + eps e^{-M_i}],  sg = sigmoid(f_h)
// q and k are taken AFTER RoPE and feed both the feature maps and the window (LizardConfig::lolcats()
// has feature_on_rope = true; the window of lolcats always uses RoPE). No meta sinks, no alpha.
// Cost is linear in L: chunks of 64 queries read a running state S = sum phi_k(k_t)^T [v_t | 1] of
// the keys before the chunk's window, plus at most 64 linear keys and w window keys per query.
// fp32 arithmetic on CUDA cores; bf16 or fp32 inputs. All pointers are device pointers.
//
// Layouts (Hq query heads, Hkv key/value heads, Hq % Hkv == 0):
//   q [B, L, Hq, D], k and v [B, L, Hkv, D], y and dy [B, L, Hq, D]   (element type: fp32 ? float : bf16)
//   wq, wk [Hq, D, F] (element type as q)   lolcats_f [Hq] fp32
// Limits: D <= 128, F <= 64 (throws lizard::Error otherwise).
#pragma once

#include "ops/cuda/lizard_attention.h"  // FeatureAct, cudaStream_t (no CUDA headers)

namespace lizard::cuda {

struct LolcatsAttnArgs {
  int B = 0, L = 0, Hq = 0, Hkv = 0, D = 0, F = 0;
  int window = 64;  // w >= 1: window keys t in [i-w+1, i]; linear keys t <= i-w
  FeatureAct act = FeatureAct::Softmax;
  float eps = 1e-6f;   // added to the shared normaliser (scaled by e^{-M} as on the CPU)
  float scale = 0.0f;  // window score scale; 0 means 1/sqrt(D)
  bool fp32 = false;   // element type of q, k, v, wq, wk, y, dy: float (true) or bf16 (false)

  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* wq = nullptr;
  const void* wk = nullptr;
  const float* lolcats_f = nullptr;
  void* y = nullptr;  // forward output (unused by the backward)
};

// Gradients, fp32, OVERWRITTEN. dq [B, L, Hq, D], dk, dv [B, L, Hkv, D] (w.r.t. the RoPE'd q, k: undo
// RoPE outside), dwq, dwk [Hq, D, F], dlolcats_f [Hq]. Any pointer may be null (not computed).
struct LolcatsAttnGrads {
  float* dq = nullptr;
  float* dk = nullptr;
  float* dv = nullptr;
  float* dwq = nullptr;
  float* dwk = nullptr;
  float* dlolcats_f = nullptr;
};

// Both allocate their fp32 workspace with cudaMallocAsync on `stream` (freed before returning).
void lolcats_attention_forward(const LolcatsAttnArgs& a, cudaStream_t stream = nullptr);
// Recomputes the forward internally; dy has the element type of q.
void lolcats_attention_backward(const LolcatsAttnArgs& a, const void* dy, const LolcatsAttnGrads& g,
                                cudaStream_t stream = nullptr);

// Options and sizes from a layer config (pointers left null). Throws lizard::Error unless
// combine = lolcats and feature_on_rope = true (one RoPE'd q/k pair feeds both branches).
LolcatsAttnArgs lolcats_cuda_args(const LizardConfig& c, const LizardShape& s, int batch, int L);

}  // namespace lizard::cuda
