// Next-token sampling: repetition penalty, temperature (0 = greedy argmax), top-k, top-p.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

namespace lizard {

struct SamplerOptions {
  float temperature = 0.8f;          // <= 0: greedy (argmax, lowest id on ties)
  int top_k = 40;                    // keep the k most likely; <= 0: all
  float top_p = 0.95f;               // keep the smallest set whose probability reaches p; >= 1: all
  float repetition_penalty = 1.0f;   // CTRL/HF style on recent tokens: logit > 0 divided, < 0 multiplied
  int repeat_last_n = 64;            // how many recent tokens the penalty looks at; <= 0: all
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& opt = {});
  // history: the sequence so far (only read by the repetition penalty).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history = {});
  void reseed(uint64_t seed) { rng_.seed(seed); }
  const SamplerOptions& options() const { return opt_; }

 private:
  SamplerOptions opt_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<int32_t> recent_;
};

}  // namespace lizard
