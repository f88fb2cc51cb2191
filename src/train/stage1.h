// Stage 1 of linearization, attention transfer (shared/LIZARD.md section 6): the teacher is frozen;
// one teacher forward per sequence records, for every Lizard layer, the mixer's inputs (x_normed,
// q, k, v before RoPE) and the softmax attention output y (before W_o). Each Lizard layer is then
// trained to reproduce y from those same inputs:
//   loss = sum over Lizard layers l of mean_{batch, position, head, dim} (y_lizard_l - y_teacher_l)^2
// with gradients from the chunked backward (ops/cpu/lizard_attention.h). Layers see the teacher's
// own hidden states, so they train independently and all at once.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/lizard_checkpoint.h"
#include "model/llama.h"
#include "model/load_model.h"
#include "ops/cpu/lizard_attention.h"
#include "train/stage.h"

namespace lizard {

// What one layer's mixer saw and produced during one sequence (rows = positions).
struct LayerCapture {
  int64_t n = 0;                   // rows written
  std::vector<float> x, q, k, v;   // [n, d_model], [n, H*D], [n, Hkv*D] x2
  std::vector<float> y;            // [n, H*D] teacher attention output
};

// Wraps the teacher's softmax mixer: runs it unchanged and, while *active is true, copies its
// inputs and output into sink at rows pos0 .. pos0+n-1.
class CaptureMixer : public SequenceMixer {
 public:
  CaptureMixer(std::shared_ptr<const SequenceMixer> inner, int d_model, int q_width, int kv_width,
               LayerCapture* sink, const bool* active)
      : inner_(std::move(inner)), d_(d_model), qw_(q_width), kvw_(kv_width), sink_(sink), active_(active) {}
  std::string name() const override { return inner_->name(); }  // same computation as the teacher's
  std::unique_ptr<MixerState> make_state(int64_t max_ctx) const override { return inner_->make_state(max_ctx); }
  void forward(const float* x_normed, const float* q, const float* k, const float* v, int64_t n, int64_t pos0,
               MixerState& st, float* y) const override;

 private:
  std::shared_ptr<const SequenceMixer> inner_;
  int d_, qw_, kvw_;
  LayerCapture* sink_;
  const bool* active_;
};

// Stage-1 loss of one layer on one sequence, weighted: returns weight * mean((y - y_teacher)^2)
// and, when grad is not null, ADDS weight * its gradient w.r.t. every parameter into *grad.
// T = float for training, double for gradient checks.
template <typename T>
double stage1_layer_loss(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p,
                         const LizardRope* rope, const LizardInput<T>& in, const T* y_teacher, double weight,
                         LizardParamsT<T>* grad);

// Trainable tensors of one layer for a config (combine = lizard: feature maps, gate, meta logits,
// alpha; lolcats: feature maps and the window weight f).
std::vector<const char*> stage1_trainable(const LizardConfig& c);

struct Stage1Options {
  LizardConfig config;
  uint64_t init_seed = 1234;   // init_lizard_params seed
  TeacherRecord teacher;       // recorded in the checkpoint (fingerprint_teacher of the path)
  int seq_len = 256;           // longest sequence the teacher runs (its context is set to it)
  int threads = 0;             // 0: all cores
  size_t fp32_cache_bytes = size_t(2) << 30;  // dequantized teacher weights for faster prefill
};

class Stage1 : public Stage {
 public:
  Stage1(std::shared_ptr<const Checkpoint> teacher, const Stage1Options& opt);

  std::string name() const override { return "attention-transfer"; }
  std::vector<std::string> part_names() const override;
  std::vector<ParamTensor> params() override;
  LossResult forward_backward(const std::vector<const int32_t*>& seqs, int seq_len) override;
  LossResult evaluate(const std::vector<const int32_t*>& seqs, int seq_len) override;
  void save_model(const std::string& dir) const override;
  std::string fingerprint() const override;
  const LlamaModel& teacher() const override { return *teacher_; }
  std::unique_ptr<LlamaModel> student() const override;

  const std::vector<int>& layers() const { return layers_; }
  LizardCheckpoint& checkpoint() { return ck_; }
  const LizardCheckpoint& checkpoint() const { return ck_; }
  // Runs the teacher on one sequence, filling captures() (exposed for tests).
  void capture(const int32_t* tokens, int n);
  const std::vector<LayerCapture>& captures() const { return caps_; }

 private:
  LossResult run(const std::vector<const int32_t*>& seqs, int seq_len, bool grads);

  std::shared_ptr<const Checkpoint> ckpt_;
  Stage1Options opt_;
  LizardCheckpoint ck_;
  std::vector<int> layers_;               // Lizard layer ids, ascending
  std::vector<LizardParams> grads_;       // per entry of layers_
  std::vector<LayerCapture> caps_;        // per entry of layers_
  std::unique_ptr<LlamaModel> teacher_;   // capture mixers on the Lizard layers
  std::unique_ptr<LlamaState> state_;
  bool capturing_ = false;
  LizardRope rope_;
};

}  // namespace lizard
