// The GPU model (model/cuda/cuda_model.h) behind generate()'s interfaces: one sequence (a batch of one
// slot) or a batch of sequences. Plain C++; without CUDA, making the CudaModel already throws.
#pragma once
#include <algorithm>
#include <span>
#include <vector>

#include "generate/generate.h"
#include "model/cuda/cuda_model.h"
#include "util/error.h"

namespace lizard {

// Slot 0 of a one-slot batch: the prompt is a prefill from position 0, then one token per call; several
// tokens on a slot that holds some (a further turn, a restored state) continue it (CudaModel::extend).
class CudaSequence : public SequenceModel {
 public:
  CudaSequence(cuda::CudaModel& m, int64_t ctx) : m_(m), batch_(m.new_batch(1, ctx)) {}
  int64_t context_length() const override { return batch_.context(); }
  int64_t n_past() const override { return batch_.n_past(0); }
  std::span<const float> forward(std::span<const int32_t> tokens) override {
    if (n_past() == 0) {
      logits_ = m_.prefill(batch_, 0, tokens.data(), static_cast<int64_t>(tokens.size()));
    } else if (tokens.size() == 1) {
      const bool active = true;
      logits_ = m_.decode(batch_, tokens.data(), &active);
    } else {
      logits_ = m_.extend(batch_, 0, tokens.data(), static_cast<int64_t>(tokens.size()));
    }
    return logits_;
  }
  // The sequence to / from a CPU LlamaState (what generate/state_io.h saves and loads).
  void download(LlamaState& st) { m_.download_slot(batch_, 0, st); }
  void upload(const LlamaState& st) { m_.upload_slot(batch_, 0, st); }
  const cuda::CudaBatch& batch() const { return batch_; }

 private:
  cuda::CudaModel& m_;
  cuda::CudaBatch batch_;
  std::vector<float> logits_;
};

// A batch of `slots` sequences. A prompt equal to the previous slot's is prefilled once and copied.
class CudaBatchModel : public BatchModel {
 public:
  CudaBatchModel(cuda::CudaModel& m, int slots, int64_t ctx) : m_(m), batch_(m.new_batch(slots, ctx)) {}
  int slots() const override { return batch_.slots(); }
  int64_t context_length() const override { return batch_.context(); }
  std::vector<float> prefill(int slot, std::span<const int32_t> prompt) override {
    if (last_slot_ >= 0 && std::equal(prompt.begin(), prompt.end(), last_prompt_.begin(), last_prompt_.end())) {
      m_.copy_slot(batch_, last_slot_, slot);
      return last_logits_;
    }
    last_logits_ = m_.prefill(batch_, slot, prompt.data(), static_cast<int64_t>(prompt.size()));
    last_prompt_.assign(prompt.begin(), prompt.end());
    last_slot_ = slot;
    return last_logits_;
  }
  std::vector<float> decode(const int32_t* tokens, const bool* active) override {
    last_slot_ = -1;  // the slots move on: no copy from here
    return m_.decode(batch_, tokens, active);
  }
  const cuda::CudaBatch& batch() const { return batch_; }

 private:
  cuda::CudaModel& m_;
  cuda::CudaBatch batch_;
  int last_slot_ = -1;
  std::vector<int32_t> last_prompt_;
  std::vector<float> last_logits_;
};

}  // namespace lizard
