// Tiny random teachers and Lizard checkpoints for the GPU model tests (test_cuda_model, test_cuda_state,
// test_cuda_eval): sizes the GPU kernels take (head_dim 64, feature dim 32), odd vocab and d_ff, and bf16
// weights and norms, so that the CPU LlamaModel and the GPU CudaModel hold the same numbers.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "../llama_fixture.h"
#include "gpu_test_util.h"  // bf16r
#include "model/cuda/cuda_model.h"
#include "model/lizard_checkpoint.h"
#include "model/llama.h"
#include "model/load_model.h"
#include "util/half.h"

namespace lizard::testing {

inline TinySpec gpu_tiny_spec(int vocab = 251, int layers = 2) {
  TinySpec sp;
  sp.vocab = vocab, sp.d = 192, sp.layers = layers, sp.heads = 4, sp.kv_heads = 2, sp.head_dim = 64, sp.ff = 328;
  sp.ctx = 1024;
  sp.weight_type = DType::BF16;
  sp.embd_type = DType::BF16;
  return sp;
}

// make_tiny with the fp32 tensors (norm weights) rounded to bf16 values too: the GPU keeps them in bf16.
inline TinyModel make_gpu_tiny(Seeded& s, const TinySpec& sp) {
  TinyModel tm = make_tiny(s, sp);
  for (auto& [name, blob] : tm.blobs)
    if (blob->type == DType::F32) {
      for (auto& x : blob->values) x = bf16r(x);
      std::memcpy(blob->bytes.data(), blob->values.data(), blob->values.size() * 4);
    }
  return tm;
}

inline std::unique_ptr<LlamaModel> exact_cpu_model(const TinyModel& tm) {
  ModelOptions mo;
  mo.exact = true;
  mo.n_threads = 2;
  return std::make_unique<LlamaModel>(std::shared_ptr<const Checkpoint>(tm.ck), mo);
}

// What a test case's Lizard checkpoint looks like.
struct LizardVariant {
  std::vector<int> layers;     // Lizard layers; empty: all
  bool lora = false;           // random rank-4 LoRA adapters on q, k, v of every layer
  bool rope_features = false;  // feature_on_rope = window_rope = true
  // 1: two q/k sets (the window on RoPE'd q, k, the feature maps on the plain ones); 2: the recommended recipe
  // (configs/lizard_plainfeat_sn_skip.json: two q/k sets, meta_weights_gate, per-head sinks, shared_normaliser,
  // gate_skips_window) with window 64, the smallest the GPU takes for gate_skips_window.
  int options = 0;
};

// Feature dim 32, window 16 (prompts of the tests cross it; 64 for options 2), 3 meta sinks (Lizard), gate 0.9; feature maps
// far from uniform in bf16 values (what the GPU kernels read) and random meta sinks. lolcats: the
// LoLCATs baseline (LizardConfig::lolcats(), no sinks).
inline LizardCheckpoint gpu_lizard_checkpoint(Seeded& s, const ModelConfig& teacher, const LizardVariant& v,
                                              bool lolcats = false) {
  LizardConfig lc = lolcats ? LizardConfig::lolcats() : LizardConfig{};
  lc.feature_dim = 32;
  lc.window = 16;
  if (!lolcats) lc.meta_tokens = 3;
  lc.gate_init = 0.9;
  lc.lizard_layers = v.layers;
  if (v.rope_features) lc.feature_on_rope = lc.window_rope = true;
  if (v.options >= 1) lc.window_rope = true, lc.feature_on_rope = false;
  if (v.options == 2) {
    lc.window = 64;
    lc.meta_weights_gate = lc.meta_per_head = lc.shared_normaliser = lc.gate_skips_window = true;
  }
  LizardCheckpoint lz = init_lizard_checkpoint(lc, teacher, s.rng());
  for (auto& [layer, p] : lz.layers) {
    for (auto* w : {&p.feat_q, &p.feat_k})
      for (auto& x : *w) x = bf16r(x * 20.0f);
    for (auto& x : p.meta) x = s.uniform(-1.f, 1.f);
  }
  if (v.lora) {
    lz.lora.rank = 4;
    lz.lora.alpha = 8;
    lz.lora.targets = {"q", "k", "v"};
    const int64_t d = teacher.d_model, qd = int64_t(teacher.n_heads) * teacher.head_dim,
                  kvd = int64_t(teacher.n_kv_heads) * teacher.head_dim;
    for (int layer = 0; layer < teacher.n_layers; ++layer)
      for (const char* t : {"q", "k", "v"}) {
        LoraAdapter ad;
        ad.a = s.vec(size_t(4 * d), 0.05f);
        ad.b = s.vec(size_t((t[0] == 'q' ? qd : kvd) * 4), 0.05f);
        lz.lora.layers[layer][t] = ad;
      }
  }
  return lz;
}

// One teacher (or Lizard student, when `lizard`) on the CPU and on the GPU.
struct CpuGpuModels {
  TinyModel tm;
  std::optional<LizardCheckpoint> lck;
  std::unique_ptr<LlamaModel> cpu;
  std::unique_ptr<cuda::CudaModel> gpu;
};

inline CpuGpuModels build_cpu_gpu(Seeded& s, const TinySpec& sp, const std::optional<LizardVariant>& lizard,
                                  const cuda::CudaModelOptions& opt = {}) {
  CpuGpuModels b;
  b.tm = make_gpu_tiny(s, sp);
  b.cpu = exact_cpu_model(b.tm);
  if (lizard) {
    LizardCheckpoint lz = gpu_lizard_checkpoint(s, b.tm.ck->config, *lizard);
    apply_lizard(*b.cpu, lz);
    b.lck = std::move(lz);
  }
  b.gpu = std::make_unique<cuda::CudaModel>(*b.tm.ck, b.lck ? &*b.lck : nullptr, opt);
  return b;
}

inline std::vector<int32_t> random_tokens(Seeded& s, int64_t n, int vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = std::uniform_int_distribution<int32_t>(0, vocab - 1)(s.rng);
  return t;
}

// max |a - ref| / max |ref|
inline double rel_err(const float* a, const float* ref, size_t n) {
  double e = 0, m = 0;
  for (size_t i = 0; i < n; ++i) {
    e = std::max(e, std::fabs(double(a[i]) - double(ref[i])));
    m = std::max(m, std::fabs(double(ref[i])));
  }
  return e / std::max(m, 1e-30);
}

inline double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
  EXPECT_EQ(a.size(), ref.size());
  return rel_err(a.data(), ref.data(), std::min(a.size(), ref.size()));
}

}  // namespace lizard::testing
