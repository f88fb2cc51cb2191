// Saving and resuming a sequence: the whole context state of a conversation (every layer's
// MixerState plus the token history) in one file, so that generation continues exactly where it
// stopped. The file is tied to the model: loading it onto another model is an Error.
//
// File layout (little-endian):
//   "LZSTATE\0"  u32 version
//   fingerprint: str arch, i32 vocab, d_model, n_layers, n_heads, n_kv_heads, head_dim, d_ff,
//                u64 hash of some weight bytes and of every layer's mixer name
//   i64 n_past   i64 n_tokens, i32 tokens[n_tokens]   (n_tokens >= n_past: the tail is pending)
//   u64 sampler seed (informational)   u32 n_layers, then per layer: str mixer name, u64 size, bytes
//   u64 checksum of everything before it
// (str = u32 length + bytes.)
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "model/llama.h"

namespace lizard {

// Identifies a model's weights and layer kinds well enough to refuse a state made by another one.
uint64_t model_fingerprint(const LlamaModel& model);

struct SavedSequence {
  // The context: every token of the conversation so far. Tokens at positions >= the state's
  // n_past() were sampled but not yet run (generation stops before running its last token); the
  // next forward must start with them.
  std::vector<int32_t> tokens;
  uint64_t seed = 0;
};

// In memory. st must have been made by `model`; tokens.size() >= st.n_past().
std::string serialize_state(const LlamaModel& model, const LlamaState& st, const SavedSequence& seq);
// Restores st (made by model.new_state()) from bytes; throws Error (and leaves st reset) if they
// come from another model or are corrupt or truncated.
SavedSequence deserialize_state(const LlamaModel& model, LlamaState& st, std::string_view bytes);

// To a file, written to a temporary name then renamed.
void save_state(const std::string& path, const LlamaModel& model, const LlamaState& st, const SavedSequence& seq);
SavedSequence load_state(const std::string& path, const LlamaModel& model, LlamaState& st);

// The tokens to run next to continue a restored sequence: the pending ones, then `more`.
inline std::vector<int32_t> continuation(const SavedSequence& seq, const LlamaState& st,
                                         std::span<const int32_t> more) {
  std::vector<int32_t> out(seq.tokens.begin() + st.n_past(), seq.tokens.end());
  out.insert(out.end(), more.begin(), more.end());
  return out;
}

}  // namespace lizard
