// What the evaluations need from a language model: one sequence at a time, fed in pieces, logits
// back. The teacher is a LlamaModel (LlamaEvalModel); a Lizard model is a LlamaModel with Lizard
// mixers, so it plugs in the same way; anything else can be wrapped with FunctionEvalModel.
// Text goes through a TextCodec so prompt builders can be tested without a real tokenizer.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace lizard {

class EvalModel {
 public:
  virtual ~EvalModel() = default;
  virtual std::string name() const = 0;
  virtual int vocab_size() const = 0;
  virtual int64_t context_length() const = 0;
  // Runs tokens at positions start_pos.. of the current sequence (0 starts a fresh one; a value
  // below the positions held rewinds, which only works when can_rewind()). Returns logits
  // [n, vocab] when all_logits, else the last token's [vocab]; valid until the next call.
  virtual std::span<const float> forward(std::span<const int32_t> tokens, int64_t start_pos, bool all_logits) = 0;
  // Whether forward can restart at 0 < start_pos < positions held (softmax caches can; recurrent
  // states can not, and callers then re-run the prefix).
  virtual bool can_rewind() const = 0;
  // Runs tokens whose logits are not needed (a window's unscored prefix). A back end may defer the
  // work to the next forward (the GPU model runs whole sequences).
  virtual void feed(std::span<const int32_t> tokens, int64_t start_pos) { forward(tokens, start_pos, false); }
  // Rows of logits a caller should ask for at once at least (0: no preference): a back end that
  // recomputes the sequence on each call wants a window's scored rows in one call.
  virtual int64_t preferred_chunk() const { return 0; }
};

// A LlamaModel (teacher or with Lizard mixers) with its own sequence state.
class LlamaEvalModel : public EvalModel {
 public:
  LlamaEvalModel(const LlamaModel& model, std::string name);
  std::string name() const override { return name_; }
  int vocab_size() const override { return model_.vocab_size(); }
  int64_t context_length() const override { return model_.context_length(); }
  std::span<const float> forward(std::span<const int32_t> tokens, int64_t start_pos, bool all_logits) override;
  bool can_rewind() const override;

 private:
  const LlamaModel& model_;
  std::string name_;
  LlamaState st_;
};

// Any forward function with LlamaModel::forward's contract (tests, other back ends).
using ForwardFn = std::function<std::span<const float>(std::span<const int32_t> tokens, int64_t start_pos, bool all_logits)>;
class FunctionEvalModel : public EvalModel {
 public:
  FunctionEvalModel(std::string name, int vocab, int64_t context, ForwardFn fn, bool can_rewind = true)
      : name_(std::move(name)), vocab_(vocab), context_(context), fn_(std::move(fn)), rewind_(can_rewind) {}
  std::string name() const override { return name_; }
  int vocab_size() const override { return vocab_; }
  int64_t context_length() const override { return context_; }
  std::span<const float> forward(std::span<const int32_t> tokens, int64_t start_pos, bool all_logits) override {
    return fn_(tokens, start_pos, all_logits);
  }
  bool can_rewind() const override { return rewind_; }

 private:
  std::string name_;
  int vocab_;
  int64_t context_;
  ForwardFn fn_;
  bool rewind_;
};

// Text <-> ids as the evaluations use them.
struct TextCodec {
  std::function<std::vector<int32_t>(const std::string&)> encode;  // never adds BOS
  std::function<std::string(const std::vector<int32_t>&)> decode;
  std::vector<int32_t> doc_start;  // what a document starts with (BOS, or the document separator)
  std::vector<int32_t> stop_ids;   // ids that end generation (EOS)
};
// doc_start is BOS when the tokenizer adds one, else its BOS/EOS token (the separator the training
// data puts between documents), so that the first text token is predicted too.
TextCodec codec_of(const Tokenizer& tok);
// Token id = byte value (vocabulary of 256), doc_start {0}: for tests.
TextCodec byte_codec();

// Numerics on one row of logits (double accumulation).
double log_sum_exp(const float* logits, int vocab);
int argmax(const float* logits, int vocab);  // lowest id on ties, like the greedy sampler

// Greedy continuation of prompt (run as a fresh sequence): up to max_new ids, stopping after any of
// stop_ids (which is not returned) or at the context's end.
std::vector<int32_t> greedy_continue(EvalModel& m, std::span<const int32_t> prompt, int max_new,
                                     std::span<const int32_t> stop_ids);

// Runs tokens as a fresh sequence and hands rows of logits to fn(first_index, n_rows, logits) for
// the positions >= from, in order, at most `chunk` rows at a time (bounds memory). Positions before
// `from` run without computing their logits.
void scan_logits(EvalModel& m, std::span<const int32_t> tokens, int64_t from, int64_t chunk,
                 const std::function<void(int64_t i0, int64_t n, const float* logits)>& fn);

}  // namespace lizard
