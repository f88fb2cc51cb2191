#include "train/stage1.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ops/cpu/matmul.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace lizard {

void CaptureMixer::forward(const float* x_normed, const float* q, const float* k, const float* v, int64_t n,
                           int64_t pos0, MixerState& st, float* y) const {
  inner_->forward(x_normed, q, k, v, n, pos0, st, y);
  if (!sink_ || !active_ || !*active_) return;
  LayerCapture& c = *sink_;
  const int64_t rows = pos0 + n;
  auto put = [&](std::vector<float>& dst, const float* src, int64_t width) {
    if (static_cast<int64_t>(dst.size()) < rows * width) dst.resize(static_cast<size_t>(rows * width));
    std::memcpy(dst.data() + pos0 * width, src, sizeof(float) * static_cast<size_t>(n * width));
  };
  put(c.x, x_normed, d_);
  put(c.q, q, qw_);
  put(c.k, k, kvw_);
  put(c.v, v, kvw_);
  put(c.y, y, qw_);
  c.n = rows;
}

template <typename T>
double stage1_layer_loss(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p,
                         const LizardRope* rope, const LizardInput<T>& in, const T* y_teacher, double weight,
                         LizardParamsT<T>* grad) {
  const size_t n = static_cast<size_t>(in.L) * s.n_heads * s.head_dim;
  if (n == 0) return 0;
  std::vector<T> y(n);
  lizard_forward_chunked(c, s, p, rope, in, y.data());
  double ss = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double(y[i]) - double(y_teacher[i]);
    ss += d * d;
  }
  if (grad) {
    // d/dy of weight * mean(diff^2); y is reused as dy.
    const double g = 2.0 * weight / double(n);
    for (size_t i = 0; i < n; ++i) y[i] = T(g * (double(y[i]) - double(y_teacher[i])));
    lizard_backward_chunked(c, s, p, rope, in, y.data(), *grad, static_cast<T*>(nullptr), static_cast<T*>(nullptr),
                            static_cast<T*>(nullptr), static_cast<T*>(nullptr));
  }
  return weight * ss / double(n);
}

template double stage1_layer_loss<float>(const LizardConfig&, const LizardShape&, const LizardParamsT<float>&,
                                         const LizardRope*, const LizardInput<float>&, const float*, double,
                                         LizardParamsT<float>*);
template double stage1_layer_loss<double>(const LizardConfig&, const LizardShape&, const LizardParamsT<double>&,
                                          const LizardRope*, const LizardInput<double>&, const double*, double,
                                          LizardParamsT<double>*);

std::vector<const char*> stage1_trainable(const LizardConfig& c) {
  if (c.combine == LizardConfig::Combine::Lolcats) return {"feat_q", "feat_k", "lolcats_f"};
  std::vector<const char*> v{"feat_q", "feat_k", "gate_w", "gate_b"};
  if (c.meta_tokens > 0) v.push_back("meta");
  v.push_back("alpha");
  return v;
}

Stage1::Stage1(std::shared_ptr<const Checkpoint> teacher, const Stage1Options& opt)
    : ckpt_(std::move(teacher)), opt_(opt) {
  LZ_CHECK(ckpt_ != nullptr, "no teacher given");
  const ModelConfig& mc = ckpt_->config;
  LZ_CHECK(opt_.seq_len >= 1, "sequence length must be positive");
  ck_ = init_lizard_checkpoint(opt_.config, mc, opt_.init_seed);  // validates the config against the teacher
  ck_.teacher = opt_.teacher;
  for (const auto& [l, p] : ck_.layers) layers_.push_back(l);
  require_lizard_layers(ck_.config, mc.n_layers, "stage 1");
  grads_.resize(layers_.size());
  for (auto& g : grads_) g.resize(ck_.config, ck_.shape);
  caps_.resize(layers_.size());
  rope_ = LizardRope::make(mc.head_dim, mc.rope_theta, mc.rope_scaling);

  ModelOptions mo;
  mo.n_threads = opt_.threads;
  mo.context = std::max<int64_t>(opt_.seq_len, 1);
  mo.fp32_cache_bytes = opt_.fp32_cache_bytes;
  teacher_ = std::make_unique<LlamaModel>(ckpt_, mo);
  const int qw = mc.n_heads * mc.head_dim, kvw = mc.n_kv_heads * mc.head_dim;
  auto softmax = std::make_shared<const SoftmaxMixer>(mc);
  for (size_t i = 0; i < layers_.size(); ++i)
    teacher_->set_mixer(layers_[i], std::make_shared<const CaptureMixer>(softmax, mc.d_model, qw, kvw, &caps_[i],
                                                                         &capturing_));
  state_ = std::make_unique<LlamaState>(teacher_->new_state());
  blas_single_threaded();
}

std::vector<std::string> Stage1::part_names() const {
  std::vector<std::string> v;
  for (int l : layers_) v.push_back(fmt::format("layer {}", l));
  return v;
}

std::vector<ParamTensor> Stage1::params() {
  std::vector<ParamTensor> v;
  const auto names = stage1_trainable(ck_.config);
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto pe = ck_.layers.at(layers_[i]).entries(ck_.config, ck_.shape);
    auto ge = grads_[i].entries(ck_.config, ck_.shape);
    for (size_t e = 0; e < pe.size(); ++e)
      if (std::find_if(names.begin(), names.end(), [&](const char* n) { return std::strcmp(n, pe[e].name) == 0; }) !=
          names.end())
        v.push_back({fmt::format("blk.{}.lizard.{}", layers_[i], pe[e].name), pe[e].data, ge[e].data});
  }
  return v;
}

void Stage1::capture(const int32_t* tokens, int n) {
  LZ_CHECK(n >= 1 && n <= opt_.seq_len, "stage 1: a sequence of {} tokens (the teacher runs up to {})", n,
           opt_.seq_len);
  state_->reset();
  for (auto& c : caps_) c.n = 0;
  capturing_ = true;
  try {
    teacher_->forward(tokens, n, 0, *state_, /*all_logits=*/false);
  } catch (...) {
    capturing_ = false;
    throw;
  }
  capturing_ = false;
  for (auto& c : caps_) LZ_CHECK(c.n == n, "stage 1: a layer captured {} of {} positions", c.n, n);
}

namespace {

// Layers run on OpenMP threads of their own; the Lizard kernels inside must not fork again (their
// parallel regions get one thread) and BLAS stays single-threaded (blas_single_threaded()).
struct OuterParallel {
  int prev;
  OuterParallel() : prev(omp_get_max_active_levels()) { omp_set_max_active_levels(1); }
  ~OuterParallel() { omp_set_max_active_levels(prev); }
};

}  // namespace

LossResult Stage1::run(const std::vector<const int32_t*>& seqs, int seq_len, bool grads) {
  LZ_CHECK(!seqs.empty(), "stage 1: empty batch");
  if (grads)
    for (auto& g : grads_)
      for (auto& e : g.entries(ck_.config, ck_.shape)) std::fill(e.data->begin(), e.data->end(), 0.0f);
  const int nl = static_cast<int>(layers_.size());
  LossResult r;
  r.parts.assign(layers_.size(), 0.0);
  const double w = 1.0 / double(seqs.size());
  const int threads = std::max(1, std::min(teacher_->n_threads(), nl));
  using clock = std::chrono::steady_clock;
  double t_teacher = 0, t_layers = 0;
  for (const int32_t* seq : seqs) {
    const auto t0 = clock::now();
    capture(seq, seq_len);
    const auto t1 = clock::now();
    t_teacher += std::chrono::duration<double>(t1 - t0).count();
    std::exception_ptr err;
    OuterParallel guard;
    // One layer per thread at a time; each layer's gradient is touched by one thread only, and
    // sequences are added in batch order, so results do not depend on the thread count.
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int i = 0; i < nl; ++i) {
      try {
        const LayerCapture& c = caps_[i];
        LizardInput<float> in;
        in.L = seq_len;
        in.x = c.x.data();
        in.q = c.q.data();
        in.k = c.k.data();
        in.v = c.v.data();
        r.parts[i] += stage1_layer_loss(ck_.config, ck_.shape, ck_.layers.at(layers_[i]), &rope_, in, c.y.data(), w,
                                        grads ? &grads_[i] : nullptr);
      } catch (...) {
#pragma omp critical(lizard_stage1_error)
        if (!err) err = std::current_exception();
      }
    }
    if (err) std::rethrow_exception(err);
    t_layers += std::chrono::duration<double>(clock::now() - t1).count();
  }
  r.seconds = {{"teacher", t_teacher}, {"lizard", t_layers}};
  for (double p : r.parts) r.total += p;
  return r;
}

LossResult Stage1::forward_backward(const std::vector<const int32_t*>& seqs, int seq_len) {
  return run(seqs, seq_len, true);
}

LossResult Stage1::evaluate(const std::vector<const int32_t*>& seqs, int seq_len) { return run(seqs, seq_len, false); }

void Stage1::save_model(const std::string& dir) const {
  save_lizard_dir(dir, ck_);  // DIR/lizard.safetensors: what load_model and `lizard generate -m DIR` open
}

std::string Stage1::fingerprint() const {
  nlohmann::json j = {{"stage", name()},
                      {"lizard_config", lizard_config_to_json(ck_.config)},
                      {"teacher", ck_.teacher.fingerprint},
                      {"teacher_size", ck_.teacher.size},
                      {"init_seed", opt_.init_seed}};
  return j.dump();
}

std::unique_ptr<LlamaModel> Stage1::student() const {
  ModelOptions mo;
  mo.n_threads = teacher_->n_threads();
  mo.context = teacher_->context_length();
  // The same weight path as the teacher (fp32 copies or quantized), so that KL measures the Lizard
  // layers only.
  mo.fp32_cache_bytes = opt_.fp32_cache_bytes;
  auto m = std::make_unique<LlamaModel>(ckpt_, mo);
  apply_lizard(*m, ck_);
  return m;
}

}  // namespace lizard
