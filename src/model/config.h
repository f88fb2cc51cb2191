// Architecture hyper-parameters of a Llama-family teacher, read from GGUF metadata or config.json.
#pragma once
#include <cstdint>
#include <string>

namespace lizard {

struct RopeScaling {
  enum class Kind { None, Llama3, Linear } kind = Kind::None;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position = 8192;
};

struct ModelConfig {
  std::string arch;        // "llama", "mistral", "qwen2" (SmolLM is "llama")
  std::string name;        // human-readable, from the file
  int vocab_size = 0;
  int d_model = 0;         // hidden size
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int d_ff = 0;            // SwiGLU intermediate size
  int max_seq_len = 0;     // context length the teacher was trained for
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool qkv_bias = false;          // Qwen2
  bool tied_embeddings = false;   // output head shares token_embd
  int sliding_window = 0;         // Mistral's, informational (0 = none)

  int64_t param_count() const;    // from the shapes above (embeddings counted once if tied)
};

}  // namespace lizard
