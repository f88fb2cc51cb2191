#include "train/stage2.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>

#include "model/load_model.h"
#include "ops/cpu/layer_backward.h"
#include "ops/cpu/lizard_attention.h"
#include "ops/cpu/matmul.h"
#include "util/error.h"

namespace lizard {

namespace {

const TensorView& tensor(const Checkpoint& ck, const std::string& name) {
  auto it = ck.tensors.find(name);
  LZ_CHECK(it != ck.tensors.end() && it->second.data != nullptr, "checkpoint '{}' has no tensor '{}'", ck.path, name);
  return it->second;
}

template <typename T>
std::vector<T> load(const Checkpoint& ck, const std::string& name, bool optional = false) {
  if (optional && !ck.tensors.count(name)) return {};
  const std::vector<float> f = dequantize_tensor(tensor(ck, name));
  return std::vector<T>(f.begin(), f.end());
}

template <typename T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

int64_t lora_out(const ModelConfig& mc, const std::string& t) {
  return int64_t(t == "q" ? mc.n_heads : mc.n_kv_heads) * mc.head_dim;
}

}  // namespace

template <typename T>
Stage2Net<T>::Stage2Net(const Checkpoint& ck, const LizardCheckpoint& lz) : mc_(ck.config) {
  check_lizard_teacher_shape(lz, mc_);
  LZ_CHECK(!lz.lora.empty(), "stage 2: no LoRA adapters given");
  LZ_CHECK(mc_.n_heads % mc_.n_kv_heads == 0, "stage 2: {} heads over {} kv heads", mc_.n_heads, mc_.n_kv_heads);
  lizard_config = lz.config;
  lizard_shape = lz.shape;
  rope_ = LizardRope::make(mc_.head_dim, mc_.rope_theta, mc_.rope_scaling);
  embd_ = load<T>(ck, "token_embd.weight");
  out_norm_ = load<T>(ck, "output_norm.weight");
  head_ = load<T>(ck, "output.weight", true);  // empty: tied
  w_.resize(mc_.n_layers);
  for (int i = 0; i < mc_.n_layers; ++i) {
    const std::string p = fmt::format("blk.{}.", i);
    W& w = w_[i];
    w.attn_norm = load<T>(ck, p + "attn_norm.weight");
    w.ffn_norm = load<T>(ck, p + "ffn_norm.weight");
    w.q = load<T>(ck, p + "attn_q.weight");
    w.k = load<T>(ck, p + "attn_k.weight");
    w.v = load<T>(ck, p + "attn_v.weight");
    w.o = load<T>(ck, p + "attn_output.weight");
    w.gate = load<T>(ck, p + "ffn_gate.weight");
    w.up = load<T>(ck, p + "ffn_up.weight");
    w.down = load<T>(ck, p + "ffn_down.weight");
    if (mc_.qkv_bias) {
      w.qb = load<T>(ck, p + "attn_q.bias");
      w.kb = load<T>(ck, p + "attn_k.bias");
      w.vb = load<T>(ck, p + "attn_v.bias");
    }
  }
  for (const auto& [l, p] : lz.layers) {
    lizard[l] = cast_params<T>(p);
    lizard_grad[l].resize(lz.config, lz.shape);
  }
  rank = lz.lora.rank;
  scale = T(lz.lora.scale());
  for (const auto& [l, m] : lz.lora.layers)
    for (const auto& [t, ad] : m) {
      Adapter& a = lora[l][t];
      LZ_CHECK(int64_t(ad.a.size()) == int64_t(rank) * mc_.d_model && int64_t(ad.b.size()) == lora_out(mc_, t) * rank,
               "stage 2: LoRA blk.{}.{} has the wrong size", l, t);
      a.a.assign(ad.a.begin(), ad.a.end());
      a.b.assign(ad.b.begin(), ad.b.end());
      a.ga.assign(a.a.size(), T(0));
      a.gb.assign(a.b.size(), T(0));
    }
}

template <typename T>
void Stage2Net<T>::zero_grads() {
  for (auto& [l, m] : lora)
    for (auto& [t, a] : m) {
      std::fill(a.ga.begin(), a.ga.end(), T(0));
      std::fill(a.gb.begin(), a.gb.end(), T(0));
    }
  for (auto& [l, g] : lizard_grad)
    for (auto& e : g.entries(lizard_config, lizard_shape)) std::fill(e.data->begin(), e.data->end(), T(0));
}

template <typename T>
void Stage2Net<T>::layer_forward(int li, const T* x_in, int L, Acts& a, T* x_out) {
  const int64_t d = mc_.d_model, H = mc_.n_heads, Hkv = mc_.n_kv_heads, D = mc_.head_dim, qd = H * D, kvd = Hkv * D,
                F = mc_.d_ff;
  const double eps = mc_.rms_eps;
  const W& w = w_[li];
  a.x.assign(x_in, x_in + L * d);
  a.xn1.resize(L * d);
  rmsnorm_forward(a.x.data(), w.attn_norm.data(), a.xn1.data(), L, d, eps);
  auto proj = [&](const std::string& t, const std::vector<T>& W, const std::vector<T>& b, int64_t out,
                  std::vector<T>& y) {
    y.resize(L * out);
    linear_forward(a.xn1.data(), L, d, W.data(), out, b.empty() ? nullptr : b.data(), y.data());
    auto lit = lora.find(li);
    if (lit == lora.end()) return;
    auto it = lit->second.find(t);
    if (it == lit->second.end()) return;
    std::vector<T>& h = a.h[t];
    h.resize(size_t(L) * rank);
    lora_forward(a.xn1.data(), L, d, out, rank, scale, it->second.a.data(), it->second.b.data(), h.data(), y.data());
  };
  proj("q", w.q, w.qb, qd, a.q);
  proj("k", w.k, w.kb, kvd, a.k);
  proj("v", w.v, w.vb, kvd, a.v);
  a.att.resize(L * qd);
  auto lit = lizard.find(li);
  if (lit != lizard.end()) {
    LizardInput<T> in;
    in.L = L;
    in.x = a.xn1.data();
    in.q = a.q.data();
    in.k = a.k.data();
    in.v = a.v.data();
    lizard_forward_chunked(lizard_config, lizard_shape, lit->second, &rope_, in, a.att.data());
  } else {
    a.qr = a.q;
    a.kr = a.k;
    rope_rows(rope_, a.qr.data(), L, int(H), int(D), 0, false);
    rope_rows(rope_, a.kr.data(), L, int(Hkv), int(D), 0, false);
    attention_forward(a.qr.data(), a.kr.data(), a.v.data(), L, int(H), int(Hkv), int(D), a.att.data());
  }
  a.xm.resize(L * d);
  linear_forward(a.att.data(), L, qd, w.o.data(), d, static_cast<const T*>(nullptr), a.xm.data());
  for (int64_t i = 0; i < L * d; ++i) a.xm[i] += a.x[i];
  a.xn2.resize(L * d);
  rmsnorm_forward(a.xm.data(), w.ffn_norm.data(), a.xn2.data(), L, d, eps);
  a.g.resize(L * F);
  a.u.resize(L * F);
  a.a.resize(L * F);
  linear_forward(a.xn2.data(), L, d, w.gate.data(), F, static_cast<const T*>(nullptr), a.g.data());
  linear_forward(a.xn2.data(), L, d, w.up.data(), F, static_cast<const T*>(nullptr), a.u.data());
  swiglu_forward(a.g.data(), a.u.data(), a.a.data(), L * F);
  linear_forward(a.a.data(), L, F, w.down.data(), d, static_cast<const T*>(nullptr), x_out);
  for (int64_t i = 0; i < L * d; ++i) x_out[i] += a.xm[i];
}

template <typename T>
void Stage2Net<T>::layer_backward(int li, Acts& a, int L, const T* dx_out, T* dx_in) {
  const int64_t d = mc_.d_model, H = mc_.n_heads, Hkv = mc_.n_kv_heads, D = mc_.head_dim, qd = H * D, kvd = Hkv * D,
                F = mc_.d_ff;
  const double eps = mc_.rms_eps;
  const W& w = w_[li];
  // MLP: x_out = xm + down(swiglu(gate(xn2), up(xn2))), xn2 = rmsnorm(xm).
  std::vector<T> dxm(dx_out, dx_out + L * d), da(L * F), dg(L * F), du(L * F), dxn2(L * d);
  linear_backward_input(dx_out, L, d, w.down.data(), F, da.data(), false);
  swiglu_backward(a.g.data(), a.u.data(), da.data(), dg.data(), du.data(), L * F);
  linear_backward_input(dg.data(), L, F, w.gate.data(), d, dxn2.data(), false);
  linear_backward_input(du.data(), L, F, w.up.data(), d, dxn2.data(), true);
  rmsnorm_backward(a.xm.data(), w.ffn_norm.data(), dxn2.data(), dxm.data(), L, d, eps, true);
  // Attention: xm = x + W_o(att).
  std::vector<T> datt(L * qd), dq(L * qd), dk(L * kvd), dv(L * kvd), dxn1(L * d, T(0));
  linear_backward_input(dxm.data(), L, d, w.o.data(), qd, datt.data(), false);
  auto lit = lizard.find(li);
  if (lit != lizard.end()) {
    LizardInput<T> in;
    in.L = L;
    in.x = a.xn1.data();
    in.q = a.q.data();
    in.k = a.k.data();
    in.v = a.v.data();
    LizardParamsT<T>& gp = train_lizard ? lizard_grad.at(li) : scratch_grad_;
    lizard_backward_chunked(lizard_config, lizard_shape, lit->second, &rope_, in, datt.data(), gp, dxn1.data(),
                            dq.data(), dk.data(), dv.data());
  } else {
    attention_backward(a.qr.data(), a.kr.data(), a.v.data(), datt.data(), L, int(H), int(Hkv), int(D), dq.data(),
                       dk.data(), dv.data());
    rope_rows(rope_, dq.data(), L, int(H), int(D), 0, true);  // gradient through an orthogonal rotation
    rope_rows(rope_, dk.data(), L, int(Hkv), int(D), 0, true);
  }
  linear_backward_input(dq.data(), L, qd, w.q.data(), d, dxn1.data(), true);
  linear_backward_input(dk.data(), L, kvd, w.k.data(), d, dxn1.data(), true);
  linear_backward_input(dv.data(), L, kvd, w.v.data(), d, dxn1.data(), true);
  if (auto it = lora.find(li); it != lora.end())
    for (auto& [t, ad] : it->second) {
      const std::vector<T>& dy = t == "q" ? dq : t == "k" ? dk : dv;
      lora_backward(a.xn1.data(), a.h.at(t).data(), dy.data(), L, d, lora_out(mc_, t), rank, scale, ad.a.data(),
                    ad.b.data(), ad.ga.data(), ad.gb.data(), dxn1.data());
    }
  std::copy(dxm.begin(), dxm.end(), dx_in);
  rmsnorm_backward(a.x.data(), w.attn_norm.data(), dxn1.data(), dx_in, L, d, eps, true);
}

template <typename T>
double Stage2Net<T>::run(const int32_t* seq, int L, double weight, bool grads) {
  LZ_CHECK(L >= 1, "stage 2: empty sequence");
  const int64_t d = mc_.d_model, V = mc_.vocab_size;
  for (int i = 0; i <= L; ++i)
    LZ_CHECK(seq[i] >= 0 && seq[i] < V, "token id {} is out of range (vocabulary of {})", seq[i], V);
  const int nl = mc_.n_layers;
  std::vector<T> x(L * d), y(L * d);
  for (int i = 0; i < L; ++i) std::copy_n(embd_.data() + int64_t(seq[i]) * d, d, x.data() + i * d);
  // Without recompute every layer keeps its activations; with it, only its input (acts[li].x).
  std::vector<Acts> acts(nl);
  Acts scratch;
  for (int li = 0; li < nl; ++li) {
    Acts& a = recompute ? scratch : acts[li];
    layer_forward(li, x.data(), L, a, y.data());
    if (recompute) acts[li].x = x;
    std::swap(x, y);
  }
  std::vector<T> xf(L * d), logits(int64_t(L) * V);
  rmsnorm_forward(x.data(), out_norm_.data(), xf.data(), L, d, mc_.rms_eps);
  const std::vector<T>& head = head_.empty() ? embd_ : head_;
  linear_forward(xf.data(), L, d, head.data(), V, static_cast<const T*>(nullptr), logits.data());
  const double ce = cross_entropy(logits.data(), seq + 1, L, V, weight, grads ? logits.data() : nullptr);
  if (!grads) return weight * ce;
  // Backward. logits now holds d(loss)/d(logits).
  linear_backward_input(logits.data(), L, V, head.data(), d, xf.data(), false);
  rmsnorm_backward(x.data(), out_norm_.data(), xf.data(), y.data(), L, d, mc_.rms_eps, false);
  std::swap(x, y);  // x = dx of the last layer's output
  for (int li = nl - 1; li >= 0; --li) {
    if (recompute) {
      const std::vector<T> xin = acts[li].x;
      layer_forward(li, xin.data(), L, scratch, y.data());
    }
    layer_backward(li, recompute ? scratch : acts[li], L, x.data(), y.data());
    std::swap(x, y);
    if (!recompute) acts[li] = Acts{};  // free as we go
  }
  return weight * ce;
}

template class Stage2Net<float>;
template class Stage2Net<double>;

// ---- Stage2 ------------------------------------------------------------------------------------

LizardCheckpoint stage2_start(const ModelConfig& teacher, const LizardCheckpoint& lizard, const Stage2Options& opt) {
  check_lizard_teacher_shape(lizard, teacher);
  LizardCheckpoint ck = lizard;
  ck.lora = init_lora(opt.lora, teacher, opt.init_seed);
  return ck;
}

std::string stage2_fingerprint(const LizardCheckpoint& start, const Stage2Options& opt) {
  // Stage 1's Lizard parameters: a resume must start from the same.
  std::vector<float> all;
  for (const auto& [l, p] : start.layers) {
    LizardParams q = p;  // entries() hands out mutable views
    for (auto& e : q.entries(start.config, start.shape)) all.insert(all.end(), e.data->begin(), e.data->end());
  }
  nlohmann::json j = {{"stage", "lora-finetune"},
                      {"lizard_config", lizard_config_to_json(start.config)},
                      {"teacher", start.teacher.fingerprint},
                      {"teacher_size", start.teacher.size},
                      {"stage1_params", sha256_hex(all.data(), all.size() * sizeof(float))},
                      {"lora_rank", opt.lora.rank},
                      {"lora_alpha", opt.lora.alpha},
                      {"lora_targets", opt.lora.targets},
                      {"train_lizard", opt.train_lizard},
                      {"init_seed", opt.init_seed}};
  return j.dump();
}

Stage2::Stage2(std::shared_ptr<const Checkpoint> teacher, const LizardCheckpoint& lizard, const Stage2Options& opt)
    : ckpt_(std::move(teacher)), opt_(opt) {
  LZ_CHECK(ckpt_ != nullptr, "no teacher given");
  LZ_CHECK(opt_.seq_len >= 1, "sequence length must be positive");
  base_ = stage2_start(ckpt_->config, lizard, opt_);
  net_ = std::make_unique<Stage2Net<float>>(*ckpt_, base_);
  net_->recompute = opt_.recompute;
  net_->train_lizard = opt_.train_lizard;
  ModelOptions mo;
  mo.n_threads = opt_.threads;
  mo.context = std::max<int64_t>(opt_.seq_len, 1);
  mo.fp32_cache_bytes = opt_.fp32_cache_bytes;
  teacher_ = std::make_unique<LlamaModel>(ckpt_, mo);
}

std::vector<ParamTensor> Stage2::params() {
  return stage2_params(net_->lora, net_->lizard, net_->lizard_grad, base_, opt_.train_lizard);
}

LossResult Stage2::run(const std::vector<const int32_t*>& seqs, int seq_len, bool grads) {
  LZ_CHECK(!seqs.empty(), "stage 2: empty batch");
  LZ_CHECK(seq_len >= 1 && seq_len <= opt_.seq_len, "stage 2: a sequence of {} tokens (up to {})", seq_len,
           opt_.seq_len);
  if (grads) net_->zero_grads();
  // The projections are single big sgemm calls from this thread: let BLAS use the cores here (the
  // rest of the process keeps it single-threaded inside OpenMP regions).
  struct BlasThreads {
    int prev = 1;
    explicit BlasThreads(int n) {
#ifdef OPENBLAS_VERSION
      prev = openblas_get_num_threads();
      openblas_set_num_threads(n);
#else
      (void)n;
#endif
    }
    ~BlasThreads() {
#ifdef OPENBLAS_VERSION
      openblas_set_num_threads(prev);
#endif
    }
  } blas(teacher_->n_threads());
  const auto t0 = std::chrono::steady_clock::now();
  const double w = 1.0 / (double(seqs.size()) * seq_len);
  LossResult r;
  for (const int32_t* s : seqs) r.total += net_->run(s, seq_len, w, grads);
  r.parts = {r.total};
  r.seconds = {{grads ? "forward_backward" : "forward",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}};
  return r;
}

LossResult Stage2::forward_backward(const std::vector<const int32_t*>& seqs, int seq_len) {
  return run(seqs, seq_len, true);
}

LossResult Stage2::evaluate(const std::vector<const int32_t*>& seqs, int seq_len) { return run(seqs, seq_len, false); }

LizardCheckpoint Stage2::checkpoint() const { return stage2_checkpoint(base_, net_->lizard, net_->lora); }

void Stage2::save_model(const std::string& dir) const { save_lizard_dir(dir, checkpoint()); }

std::string Stage2::fingerprint() const { return stage2_fingerprint(base_, opt_); }

std::unique_ptr<LlamaModel> stage2_student(std::shared_ptr<const Checkpoint> teacher_ckpt, const LlamaModel& teacher,
                                           const Stage2Options& opt, const LizardCheckpoint& model) {
  ModelOptions mo;
  mo.n_threads = teacher.n_threads();
  mo.context = teacher.context_length();
  mo.fp32_cache_bytes = opt.fp32_cache_bytes;
  auto m = std::make_unique<LlamaModel>(std::move(teacher_ckpt), mo);
  apply_lizard(*m, model);
  return m;
}

std::unique_ptr<LlamaModel> Stage2::student() const { return stage2_student(ckpt_, *teacher_, opt_, checkpoint()); }

}  // namespace lizard
