// LizardConfig -> kernel arguments for the CUDA Lizard and LoLCATs kernels. Plain C++ (no CUDA headers),
// so it builds on machines without the toolkit.
#include "model/lizard_config.h"
#include "ops/cuda/lizard_attention.h"
#include "ops/cuda/lolcats_attention.h"
#include "util/error.h"

namespace lizard::cuda {
namespace {

// The sizes and options both kernels' arguments share (LizardAttnArgs, LolcatsAttnArgs).
template <typename Args>
Args shared_args(const LizardConfig& c, const LizardShape& s, int batch, int L) {
  Args a;
  a.B = batch;
  a.L = L;
  a.Hq = s.n_heads;
  a.Hkv = s.n_kv_heads;
  a.D = s.head_dim;
  a.F = c.feature_dim;
  a.window = c.window;
  a.act = c.feature_act == LizardConfig::FeatureAct::Exp ? FeatureAct::Exp : FeatureAct::Softmax;
  a.eps = static_cast<float>(c.eps);
  return a;
}

}  // namespace

LizardAttnArgs lizard_cuda_args(const LizardConfig& c, const LizardShape& s, int batch, int L) {
  c.validate();
  s.validate();
  LZ_CHECK(c.combine == LizardConfig::Combine::Lizard,
           "lizard attention (cuda): combine = {} is not implemented on the GPU (CPU only)", to_string(c.combine));
  LZ_CHECK(!c.gate_skips_window || c.window % 64 == 0,
           "lizard attention (cuda): gate_skips_window needs a window that is a multiple of 64 on the GPU, got {} "
           "(use --device cpu)",
           c.window);
  LizardAttnArgs a = shared_args<LizardAttnArgs>(c, s, batch, L);
  a.n_meta = c.meta_tokens;
  a.meta_per_head = c.meta_per_head;
  a.alpha_per_head = !c.alpha_per_layer;
  a.gate_per_head = c.gate == LizardConfig::Gate::PerHead;
  a.meta_weights_gate = c.meta_weights_gate;
  a.shared_normaliser = c.shared_normaliser;
  a.gate_skips_window = c.gate_skips_window;
  a.separate_feature_qk = c.feature_on_rope != c.window_rope;
  return a;
}

LolcatsAttnArgs lolcats_cuda_args(const LizardConfig& c, const LizardShape& s, int batch, int L) {
  c.validate();
  s.validate();
  LZ_CHECK(c.combine == LizardConfig::Combine::Lolcats, "lolcats attention (cuda): combine = {}, expected lolcats",
           to_string(c.combine));
  LZ_CHECK(c.feature_on_rope,
           "lolcats attention (cuda): feature_on_rope = false needs a second (un-rotated) q/k pair; the GPU kernel "
           "feeds the RoPE'd q, k to both branches (LizardConfig::lolcats() sets it true)");
  return shared_args<LolcatsAttnArgs>(c, s, batch, L);
}

}  // namespace lizard::cuda
