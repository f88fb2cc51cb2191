// Stage 2 of linearization (LoRA fine-tuning, train/stage2.h) on the GPU: the same model, loss,
// parameters (names, order, layout), checkpoints and fingerprint as the CPU Stage2, so the trainer,
// resume and `lizard export` work unchanged. Plain C++ can include this header (no CUDA headers).
//
// Per batch of B sequences of L tokens (T = B * L rows), bf16 storage with fp32 accumulation:
//   forward: embedding -> per layer [RMSNorm, q/k/v (+ bias) + LoRA (x A^T, then scale * (.) B^T added),
//   mixer (Lizard: gate + chunked Lizard attention, RoPE first when feature_on_rope = window_rope = true;
//   combine = lolcats: RoPE + the LoLCATs kernels; softmax layers of a hybrid: RoPE + flash attention with
//   lse), W_o + residual, RMSNorm, SwiGLU MLP +
//   residual] -> final RMSNorm -> head -> cross-entropy, the logits kLogitChunkElems at a time (fp32)
//   with their backward at once, so [T, vocab] never exists whole.
//   Every layer keeps what its backward needs (llm.c style: residual input, normed input, q, k, v,
//   attention output, mid residual, gate/up, norm statistics, LoRA x A^T, lse or log gamma). With
//   recompute, only the residual inputs are kept and each layer's forward is rerun before its backward.
//   backward: input gradients only through the frozen teacher (no teacher dW is ever computed); LoRA
//   dA, dB; Lizard parameter gradients when train_lizard (the gate's input gradient always flows).
// The optimizer runs on the host: each forward_backward / evaluate uploads the host copies of the LoRA
// (bf16) and Lizard parameters first, and forward_backward overwrites the host gradients.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/lizard_checkpoint.h"
#include "train/stage.h"
#include "train/stage2.h"

namespace lizard {

#ifdef LIZARD_HAVE_CUDA
class Stage2Cuda : public Stage {
 public:
  // As Stage2: lizard is stage 1's checkpoint (its LoRA, if any, is replaced by fresh adapters).
  // Uploads the teacher to the current device (bf16). Throws Error when the GPU kernels cannot run
  // this model (head_dim not 64/128, feature_dim not 32/64, lolcats without feature_on_rope, ...).
  Stage2Cuda(std::shared_ptr<const Checkpoint> teacher, const LizardCheckpoint& lizard, const Stage2Options& opt);
  ~Stage2Cuda() override;

  std::string name() const override { return "lora-finetune"; }  // as Stage2: checkpoints interchange
  std::vector<std::string> part_names() const override { return {"cross-entropy"}; }
  std::vector<ParamTensor> params() override;
  // seconds: {"forward_backward", the step}; with LIZARD_STAGE2_PROFILE set when this stage was made,
  // also where it went (upload, forward, head_ce_fwd_bwd, backward, download; each lap synchronises).
  LossResult forward_backward(const std::vector<const int32_t*>& seqs, int seq_len) override;
  LossResult evaluate(const std::vector<const int32_t*>& seqs, int seq_len) override;
  void save_model(const std::string& dir) const override;
  std::string fingerprint() const override;
  const LlamaModel& teacher() const override;
  std::unique_ptr<LlamaModel> student() const override;

  LizardCheckpoint checkpoint() const;  // Lizard params and LoRA adapters as they stand
  size_t device_bytes() const;          // GPU memory held (weights + activations + workspaces)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};
#endif

// Rows of logits computed at a time: max(1, kLogitChunkElems / vocab) rows of fp32 (512 MiB).
inline constexpr int64_t kLogitChunkElems = int64_t(1) << 27;

// The CUDA stage 2 as a Stage; throws Error("... built without CUDA") when CUDA is off.
std::unique_ptr<Stage> make_stage2_cuda(std::shared_ptr<const Checkpoint> teacher, const LizardCheckpoint& lizard,
                                        const Stage2Options& opt);

}  // namespace lizard
