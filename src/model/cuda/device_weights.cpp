// Teacher and Lizard weights on the GPU (model/cuda/device_weights.h).
#ifdef LIZARD_HAVE_CUDA
#include "model/cuda/device_weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include <cuda_runtime.h>
#include <fmt/format.h>

#include "formats/quant.h"
#include "model/cuda/random_weights.h"
#include "ops/cpu/rope.h"
#include "util/error.h"
#include "util/half.h"

namespace lizard::cuda {
namespace {

// Row blocks of at most this many fp32 values are dequantized at a time (64 MiB host memory).
constexpr int64_t kBlockElems = int64_t(16) << 20;

void* device_alloc(size_t bytes, const std::string& what) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    fail("out of GPU memory for {}: asked for {} MiB with {} MiB free of {} MiB ({})", what, bytes >> 20,
         free_b >> 20, total_b >> 20, cudaGetErrorString(e));
  }
  return p;
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  const cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  LZ_CHECK(e == cudaSuccess, "upload to the GPU failed: {}", cudaGetErrorString(e));
}

// A device allocation the teacher weights own: recorded in `allocs` (freed with them), counted in `held`.
void* owned_alloc(std::vector<void*>& allocs, size_t& held, size_t bytes, const std::string& what) {
  void* p = device_alloc(bytes, what);
  allocs.push_back(p);
  held += bytes;
  return p;
}

// cfg's RoPE inverse frequencies (ops/cpu/rope.h values), fp32 on the device.
const float* upload_rope_inv_freq(const ModelConfig& cfg, std::vector<void*>& allocs, size_t& held) {
  const std::vector<float> f = lizard::rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling);
  void* fd = owned_alloc(allocs, held, f.size() * sizeof(float), "rope_inv_freq");
  copy_to_device(fd, f.data(), f.size() * sizeof(float));
  return static_cast<const float*>(fd);
}

void free_all(std::vector<void*>& allocs) {
  for (void* p : allocs) cudaFree(p);
  allocs.clear();
}

void require_gpu() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    cudaGetLastError();
    fail("no CUDA GPU available ({})", e != cudaSuccess ? cudaGetErrorString(e) : "no device");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------- teacher
TeacherWeights::TeacherWeights(const Checkpoint& ck, const LoraSet* lora) : cfg_(ck.config) {
  require_gpu();
  const double lora_scale = lora && !lora->empty() ? lora->scale() : 0.0;
  try {
    std::vector<float> block;
    std::vector<uint16_t> half;
    // Dequantizes `name` row block by row block, merges the layer's LoRA adapter for `target` (q, k, v)
    // when given, rounds to bf16 and uploads. Returns the device copy.
    auto put = [&](const std::string& name, int layer, const char* target) -> const void* {
      const TensorView& v = ck.tensor(name);
      const int64_t cols = v.cols(), rows = v.rows();
      void* dev = owned_alloc(allocs_, bytes_, size_t(rows * cols) * 2, name);
      const LoraAdapter* ad = nullptr;
      if (lora_scale != 0.0 && target) {
        auto lit = lora->layers.find(layer);
        if (lit != lora->layers.end())
          if (auto ait = lit->second.find(target); ait != lit->second.end()) ad = &ait->second;
      }
      const int64_t r = lora ? lora->rank : 0;
      if (ad)
        LZ_CHECK(int64_t(ad->a.size()) == r * cols && int64_t(ad->b.size()) == rows * r,
                 "LoRA of blk.{}.{} does not fit {} {}", layer, target, name, v.shape_str());
      const int64_t block_rows = std::max<int64_t>(1, kBlockElems / std::max<int64_t>(cols, 1));
      for (int64_t r0 = 0; r0 < rows; r0 += block_rows) {
        const int64_t nr = std::min(block_rows, rows - r0);
        block.resize(size_t(nr * cols));
        dequantize_rows(v.type, v.data, r0, nr, cols, block.data());
        if (ad) add_lora_rows(*ad, int(r), static_cast<float>(lora_scale), r0, nr, cols, block.data());  // as export
        half.resize(block.size());
#pragma omp parallel for
        for (int64_t i = 0; i < int64_t(block.size()); ++i) half[size_t(i)] = f32_to_bf16(block[size_t(i)]);
        copy_to_device(static_cast<uint16_t*>(dev) + r0 * cols, half.data(), half.size() * 2);
      }
      return dev;
    };
    auto linear = [&](const std::string& base, int layer, const char* target) {
      DeviceLinear l;
      const TensorView& w = ck.tensor(base + ".weight");
      LZ_CHECK(w.shape.size() == 2, "{}.weight is not a matrix ({})", base, w.shape_str());
      l.out = int(w.shape[0]);
      l.in = int(w.shape[1]);
      l.w = put(base + ".weight", layer, target);
      if (ck.find(base + ".bias")) l.bias = put(base + ".bias", layer, nullptr);
      return l;
    };

    embd_ = put("token_embd.weight", -1, nullptr);
    out_norm_ = put("output_norm.weight", -1, nullptr);
    if (ck.find("output.weight")) {
      head_ = linear("output", -1, nullptr);
    } else {
      const TensorView& e = ck.tensor("token_embd.weight");
      head_.w = embd_;
      head_.out = int(e.shape.at(0));
      head_.in = int(e.shape.at(1));
    }
    layers_.resize(size_t(cfg_.n_layers));
    for (int i = 0; i < cfg_.n_layers; ++i) {
      const std::string b = fmt::format("blk.{}.", i);
      DeviceLayer& L = layers_[size_t(i)];
      L.attn_norm = put(b + "attn_norm.weight", i, nullptr);
      L.ffn_norm = put(b + "ffn_norm.weight", i, nullptr);
      L.q = linear(b + "attn_q", i, "q");
      L.k = linear(b + "attn_k", i, "k");
      L.v = linear(b + "attn_v", i, "v");
      L.o = linear(b + "attn_output", i, nullptr);
      L.gate = linear(b + "ffn_gate", i, nullptr);
      L.up = linear(b + "ffn_up", i, nullptr);
      L.down = linear(b + "ffn_down", i, nullptr);
    }
    inv_freq_ = upload_rope_inv_freq(cfg_, allocs_, bytes_);
  } catch (...) {
    free_all(allocs_);
    throw;
  }
}

TeacherWeights::TeacherWeights(const ModelConfig& cfg, uint64_t seed) : cfg_(cfg) {
  require_gpu();
  LZ_CHECK(cfg.vocab_size > 0 && cfg.d_model > 0 && cfg.n_layers > 0 && cfg.n_heads > 0 && cfg.n_kv_heads > 0 &&
               cfg.head_dim > 0 && cfg.d_ff > 0 && cfg.n_heads % cfg.n_kv_heads == 0,
           "synthetic model: incomplete or inconsistent shape");
  uint64_t tensor_seed = seed;
  try {
    auto random = [&](int64_t rows, int64_t cols, const std::string& what) -> const void* {
      void* dev = owned_alloc(allocs_, bytes_, size_t(rows * cols) * 2, what);
      fill_uniform_bf16(dev, rows * cols, 1.0f / std::sqrt(float(cols)), ++tensor_seed);
      return dev;
    };
    auto ones = [&](int64_t n, const std::string& what) -> const void* {
      void* dev = owned_alloc(allocs_, bytes_, size_t(n) * 2, what);
      fill_const_bf16(dev, n, 1.0f);
      return dev;
    };
    auto linear = [&](int out, int in, bool bias, const std::string& what) {
      DeviceLinear l;
      l.out = out;
      l.in = in;
      l.w = random(out, in, what);
      if (bias) l.bias = random(out, 1, what + " bias");
      return l;
    };
    const int d = cfg.d_model, qd = cfg.n_heads * cfg.head_dim, kvd = cfg.n_kv_heads * cfg.head_dim;
    embd_ = random(cfg.vocab_size, d, "token_embd");
    out_norm_ = ones(d, "output_norm");
    if (cfg.tied_embeddings) {
      head_.w = embd_;
      head_.out = cfg.vocab_size;
      head_.in = d;
    } else {
      head_ = linear(cfg.vocab_size, d, false, "output");
    }
    layers_.resize(size_t(cfg.n_layers));
    for (DeviceLayer& L : layers_) {
      L.attn_norm = ones(d, "attn_norm");
      L.ffn_norm = ones(d, "ffn_norm");
      L.q = linear(qd, d, cfg.qkv_bias, "attn_q");
      L.k = linear(kvd, d, cfg.qkv_bias, "attn_k");
      L.v = linear(kvd, d, cfg.qkv_bias, "attn_v");
      L.o = linear(d, qd, false, "attn_output");
      L.gate = linear(cfg.d_ff, d, false, "ffn_gate");
      L.up = linear(cfg.d_ff, d, false, "ffn_up");
      L.down = linear(d, cfg.d_ff, false, "ffn_down");
    }
    inv_freq_ = upload_rope_inv_freq(cfg_, allocs_, bytes_);
  } catch (...) {
    free_all(allocs_);
    throw;
  }
}

TeacherWeights::~TeacherWeights() { free_all(allocs_); }

// ---------------------------------------------------------------------------------------------- Lizard
LizardWeights::~LizardWeights() {
  for (auto& s : slots_)
    if (s)
      for (void* p : s->allocs) cudaFree(p);
}

void LizardWeights::upload(int layer, const LizardConfig& c, const LizardShape& s, const LizardParams& p) {
  LZ_CHECK(layer >= 0, "LizardWeights: bad layer {}", layer);
  p.check(c, s);
  if (slots_.size() <= size_t(layer)) slots_.resize(size_t(layer) + 1);
  std::unique_ptr<Slot>& slot = slots_[size_t(layer)];
  const bool fresh = !slot;
  if (fresh) {
    require_gpu();
    slot = std::make_unique<Slot>();
  } else {
    const DeviceLizardLayer& d = slot->dev;
    LZ_CHECK(d.shape.n_heads == s.n_heads && d.shape.n_kv_heads == s.n_kv_heads && d.shape.head_dim == s.head_dim &&
                 d.shape.d_model == s.d_model && d.cfg.feature_dim == c.feature_dim && d.cfg.gate == c.gate &&
                 d.cfg.meta_tokens == c.meta_tokens && d.cfg.meta_per_head == c.meta_per_head &&
                 d.cfg.alpha_per_layer == c.alpha_per_layer,
             "LizardWeights: layer {} uploaded again with different shapes", layer);
  }
  // Slot order (fixed): feat_q bf16, feat_k bf16, feat_q fp32, feat_k fp32, gate_w, gate_b, meta, alpha, lolcats_f.
  size_t next = 0, added = 0;
  try {
    auto put = [&](const void* host, size_t bytes, const char* what) -> void* {
      void* dev = nullptr;
      if (fresh) {
        dev = bytes ? device_alloc(bytes, fmt::format("Lizard layer {} {}", layer, what)) : nullptr;
        slot->allocs.push_back(dev);
        added += bytes;
      } else {
        dev = slot->allocs.at(next);
      }
      ++next;
      if (bytes) copy_to_device(dev, host, bytes);
      return dev;
    };
    auto put_bf16 = [&](const std::vector<float>& v, const char* what) {
      std::vector<uint16_t> h(v.size());
      for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
      return put(h.data(), h.size() * 2, what);
    };
    auto put_f32 = [&](const std::vector<float>& v, const char* what) {
      return static_cast<const float*>(put(v.data(), v.size() * sizeof(float), what));
    };
    DeviceLizardLayer& d = slot->dev;
    d.feat_q = put_bf16(p.feat_q, "feat_q");
    d.feat_k = put_bf16(p.feat_k, "feat_k");
    d.feat_q32 = put_f32(p.feat_q, "feat_q");
    d.feat_k32 = put_f32(p.feat_k, "feat_k");
    d.gate_w = put_f32(p.gate_w, "gate_w");
    d.gate_b = put_f32(p.gate_b, "gate_b");
    d.meta = put_f32(p.meta, "meta");
    d.alpha = put_f32(p.alpha, "alpha");
    d.lolcats_f = put_f32(p.lolcats_f, "lolcats_f");
    d.cfg = c;
    d.shape = s;
    bytes_ += added;
  } catch (...) {
    if (fresh) {  // drop the half-made slot
      for (void* q : slot->allocs) cudaFree(q);
      slot.reset();
    }
    throw;
  }
}

const DeviceLizardLayer* LizardWeights::find(int layer) const {
  if (layer < 0 || size_t(layer) >= slots_.size() || !slots_[size_t(layer)]) return nullptr;
  return &slots_[size_t(layer)]->dev;
}

}  // namespace lizard::cuda
#endif  // LIZARD_HAVE_CUDA
