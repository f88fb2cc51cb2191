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

// What generate() drives: one sequence of a model on some device (the CPU LlamaModel + LlamaState,
// the GPU model's batch slot, ...).
class SequenceModel {
 public:
  virtual ~SequenceModel() = default;
  virtual int64_t context_length() const = 0;
  virtual int64_t n_past() const = 0;  // positions held
  // Runs tokens at n_past() and returns the last token's logits [vocab], valid until the next call.
  virtual std::span<const float> forward(std::span<const int32_t> tokens) = 0;
};

// Continues the sequence with the prompt (appended at m.n_past()) and generates. `eos` ends
// generation when opt.stop_at_eos.
GenerateStats generate(SequenceModel& m, std::span<const int32_t> prompt, const GenerateOptions& opt,
                       const TokenBytes& token_bytes, std::optional<int32_t> eos, const TokenCallback& on_token = {});

// The same on the CPU model: continues `st`. The Tokenizer overloads below are what callers use.
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

// Several sequences decoded together (a GPU batch): each slot is prefilled alone, then every step runs
// one token for all slots still generating.
class BatchModel {
 public:
  virtual ~BatchModel() = default;
  virtual int slots() const = 0;
  virtual int64_t context_length() const = 0;  // per slot
  // Runs the prompt from position 0 in `slot`; the last token's logits [vocab].
  virtual std::vector<float> prefill(int slot, std::span<const int32_t> prompt) = 0;
  // One token per slot (tokens[slots]) for the slots with active[s]; logits [slots, vocab].
  virtual std::vector<float> decode(const int32_t* tokens, const bool* active) = 0;
};

struct BatchGenerateStats {
  std::vector<GenerateStats> sequences;  // per slot, as generate() reports one sequence
  int64_t batch_steps = 0;               // batched decode calls
  int64_t decoded_tokens = 0;            // tokens run by them (active slots summed)
  double prefill_seconds = 0, decode_seconds = 0;
  double decode_tokens_per_s() const { return decode_seconds > 0 ? decoded_tokens / decode_seconds : 0; }
};

// Called per slot as TokenCallback is for one sequence.
using SlotTokenCallback = std::function<bool(int slot, int32_t id, std::string_view text)>;

// One sequence per seed (seeds.size() <= m.slots()), all continuing the same prompt, sampled with
// opt.sampling but seed seeds[i] each: slot i's tokens are those generate() gives alone with that seed.
BatchGenerateStats generate_batch(BatchModel& m, std::span<const int32_t> prompt, const GenerateOptions& opt,
                                  const std::vector<uint64_t>& seeds, const TokenBytes& token_bytes,
                                  std::optional<int32_t> eos, const SlotTokenCallback& on_token = {});

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
