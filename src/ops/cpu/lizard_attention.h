// The Lizard attention layer on the CPU: the reference for GPU kernels and training.
//
// One layer, one sequence of L tokens. Inputs (row-major):
//   x [L, d_model] layer input (feeds the gate)      q [L, H, D]  k, v [L, Hkv, D]  (q, k PRE-RoPE)
//   pos [L] RoPE positions (null: 0..L-1). Output y [L, H, D] (before the teacher's W_o).
// Per query head h (kv head g = h / (H/Hkv)); R_p = RoPE at position p (rotate-half, HF order).
//   qf_i = feature_on_rope ? R q_i : q_i          kf_t likewise (from k_t of kv head g)
//   qw_i = (window_rope || lolcats) ? R q_i : q_i  kw_t likewise
//   u = qf W  (W = feat_q[h] in R^{D x F});  phi_q = [softmax(u), softmax(-u)]  (or [e^u, e^-u])
//   phi_k from kf with feat_k[h].
//   lg_i = log sigmoid(x_i . w_g + b_g)   (w_g row h when gate = per_head)        -- log gamma_i
// combine = lizard:
//   gate:   K_it = (phi_q_i . phi_k_t) exp(sum_{l=t+1..i} lg_l),  t <= i
//           N_i = sum_t K_it v_t,  den_i = sum_t K_it,  G_i = N_i / (den_i + eps)
//   window: s_it = qw_i . kw_t / sqrt(D), t in [i-w+1, i];  mu = meta logits (row h if per head)
//           A_i = sum_t e^{s_it} v_t / (sum_j e^{mu_j} + sum_t e^{s_it})   (shifted by the row max)
//   y_i = G_i + alpha_h A_i
//   (meta_weights_gate / shared_normaliser: see lizard_config.h; gate_skips_window: the gate sums run over
//    t <= i - w only: the chunked form reads a lagged chunk's state, the recurrent one adds token i-w at step i)
// combine = lolcats (no gate, no meta, no alpha; sg = sigmoid(f_h)):
//   y_i = [sg sum_{win} e^{s_it} v_t + (1-sg) sum_{t<=i-w} (phi_q_i.phi_k_t) v_t]
//         / [sg sum_{win} e^{s_it} + (1-sg) sum_{t<=i-w} phi_q_i.phi_k_t + eps]
//   computed with every term multiplied by e^{-M_i}, M_i = max(0, max_t s_it).
//
// Forms (all three give the same y up to rounding):
//  parallel:  the formulas above as plain loops, O(L^2). The decay exp(sum lg) is accumulated per
//             pair walking t down from i (no global cumsum: no cancellation in float).
//  chunked:   chunks of C tokens. Gate branch with state S [2F, D+1] (the last column is the
//             normaliser z): b_i = cumsum of lg from the chunk start (<= 0),
//               [N|den]_i = e^{b_i} phi_q_i S_n + sum_{t<=i in chunk} (phi_q_i.phi_k_t) e^{b_i-b_t} [v_t|1]
//               S_{n+1}   = e^{b_C} S_n + sum_t e^{b_C-b_t} phi_k_t^T [v_t|1]     (every exponent <= 0)
//             Window: a query chunk reads key chunks n-ceil(w/C) .. n only, flash-style online max
//             seeded with the meta logits. LoLCATs: S holds key chunks < n-ceil(w/C) (no decay);
//             pairs inside those chunks are either window (softmax) or linear (t <= i-w).
//             Float products use cblas_sgemm (dgemm for double); heads run in parallel (OpenMP).
//  recurrent: one token at a time with LizardState: S, z per head (stored as e^{log_scale} * S so
//             that a gate close to 1 is applied as a sum of logs, not a product of rounded gammas),
//             and a ring buffer of the last w keys (as the window uses them) and values.
//             LoLCATs: a token leaving the window is added to S (no decay). gate_skips_window: likewise,
//             decayed by the gammas of the tokens after it (ring_lg); S covers t <= i - w.
// Threads: the chunked forward/backward spread heads over OpenMP threads (when L*H >= 1024) and
//   set OpenBLAS to one thread for that call (restored after): do not run two such calls at once
//   from different threads of one process if BLAS thread counts matter to you.
// Precision (tests/test_lizard_attention.cpp): float forms vs the fp64 parallel reference ~1e-6
//   relative (max-abs error / max-abs output), gates 1e-4 .. 1-1e-6 over 16K tokens included.
// Backward (chunked): gate branch walks chunks in reverse with dS [2F, D+1]; the gate gradient uses
//   d lg_l = sum_{i>=l} dB_i with dB_i = dOut_i . [N|den]_i - [v_i|1] . d[v_i|1]  (exact identity
//   for a scalar decay), where dOut_i = [dy_i, -(dy_i.G_i)] / (den_i + eps). Window: softmax
//   backward with the saved row log-normaliser; sinks get d mu_j = -sum_i p_sink_ij (dA_i . A_i).
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/lizard_config.h"

namespace lizard {

// Inverse frequencies of RoPE (head_dim / 2 of them), with Llama-3 / linear scaling.
struct LizardRope {
  std::vector<double> inv_freq;
  static LizardRope make(int head_dim, double theta, const RopeScaling& scaling = {});
  // x [D] rotated in place by position p (inverse: by -p, the transpose, for gradients).
  template <typename T>
  void apply(T* x, int64_t p, bool inverse = false) const;
};

template <typename T>
struct LizardInput {
  int64_t L = 0;
  const T* x = nullptr;        // [L, d_model]
  const T* q = nullptr;        // [L, H, D]
  const T* k = nullptr;        // [L, Hkv, D]
  const T* v = nullptr;        // [L, Hkv, D]
  const int32_t* pos = nullptr;  // [L] or null (0..L-1)
};

// Everything a generation step needs; a chunked prefill can produce it.
template <typename T>
struct LizardState {
  int64_t n_tokens = 0;          // tokens consumed so far
  std::vector<T> S;              // [H, 2F, D]   true state = exp(log_scale[h]) * S[h]
  std::vector<T> z;              // [H, 2F]
  std::vector<T> log_scale;      // [H]
  std::vector<T> ring_k;         // [w, Hkv, D]  window keys (RoPE'd when the window uses RoPE)
  std::vector<T> ring_v;         // [w, Hkv, D]
  std::vector<T> ring_kf;        // [w, Hkv, D]  lolcats, gate_skips_window: feature-map keys of tokens in the window
  std::vector<T> ring_lg;        // [w, H]       gate_skips_window: log gamma of tokens in the window

  void reset(const LizardConfig& c, const LizardShape& s);
  // Binary snapshot (little-endian host order, with a header that checks shapes on load).
  std::vector<uint8_t> save() const;
  void load(const std::vector<uint8_t>& bytes, const LizardConfig& c, const LizardShape& s);
  size_t bytes() const;  // memory held (constant in sequence length)
};

// rope may be null when no option needs it (throws Error otherwise).
template <typename T>
void lizard_forward_parallel(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p,
                             const LizardRope* rope, const LizardInput<T>& in, T* y);

// final_state (optional) receives the state after the last token, ready for lizard_step.
// initial_state (optional; may be the same object as final_state) continues a sequence: the chunk
// starts from its S, z (pending log-decay applied) and the window also reads its ring's last w-1
// tokens. in.pos must then hold the absolute positions. combine = lizard only (lolcats: Error).
template <typename T>
void lizard_forward_chunked(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p,
                            const LizardRope* rope, const LizardInput<T>& in, T* y,
                            LizardState<T>* final_state = nullptr, const LizardState<T>* initial_state = nullptr);

// One token: x [d_model], q [H, D], k, v [Hkv, D] (pre-RoPE), position; y [H, D]. Uses/updates st
// (st.reset() first for a fresh sequence).
template <typename T>
void lizard_step(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p,
                 const LizardRope* rope, LizardState<T>& st, const T* x, const T* q, const T* k,
                 const T* v, int64_t pos, T* y);

// Convenience: lizard_step over a whole sequence from a fresh state.
template <typename T>
void lizard_forward_recurrent(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p,
                              const LizardRope* rope, const LizardInput<T>& in, T* y,
                              LizardState<T>* final_state = nullptr);

// Backward of the chunked form for upstream gradient dy [L, H, D]. Parameter gradients are
// ADDED into dp (resized and zeroed first if empty); dx, dq, dk, dv (each may be null) are
// OVERWRITTEN with this layer's contribution. Recomputes the forward internally.
template <typename T>
void lizard_backward_chunked(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p,
                             const LizardRope* rope, const LizardInput<T>& in, const T* dy,
                             LizardParamsT<T>& dp, T* dx, T* dq, T* dk, T* dv);

}  // namespace lizard
