#include "train/lora.h"

#include <cmath>
#include <sstream>

#include "util/error.h"

namespace lizard {

std::vector<std::string> parse_lora_targets(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  std::string t;
  while (std::getline(ss, t, ',')) {
    if (t.empty()) continue;
    LZ_CHECK(t == "q" || t == "k" || t == "v", "LoRA target '{}' is not supported (q, k, v)", t);
    for (auto& u : v) LZ_CHECK(u != t, "LoRA target '{}' given twice", t);
    v.push_back(t);
  }
  LZ_CHECK(!v.empty(), "no LoRA target given (q, k, v)");
  return v;
}

namespace {
uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

LoraSet init_lora(const LoraOptions& o, const ModelConfig& mc, uint64_t seed) {
  LZ_CHECK(o.rank >= 1 && o.rank <= 64, "LoRA rank {} is out of range (1..64)", o.rank);
  LZ_CHECK(o.alpha > 0, "LoRA alpha must be positive");
  LoraSet s;
  s.rank = o.rank;
  s.alpha = o.alpha;
  s.targets = o.targets;
  const int64_t in = mc.d_model;
  const double bound = 1.0 / std::sqrt(double(in));
  for (int l = 0; l < mc.n_layers; ++l)
    for (const std::string& t : o.targets) {
      const int64_t out = int64_t(t == "q" ? mc.n_heads : mc.n_kv_heads) * mc.head_dim;
      uint64_t st = seed ^ (uint64_t(l + 1) * 0xA24BAED4963EE407ull) ^ (uint64_t(t[0]) << 56);
      LoraAdapter ad;
      ad.a.resize(static_cast<size_t>(o.rank * in));
      for (float& x : ad.a) x = float(bound * (2.0 * double(splitmix(st) >> 11) * 0x1.0p-53 - 1.0));
      ad.b.assign(static_cast<size_t>(out * o.rank), 0.0f);
      s.layers[l][t] = std::move(ad);
    }
  return s;
}

}  // namespace lizard
