// Internal pieces of the tokenizer, shared by the encoder (tokenizer.cpp) and the loaders
// (tokenizer_load.cpp). Components mirror Hugging Face `tokenizers` one to one.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace lizard {

// A compiled PCRE2 pattern (UTF + UCP, JIT when available). \s and \S are rewritten to Unicode
// White_Space so that they mean what Oniguruma (used by HF tokenizers) means.
class Regex {
 public:
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // All non-overlapping matches [start, end) in s, leftmost-first, as HF's find_iter.
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;
  const std::string& pattern() const { return source_; }

 private:
  std::string source_;
  void* code_ = nullptr;  // pcre2_code_8*
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct NormStep {
  enum Kind { NFC, Prepend, Replace } kind;
  std::string a, b;  // Prepend: a; Replace: a -> b
  explicit NormStep(Kind k, std::string x = {}, std::string y = {}) : kind(k), a(std::move(x)), b(std::move(y)) {}
};

// Every supported pre-tokenizer is a regex split: Split itself, Digits (\p{N}, Isolated or
// Contiguous) and ByteLevel with use_regex (the GPT-2 pattern, Isolated). ByteLevel's byte mapping
// is done by the model step (Impl::byte_level), so ByteLevel must come last.
struct PreStep {
  std::shared_ptr<Regex> regex;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
};

struct DecStep {
  enum Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip } kind;
  std::string a, b;  // Replace: a -> b; Strip: a = the one character
  int start = 0, stop = 0;
  explicit DecStep(Kind k, std::string x = {}, std::string y = {}) : kind(k), a(std::move(x)), b(std::move(y)) {}
};

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// The tokenizer's state; Tokenizer::Impl derives from it so that file-local helpers can use it.
struct TokImpl {
  bool byte_level = false;  // model input is GPT-2 byte-mapped text
  std::vector<std::string> vocab;                  // id -> token text (model and added)
  std::unordered_map<std::string, int32_t> model_ids;  // model vocabulary only
  std::vector<uint8_t> special;                    // per id
  std::vector<AddedToken> added;
  std::unordered_map<std::string, int32_t> added_ids;

  std::vector<NormStep> normalizers;
  std::vector<PreStep> pretokenizers;
  bool prefix_space = false;   // ByteLevel add_prefix_space: a space before each piece...
  size_t prefix_space_at = 0;  // ...made by the first prefix_space_at pre-tokenizer steps
  std::vector<DecStep> decoders;
  std::string pre_desc;

  // BPE
  // (left,right) -> (rank,new): open addressing, since BPE spends most of its time here
  struct MergeTable {
    struct Slot {
      uint64_t key = ~0ull;
      int32_t rank = 0, id = 0;
    };
    std::vector<Slot> slots;
    size_t mask = 0, count = 0;
    static uint64_t key_of(int32_t a, int32_t b) {
      return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    }
    static size_t hash(uint64_t k) { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 20); }
    const Slot* find(uint64_t k) const {
      if (slots.empty()) return nullptr;
      for (size_t i = hash(k) & mask;; i = (i + 1) & mask) {
        if (slots[i].key == k) return &slots[i];
        if (slots[i].key == ~0ull) return nullptr;
      }
    }
    void set(uint64_t k, int32_t rank, int32_t id);  // overwrites an existing pair
    bool empty() const { return count == 0; }
  };
  MergeTable merges;
  bool score_merges = false;         // SentencePiece GGUF: merge priority from token scores
  std::vector<int32_t> score_rank;   // per id, rank by score (score_merges); -1: not a merge target
  bool ignore_merges = false, byte_fallback = false, fuse_unk = false;
  std::optional<int32_t> unk;
  int32_t byte_token[256];           // byte-level: id of each mapped byte; SP: id of <0xNN>

  std::vector<int32_t> prefix, suffix;  // post-processor (add_bos)
  std::optional<int32_t> bos, eos;
  std::string kind_name;

  // cache of pre-token -> ids
  mutable std::shared_mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  // Called by the loaders once everything above is filled in.
  void finish();
  // first-byte index over non-normalized / normalized added tokens, longest first
  std::vector<std::vector<int32_t>> added_by_byte[2];

  void encode_into(std::string_view text, std::vector<int32_t>& out) const;
  void encode_segment(std::string_view seg, std::vector<int32_t>& out) const;
  void model_encode(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe(std::vector<int32_t>& syms, std::vector<int32_t>& out) const;
  std::optional<std::pair<int32_t, int32_t>> find_merge(int32_t a, int32_t b) const;
  void split_added(std::string_view text, bool normalized_set,
                   std::vector<std::pair<std::string_view, int32_t>>& out) const;
  std::string normalize(std::string_view s) const;
};

// GPT-2 byte <-> unicode mapping.
const std::string& byte_to_unicode(uint8_t b);  // UTF-8 of the mapped character
int unicode_to_byte(uint32_t cp);               // -1 if cp is not a mapped character

struct Tokenizer::Impl : TokImpl {};

extern const char* const kGpt2Pattern;
extern const char* const kLlama3Pattern;
extern const char* const kQwen2Pattern;

}  // namespace lizard
