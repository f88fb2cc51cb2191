// Perplexity with strided windows (the Hugging Face recipe: each window of `ctx` tokens advances by
// `stride`, and only the tokens not scored by an earlier window count), bits per byte, and
// teacher-vs-student KL divergence / top-1 agreement over the same windows.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "eval/eval_model.h"

namespace lizard {

struct StrideOptions {
  int64_t ctx = 2048;     // window length in tokens
  int64_t stride = 1024;  // advance per window (<= ctx)
  int64_t chunk = 256;    // rows of logits computed at a time (memory bound)
};

// One window: tokens [begin, end); the targets scored are the tokens at [score_from, end), each
// predicted from the window's tokens before it.
struct StrideWindow {
  int64_t begin = 0, end = 0, score_from = 0;
};
// Windows over n tokens. Token 0 has no context and is never scored; with stride == ctx a window's
// first token is not scored either (as in the HF recipe).
std::vector<StrideWindow> stride_windows(int64_t n_tokens, const StrideOptions& opt);

struct PplStats {
  double nll = 0;       // summed negative log-likelihood, nats
  int64_t tokens = 0;   // tokens scored
  int64_t bytes = 0;    // UTF-8 bytes of the text (for bits per byte)
  int64_t windows = 0;
  double nll_per_token() const { return tokens ? nll / tokens : 0; }
  double ppl() const;
  double bits_per_byte() const;  // total NLL in bits / bytes
  void add(const PplStats& o);
};

// One document's tokens (as a fresh sequence each window); bytes is left 0 for the caller.
PplStats perplexity(EvalModel& m, std::span<const int32_t> tokens, const StrideOptions& opt);

struct KlStats {
  int64_t tokens = 0;
  double kl = 0;             // summed KL(teacher || student), nats
  int64_t top1_agree = 0;    // positions where both argmaxes agree
  PplStats teacher, student; // each model's NLL on the same targets
  double kl_per_token() const { return tokens ? kl / tokens : 0; }
  double agreement() const { return tokens ? double(top1_agree) / tokens : 0; }
  void add(const KlStats& o);
};

// KL(p_teacher || p_student) per scored position; both models must share the vocabulary.
KlStats kl_divergence(EvalModel& teacher, EvalModel& student, std::span<const int32_t> tokens, const StrideOptions& opt);

// KL(p || q) of two rows of logits, and whether their argmaxes agree (exposed for tests).
double kl_of_logits(const float* p_logits, const float* q_logits, int vocab);

// Text files or folders (searched recursively, sorted; .jsonl "text" lines are documents).
std::vector<std::string> read_text_documents(const std::vector<std::string>& paths);

}  // namespace lizard
