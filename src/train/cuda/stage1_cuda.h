// Stage 1 of linearization (attention transfer, train/stage1.h) on the GPU. The same stage as Stage1
// (same trainable tensors in the same order, checkpoint, fingerprint, saved model, and the CPU teacher
// and student for the trainer's held-out evaluation), so the trainer, checkpoints and --resume work
// unchanged; only the loss and its gradients are computed on the GPU:
//   the batch's B sequences run as one [B, L] batch; the teacher's forward in bf16 (fp32 residual
//   stream: embedding, per layer RMSNorm, q/k/v with bias, RoPE + flash attention -> y_teacher, W_o,
//   RMSNorm, SwiGLU MLP), up to the last Lizard layer. On each Lizard layer, with the teacher's own
//   x_normed, q, k, v (pre-RoPE, or RoPE'd when feature_on_rope = window_rope = true):
//   log gamma (gate), Lizard forward, loss_l = mean over B*L*H*D of (y - y_teacher)^2 (fp32, fp64
//   sums), dy = 2 (y - y_teacher) / (B*L*H*D), chunked backward, gate backward.
// The teacher runs on one stream and hands each Lizard layer to a stream of its own (up to `slots` at
// once), so the layers' backward passes overlap the teacher and each other.
// Parameters are uploaded from the host values at the start of every forward_backward/evaluate (so
// the host optimizer's step is seen; feature maps rounded to bf16 for the kernels); gradients (fp32)
// are copied back into the host gradients. combine = lolcats (the baseline) runs the LoLCATs kernels
// (ops/cuda/lolcats_attention.h) on RoPE'd q, k instead of the gate and Lizard attention.
// Refused at construction (Error): feature_on_rope != window_rope (Lizard), feature_on_rope = false
// (lolcats), and what the kernels refuse at the first batch (Lizard: D in {64, 128}, F in {32, 64}).
// Plain C++ can include this header; the class exists only in builds with CUDA (LIZARD_HAVE_CUDA).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "train/stage1.h"

namespace lizard {

class Stage1Cuda : public Stage {
 public:
  // slots: Lizard layers that may run at once on streams of their own beside the teacher's forward
  // (each holds a copy of its layer's inputs and its scratch: 2 d_model + 12 (H + Hkv) D bytes per token,
  // 170 MiB for SmolLM2 at 8 x 2048 tokens).
  Stage1Cuda(std::shared_ptr<const Checkpoint> teacher, const Stage1Options& opt, int slots = 2);
  ~Stage1Cuda() override;
  Stage1Cuda(const Stage1Cuda&) = delete;
  Stage1Cuda& operator=(const Stage1Cuda&) = delete;

  std::string name() const override { return host_.name(); }
  std::vector<std::string> part_names() const override { return host_.part_names(); }
  std::vector<ParamTensor> params() override { return host_.params(); }
  LossResult forward_backward(const std::vector<const int32_t*>& seqs, int seq_len) override;
  LossResult evaluate(const std::vector<const int32_t*>& seqs, int seq_len) override;
  void save_model(const std::string& dir) const override { host_.save_model(dir); }
  std::string fingerprint() const override { return host_.fingerprint(); }
  const LlamaModel& teacher() const override { return host_.teacher(); }
  std::unique_ptr<LlamaModel> student() const override { return host_.student(); }

  const std::vector<int>& layers() const { return host_.layers(); }
  LizardCheckpoint& checkpoint() { return host_.checkpoint(); }
  // "NVIDIA H100 80GB HBM3 (79.1 GiB), teacher 270 MiB on the GPU" (for the CLI's start line).
  std::string device_description() const;

 private:
  struct Device;  // weights, activations, gradients and timers on the GPU (stage1_cuda.cpp)
  LossResult run(const std::vector<const int32_t*>& seqs, int seq_len, bool grads);

  Stage1 host_;  // trainable values and their gradients, checkpoint, CPU teacher and student
  std::unique_ptr<Device> dev_;
};

}  // namespace lizard
