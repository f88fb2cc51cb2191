// Lizard attention on the GPU (LIZARD.md sections 1-5): gated linear branch with Hedgehog feature
// maps and normaliser, plus a sliding-window softmax branch with meta-memory sinks, y = y_gate +
// alpha * y_anchor (meta_weights_gate: y = p_meta y_gate + alpha * y_anchor, p_meta the sinks' share of
// the window softmax; shared_normaliser: one normaliser for both, y = (p_meta N + alpha y_anchor) /
// (p_meta (den + eps) + 1 - p_meta), N and den the gated branch's numerator and normaliser). All pointers are device pointers; all tensors are contiguous.
//
// Layouts (Hq query heads, Hkv key/value heads, Hq % Hkv == 0, GQA group = Hq / Hkv):
//   q [B, L, Hq, D], k and v [B, L, Hkv, D], y [B, L, Hq, D]          (bf16 or fp32)
//   log_gamma [B, L] (gate = scalar) or [B, L, Hq] (gate = per_head)   fp32, each <= 0
//   wq, wk [Hq, D, F] (feature-map weights, bf16 for the bf16 kernels, fp32 for the fp32 ones)
//   meta [m] (one set per layer) or [Hq, m] (per head)                  fp32
//   alpha [1] (per layer) or [Hq] (per head)                            fp32
//   state S [B, Hq, 2F, D], z [B, Hq, 2F]                                fp32
// Feature maps: phi(x) = [softmax(xW), softmax(-xW)] (FeatureAct::Softmax) or [exp(xW), exp(-xW)].
#pragma once
#include <cstdint>

// cudaStream_t without cuda_runtime.h, so plain C++ (no CUDA toolkit) can include this header.
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace lizard {
struct LizardConfig;
struct LizardShape;
}  // namespace lizard

namespace lizard::cuda {

enum class FeatureAct : int { Softmax = 0, Exp = 1 };

struct LizardAttnArgs {
  int B = 0, L = 0, Hq = 0, Hkv = 0, D = 0, F = 0;
  int window = 128;            // w >= 1: keys t in [i-w+1, i]
  int n_meta = 4;              // m >= 0 meta-memory sinks
  bool meta_per_head = false;  // meta is [Hq, m] instead of [m]
  bool alpha_per_head = true;  // alpha is [Hq] instead of [1]
  bool gate_per_head = false;  // log_gamma is [B, L, Hq] instead of [B, L]
  bool meta_weights_gate = false;  // y_gate weighted by the sinks' share of the window softmax (n_meta >= 1)
  bool shared_normaliser = false;  // with meta_weights_gate: y = (p N + alpha A) / (p (den + eps) + 1 - p)
  // The gated branch covers only keys outside the window, t <= i - w (LizardConfig::gate_skips_window):
  // chunked forward (variant 0), chunked backward, recurrent and decode forms, window a multiple of 64; the
  // parallel backward and a chunked forward that hands its state on (state_s) refuse it
  // (lizard_attention_prompt_state makes that state).
  bool gate_skips_window = false;
  // The feature maps read their own q, k (qf, kf below) instead of the window's: feature_on_rope !=
  // window_rope (e.g. the paper's un-rotated features beside a RoPE'd window). Chunked forward (variant 0),
  // chunked backward, recurrent and decode forms; the parallel backward refuses it.
  bool separate_feature_qk = false;
  FeatureAct act = FeatureAct::Softmax;
  float eps = 1e-6f;           // added to the gate normaliser
  float scale = 0.0f;          // window score scale; 0 means 1/sqrt(D)

  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* qf = nullptr;  // separate_feature_qk: the feature maps' q [B, L, Hq, D] and k [B, L, Hkv, D]
  const void* kf = nullptr;
  const float* log_gamma = nullptr;
  const void* wq = nullptr;
  const void* wk = nullptr;
  const float* meta = nullptr;
  const float* alpha = nullptr;
  void* y = nullptr;
  // Optional outputs (nullptr to skip): the state after the last token, for decoding on.
  float* state_s = nullptr;
  float* state_z = nullptr;
  // Optional, both or neither: the window branch's statistics, written by the chunked bf16 forward (v0, v3) and
  // read by the chunked backward in place of its statistics stage (which recomputes the window softmax for
  // them). win_lse [B, Hq, L]: each row's log-sum-exp of the scaled window scores and the meta sinks;
  // win_out [B, L, Hq, D] bf16: the window output A (normalised, before alpha). The backward then forms dy . A
  // from the forward's A (P rounded to bf16 as for the forward's own output, A rounded to bf16 as stored):
  // dalpha and dmeta to ~1e-3 of their terms' scale instead of the statistics stage's ~1e-6, for half a
  // fp32 copy's memory and traffic.
  float* win_lse = nullptr;
  void* win_out = nullptr;
};

// Chunked tensor-core forward (C = 64), bf16 q/k/v/y/wq/wk. D in {64, 128}, F in {32, 64},
// window <= 192 at D = 128 (shared memory). Throws lizard::Error on anything it cannot do.
void lizard_attention_forward_bf16(const LizardAttnArgs& a, cudaStream_t stream = nullptr);

// 3 (default) = Hopper wgmma kernel (sm_90a): next chunk's tiles prefetched with cp.async while the
// current one computes, phi_K on the gate warps, window scores / P V, phi_Q S, (A .* decay) V, the
// state update and (F = 64) the feature maps on wgmma. It covers every D/F/act/gate config and runs
// v0 where its shared memory does not fit (D = 128: w > 129 at F = 64, w > 193 at F = 32) or the
// device is not sm_90.
// 0 = straight-line mma.sync tiles, the general fallback; the only one set_forward_split applies to.
// H200 (bench_lizard.py --quick, 2026-11-27): B16 H32 D128 L2048 v3 1.346 ms (v2 1.479, v4 1.412);
// B8 H9 D64 L2048 v3 0.286 (v2 0.316, v4 0.293). v1 (tile skipping), v2 (v3's schedule on mma.sync)
// and v4 (v3 with the intra scores issued before phi_Q S) were slower and are deleted.
// H200 (bench_lizard.py --quick, 2026-11-27 session 4): v3 1.343 / 0.292 ms, v0 1.655 / 0.292 ms at
// B16 H32 D128 L2048 / B8 H9 D64 L2048. The two-pass variants 5-7 (chunk-state pass, then one CTA per
// chunk) ran 2.384 / 2.186 / 2.071 ms and 0.340 / 0.326 / 0.326 ms and are deleted.
constexpr int kForwardVariantDefault = 3;
void set_forward_variant(int variant);  // 0 or 3; throws lizard::Error otherwise
// Value-column split over two CTAs per (b, h): 0 = auto (when 2 * B * Hq <= multiprocessors), 1 = never,
// 2 = always.
void set_forward_split(int mode);

// Token-by-token recurrent forward in fp32 arithmetic (the check path; slow). `fp32` selects the
// element type of q/k/v/y/wq/wk: true for float, false for bf16. Any D <= 256, F <= 128.
void lizard_attention_forward_recurrent(const LizardAttnArgs& a, bool fp32, cudaStream_t stream = nullptr);

// What a decode step keeps of the last w tokens of each sequence: position t in slot t % w.
struct LizardDecodeRings {
  void* k = nullptr;    // [B, Hkv, w, D] the window's keys (RoPE'd when the window uses RoPE), element type of q
  void* v = nullptr;    // [B, Hkv, w, D]
  void* kf = nullptr;   // gate_skips_window: the feature maps' keys [B, Hkv, w, D] (kf, or k if one q/k set)
  float* lg = nullptr;  // gate_skips_window: log gamma [B, Hq, w] (per query head, also for a scalar gate)
};

// One generation step for every sequence of the batch. q/k/v/y (and qf/kf) hold one token: [B, Hq|Hkv, D].
// log_gamma is [B] or [B, Hq]. pos [B] (device int32) is each sequence's position of this token; the
// rings' slot pos % w receives it (gate_skips_window: the token of slot pos % w, position pos - w, joins
// the gated state first). S and z (state_s/state_z, required) are updated in place.
void lizard_attention_decode(const LizardAttnArgs& a, bool fp32, const int* pos, const LizardDecodeRings& rings,
                             cudaStream_t stream = nullptr);

// The state a decode step continues from after a prompt of a.L tokens at positions 0 .. L-1 (bf16 inputs;
// the y of the prompt comes from lizard_attention_forward_bf16): per (b, hq) S = sum over keys t <= L-1-lag
// of e_t phi_k(kf_t) v_t^T and z = sum e_t phi_k(kf_t), e_t = exp(sum_{s=t+1}^{L-1} log_gamma_s), lag = w
// under gate_skips_window and 0 otherwise, into state_s / state_z (required). gate_skips_window also fills
// rings.kf and rings.lg with the prompt's last w tokens; rings.k / rings.v are the caller's (the window's).
void lizard_attention_prompt_state(const LizardAttnArgs& a, const LizardDecodeRings& rings,
                                   cudaStream_t stream = nullptr);

// Gradients of lizard_attention_forward_* for an upstream dy (element type as q). All fp32,
// OVERWRITTEN (not accumulated). Any pointer may be null except dq, dk, dv.
//   dq [B, L, Hq, D], dk, dv [B, L, Hkv, D], dwq, dwk [Hq, D, F], dlog_gamma like log_gamma,
//   dmeta like meta, dalpha like alpha.
struct LizardAttnGrads {
  float* dq = nullptr;
  float* dk = nullptr;
  float* dv = nullptr;
  float* dwq = nullptr;
  float* dwk = nullptr;
  float* dlog_gamma = nullptr;
  float* dmeta = nullptr;
  float* dalpha = nullptr;
  // separate_feature_qk: the gradients w.r.t. qf, kf (the feature maps' part, 16-byte aligned, OVERWRITTEN);
  // dq, dk then hold the window's part (w.r.t. q, k) only.
  float* dqf = nullptr;
  float* dkf = nullptr;
};

// Backward in the parallel form with fp32 arithmetic on CUDA cores (exact gradients; O(L^2 (2F+D))
// per head, so a check path, not the fast path). Allocates its fp32 workspace on `stream`. Refuses
// meta_weights_gate and shared_normaliser (the chunked backward implements them).
void lizard_attention_backward_parallel(const LizardAttnArgs& a, bool fp32, const void* dy, const LizardAttnGrads& g,
                                        cudaStream_t stream = nullptr);

// Same gradients with the gated branch in the chunked form of LIZARD.md section 5 (C = 64), linear in L:
// state passes (one CTA per (b, h, 64 value columns), sequential over chunks, storing every chunk's
// incoming state bf16 + normaliser fp32 in a stream-ordered workspace of B Hq (L / 64) (F D + 2F) floats)
// then output passes with one CTA per (b, h, chunk), forward (dn, dden, dphi_q, d log gamma query side)
// then reverse (dphi_k, dv, d log gamma key side); chunk products on tensor cores (bf16 operands, fp32
// accumulation and states). The window branch (O(L w)), the feature maps and their backward, the window
// statistics and the weight reductions run on tensor cores as the stage variant below selects.
// bf16 or fp32 inputs; D in {64, 128}, F in {32, 64}; throws lizard::Error otherwise.
// H200 (bench_lizard.py, 2026-11-27 session 5), fwd+bwd with the defaults below: 9.911-10.029 ms at B16 H32
// D128 L2048, 19.686 at L4096, 39.287 at L8192, 1.409-1.482 at B8 H9 D64 L2048 (FLA chunk_gla, ANCHORS:
// 12.515 / - / 50.077 / 2.388). Deleted as slower: both gate sweeps (one CTA per (b, h); over chunk groups),
// the window stage's CUDA-core option, stage variant 0 (CUDA-core stages; those kernels remain the
// parallel backward's), the two-kernel bf16 window stage and a one-side-per-CTA feature-map backward.
void lizard_attention_backward_chunked(const LizardAttnArgs& a, bool fp32, const void* dy, const LizardAttnGrads& g,
                                       cudaStream_t stream = nullptr);
// Stage kernels of the chunked backward (feature maps, window statistics, window, feature-map backward, dW):
// 2 (default) = tensor-core kernels with cp.async tile loaders, double-buffered window kernels without dk/dv
// atomics and the dW stage over batch-aligned token tiles (docs/cuda_notes.md, "stage variant 2"); it needs
// q, k, v, dy, wq, wk, dq, dk, dv 16-byte aligned and runs variant 1 where they are not.
// 1 = the variant-1 tensor-core kernels (fp32 operands split into bf16 hi + lo, close to fp32): the
// misaligned-pointer path, selectable so tests cover it. Throws lizard::Error for another value.
constexpr int kBackwardStageDefault = 2;
void set_backward_stage_variant(int variant);
// Gate state passes of the chunked backward: 1 = gate_state_kernel (32 value columns per CTA, each
// chunk's rows loaded after the previous chunk's update); 2 (default) = gate_state2_kernel: 64 columns per CTA,
// the CTAs of one (b, h) adjacent, cp.async of the raw rows into two stages (chunk n + 1 in flight during
// chunk n's update), one barrier per chunk; the same bf16 operands. Variant 2 runs where v is 16-byte
// aligned (else variant 1). Throws lizard::Error for another value.
// H200, B16 H32 D128 F64 L2048, variant 1: gate2-fstate 1.585 ms, gate2-rstate 1.121 ms (variant 2: see
// docs/cuda_notes.md, session 5).
constexpr int kBackwardStateDefault = 2;
void set_backward_state_variant(int variant);

// Options and sizes from a layer config (pointers left null). Throws lizard::Error for options the
// kernels do not implement: combine = lolcats. Apply RoPE to q, k before the call where the options say
// so; feature_on_rope != window_rope sets separate_feature_qk (pass the feature maps' q, k as qf, kf).
LizardAttnArgs lizard_cuda_args(const LizardConfig& c, const LizardShape& s, int batch, int L);

}  // namespace lizard::cuda
