#include "model/llama.h"

#include <fmt/ranges.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "ops/cpu/embedding.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/swiglu.h"
#include "util/error.h"

namespace lizard {

namespace {

const TensorView* find_tensor(const Checkpoint& ck, const std::string& name) {
  auto it = ck.tensors.find(name);
  return it == ck.tensors.end() ? nullptr : &it->second;
}

const TensorView& need_tensor(const Checkpoint& ck, const std::string& name, std::vector<int64_t> shape) {
  const TensorView* t = find_tensor(ck, name);
  LZ_CHECK(t != nullptr, "checkpoint '{}' has no tensor '{}'", ck.path, name);
  LZ_CHECK(t->shape == shape, "tensor '{}' has shape {}, expected [{}]", name, t->shape_str(),
           fmt::join(shape, ", "));
  LZ_CHECK(t->data != nullptr, "tensor '{}' has no data", name);
  return *t;
}

std::vector<float> need_vector(const Checkpoint& ck, const std::string& name, int64_t n) {
  return dequantize_tensor(need_tensor(ck, name, {n}));
}

// Sets OpenMP's thread count for the calling thread for one forward, and puts it back.
struct ThreadScope {
  int prev;
  explicit ThreadScope(int n) : prev(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ThreadScope() { omp_set_num_threads(prev); }
};

template <typename T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

void add_into(float* x, const float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace

void LlamaState::reset() {
  n_past_ = 0;
  for (auto& m : mixers_) m->reset();
}

size_t LlamaState::cache_bytes() const {
  size_t b = 0;
  for (auto& m : mixers_) b += m->bytes();
  return b;
}

LlamaModel::LlamaModel(std::shared_ptr<const Checkpoint> ckpt, const ModelOptions& opt) : ckpt_(std::move(ckpt)) {
  LZ_CHECK(ckpt_ != nullptr, "no checkpoint given");
  init(opt);
}

LlamaModel::LlamaModel(Checkpoint&& ckpt, const ModelOptions& opt)
    : ckpt_(std::make_shared<const Checkpoint>(std::move(ckpt))) {
  init(opt);
}

void LlamaModel::init(const ModelOptions& opt) {
  const Checkpoint& ck = *ckpt_;
  cfg_ = ck.config;
  const auto& c = cfg_;
  LZ_CHECK(c.arch == "llama" || c.arch == "mistral" || c.arch == "qwen2",
           "architecture '{}' is not supported (llama, mistral, qwen2)", c.arch);
  LZ_CHECK(c.vocab_size > 0 && c.d_model > 0 && c.n_layers > 0 && c.n_heads > 0 && c.n_kv_heads > 0 &&
               c.head_dim > 0 && c.d_ff > 0,
           "model config is incomplete (vocab {}, d_model {}, layers {}, heads {}/{}, head dim {}, ffn {})",
           c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff);
  context_ = opt.context > 0 ? opt.context : c.max_seq_len;
  LZ_CHECK(context_ > 0, "the model's context length is unknown; give one");
  max_batch_ = std::max<int64_t>(1, opt.max_batch);
  exact_ = opt.exact;
  set_threads(opt.n_threads);

  const int64_t d = c.d_model, V = c.vocab_size, qd = int64_t(c.n_heads) * c.head_dim,
                kvd = int64_t(c.n_kv_heads) * c.head_dim, F = c.d_ff;
  embd_ = &need_tensor(ck, "token_embd.weight", {V, d});
  out_norm_ = need_vector(ck, "output_norm.weight", d);
  const TensorView* head = find_tensor(ck, "output.weight");
  // No separate output head: tied embeddings (some GGUFs drop it even when the config says untied).
  head_.w = head ? &need_tensor(ck, "output.weight", {V, d}) : embd_;

  auto linear = [&](const std::string& name, int64_t rows, int64_t cols, bool bias) {
    Linear l;
    l.w = &need_tensor(ck, name + ".weight", {rows, cols});
    if (bias) l.bias = need_vector(ck, name + ".bias", rows);
    return l;
  };
  auto mixer = std::make_shared<const SoftmaxMixer>(c);
  layers_.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = fmt::format("blk.{}.", i);
    Layer& L = layers_[i];
    L.attn_norm = need_vector(ck, p + "attn_norm.weight", d);
    L.ffn_norm = need_vector(ck, p + "ffn_norm.weight", d);
    L.q = linear(p + "attn_q", qd, d, c.qkv_bias);
    L.k = linear(p + "attn_k", kvd, d, c.qkv_bias);
    L.v = linear(p + "attn_v", kvd, d, c.qkv_bias);
    L.o = linear(p + "attn_output", d, qd, false);
    L.gate = linear(p + "ffn_gate", F, d, false);
    L.up = linear(p + "ffn_up", F, d, false);
    L.down = linear(p + "ffn_down", d, F, false);
    L.mixer = mixer;
    for (Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) l->exact = exact_;
  }
  head_.exact = exact_;

  // fp32 copies for prefill, layers first (every prefill uses them), then the output head (used
  // for all positions only when scoring).
  size_t budget = opt.fp32_cache_bytes;
  auto cache = [&](Linear& l) {
    const size_t b = static_cast<size_t>(l.w->numel()) * sizeof(float);
    if (l.w->type == DType::F32 || b > budget) return;
    l.f32 = dequantize_tensor(*l.w);
    budget -= b;
    cached_bytes_ += b;
  };
  if (budget > 0) {
    ThreadScope ts(n_threads_);
    for (auto& L : layers_)
      for (Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) cache(*l);
    cache(head_);
  }
}

void LlamaModel::set_threads(int n) { n_threads_ = n > 0 ? n : omp_get_num_procs(); }

void LlamaModel::set_context(int64_t n) {
  LZ_CHECK(n > 0, "the context length must be positive");
  context_ = n;
  ++mixers_version_;  // states sized for the old context are refused
}

void LlamaModel::set_mixer(int layer, std::shared_ptr<const SequenceMixer> mixer) {
  LZ_CHECK(layer >= 0 && layer < cfg_.n_layers, "layer {} does not exist (the model has {})", layer, cfg_.n_layers);
  LZ_CHECK(mixer != nullptr, "no mixer given for layer {}", layer);
  layers_[layer].mixer = std::move(mixer);
  ++mixers_version_;
}

LlamaState LlamaModel::new_state() const {
  LlamaState st;
  st.model_ = this;
  st.mixers_version_ = mixers_version_;
  for (auto& L : layers_) st.mixers_.push_back(L.mixer->make_state(context_));
  return st;
}

void LlamaModel::Linear::run(const float* x, int64_t n, float* y) const {
  matmul(*w, x, n, y, f32.empty() ? nullptr : f32.data(), bias.empty() ? nullptr : bias.data(), exact);
  add_lora(x, n, y);
}

void LlamaModel::Linear::add_lora(const float* x, int64_t n, float* y) const {
  if (!lora) return;
  const int64_t in = w->cols(), out = w->rows(), r = lora->rank;
#pragma omp parallel for if (n * out * r > 65536)
  for (int64_t i = 0; i < n; ++i) {
    float h[64];  // rank <= 64 (checked in set_lora)
    for (int64_t j = 0; j < r; ++j) {
      float s = 0;
      for (int64_t c = 0; c < in; ++c) s += lora->a[j * in + c] * x[i * in + c];
      h[j] = s * lora->scale;
    }
    for (int64_t o = 0; o < out; ++o) {
      float s = 0;
      for (int64_t j = 0; j < r; ++j) s += lora->b[o * r + j] * h[j];
      y[i * out + o] += s;
    }
  }
}

void LlamaModel::set_lora(int layer, char target, std::shared_ptr<const LoraDelta> delta) {
  LZ_CHECK(layer >= 0 && layer < cfg_.n_layers, "LoRA for layer {}: the model has {}", layer, cfg_.n_layers);
  Layer& L = layers_[layer];
  Linear* l = target == 'q' ? &L.q : target == 'k' ? &L.k : target == 'v' ? &L.v : nullptr;
  LZ_CHECK(l != nullptr, "LoRA target '{}' is not supported (q, k, v)", target);
  if (delta) {
    const int64_t in = l->w->cols(), out = l->w->rows();
    LZ_CHECK(delta->rank >= 1 && delta->rank <= 64, "LoRA rank {} is out of range (1..64)", delta->rank);
    LZ_CHECK(int64_t(delta->a.size()) == delta->rank * in && int64_t(delta->b.size()) == out * delta->rank,
             "LoRA for blk.{}.{}: sizes {} and {} do not fit rank {} on a {}x{} weight", layer, target, delta->a.size(),
             delta->b.size(), delta->rank, out, in);
  }
  l->lora = std::move(delta);
}

std::span<const float> LlamaModel::forward(const int32_t* tokens, int64_t n, int64_t start_pos, LlamaState& st,
                                           bool all_logits) const {
  LZ_CHECK(st.model_ == this && st.mixers_version_ == mixers_version_,
           "this sequence state belongs to another model or predates a layer change; make a new one");
  LZ_CHECK(n > 0, "nothing to run: no tokens given");
  LZ_CHECK(start_pos >= 0 && start_pos <= st.n_past_, "can not start at position {}: the sequence holds {}",
           start_pos, st.n_past_);
  if (start_pos == 0 && n > context_) fail("prompt has {} tokens, the context is {}", n, context_);
  LZ_CHECK(start_pos + n <= context_, "the sequence would reach {} tokens, the context is {}", start_pos + n,
           context_);
  const int64_t V = cfg_.vocab_size;
  for (int64_t i = 0; i < n; ++i)
    LZ_CHECK(tokens[i] >= 0 && tokens[i] < V, "token id {} is out of range (vocabulary of {})", tokens[i], V);
  if (start_pos < st.n_past_) {
    for (auto& m : st.mixers_)
      LZ_CHECK(m->truncate(start_pos), "this model's state can not rewind to position {}", start_pos);
    st.n_past_ = start_pos;
  }

  ThreadScope ts(n_threads_);
  float* logits = grow(st.logits_, static_cast<size_t>((all_logits ? n : 1) * V));
  for (int64_t i0 = 0; i0 < n; i0 += max_batch_) {
    const int64_t b = std::min(max_batch_, n - i0);
    const bool last = i0 + b == n;
    // Rows of logits wanted from this chunk: all of them, or the sequence's last one.
    forward_chunk(tokens + i0, b, start_pos + i0, st, all_logits ? logits + i0 * V : (last ? logits : nullptr),
                  all_logits);
  }
  return {logits, static_cast<size_t>((all_logits ? n : 1) * V)};
}

void LlamaModel::forward_chunk(const int32_t* tokens, int64_t n, int64_t pos0, LlamaState& st, float* logits,
                               bool all_logits) const {
  const int64_t d = cfg_.d_model, qd = int64_t(cfg_.n_heads) * cfg_.head_dim,
                kvd = int64_t(cfg_.n_kv_heads) * cfg_.head_dim, F = cfg_.d_ff;
  float* x = grow(st.x_, n * d);
  float* xn = grow(st.xn_, n * d);
  float* q = grow(st.q_, n * qd);
  float* k = grow(st.k_, n * kvd);
  float* v = grow(st.v_, n * kvd);
  float* att = grow(st.att_, n * qd);
  float* tmp = grow(st.tmp_, n * d);
  float* gate = grow(st.gate_, n * F);
  float* up = grow(st.up_, n * F);

  embedding_lookup(*embd_, tokens, n, x);
  for (size_t li = 0; li < layers_.size(); ++li) {
    const Layer& L = layers_[li];
    rmsnorm(x, L.attn_norm.data(), xn, n, d, cfg_.rms_eps);
    if (n == 1) {
      const MatvecJob jobs[3] = {L.q.job(q), L.k.job(k), L.v.job(v)};
      matvec_many(jobs, 3, xn, exact_);
      L.q.add_lora(xn, 1, q);
      L.k.add_lora(xn, 1, k);
      L.v.add_lora(xn, 1, v);
    } else {
      L.q.run(xn, n, q);
      L.k.run(xn, n, k);
      L.v.run(xn, n, v);
    }
    L.mixer->forward(xn, q, k, v, n, pos0, *st.mixers_[li], att);
    L.o.run(att, n, tmp);
    add_into(x, tmp, n * d);
    rmsnorm(x, L.ffn_norm.data(), xn, n, d, cfg_.rms_eps);
    if (n == 1) {
      const MatvecJob jobs[2] = {L.gate.job(gate), L.up.job(up)};
      matvec_many(jobs, 2, xn, exact_);
    } else {
      L.gate.run(xn, n, gate);
      L.up.run(xn, n, up);
    }
    swiglu(gate, up, gate, n * F);
    L.down.run(gate, n, tmp);
    add_into(x, tmp, n * d);
  }
  st.n_past_ = pos0 + n;
  if (!logits) return;
  if (all_logits) {
    rmsnorm(x, out_norm_.data(), xn, n, d, cfg_.rms_eps);
    head_.run(xn, n, logits);
  } else {
    rmsnorm(x + (n - 1) * d, out_norm_.data(), xn, 1, d, cfg_.rms_eps);
    head_.run(xn, 1, logits);
  }
}

}  // namespace lizard
