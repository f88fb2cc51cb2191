// Test helpers for the CPU ops and the Llama model: seeded random numbers, hand-made quantized
// tensors (ggml block layouts, decoded here independently of quant.cpp) and tiny random
// checkpoints held in memory.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "model/checkpoint.h"
#include "util/error.h"
#include "util/half.h"

namespace lizard::testing {

// A fresh seed per test, printed with any failure.
struct Seeded {
  uint64_t seed = std::random_device{}() | (uint64_t(std::random_device{}()) << 32);
  std::mt19937_64 rng{seed};
  std::string trace() const { return "seed " + std::to_string(seed); }
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
  std::vector<float> vec(size_t n, float scale = 1.0f) {
    std::vector<float> v(n);
    for (auto& x : v) x = uniform(-scale, scale);
    return v;
  }
};

// Bytes of a tensor plus its fp32 values as the tests decode them (reference for every dtype).
struct Blob {
  DType type = DType::F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  std::vector<float> values;
};

inline Blob make_tensor(Seeded& s, DType type, std::vector<int64_t> shape, float scale) {
  Blob b;
  b.type = type;
  b.shape = shape;
  int64_t n = 1;
  for (auto d : shape) n *= d;
  b.values.resize(n);
  switch (type) {
    case DType::F32: {
      for (auto& v : b.values) v = s.uniform(-scale, scale);
      b.bytes.resize(n * 4);
      std::memcpy(b.bytes.data(), b.values.data(), n * 4);
      break;
    }
    case DType::F16:
    case DType::BF16: {
      b.bytes.resize(n * 2);
      for (int64_t i = 0; i < n; ++i) {
        const float f = s.uniform(-scale, scale);
        const uint16_t h = type == DType::F16 ? f32_to_f16(f) : f32_to_bf16(f);
        std::memcpy(&b.bytes[i * 2], &h, 2);
        b.values[i] = type == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      break;
    }
    case DType::Q8_0: {  // {fp16 d, int8 qs[32]}: value = d * q
      const int64_t nb = n / 32;
      b.bytes.resize(nb * 34);
      for (int64_t k = 0; k < nb; ++k) {
        uint8_t* p = &b.bytes[k * 34];
        const uint16_t d = f32_to_f16(scale / 127.0f * s.uniform(0.5f, 1.0f));
        std::memcpy(p, &d, 2);
        for (int j = 0; j < 32; ++j) {
          const auto q = static_cast<int8_t>(std::uniform_int_distribution<int>(-127, 127)(s.rng));
          p[2 + j] = static_cast<uint8_t>(q);
          b.values[k * 32 + j] = f16_to_f32(d) * q;
        }
      }
      break;
    }
    case DType::Q4_1: {  // {fp16 d, fp16 m, qs[16]}: element j low nibble of qs[j], j+16 high; d*q + m
      const int64_t nb = n / 32;
      b.bytes.resize(nb * 20);
      for (int64_t k = 0; k < nb; ++k) {
        uint8_t* p = &b.bytes[k * 20];
        const uint16_t d = f32_to_f16(2 * scale / 15.0f * s.uniform(0.5f, 1.0f));
        const uint16_t m = f32_to_f16(-scale * s.uniform(0.5f, 1.0f));
        std::memcpy(p, &d, 2);
        std::memcpy(p + 2, &m, 2);
        for (int j = 0; j < 16; ++j) {
          const int lo = std::uniform_int_distribution<int>(0, 15)(s.rng);
          const int hi = std::uniform_int_distribution<int>(0, 15)(s.rng);
          p[4 + j] = static_cast<uint8_t>(lo | (hi << 4));
          b.values[k * 32 + j] = f16_to_f32(d) * lo + f16_to_f32(m);
          b.values[k * 32 + j + 16] = f16_to_f32(d) * hi + f16_to_f32(m);
        }
      }
      break;
    }
    default:
      throw std::runtime_error("make_tensor: unsupported type in tests");
  }
  return b;
}

inline TensorView view_of(const std::string& name, const Blob& b) {
  TensorView t;
  t.name = name;
  t.type = b.type;
  t.shape = b.shape;
  t.data = b.bytes.data();
  t.nbytes = b.bytes.size();
  return t;
}

// A small random Llama-family model in memory.
struct TinySpec {
  std::string arch = "llama";
  int vocab = 97, d = 64, layers = 2, heads = 4, kv_heads = 2, head_dim = 16, ff = 96, ctx = 64;
  bool qkv_bias = false, tied = false;
  float rope_theta = 10000.0f;
  RopeScaling scaling;
  DType weight_type = DType::F32;  // of the linear layers
  DType embd_type = DType::F32;
};

struct TinyModel {
  std::shared_ptr<Checkpoint> ck;
  std::map<std::string, std::shared_ptr<Blob>> blobs;  // reference values by name
  const std::vector<float>& w(const std::string& name) const { return blobs.at(name)->values; }
  bool has(const std::string& name) const { return blobs.count(name) != 0; }
};

inline TinyModel make_tiny(Seeded& s, const TinySpec& sp) {
  TinyModel m;
  m.ck = std::make_shared<Checkpoint>();
  Checkpoint& ck = *m.ck;
  ck.path = "<memory>";
  ck.format = "memory";
  ModelConfig& c = ck.config;
  c.arch = sp.arch;
  c.name = "tiny";
  c.vocab_size = sp.vocab;
  c.d_model = sp.d;
  c.n_layers = sp.layers;
  c.n_heads = sp.heads;
  c.n_kv_heads = sp.kv_heads;
  c.head_dim = sp.head_dim;
  c.d_ff = sp.ff;
  c.max_seq_len = sp.ctx;
  c.rms_eps = 1e-5f;
  c.rope_theta = sp.rope_theta;
  c.rope_scaling = sp.scaling;
  c.qkv_bias = sp.qkv_bias;
  c.tied_embeddings = sp.tied;
  auto add = [&](const std::string& name, DType t, std::vector<int64_t> shape, float scale) {
    auto b = std::make_shared<Blob>(make_tensor(s, t, shape, scale));
    ck.tensors[name] = view_of(name, *b);
    ck.owners.push_back(b);
    m.blobs[name] = b;
  };
  const int64_t d = sp.d, qd = int64_t(sp.heads) * sp.head_dim, kvd = int64_t(sp.kv_heads) * sp.head_dim;
  const float ws = 1.0f / std::sqrt(static_cast<float>(d));
  add("token_embd.weight", sp.embd_type, {sp.vocab, d}, 1.0f);
  add("output_norm.weight", DType::F32, {d}, 1.0f);
  if (!sp.tied) add("output.weight", sp.weight_type, {sp.vocab, d}, ws);
  for (int i = 0; i < sp.layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    add(p + "attn_norm.weight", DType::F32, {d}, 1.0f);
    add(p + "ffn_norm.weight", DType::F32, {d}, 1.0f);
    add(p + "attn_q.weight", sp.weight_type, {qd, d}, 2 * ws);
    add(p + "attn_k.weight", sp.weight_type, {kvd, d}, 2 * ws);
    add(p + "attn_v.weight", sp.weight_type, {kvd, d}, ws);
    add(p + "attn_output.weight", sp.weight_type, {d, qd}, ws);
    add(p + "ffn_gate.weight", sp.weight_type, {sp.ff, d}, ws);
    add(p + "ffn_up.weight", sp.weight_type, {sp.ff, d}, ws);
    add(p + "ffn_down.weight", sp.weight_type, {d, sp.ff}, 1.0f / std::sqrt(float(sp.ff)));
    if (sp.qkv_bias) {
      add(p + "attn_q.bias", DType::F32, {qd}, 0.5f);
      add(p + "attn_k.bias", DType::F32, {kvd}, 0.5f);
      add(p + "attn_v.bias", DType::F32, {kvd}, 0.5f);
    }
  }
  // Norm weights around 1, as trained models have them.
  for (auto& [name, b] : m.blobs)
    if (name.find("norm") != std::string::npos) {
      for (auto& v : b->values) v = 1.0f + 0.2f * v;
      std::memcpy(b->bytes.data(), b->values.data(), b->values.size() * 4);
    }
  return m;
}

// The message of the Error that f throws, or "(no error)" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace lizard::testing
