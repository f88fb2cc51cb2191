// A Lizard layer as a SequenceMixer: one teacher layer's attention replaced by the CPU Lizard layer
// (ops/cpu/lizard_attention.h). The sequence state is constant in size: S, z and the ring of the
// last w keys/values (LizardState), whatever the context length.
//   forward: n == 1 -> recurrent step; n > 1 -> chunked form, starting from the state when it
//   already holds tokens (a later chat turn or the next max_batch piece of a long prompt).
//   LoLCATs layers can not continue a chunked forward: their later chunks go token by token.
#pragma once
#include <memory>
#include <string>

#include "model/config.h"
#include "model/lizard_config.h"
#include "model/sequence_mixer.h"
#include "ops/cpu/lizard_attention.h"

namespace lizard {

struct LizardMixerState : MixerState {
  LizardConfig cfg;
  LizardShape shape;
  LizardState<float> s;
  std::vector<int32_t> pos;  // scratch: positions of one chunk

  LizardMixerState(const LizardConfig& c, const LizardShape& sh) : cfg(c), shape(sh) { s.reset(c, sh); }
  void reset() override { s.reset(cfg, shape); }
  bool truncate(int64_t n_keep) override;  // only to 0 (reset) or to where it is
  size_t bytes() const override { return s.bytes(); }
  // {u32 "LZMX", u64 size, LizardState::save() bytes}
  void serialize(std::ostream& out) const override;
  void deserialize(std::istream& in) override;
};

class LizardMixer : public SequenceMixer {
 public:
  // teacher: the model's config (shape and RoPE settings); params: this layer's, checked here.
  LizardMixer(const LizardConfig& c, const ModelConfig& teacher, LizardParams params);
  // "lizard-" + a hash of config and parameters, so that a saved state only loads onto the same layer.
  std::string name() const override { return name_; }
  std::unique_ptr<MixerState> make_state(int64_t max_ctx) const override;
  void forward(const float* x_normed, const float* q, const float* k, const float* v, int64_t n, int64_t pos0,
               MixerState& st, float* y) const override;

  const LizardConfig& config() const { return cfg_; }
  const LizardShape& shape() const { return shape_; }
  const LizardParams& params() const { return p_; }
  const LizardRope& rope() const { return rope_; }

 private:
  LizardConfig cfg_;
  LizardShape shape_;
  LizardParams p_;
  LizardRope rope_;
  std::string name_;
};

}  // namespace lizard
