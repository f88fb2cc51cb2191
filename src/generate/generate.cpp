#include "generate/generate.h"

#include <algorithm>
#include <chrono>
#include <memory>

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

namespace {

// The CPU model's sequence as a SequenceModel.
class CpuSequence : public SequenceModel {
 public:
  CpuSequence(const LlamaModel& m, LlamaState& st) : m_(m), st_(st) {}
  int64_t context_length() const override { return m_.context_length(); }
  int64_t n_past() const override { return st_.n_past(); }
  std::span<const float> forward(std::span<const int32_t> tokens) override {
    return m_.forward(tokens, st_.n_past(), st_);
  }

 private:
  const LlamaModel& m_;
  LlamaState& st_;
};

// One sequence's sampling and stop logic, shared by generate() and generate_batch().
struct SequenceRun {
  const GenerateOptions& opt;
  const TokenBytes& token_bytes;
  std::optional<int32_t> eos;
  std::vector<int32_t> stops;
  Sampler sampler;
  std::vector<int32_t> history;  // what the repetition penalty looks at: the prompt and what follows
  Utf8Stream utf8;
  GenerateStats stats;
  int64_t pos = 0;  // where the next token goes
  int64_t ctx = 0;

  SequenceRun(const GenerateOptions& o, const TokenBytes& tb, std::optional<int32_t> e, std::span<const int32_t> prompt,
              int64_t start, int64_t context, uint64_t seed)
      : opt(o), token_bytes(tb), eos(e), stops(o.stop_ids), sampler(with_seed(o.sampling, seed)),
        history(prompt.begin(), prompt.end()), ctx(context) {
    if (opt.stop_at_eos && eos) stops.push_back(*eos);
    history.reserve(history.size() + std::max(0, opt.max_new_tokens));
    stats.prompt_tokens = static_cast<int64_t>(prompt.size());
    stats.stop_reason = "length";
    pos = start + stats.prompt_tokens;
  }
  static SamplerOptions with_seed(SamplerOptions s, uint64_t seed) {
    s.seed = seed;
    return s;
  }
  bool is_stop(int32_t id) const { return std::find(stops.begin(), stops.end(), id) != stops.end(); }

  // Samples the next token from logits; returns it when the sequence goes on (it must be run), or
  // nothing when it ended here.
  template <typename OnToken>
  std::optional<int32_t> next(std::span<const float> logits, OnToken&& on_token) {
    if (stats.new_tokens >= opt.max_new_tokens) return std::nullopt;
    auto ts = Clock::now();
    const int32_t id = sampler.sample(logits, history);
    stats.sample_seconds += seconds_since(ts);
    stats.tokens.push_back(id);
    history.push_back(id);
    ++stats.new_tokens;
    if (is_stop(id)) {
      stats.stop_reason = opt.stop_at_eos && eos && id == *eos ? "eos" : "stop";
      return std::nullopt;
    }
    if (!on_token(id, token_bytes ? utf8.push(token_bytes(id)) : std::string())) {
      stats.stop_reason = "callback";
      return std::nullopt;
    }
    if (stats.new_tokens >= opt.max_new_tokens) return std::nullopt;
    if (pos >= ctx) {
      stats.stop_reason = "context";
      return std::nullopt;
    }
    return id;
  }
  template <typename OnToken>
  void finish(OnToken&& on_token) {
    std::string rest = utf8.flush();
    if (!rest.empty()) on_token(-1, rest);
  }
};

}  // namespace

GenerateStats generate(SequenceModel& m, std::span<const int32_t> prompt, const GenerateOptions& opt,
                       const TokenBytes& token_bytes, std::optional<int32_t> eos, const TokenCallback& on_token) {
  LZ_CHECK(!prompt.empty(), "the prompt is empty");
  const int64_t ctx = m.context_length();
  const int64_t start = m.n_past();
  if (start + static_cast<int64_t>(prompt.size()) > ctx)
    fail("prompt has {} tokens, the context is {}", start + static_cast<int64_t>(prompt.size()), ctx);

  SequenceRun run(opt, token_bytes, eos, prompt, start, ctx, opt.sampling.seed);
  auto emit = [&](int32_t id, std::string_view text) { return on_token ? on_token(id, text) : true; };

  auto t0 = Clock::now();
  std::span<const float> logits = m.forward(prompt);
  run.stats.prefill_seconds = seconds_since(t0);
  while (auto id = run.next(logits, emit)) {
    auto td = Clock::now();
    logits = m.forward({&*id, 1});
    run.stats.decode_seconds += seconds_since(td);
    ++run.stats.decode_steps;
    ++run.pos;
  }
  run.finish(emit);
  return std::move(run.stats);
}

GenerateStats generate(const LlamaModel& model, LlamaState& st, std::span<const int32_t> prompt,
                       const GenerateOptions& opt, const TokenBytes& token_bytes, std::optional<int32_t> eos,
                       const TokenCallback& on_token) {
  CpuSequence seq(model, st);
  return generate(seq, prompt, opt, token_bytes, eos, on_token);
}

BatchGenerateStats generate_batch(BatchModel& m, std::span<const int32_t> prompt, const GenerateOptions& opt,
                                  const std::vector<uint64_t>& seeds, const TokenBytes& token_bytes,
                                  std::optional<int32_t> eos, const SlotTokenCallback& on_token) {
  LZ_CHECK(!prompt.empty(), "the prompt is empty");
  const int n = static_cast<int>(seeds.size());
  LZ_CHECK(n >= 1 && n <= m.slots(), "{} sequences asked, the batch has {} slots", n, m.slots());
  const int64_t ctx = m.context_length();
  if (static_cast<int64_t>(prompt.size()) > ctx)
    fail("prompt has {} tokens, the context is {}", static_cast<int64_t>(prompt.size()), ctx);

  BatchGenerateStats out;
  std::vector<std::unique_ptr<SequenceRun>> runs;
  const int B = m.slots();
  std::vector<int32_t> next(static_cast<size_t>(B), 0);
  std::unique_ptr<bool[]> active(new bool[static_cast<size_t>(B)]());
  int n_active = 0;
  // Slot s's TokenCallback.
  auto emit_of = [&](int s) {
    return [&, s](int32_t id, std::string_view text) { return on_token ? on_token(s, id, text) : true; };
  };
  for (int s = 0; s < n; ++s) {
    runs.push_back(std::make_unique<SequenceRun>(opt, token_bytes, eos, prompt, 0, ctx, seeds[static_cast<size_t>(s)]));
    auto t0 = Clock::now();
    const std::vector<float> logits = m.prefill(s, prompt);
    runs[static_cast<size_t>(s)]->stats.prefill_seconds = seconds_since(t0);
    out.prefill_seconds += runs[static_cast<size_t>(s)]->stats.prefill_seconds;
    if (auto id = runs[static_cast<size_t>(s)]->next(logits, emit_of(s))) {
      next[static_cast<size_t>(s)] = *id;
      active[static_cast<size_t>(s)] = true;
      ++n_active;
    }
  }
  while (n_active > 0) {
    auto td = Clock::now();
    const std::vector<float> logits = m.decode(next.data(), active.get());
    const double dt = seconds_since(td);
    out.decode_seconds += dt;
    ++out.batch_steps;
    out.decoded_tokens += n_active;
    const size_t vocab = logits.size() / static_cast<size_t>(B);
    for (int s = 0; s < n; ++s) {
      if (!active[static_cast<size_t>(s)]) continue;
      SequenceRun& r = *runs[static_cast<size_t>(s)];
      r.stats.decode_seconds += dt;
      ++r.stats.decode_steps;
      ++r.pos;
      if (auto id = r.next(std::span<const float>(logits.data() + static_cast<size_t>(s) * vocab, vocab), emit_of(s))) {
        next[static_cast<size_t>(s)] = *id;
      } else {
        active[static_cast<size_t>(s)] = false;
        --n_active;
      }
    }
  }
  for (int s = 0; s < n; ++s) {
    runs[static_cast<size_t>(s)]->finish(emit_of(s));
    out.sequences.push_back(std::move(runs[static_cast<size_t>(s)]->stats));
  }
  return out;
}

}  // namespace lizard
