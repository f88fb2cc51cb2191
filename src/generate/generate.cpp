#include "generate/generate.h"

#include <algorithm>
#include <chrono>

#include "util/error.h"

namespace lizard {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Length of the UTF-8 sequence a lead byte starts (1 for ASCII and for invalid bytes).
int utf8_len(unsigned char c) {
  if (c >= 0xF0 && c <= 0xF4) return 4;
  if (c >= 0xE0 && c < 0xF0) return 3;
  if (c >= 0xC2 && c < 0xE0) return 2;
  return 1;
}
}  // namespace

std::string Utf8Stream::push(std::string_view bytes) {
  held_.append(bytes);
  const size_t n = held_.size();
  size_t cut = n;
  // Only the last character can be unfinished: find its lead byte among the last 3 bytes.
  for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
    const auto c = static_cast<unsigned char>(held_[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    if (static_cast<size_t>(utf8_len(c)) > back) cut = n - back;
    break;
  }
  std::string out = held_.substr(0, cut);
  held_.erase(0, cut);
  return out;
}

std::string Utf8Stream::flush() {
  std::string out;
  out.swap(held_);
  return out;
}

GenerateStats generate(const LlamaModel& model, LlamaState& st, std::span<const int32_t> prompt,
                       const GenerateOptions& opt, const TokenBytes& token_bytes, std::optional<int32_t> eos,
                       const TokenCallback& on_token) {
  LZ_CHECK(!prompt.empty(), "the prompt is empty");
  const int64_t ctx = model.context_length();
  const int64_t start = st.n_past();
  if (start + static_cast<int64_t>(prompt.size()) > ctx)
    fail("prompt has {} tokens, the context is {}", start + static_cast<int64_t>(prompt.size()), ctx);

  GenerateStats stats;
  stats.prompt_tokens = static_cast<int64_t>(prompt.size());
  std::vector<int32_t> stops = opt.stop_ids;
  if (opt.stop_at_eos && eos) stops.push_back(*eos);
  auto is_stop = [&](int32_t id) { return std::find(stops.begin(), stops.end(), id) != stops.end(); };

  Sampler sampler(opt.sampling);
  // What the repetition penalty looks at: the prompt and what follows it.
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  history.reserve(history.size() + std::max(0, opt.max_new_tokens));
  Utf8Stream utf8;

  auto t0 = Clock::now();
  std::span<const float> logits = model.forward(prompt, start, st);
  stats.prefill_seconds = seconds_since(t0);

  int64_t pos = start + static_cast<int64_t>(prompt.size());
  stats.stop_reason = "length";
  while (stats.new_tokens < opt.max_new_tokens) {
    auto ts = Clock::now();
    const int32_t id = sampler.sample(logits, history);
    stats.sample_seconds += seconds_since(ts);
    stats.tokens.push_back(id);
    history.push_back(id);
    ++stats.new_tokens;
    if (is_stop(id)) {
      stats.stop_reason = opt.stop_at_eos && eos && id == *eos ? "eos" : "stop";
      break;
    }
    if (on_token && !on_token(id, utf8.push(token_bytes(id)))) {
      stats.stop_reason = "callback";
      break;
    }
    if (stats.new_tokens >= opt.max_new_tokens) break;
    if (pos >= ctx) {
      stats.stop_reason = "context";
      break;
    }
    auto td = Clock::now();
    logits = model.forward(&id, 1, pos, st);
    stats.decode_seconds += seconds_since(td);
    ++stats.decode_steps;
    ++pos;
  }
  std::string rest = utf8.flush();
  if (on_token && !rest.empty()) on_token(-1, rest);
  return stats;
}

}  // namespace lizard
