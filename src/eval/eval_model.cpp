#include "eval/eval_model.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace lizard {

LlamaEvalModel::LlamaEvalModel(const LlamaModel& model, std::string name)
    : model_(model), name_(std::move(name)), st_(model.new_state()) {}

std::span<const float> LlamaEvalModel::forward(std::span<const int32_t> tokens, int64_t start_pos, bool all_logits) {
  return model_.forward(tokens, start_pos, st_, all_logits);
}

bool LlamaEvalModel::can_rewind() const {
  for (int i = 0; i < model_.config().n_layers; ++i)
    if (model_.mixer(i).name() != "softmax") return false;
  return true;
}

TextCodec codec_of(const Tokenizer& tok) {
  TextCodec c;
  c.encode = [&tok](const std::string& s) { return tok.encode(s, /*add_bos=*/false); };
  c.decode = [&tok](const std::vector<int32_t>& ids) { return tok.decode(ids, /*skip_special=*/true); };
  if (tok.bos_id()) c.doc_start = {*tok.bos_id()};
  else if (tok.eos_id()) c.doc_start = {*tok.eos_id()};
  if (tok.eos_id()) c.stop_ids = {*tok.eos_id()};
  return c;
}

TextCodec byte_codec() {
  TextCodec c;
  c.encode = [](const std::string& s) {
    std::vector<int32_t> ids;
    for (unsigned char ch : s) ids.push_back(ch);
    return ids;
  };
  c.decode = [](const std::vector<int32_t>& ids) {
    std::string s;
    for (int32_t id : ids) s.push_back(static_cast<char>(id));
    return s;
  };
  c.doc_start = {0};
  return c;
}

double log_sum_exp(const float* logits, int vocab) {
  float mx = logits[0];
  for (int i = 1; i < vocab; ++i) mx = std::max(mx, logits[i]);
  double s = 0;
  for (int i = 0; i < vocab; ++i) s += std::exp(double(logits[i]) - mx);
  return mx + std::log(s);
}

int argmax(const float* logits, int vocab) {
  int best = 0;
  for (int i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

std::vector<int32_t> greedy_continue(EvalModel& m, std::span<const int32_t> prompt, int max_new,
                                     std::span<const int32_t> stop_ids) {
  LZ_CHECK(!prompt.empty(), "greedy generation needs a prompt");
  std::vector<int32_t> out;
  const int V = m.vocab_size();
  auto logits = m.forward(prompt, 0, false);
  int64_t pos = static_cast<int64_t>(prompt.size());
  while (static_cast<int>(out.size()) < max_new) {
    const int32_t id = argmax(logits.data(), V);
    if (std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end()) break;
    out.push_back(id);
    if (pos >= m.context_length() || static_cast<int>(out.size()) == max_new) break;
    logits = m.forward(std::span<const int32_t>(&out.back(), 1), pos++, false);
  }
  return out;
}

void scan_logits(EvalModel& m, std::span<const int32_t> tokens, int64_t from, int64_t chunk,
                 const std::function<void(int64_t, int64_t, const float*)>& fn) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  LZ_CHECK(from >= 0 && from <= n, "scan_logits: start {} outside the {} tokens", from, n);
  chunk = std::max({chunk, m.preferred_chunk(), int64_t(1)});
  if (from > 0) m.feed(tokens.subspan(0, from), 0);
  for (int64_t i0 = from; i0 < n; i0 += chunk) {
    const int64_t b = std::min(chunk, n - i0);
    auto lg = m.forward(tokens.subspan(i0, b), i0, true);
    fn(i0, b, lg.data());
  }
}

}  // namespace lizard
