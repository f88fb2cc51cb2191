// Stage 2 of linearization, fine-tuning (shared/LIZARD.md section 6): the model with its Lizard
// layers (stage 1's output) is trained on next-token cross-entropy through the frozen teacher
// weights, with LoRA adapters (train/lora.h) on W_q, W_k, W_v; the Lizard parameters stay frozen
// unless train_lizard. Loss of a batch = mean over its B * L predicted tokens of -log p(next token).
//
// Stage2Net is the training forward and hand-written backward of the whole decoder on the CPU, in
// T = float (training) or double (gradient checks): embedding -> per layer [RMSNorm, q/k/v
// projections (+ bias, + LoRA), mixer (Lizard: chunked forward/backward; softmax layers of a hybrid:
// RoPE + causal attention), W_o, residual, RMSNorm, SwiGLU MLP, residual] -> final RMSNorm -> output
// head (tied or not) -> cross-entropy. Frozen weights are dequantized to T once (any dtype), so
// memory is about 4 bytes per teacher parameter in float. With recompute, only each layer's input is
// kept and its activations are recomputed during the backward (memory ~ one layer's activations).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "model/checkpoint.h"
#include "model/lizard_checkpoint.h"
#include "model/llama.h"
#include "ops/cpu/lizard_attention.h"
#include "train/lora.h"
#include "train/stage.h"

namespace lizard {

template <typename T>
class Stage2Net {
 public:
  struct Adapter {
    std::vector<T> a, b;    // A [r, d_model], B [out, r]
    std::vector<T> ga, gb;  // gradients
  };

  // teacher: frozen weights; lizard: Lizard layers (params copied) and lizard.lora (must be set).
  Stage2Net(const Checkpoint& teacher, const LizardCheckpoint& lizard);

  // One sequence: predicts seq[1..L] from seq[0..L). Returns weight * (summed cross-entropy, nats).
  // With grads, ADDS weight * d(summed CE)/d(param) into the adapters' ga, gb and (train_lizard) into
  // lizard_grad.
  double run(const int32_t* seq, int L, double weight, bool grads);
  void zero_grads();

  bool recompute = false;
  bool train_lizard = false;
  int rank = 0;
  T scale = 0;
  std::map<int, std::map<std::string, Adapter>> lora;  // layer -> "q" | "k" | "v"
  std::map<int, LizardParamsT<T>> lizard, lizard_grad;   // Lizard layers
  LizardConfig lizard_config;
  LizardShape lizard_shape;

 private:
  struct W {
    std::vector<T> attn_norm, ffn_norm, q, k, v, o, gate, up, down, qb, kb, vb;
  };
  struct Acts {
    std::vector<T> x, xn1, q, k, v, qr, kr, att, xm, xn2, g, u, a;
    std::map<std::string, std::vector<T>> h;  // LoRA x A^T per target
  };
  void layer_forward(int li, const T* x_in, int L, Acts& a, T* x_out);
  void layer_backward(int li, Acts& a, int L, const T* dx_out, T* dx_in);

  ModelConfig mc_;
  std::vector<W> w_;
  std::vector<T> embd_, out_norm_, head_;  // head_ empty: tied to embd_
  LizardRope rope_;
  LizardParamsT<T> scratch_grad_;
};

struct Stage2Options {
  LoraOptions lora;
  uint64_t init_seed = 1234;   // LoRA A initialisation
  bool train_lizard = false;   // also train the Lizard parameters (stage 1's set)
  bool recompute = false;      // activation recomputation per layer
  int seq_len = 256;           // longest sequence (the evaluation models' context)
  int threads = 0;             // 0: all cores
  size_t fp32_cache_bytes = size_t(2) << 30;  // for the evaluation models (teacher, student)
};

// Shared by Stage2 and the CUDA stage 2 (train/cuda/stage2_cuda.h), so that both start from, and
// identify, the same model: stage 1's checkpoint with fresh adapters (init_lora(opt.lora, opt.init_seed);
// any LoRA it had is replaced), and the run's fingerprint (config, teacher, stage 1's parameters, options).
LizardCheckpoint stage2_start(const ModelConfig& teacher, const LizardCheckpoint& lizard, const Stage2Options& opt);
std::string stage2_fingerprint(const LizardCheckpoint& start, const Stage2Options& opt);

// Also shared, so that both stages' checkpoints interchange: the trainable tensors in one order (per
// layer the LoRA a, b of each target; with train_lizard, each non-empty Lizard tensor), the model as
// it stands, and a CPU model of it. AdapterMap: layer -> target -> {a, b, ga, gb} (std::vector<float>).
template <typename AdapterMap>
std::vector<ParamTensor> stage2_params(AdapterMap& lora, std::map<int, LizardParams>& lizard,
                                       std::map<int, LizardParams>& lizard_grad, const LizardCheckpoint& start,
                                       bool train_lizard) {
  std::vector<ParamTensor> v;
  for (auto& [l, m] : lora)
    for (auto& [t, a] : m) {
      v.push_back({fmt::format("blk.{}.lora.{}.a", l, t), &a.a, &a.ga});
      v.push_back({fmt::format("blk.{}.lora.{}.b", l, t), &a.b, &a.gb});
    }
  if (train_lizard)
    for (auto& [l, p] : lizard) {
      auto pe = p.entries(start.config, start.shape);
      auto ge = lizard_grad.at(l).entries(start.config, start.shape);
      for (size_t e = 0; e < pe.size(); ++e)
        if (!pe[e].data->empty())
          v.push_back({fmt::format("blk.{}.lizard.{}", l, pe[e].name), pe[e].data, ge[e].data});
    }
  return v;
}

template <typename AdapterMap>
LizardCheckpoint stage2_checkpoint(const LizardCheckpoint& start, const std::map<int, LizardParams>& lizard,
                                   const AdapterMap& lora) {
  LizardCheckpoint ck = start;
  for (auto& [l, p] : lizard) ck.layers[l] = p;
  for (auto& [l, m] : lora)
    for (auto& [t, a] : m) ck.lora.layers[l][t] = LoraAdapter{a.a, a.b};
  return ck;
}

// The student on the CPU, with the teacher model's threads and context.
std::unique_ptr<LlamaModel> stage2_student(std::shared_ptr<const Checkpoint> teacher_ckpt, const LlamaModel& teacher,
                                           const Stage2Options& opt, const LizardCheckpoint& model);

class Stage2 : public Stage {
 public:
  // lizard: stage 1's checkpoint (its LoRA, if any, is replaced by fresh adapters).
  Stage2(std::shared_ptr<const Checkpoint> teacher, const LizardCheckpoint& lizard, const Stage2Options& opt);

  std::string name() const override { return "lora-finetune"; }
  std::vector<std::string> part_names() const override { return {"cross-entropy"}; }
  std::vector<ParamTensor> params() override;
  LossResult forward_backward(const std::vector<const int32_t*>& seqs, int seq_len) override;
  LossResult evaluate(const std::vector<const int32_t*>& seqs, int seq_len) override;
  void save_model(const std::string& dir) const override;
  std::string fingerprint() const override;
  const LlamaModel& teacher() const override { return *teacher_; }
  std::unique_ptr<LlamaModel> student() const override;

  // The model as it stands: Lizard params and LoRA adapters.
  LizardCheckpoint checkpoint() const;
  Stage2Net<float>& net() { return *net_; }

 private:
  LossResult run(const std::vector<const int32_t*>& seqs, int seq_len, bool grads);

  std::shared_ptr<const Checkpoint> ckpt_;
  Stage2Options opt_;
  LizardCheckpoint base_;   // stage 1's model (LoRA set to the initial adapters)
  std::unique_ptr<Stage2Net<float>> net_;
  std::unique_ptr<LlamaModel> teacher_;
};

}  // namespace lizard
