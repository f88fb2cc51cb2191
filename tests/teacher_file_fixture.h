// A tiny teacher written to disk as GGUF with a byte-level tokenizer (264 tokens): for tests that need
// a teacher path (Lizard checkpoints record and fingerprint it).
#pragma once
#include <fstream>
#include <string>
#include <vector>

#include "fixture_util.h"
#include "llama_fixture.h"
#include "tokenizer/tokenizer_impl.h"

namespace lizard::testing {

// A byte-level tokenizer: the 256 byte symbols, a few merges and two control tokens.
inline void put_tokenizer(fixtures::GGUFWriter& w) {
  std::vector<std::string> toks;
  for (int b = 0; b < 256; ++b) toks.push_back(byte_to_unicode(uint8_t(b)));
  const std::string G = byte_to_unicode(' ');
  std::vector<std::string> merges = {"t h", G + " th", "h e", "th e", G + " the", "i n"};
  for (auto& m : merges) toks.push_back(m.substr(0, m.find(' ')) + m.substr(m.find(' ') + 1));
  toks.push_back("<|endoftext|>");
  toks.push_back("<|im_start|>");
  std::vector<int64_t> types(toks.size(), 1);
  types[toks.size() - 1] = types[toks.size() - 2] = 3;
  w.kv_str("tokenizer.ggml.model", "gpt2");
  w.kv_str("tokenizer.ggml.pre", "smollm");
  w.kv_strs("tokenizer.ggml.tokens", toks);
  w.kv_value("tokenizer.ggml.token_type", GGUFValue(types));
  w.kv_strs("tokenizer.ggml.merges", merges);
  w.kv_u32("tokenizer.ggml.bos_token_id", uint32_t(toks.size() - 1));
  w.kv_u32("tokenizer.ggml.eos_token_id", uint32_t(toks.size() - 2));
  w.kv_value("tokenizer.ggml.add_bos_token", GGUFValue(true));
  w.kv_str("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}");
}

inline void write_gguf_teacher(const std::string& path, const TinyModel& tm) {
  const ModelConfig& c = tm.ck->config;
  fixtures::GGUFWriter w;
  w.kv_str("general.architecture", "llama");
  w.kv_str("general.name", "tiny gguf");
  w.kv_u32("llama.block_count", c.n_layers);
  w.kv_u32("llama.vocab_size", c.vocab_size);
  w.kv_u32("llama.context_length", c.max_seq_len);
  w.kv_u32("llama.embedding_length", c.d_model);
  w.kv_u32("llama.feed_forward_length", c.d_ff);
  w.kv_u32("llama.attention.head_count", c.n_heads);
  w.kv_u32("llama.attention.head_count_kv", c.n_kv_heads);
  w.kv_u32("llama.attention.key_length", c.head_dim);
  w.kv_f32("llama.rope.freq_base", c.rope_theta);
  w.kv_f32("llama.attention.layer_norm_rms_epsilon", c.rms_eps);
  put_tokenizer(w);
  for (auto& [n, b] : tm.blobs)
    w.tensor(n, b->type, b->shape, std::string(b->bytes.begin(), b->bytes.end()));
  std::ofstream(path, std::ios::binary) << w.build();
}

}  // namespace lizard::testing
