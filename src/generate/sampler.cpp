#include "generate/sampler.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace lizard {

Sampler::Sampler(const SamplerOptions& opt) : opt_(opt), rng_(opt.seed) {
  LZ_CHECK(std::isfinite(opt.temperature), "temperature must be a number, got {}", opt.temperature);
  LZ_CHECK(opt.top_p > 0.0f, "top-p must be above 0, got {}", opt.top_p);
  LZ_CHECK(opt.repetition_penalty > 0.0f, "repetition penalty must be above 0, got {}", opt.repetition_penalty);
}

int32_t Sampler::sample(std::span<const float> logits_in, std::span<const int32_t> history) {
  const int64_t V = static_cast<int64_t>(logits_in.size());
  LZ_CHECK(V > 0, "no logits to sample from");
  const float* logits = logits_in.data();
  if (opt_.repetition_penalty != 1.0f && !history.empty()) {
    work_.assign(logits_in.begin(), logits_in.end());
    const size_t from = opt_.repeat_last_n > 0 && history.size() > size_t(opt_.repeat_last_n)
                            ? history.size() - opt_.repeat_last_n
                            : 0;
    recent_.assign(history.begin() + from, history.end());
    std::sort(recent_.begin(), recent_.end());
    recent_.erase(std::unique(recent_.begin(), recent_.end()), recent_.end());
    for (int32_t id : recent_) {
      if (id < 0 || id >= V) continue;
      float& l = work_[id];
      l = l > 0 ? l / opt_.repetition_penalty : l * opt_.repetition_penalty;
    }
    logits = work_.data();
  }

  if (opt_.temperature <= 0.0f) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);

  cand_.resize(V);
  for (int64_t i = 0; i < V; ++i) cand_[i] = {logits[i], static_cast<int32_t>(i)};
  auto more_likely = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = cand_.size();
  if (opt_.top_k > 0 && opt_.top_k < V) {
    std::nth_element(cand_.begin(), cand_.begin() + opt_.top_k, cand_.end(), more_likely);
    n = opt_.top_k;
  }
  const bool nucleus = opt_.top_p < 1.0f;
  if (nucleus) std::sort(cand_.begin(), cand_.begin() + n, more_likely);

  // Softmax of logit / T over the candidates, relative to the largest.
  float mx = -INFINITY;
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, cand_[i].first);
  const double inv_t = 1.0 / opt_.temperature;
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double p = std::exp((static_cast<double>(cand_[i].first) - mx) * inv_t);
    cand_[i].first = static_cast<float>(p);
    total += p;
  }
  if (nucleus) {
    double cum = 0.0;
    size_t keep = 0;
    while (keep < n) {
      cum += cand_[keep++].first;
      if (cum >= opt_.top_p * total) break;
    }
    n = keep;
    total = cum;
  }
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= cand_[i].first;
    if (r < 0) return cand_[i].second;
  }
  return cand_[n - 1].second;  // rounding left a sliver
}

}  // namespace lizard
