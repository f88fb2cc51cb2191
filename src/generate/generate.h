// Text generation: one batched prefill of the prompt, then token-by-token decoding with a
// Sampler, streaming each token's text through a callback.
#pragma once
#include <cstdint>
#include <algorithm>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "generate/sampler.h"
#include "model/llama.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace lizard {

struct GenerateOptions {
  int max_new_tokens = 256;
  SamplerOptions sampling;
  bool stop_at_eos = true;          // the tokenizer's EOS ends generation
  std::vector<int32_t> stop_ids;    // more ids that end it (e.g. chat end-of-turn tokens)
};

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t new_tokens = 0;      // sampled tokens, a final stop token included
  int64_t decode_steps = 0;    // single-token forwards
  double prefill_seconds = 0, decode_seconds = 0, sample_seconds = 0;
  std::string stop_reason;     // "eos", "stop", "length", "context" or "callback"
  std::vector<int32_t> tokens; // the sampled ids

  double prefill_tokens_per_s() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  double decode_tokens_per_s() const { return decode_seconds > 0 ? decode_steps / decode_seconds : 0; }
};

// Called once per sampled token that is not a stop token, with the text it completes: bytes of a
// UTF-8 character split over several tokens are held back until the character is whole, so text
// may be empty. After the last token, bytes still held (an invalid/unfinished sequence) are passed
// with id -1. Return false to stop generating.
using TokenCallback = std::function<bool(int32_t id, std::string_view text)>;

// How the generator turns an id into bytes (Tokenizer::token_bytes).
using TokenBytes = std::function<std::string(int32_t id)>;

// Continues the sequence in `st` with the prompt (appended at st.n_past()) and generates. `eos`
// ends generation when opt.stop_at_eos. The Tokenizer overloads below are what callers use.
GenerateStats generate(const LlamaModel& model, LlamaState& st, std::span<const int32_t> prompt,
                       const GenerateOptions& opt, const TokenBytes& token_bytes, std::optional<int32_t> eos,
                       const TokenCallback& on_token = {});

inline GenerateStats generate(const LlamaModel& model, LlamaState& st, const Tokenizer& tok,
                              std::span<const int32_t> prompt, const GenerateOptions& opt,
                              const TokenCallback& on_token = {}) {
  return generate(model, st, prompt, opt, [&tok](int32_t id) { return tok.token_bytes(id); }, tok.eos_id(),
                  on_token);
}
// Same on a fresh sequence.
inline GenerateStats generate(const LlamaModel& model, const Tokenizer& tok, std::span<const int32_t> prompt,
                              const GenerateOptions& opt, const TokenCallback& on_token = {}) {
  LlamaState st = model.new_state();
  return generate(model, st, tok, prompt, opt, on_token);
}

// EOS plus the end-of-turn tokens of a chat template that exist in the vocabulary.
inline std::vector<int32_t> chat_stop_ids(const Tokenizer& tok, const ChatTemplate& tmpl) {
  std::vector<int32_t> ids;
  if (auto e = tok.eos_id()) ids.push_back(*e);
  for (const auto& s : tmpl.stop_texts())
    if (auto id = tok.token_id(s); id && std::find(ids.begin(), ids.end(), *id) == ids.end()) ids.push_back(*id);
  return ids;
}

// Splits a byte stream into whole UTF-8 characters (what streaming may print).
class Utf8Stream {
 public:
  // Appends bytes; returns the longest prefix of what is held that does not end inside a character.
  std::string push(std::string_view bytes);
  std::string flush();  // whatever is left
 private:
  std::string held_;
};

}  // namespace lizard
