// A teacher's weights (and a Lizard checkpoint's layer parameters) on the GPU, for the CUDA model
// (inference, model/cuda/cuda_model.h) and the CUDA training stages (train/cuda/). Every matrix is
// dequantized on the CPU (formats/quant.h) to fp32, rounded to bf16 and uploaded once; norms in bf16
// (the fused kernels take weights in the activation type). Plain C++ can include this header.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/lizard_checkpoint.h"
#include "model/lizard_config.h"

namespace lizard::cuda {

// W [out, in] bf16 (PyTorch layout), bias [out] bf16 or null.
struct DeviceLinear {
  const void* w = nullptr;
  const void* bias = nullptr;
  int in = 0, out = 0;
};

struct DeviceLayer {
  const void* attn_norm = nullptr;  // [d] bf16
  const void* ffn_norm = nullptr;   // [d] bf16
  DeviceLinear q, k, v, o, gate, up, down;
};

class TeacherWeights {
 public:
  // Uploads to the current device. Throws Error (one line) when the GPU is missing or out of memory.
  // lora (optional, inference): stage 2's adapters merged into W_q/W_k/W_v before rounding to bf16
  // (W += (alpha / rank) B A), so generation costs nothing extra. Training keeps adapters separate.
  explicit TeacherWeights(const Checkpoint& ck, const LoraSet* lora = nullptr);
  // Random weights of cfg's shape made on the GPU (uniform, 1/sqrt(fan-in) for matrices, norms 1): a
  // synthetic model for speed and memory benchmarks (bench generate --shape); no checkpoint involved.
  TeacherWeights(const ModelConfig& cfg, uint64_t seed);
  ~TeacherWeights();
  TeacherWeights(const TeacherWeights&) = delete;
  TeacherWeights& operator=(const TeacherWeights&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const void* embedding() const { return embd_; }       // [vocab, d] bf16
  const void* out_norm() const { return out_norm_; }    // [d] bf16
  const DeviceLinear& head() const { return head_; }    // [vocab, d]; the embedding when tied
  const DeviceLayer& layer(int i) const { return layers_.at(size_t(i)); }
  int n_layers() const { return int(layers_.size()); }
  const float* rope_inv_freq() const { return inv_freq_; }  // [head_dim / 2] fp32 (ops/cpu/rope.h values)
  size_t bytes() const { return bytes_; }                   // device memory held

 private:
  ModelConfig cfg_;
  std::vector<void*> allocs_;
  size_t bytes_ = 0;
  const void* embd_ = nullptr;
  const void* out_norm_ = nullptr;
  DeviceLinear head_;
  std::vector<DeviceLayer> layers_;
  const float* inv_freq_ = nullptr;
};

// One Lizard layer's parameters on the GPU, in the layouts the kernels take (ops/cuda/lizard_attention.h,
// ops/cuda/lizard_gate.h): feat_q, feat_k [H, D, F] bf16 (and fp32 copies for the fp32 kernels),
// gate_w [G, d] fp32, gate_b [G], meta [Hm, m], alpha [H] or [1], lolcats_f [H] fp32.
struct DeviceLizardLayer {
  LizardConfig cfg;
  LizardShape shape;
  const void* feat_q = nullptr;  // bf16
  const void* feat_k = nullptr;  // bf16
  const float* feat_q32 = nullptr;
  const float* feat_k32 = nullptr;
  const float* gate_w = nullptr;
  const float* gate_b = nullptr;
  const float* meta = nullptr;
  const float* alpha = nullptr;
  const float* lolcats_f = nullptr;
};

// Device copies of several layers' parameters, updatable in place (training uploads the optimizer's
// host copy after each step).
class LizardWeights {
 public:
  LizardWeights() = default;
  ~LizardWeights();
  LizardWeights(const LizardWeights&) = delete;
  LizardWeights& operator=(const LizardWeights&) = delete;

  // Adds (first call for a layer) or overwrites (later calls, same shapes) layer `layer`'s parameters.
  void upload(int layer, const LizardConfig& c, const LizardShape& s, const LizardParams& p);
  // null when the layer is not Lizard.
  const DeviceLizardLayer* find(int layer) const;
  size_t bytes() const { return bytes_; }

 private:
  struct Slot {
    DeviceLizardLayer dev;
    std::vector<void*> allocs;
  };
  std::vector<std::unique_ptr<Slot>> slots_;  // indexed by layer id (null: not Lizard)
  size_t bytes_ = 0;
};

}  // namespace lizard::cuda
