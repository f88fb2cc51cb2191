// An EvalModel on the GPU (CudaModel): the same windows and metrics as the CPU path (eval/perplexity.h
// and eval/recall.h share them), only the logits come from the device.
//   - fed tokens (EvalModel::feed) are only recorded; a later forward(..., all_logits = true) runs the
//     whole sequence once with CudaModel::all_logits and hands back the rows asked for (so a caller
//     should ask for a window's scored rows in one call: preferred_chunk());
//   - forward(..., all_logits = false) prefills a one-slot batch, and a following single token at the
//     next position decodes (greedy generation for passkey / MQAR); a LoLCATs model (no GPU generation
//     kernels) re-runs all_logits instead.
// Plain C++ (no CUDA headers); without CUDA constructing one throws "built without CUDA".
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "eval/eval_model.h"
#include "model/cuda/cuda_model.h"

namespace lizard {

class CudaEvalModel : public EvalModel {
 public:
  // context: the longest sequence that will be run (the decode batch's context).
  CudaEvalModel(std::shared_ptr<cuda::CudaModel> model, std::string name, int64_t context);
  std::string name() const override { return name_; }
  int vocab_size() const override;
  int64_t context_length() const override { return context_; }
  std::span<const float> forward(std::span<const int32_t> tokens, int64_t start_pos, bool all_logits) override;
  void feed(std::span<const int32_t> tokens, int64_t start_pos) override;
  bool can_rewind() const override { return true; }  // the token history is re-run from 0
  int64_t preferred_chunk() const override { return context_; }

 private:
  void set_history(std::span<const int32_t> tokens, int64_t start_pos);

  std::shared_ptr<cuda::CudaModel> model_;
  std::string name_;
  int64_t context_;
  std::vector<int32_t> history_;  // the sequence so far
  std::vector<float> logits_;
  cuda::CudaBatch batch_;         // made on the first forward(..., false)
  bool batch_made_ = false;
  int64_t batch_pos_ = -1;        // history tokens the batch slot holds (-1: none valid)
};

// The teacher and the student of a saved Lizard checkpoint (DIR/lizard.safetensors, with its LoRA) as
// GPU eval models, for the trainer's final held-out evaluation. Throws Error (one line) when the GPU
// can not run them: no CUDA, out of memory.
struct CudaEvalPair {
  std::unique_ptr<EvalModel> teacher, student;
};
CudaEvalPair cuda_eval_models_of(const std::string& lizard_dir, int64_t context);

}  // namespace lizard
