// LizardConfig -> kernel arguments for the CUDA LoLCATs kernels. Plain C++ (no CUDA headers), so it
// builds on machines without the toolkit.
#include "model/lizard_config.h"
#include "ops/cuda/lolcats_attention.h"
#include "util/error.h"

namespace lizard::cuda {

LolcatsAttnArgs lolcats_cuda_args(const LizardConfig& c, const LizardShape& s, int batch, int L) {
  c.validate();
  s.validate();
  LZ_CHECK(c.combine == LizardConfig::Combine::Lolcats, "lolcats attention (cuda): combine = {}, expected lolcats",
           to_string(c.combine));
  LZ_CHECK(c.feature_on_rope,
           "lolcats attention (cuda): feature_on_rope = false needs a second (un-rotated) q/k pair; the GPU kernel "
           "feeds the RoPE'd q, k to both branches (LizardConfig::lolcats() sets it true)");
  LolcatsAttnArgs a;
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

}  // namespace lizard::cuda
