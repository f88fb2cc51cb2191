// Training data: plain text files/folders (.txt, .md, anything text; .gz read through zlib) and JSONL
// (a "text" field, or Alpaca instruction/input/output rendered with the model's chat template),
// tokenized, packed into fixed-length sequences, deterministically shuffled, with a held-out split.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace lizard {

struct DataOptions {
  std::vector<std::string> paths;  // files or directories (searched recursively)
  int seq_len = 2048;              // tokens per training sequence (each sample holds seq_len + 1 ids)
  double val_fraction = 0.02;      // documents held out for validation (chosen by content hash)
  uint64_t seed = 1234;            // shuffle seed
  int64_t max_tokens = 0;          // stop reading once this many tokens are collected (0 = all)
  size_t max_file_bytes = 64u << 20;  // larger files are skipped (binary dumps, archives)
};

// One packed token stream split into samples of seq_len + 1 ids (inputs and shifted targets).
struct TokenSplit {
  std::vector<int32_t> tokens;
  int64_t num_samples(int seq_len) const {
    return tokens.size() > 1 ? static_cast<int64_t>((tokens.size() - 1) / seq_len) : 0;
  }
  const int32_t* sample(int64_t i, int seq_len) const { return tokens.data() + i * seq_len; }
};

struct Dataset {
  TokenSplit train, val;
  int64_t documents = 0, files = 0, skipped_files = 0;
  std::string describe() const;
};

// Reads and tokenizes every document. Documents are separated by the EOS token (or BOS if no EOS).
Dataset load_dataset(const DataOptions& opt, const Tokenizer& tok, const ChatTemplate& chat);

// Documents of one file (exposed for tests): text files are one document; JSONL gives one per line.
std::vector<std::string> read_documents(const std::string& path, const ChatTemplate& chat, size_t max_bytes);

// Deterministic epoch-wise shuffled order over samples; its whole state is (epoch, position), so a
// resumed run continues exactly where it stopped.
class SampleOrder {
 public:
  SampleOrder(int64_t n, uint64_t seed) : n_(n), seed_(seed) { reshuffle(); }
  int64_t next();  // advances; wraps to a fresh permutation at the end of an epoch
  int64_t epoch() const { return epoch_; }
  int64_t position() const { return pos_; }
  void restore(int64_t epoch, int64_t position);

 private:
  void reshuffle();
  int64_t n_;
  uint64_t seed_;
  int64_t epoch_ = 0, pos_ = 0;
  std::vector<int64_t> perm_;
};

}  // namespace lizard
