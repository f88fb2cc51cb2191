// Opening a teacher checkpoint: a GGUF file or a Hugging Face directory (config.json +
// safetensors + tokenizer.json). Produces one architecture description, the weights under
// canonical (GGUF-style) names, the tokenizer and the chat template.
//
// Canonical tensor names and shapes (row-major, PyTorch order):
//   token_embd.weight {vocab, d}   output_norm.weight {d}   output.weight {vocab, d} (absent if tied)
//   blk.N.attn_norm.weight {d}     blk.N.ffn_norm.weight {d}
//   blk.N.attn_q.weight {H*D, d}   blk.N.attn_k.weight {Hkv*D, d}   blk.N.attn_v.weight {Hkv*D, d}
//   blk.N.attn_q.bias / attn_k.bias / attn_v.bias (Qwen2)
//   blk.N.attn_output.weight {d, H*D}
//   blk.N.ffn_gate.weight {F, d}   blk.N.ffn_up.weight {F, d}   blk.N.ffn_down.weight {d, F}
// Q and K rows are in Hugging Face order (RoPE rotates the two halves of each head). GGUF llama
// files store them interleaved; the loader un-permutes those rows once at load time.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "model/config.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace lizard {

struct Checkpoint {
  std::string path;
  std::string format;  // "gguf" or "safetensors"
  ModelConfig config;
  std::map<std::string, TensorView> tensors;  // canonical names
  std::unique_ptr<Tokenizer> tokenizer;
  std::string chat_template_source;  // Jinja text, may be empty
  ChatTemplate chat_template;

  const TensorView& tensor(const std::string& name) const;  // throws Error if absent
  const TensorView* find(const std::string& name) const;

  // Keeps mapped files and re-laid-out copies alive as long as the views.
  std::vector<std::shared_ptr<void>> owners;
};

// Opens path (GGUF file or HF directory), validates every expected tensor's presence, type and
// shape against the config, and throws Error with one clear line otherwise.
Checkpoint open_checkpoint(const std::string& path);

// Where the default teacher lives (models/SmolLM2-135M-Instruct.Q4_1.gguf under the source tree,
// or $LIZARD_MODEL); throws Error saying how to fetch it when missing.
std::string default_model_path();

// The Hugging Face name of a canonical tensor name (model.layers.N.self_attn.q_proj.weight, ...).
std::string hf_tensor_name(const std::string& canonical);

}  // namespace lizard
