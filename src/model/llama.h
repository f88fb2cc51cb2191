// The teacher on the CPU: a Llama-family decoder (Llama 2/3, Mistral, Qwen2 with q/k/v bias,
// SmolLM; tied or separate output head) over the weights of a Checkpoint, fp32 activations.
// Each layer's attention goes through a SequenceMixer (softmax by default), so Lizard layers can
// replace some or all of them. Per-sequence data (caches, scratch, logits) lives in LlamaState.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "model/checkpoint.h"
#include "model/sequence_mixer.h"
#include "ops/cpu/matmul.h"

namespace lizard {

struct ModelOptions {
  int n_threads = 0;            // 0: all cores
  int64_t context = 0;          // longest sequence; 0: the config's max_seq_len
  int64_t max_batch = 512;      // tokens per internal chunk of a long forward (bounds scratch memory)
  size_t fp32_cache_bytes = 0;  // keep fp32 copies of weights for prefill, up to this many bytes
  // Decode as prefill does, on dequantized weights in fp32, instead of rounding activations to
  // 8 bits for the quantized dot products (llama.cpp's way, and much faster). For parity checks.
  bool exact = false;
};

class LlamaModel;

// A low-rank update of a frozen linear layer (LoRA): y += scale * (x A^T) B^T, A [rank, in], B [out, rank].
struct LoraDelta {
  int rank = 0;
  float scale = 0;
  std::vector<float> a, b;
};

class LlamaState {
 public:
  int64_t n_past() const { return n_past_; }  // positions held
  void reset();
  size_t cache_bytes() const;                 // memory held by the mixers' states

  // For saving and restoring a sequence (generate/state_io.h): the layers' states, in order.
  const LlamaModel* model() const { return model_; }
  size_t n_layers() const { return mixers_.size(); }
  const MixerState& layer_state(size_t i) const { return *mixers_.at(i); }
  MixerState& layer_state(size_t i) { return *mixers_.at(i); }
  void set_restored_n_past(int64_t n) { n_past_ = n; }  // once every layer's state is read back

 private:
  friend class LlamaModel;
  const LlamaModel* model_ = nullptr;
  uint64_t mixers_version_ = 0;
  int64_t n_past_ = 0;
  std::vector<std::unique_ptr<MixerState>> mixers_;
  std::vector<float> x_, xn_, q_, k_, v_, att_, tmp_, gate_, up_, logits_;
};

class LlamaModel {
 public:
  explicit LlamaModel(std::shared_ptr<const Checkpoint> ckpt, const ModelOptions& opt = {});
  explicit LlamaModel(Checkpoint&& ckpt, const ModelOptions& opt = {});

  const ModelConfig& config() const { return cfg_; }
  const Checkpoint& checkpoint() const { return *ckpt_; }
  int64_t context_length() const { return context_; }
  // Longest sequence; states made before must be remade. Models whose every layer is recurrent
  // (all Lizard) have no limit but this one.
  void set_context(int64_t n);
  int vocab_size() const { return cfg_.vocab_size; }
  int n_threads() const { return n_threads_; }
  void set_threads(int n);  // 0: all cores
  size_t fp32_cached_bytes() const { return cached_bytes_; }

  LlamaState new_state() const;

  // Runs tokens[0..n) at positions start_pos.. and returns the logits of the last token ([vocab]),
  // or of every token ([n, vocab]) when all_logits. start_pos may be below st.n_past() to rewind
  // (softmax layers only). The span points into st and stays valid until its next forward.
  // Throws Error for a token id out of range or a sequence longer than the context.
  std::span<const float> forward(const int32_t* tokens, int64_t n, int64_t start_pos, LlamaState& st,
                                 bool all_logits = false) const;
  std::span<const float> forward(std::span<const int32_t> tokens, int64_t start_pos, LlamaState& st,
                                 bool all_logits = false) const {
    return forward(tokens.data(), static_cast<int64_t>(tokens.size()), start_pos, st, all_logits);
  }

  // Replace layer i's mixer (e.g. with a Lizard layer). States made before must be remade.
  void set_mixer(int layer, std::shared_ptr<const SequenceMixer> mixer);
  const SequenceMixer& mixer(int layer) const { return *layers_.at(layer).mixer; }
  // Adds a LoRA delta to layer's q, k or v projection (target 'q', 'k', 'v'); null removes it.
  void set_lora(int layer, char target, std::shared_ptr<const LoraDelta> delta);

 private:
  struct Linear {
    const TensorView* w = nullptr;
    std::vector<float> f32;   // dequantized copy for prefill, when within the cache budget
    std::vector<float> bias;  // empty if none
    bool exact = false;
    std::shared_ptr<const LoraDelta> lora;  // null if none
    void run(const float* x, int64_t n, float* y) const;
    void add_lora(const float* x, int64_t n, float* y) const;
    MatvecJob job(float* y) const { return {w, y, bias.empty() ? nullptr : bias.data()}; }
  };
  struct Layer {
    std::vector<float> attn_norm, ffn_norm;
    Linear q, k, v, o, gate, up, down;
    std::shared_ptr<const SequenceMixer> mixer;
  };

  void init(const ModelOptions& opt);
  void forward_chunk(const int32_t* tokens, int64_t n, int64_t pos0, LlamaState& st, float* logits,
                     bool all_logits) const;

  std::shared_ptr<const Checkpoint> ckpt_;
  ModelConfig cfg_;
  int64_t context_ = 0, max_batch_ = 512;
  int n_threads_ = 1;
  bool exact_ = false;
  size_t cached_bytes_ = 0;
  uint64_t mixers_version_ = 1;
  const TensorView* embd_ = nullptr;
  std::vector<float> out_norm_;
  Linear head_;
  std::vector<Layer> layers_;
};

}  // namespace lizard
