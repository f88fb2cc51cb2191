#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "util/error.h"

namespace lizard {

void AdamW::init(const std::vector<ParamTensor>& params) {
  m_.clear();
  v_.clear();
  for (const auto& p : params) {
    LZ_CHECK(p.value && p.grad && p.value->size() == p.grad->size(), "optimizer: tensor '{}' has no matching gradient",
             p.name);
    m_.emplace_back(p.value->size(), 0.0f);
    v_.emplace_back(p.value->size(), 0.0f);
  }
  t_ = 0;
}

void AdamW::step(const std::vector<ParamTensor>& params, double lr) {
  LZ_CHECK(params.size() == m_.size(), "optimizer: {} tensors, initialised for {}", params.size(), m_.size());
  ++t_;
  const double b1 = opt_.beta1, b2 = opt_.beta2;
  const double c1 = 1.0 - std::pow(b1, double(t_)), c2 = 1.0 - std::pow(b2, double(t_));
  const double decay = 1.0 - lr * opt_.weight_decay;
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<float>& w = *params[i].value;
    const std::vector<float>& g = *params[i].grad;
    LZ_CHECK(w.size() == m_[i].size() && g.size() == w.size(), "optimizer: tensor '{}' changed size", params[i].name);
    float* m = m_[i].data();
    float* v = v_[i].data();
    for (size_t e = 0; e < w.size(); ++e) {
      const double gi = g[e];
      const double mi = b1 * m[e] + (1.0 - b1) * gi;
      const double vi = b2 * v[e] + (1.0 - b2) * gi * gi;
      m[e] = float(mi);
      v[e] = float(vi);
      const double p = double(w[e]) * decay;
      w[e] = float(p - lr * (mi / c1) / (std::sqrt(vi / c2) + opt_.eps));
    }
  }
}

double clip_grad_norm(const std::vector<ParamTensor>& params, double max_norm) {
  double ss = 0;
  for (const auto& p : params)
    for (float g : *p.grad) ss += double(g) * g;
  const double norm = std::sqrt(ss);
  if (max_norm > 0 && norm > max_norm) {
    const double s = max_norm / (norm + 1e-6);
    for (const auto& p : params)
      for (float& g : *p.grad) g = float(g * s);
  }
  return norm;
}

int64_t LrSchedule::warmup_steps() const {
  return std::max<int64_t>(1, std::llround(warmup_frac * double(total)));
}

double LrSchedule::at(int64_t s) const {
  const int64_t warm = warmup_steps();
  if (s < warm) return peak * double(s + 1) / double(warm);
  const int64_t span = total - 1 - warm;
  const double p = span > 0 ? std::min(1.0, double(s - warm) / double(span)) : 1.0;
  return peak * (final_frac + (1.0 - final_frac) * 0.5 * (1.0 + std::cos(std::numbers::pi * p)));
}

}  // namespace lizard
