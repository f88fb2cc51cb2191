// Tokenizers of Llama-family models, exactly matching Hugging Face `tokenizers`:
//  - byte-level BPE (GPT-2 / Llama-3 / Qwen / SmolLM) with the model's pre-tokenizer regex (PCRE2),
//  - SentencePiece-style BPE (Llama-2 / Mistral) with byte fallback.
// Loaded from tokenizer.json or from GGUF metadata (tokenizer.ggml.*). Added/special tokens are
// matched in the text before BPE, as HF does.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lizard {

class GGUFFile;

class Tokenizer {
 public:
  static Tokenizer from_json_file(const std::string& path);  // throws Error
  static Tokenizer from_gguf(const GGUFFile& file);          // throws Error

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Encode text. add_bos: prepend BOS when the tokenizer's config adds it (HF post-processor /
  // tokenizer.ggml.add_bos_token); with add_bos=false nothing is added. Special/added tokens
  // written in the text are recognised as such (as HF does by default).
  std::vector<int32_t> encode(std::string_view text, bool add_bos = false) const;
  // Decode ids to text; skip_special drops special tokens (HF skip_special_tokens).
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  // The raw bytes one token stands for (for streaming; may be part of a UTF-8 character).
  // For SentencePiece models a leading "▁" becomes a space.
  std::string token_bytes(int32_t id) const;
  // The token string as stored in the vocabulary.
  const std::string& token_text(int32_t id) const;
  std::optional<int32_t> token_id(std::string_view text) const;

  int vocab_size() const;
  bool is_special(int32_t id) const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  bool adds_bos() const;       // whether encode(..., add_bos=true) prepends BOS
  std::string kind() const;    // "byte-level BPE" or "SentencePiece BPE"
  std::string pretokenizer() const;  // description of the pre-tokenizer in use

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lizard
