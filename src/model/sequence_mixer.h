// The token-mixing part of a decoder layer (what sits between W_q/W_k/W_v and W_o), behind an
// interface so that each layer can use softmax attention (the teacher) or a Lizard layer.
// A mixer holds parameters only and is shared by all sequences; everything that grows with the
// sequence lives in its MixerState, one per layer per sequence.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "ops/cpu/softmax_attention.h"

namespace lizard {

struct MixerState {
  virtual ~MixerState() = default;
  virtual void reset() = 0;  // forget the sequence
  // Keep positions < n_keep only, so the sequence can continue from there. Recurrent states can
  // not rewind: they return false unless n_keep is 0 (a reset).
  virtual bool truncate(int64_t n_keep) {
    if (n_keep != 0) return false;
    reset();
    return true;
  }
  virtual size_t bytes() const { return 0; }  // memory held, for reports
  // Saving a conversation (generate/state_io.h): write what the sequence holds, and read it back
  // into a state made by the same mixer. Mixers whose state can not be saved keep the defaults,
  // which throw Error. deserialize throws Error on data that does not fit this state.
  virtual void serialize(std::ostream& out) const;
  virtual void deserialize(std::istream& in);
};

class SequenceMixer {
 public:
  virtual ~SequenceMixer() = default;
  virtual std::string name() const = 0;
  // A fresh state for sequences of up to max_ctx positions.
  virtual std::unique_ptr<MixerState> make_state(int64_t max_ctx) const = 0;
  // One chunk of n tokens at positions pos0 .. pos0+n-1; st already holds positions < pos0.
  //   x_normed [n, d_model]   the layer input after the attention RMSNorm (Lizard's gate reads it)
  //   q [n, H*D], k [n, Hkv*D], v [n, Hkv*D]   projections with bias, before RoPE
  //   y [n, H*D]               output, before W_o
  // Must not keep pointers to the inputs. Called from one thread; may use OpenMP inside.
  virtual void forward(const float* x_normed, const float* q, const float* k, const float* v, int64_t n,
                       int64_t pos0, MixerState& st, float* y) const = 0;
};

// The teacher's attention: RoPE on q and k, an fp32 KV cache, causal softmax with GQA.
class SoftmaxMixer : public SequenceMixer {
 public:
  explicit SoftmaxMixer(const ModelConfig& cfg, int64_t window = 0);
  std::string name() const override { return "softmax"; }
  std::unique_ptr<MixerState> make_state(int64_t max_ctx) const override;
  void forward(const float* x_normed, const float* q, const float* k, const float* v, int64_t n, int64_t pos0,
               MixerState& st, float* y) const override;

  const std::vector<float>& inv_freq() const { return inv_freq_; }
  const AttentionDims& dims() const { return dims_; }

 private:
  AttentionDims dims_;
  std::vector<float> inv_freq_;
  float scale_;
  int64_t window_;
};

}  // namespace lizard
