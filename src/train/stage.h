// A training stage: what the trainer (train/trainer.h) optimises. The trainer owns the loop,
// optimizer, schedule, data order, logging, checkpoints and evaluation; a stage owns the model
// pieces, the loss and its gradients. Stage 1 (attention transfer) is train/stage1.h; stage 2
// (LoRA fine-tuning) plugs in the same way.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/llama.h"
#include "train/optimizer.h"

namespace lizard {

// Loss over a batch: the total the gradients belong to, and its components (e.g. one per layer;
// total = sum of parts).
struct LossResult {
  double total = 0;
  std::vector<double> parts;
  std::vector<std::pair<std::string, double>> seconds;  // where the time went (logged)
};

class Stage {
 public:
  virtual ~Stage() = default;
  virtual std::string name() const = 0;       // "attention-transfer", ...
  virtual std::vector<std::string> part_names() const = 0;  // labels of LossResult::parts
  // The trainable tensors, in a fixed order (the optimizer's moments follow it). Pointers stay valid
  // for the stage's lifetime.
  virtual std::vector<ParamTensor> params() = 0;
  // seqs: batch of token sequences, each seq_len + 1 ids (inputs, then the shifted targets).
  // Overwrites every gradient with d(total)/d(param) for this batch.
  virtual LossResult forward_backward(const std::vector<const int32_t*>& seqs, int seq_len) = 0;
  virtual LossResult evaluate(const std::vector<const int32_t*>& seqs, int seq_len) = 0;  // no gradients
  // Writes the usable model (what `lizard generate -m DIR` opens) into dir, atomically per file.
  virtual void save_model(const std::string& dir) const = 0;
  // Identifies the model being trained (config, teacher), so that a resume can refuse a mismatch.
  virtual std::string fingerprint() const = 0;
  // The frozen teacher and the student as it now stands, for held-out perplexity and KL; the
  // student may be null when it cannot be built yet.
  virtual const LlamaModel& teacher() const = 0;
  virtual std::unique_ptr<LlamaModel> student() const = 0;
};

}  // namespace lizard
