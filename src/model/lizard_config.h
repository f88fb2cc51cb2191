// Lizard layer options (every option of shared/LIZARD.md, with its default) and the per-layer
// trainable parameters. The math lives in ops/cpu/lizard_attention.h.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace lizard {

struct LizardConfig {
  enum class FeatureAct { Softmax, Exp };
  enum class Gate { Scalar, PerHead };
  enum class Combine { Lizard, Lolcats };

  FeatureAct feature_act = FeatureAct::Softmax;  // phi = [softmax(xW), softmax(-xW)] | [exp, exp]
  int feature_dim = 64;                          // F (phi has 2F entries)
  bool feature_on_rope = false;                  // phi sees q, k after RoPE
  Gate gate = Gate::Scalar;                      // W_g: d_model x 1 | d_model x H
  double gate_init = 0.95;                       // sigmoid(b_g) at initialisation
  int window = 128;                              // w: anchor window length (tokens, incl. self)
  int meta_tokens = 4;                           // m: meta-memory logits (attention sinks), may be 0
  bool meta_per_head = false;                    // mu: m (per layer) | H x m
  bool window_rope = false;                      // RoPE on q, k in the window scores
  bool alpha_per_layer = false;                  // alpha: H (per head, default) | 1
  double alpha_init = 1.0;
  Combine combine = Combine::Lizard;             // lolcats: LoLCATs baseline (LIZARD.md section 4)
  // Not in the paper (an option to measure): the gated branch weighted by the meta sinks' share of the
  // window softmax, y = p_meta y_gate + alpha y_anchor, so that the window and the global branch split one
  // unit of attention per query as LoLCATs' shared normaliser does. Needs meta_tokens >= 1.
  bool meta_weights_gate = false;
  // Not in the paper either (needs meta_weights_gate): the sinks' mass scaled by the gated branch's own
  // normaliser d_i = den_i + eps, so the two branches share one normaliser as in LoLCATs, with decay:
  //   y_i = (E_i N_i + alpha sum_win e^{s_it} v_t) / (E_i d_i + sum_win e^{s_it}),  E_i = sum_j e^{mu_j}.
  // In terms of p = p_meta: y = (p N + alpha A) / (p d + 1 - p). A query that matches its decayed history
  // (large d) leans on the gated branch; one that does not, on the window.
  bool shared_normaliser = false;
  // Not in the paper: the gated branch covers only the keys outside the window (t <= i - w), as LoLCATs' linear
  // part does, instead of every key t <= i. The window's keys then reach a query through the softmax alone.
  // The recurrent state adds a ring of the window's feature keys and gammas (a token joins S w steps after it
  // arrives). CPU: every form. GPU: where w is a multiple of 64, the chunked forward and backward (training,
  // all_logits evaluation) and generation (decode kernel, prompt state, state files).
  bool gate_skips_window = false;
  int chunk = 64;                                // C of the chunked algorithm
  double eps = 1e-6;                             // gate-branch normaliser: num / (den + eps)
  double lolcats_window_init = -2.197;           // f: window weight sigmoid(f) ~ 0.1
  std::vector<int> lizard_layers;                // empty: every layer is Lizard (else: hybrid)
  // JSON "lizard_layers": "none": no layer is Lizard (lizard_layers must then be empty). The model is
  // the teacher itself; only stage 2 takes it (LoRA on the teacher: the yardstick for a Lizard
  // student's stage 2 at the same budget). Stage 1 and init-lizard refuse it.
  bool no_lizard_layers = false;

  // The single source of truth for which layers are Lizard (lizard_layers, no_lizard_layers).
  bool is_lizard_layer(int layer) const;
  bool any_lizard_layer(int n_layers) const;  // is_lizard_layer(l) for some l in [0, n_layers)
  // Throws Error naming the bad field. n_layers >= 0 also checks lizard_layers against it.
  void validate(int n_layers = -1) const;

  // The LoLCATs baseline as published: combine = lolcats, feature maps on RoPE'd q, k.
  static LizardConfig lolcats();
  // No Lizard layer ("lizard_layers": "none"): the teacher, for a LoRA-only stage 2.
  static LizardConfig none();
};

// Throws Error unless c.any_lizard_layer(n_layers): "<context> needs at least one Lizard layer, ...".
// Stage 1 and init-lizard call it; "lizard_layers": "none" is only for a LoRA-only stage 2.
void require_lizard_layers(const LizardConfig& c, int n_layers, const std::string& context);
// Which layers are Lizard, for people: "none", "all" or the listed layers ascending ("0,2,5").
std::string lizard_layers_text(const LizardConfig& c);

nlohmann::json lizard_config_to_json(const LizardConfig& c);
// Missing keys keep their default; unknown keys, bad enum names or out-of-range values throw Error.
LizardConfig lizard_config_from_json(const nlohmann::json& j);
std::string lizard_config_to_string(const LizardConfig& c);  // pretty JSON
LizardConfig lizard_config_from_string(const std::string& s);

const char* to_string(LizardConfig::FeatureAct a);
const char* to_string(LizardConfig::Gate g);
const char* to_string(LizardConfig::Combine c);

// Teacher dimensions the layer is built on.
struct LizardShape {
  int d_model = 0;
  int n_heads = 0;     // H query heads
  int n_kv_heads = 0;  // Hkv (GQA: query head h reads kv head h / (H / Hkv))
  int head_dim = 0;    // D
  void validate() const;
  int kv_head(int h) const { return h / (n_heads / n_kv_heads); }
};

// Trainable parameters of one Lizard layer, row-major (PyTorch order: {out, in} for weights).
template <typename T>
struct LizardParamsT {
  std::vector<T> feat_q;     // [H, D, F]    phi_q(x) uses x @ feat_q[h]
  std::vector<T> feat_k;     // [H, D, F]    one key map per *query* head
  std::vector<T> gate_w;     // [G, d_model] G = 1 (scalar gate) or H (per_head)
  std::vector<T> gate_b;     // [G]
  std::vector<T> meta;       // [Hm, m]      Hm = 1 or H (meta_per_head)
  std::vector<T> alpha;      // [H] or [1] (alpha_per_layer)
  std::vector<T> lolcats_f;  // [H]          LoLCATs window weight logit

  // Every tensor with its canonical suffix ("feat_q", ...) and shape, in a fixed order.
  struct Entry {
    const char* name;
    std::vector<int64_t> shape;
    std::vector<T>* data;
  };
  std::vector<Entry> entries(const LizardConfig& c, const LizardShape& s);
  size_t numel() const;
  void resize(const LizardConfig& c, const LizardShape& s);  // zero-filled
  void check(const LizardConfig& c, const LizardShape& s) const;  // sizes; throws Error
};
using LizardParams = LizardParamsT<float>;

// Deterministic initialisation from a seed (SplitMix64 + Box-Muller, identical on every platform):
//   feat_q, feat_k ~ N(0, 0.02^2): xW is small, so both softmaxes start near uniform (phi ~ 1/F)
//     and the gate branch starts as a decayed average of values.
//   gate_w ~ N(0, (0.1 / sqrt(d_model))^2), gate_b = logit(gate_init): sigmoid starts at gate_init.
//   meta = 0 (m sinks of weight 1 each), alpha = alpha_init, lolcats_f = lolcats_window_init.
// `layer` is mixed into the seed so that layers differ.
LizardParams init_lizard_params(const LizardConfig& c, const LizardShape& s, uint64_t seed,
                                int layer = 0);

template <typename To, typename From>
LizardParamsT<To> cast_params(const LizardParamsT<From>& p) {
  auto cv = [](const std::vector<From>& v) { return std::vector<To>(v.begin(), v.end()); };
  return {cv(p.feat_q), cv(p.feat_k), cv(p.gate_w), cv(p.gate_b),
          cv(p.meta),   cv(p.alpha),  cv(p.lolcats_f)};
}

}  // namespace lizard
