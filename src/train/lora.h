// LoRA for stage 2 (shared/LIZARD.md section 6): rank r adapters on W_q, W_k, W_v (configurable)
// of every layer; the delta is (alpha / r) B A with A [r, in] ~ U(-1/sqrt(in), 1/sqrt(in))
// (Kaiming-uniform-like) and B = 0, so training starts from the unchanged model. Dropout 0.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/lizard_checkpoint.h"

namespace lizard {

struct LoraOptions {
  int rank = 8;
  double alpha = 16;
  std::vector<std::string> targets{"q", "k", "v"};
};

// "q,k,v" -> {"q", "k", "v"}; throws Error for anything else or an empty list.
std::vector<std::string> parse_lora_targets(const std::string& s);

// Adapters for every layer of the model, deterministic in seed (SplitMix64).
LoraSet init_lora(const LoraOptions& o, const ModelConfig& mc, uint64_t seed);

}  // namespace lizard
