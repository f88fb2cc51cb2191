// generate_batch (generate/generate.h), the loop the GPU batch uses, on a CPU stand-in for the batch:
// each slot's tokens, texts and stop reasons equal generate() alone with the same seed; slots stop at
// different steps (one is cancelled by its callback) and leave the batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "generate/generate.h"
#include "llama_fixture.h"
#include "model/llama.h"
#include "util/error.h"

namespace {

using namespace lizard;
using namespace lizard::testing;

// A batch of LlamaStates on one CPU model; counts the slots each decode call runs.
class CpuBatch : public BatchModel {
 public:
  CpuBatch(const LlamaModel& m, int slots) : m_(m) {
    for (int i = 0; i < slots; ++i) st_.push_back(m.new_state());
  }
  int slots() const override { return static_cast<int>(st_.size()); }
  int64_t context_length() const override { return m_.context_length(); }
  std::vector<float> prefill(int slot, std::span<const int32_t> prompt) override {
    auto l = m_.forward(prompt, 0, st_.at(static_cast<size_t>(slot)));
    return {l.begin(), l.end()};
  }
  std::vector<float> decode(const int32_t* tokens, const bool* active) override {
    const size_t V = static_cast<size_t>(m_.vocab_size());
    std::vector<float> out(st_.size() * V, 0.f);
    int n = 0;
    for (size_t s = 0; s < st_.size(); ++s) {
      if (!active[s]) continue;
      ++n;
      auto l = m_.forward(&tokens[s], 1, st_[s].n_past(), st_[s]);
      std::copy(l.begin(), l.end(), out.begin() + static_cast<int64_t>(s * V));
    }
    active_per_step.push_back(n);
    return out;
  }
  std::vector<int> active_per_step;

 private:
  const LlamaModel& m_;
  std::vector<LlamaState> st_;
};

TEST(GenerateBatch, EachSlotEqualsGenerateAlone) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  TinySpec sp;
  sp.ctx = 64;
  TinyModel tm = make_tiny(s, sp);
  ModelOptions mo;
  mo.n_threads = 1;
  const LlamaModel model(std::shared_ptr<const Checkpoint>(tm.ck), mo);
  const std::vector<int32_t> prompt = {3, 14, 15, 92, 65};
  GenerateOptions opt;
  opt.max_new_tokens = 12;
  opt.sampling.temperature = 1.5f;  // spread out: seeds give different sequences
  opt.sampling.top_k = 0;
  opt.sampling.top_p = 1.0f;
  opt.stop_ids = {7, 11};  // stop tokens: some slots end early
  auto bytes = [](int32_t id) { return std::string(1, static_cast<char>('a' + id % 26)); };

  const std::vector<uint64_t> seeds = {1, 2, 3, 4, 5};
  CpuBatch batch(model, 6);  // one slot more than sequences: it stays idle
  // The last sequence is cancelled by its callback after 2 tokens (as a client that disconnects), so at
  // least one slot leaves the batch early whatever the random model samples.
  const int cancelled = static_cast<int>(seeds.size()) - 1;
  constexpr size_t kCancelAfter = 2;
  std::map<int, std::string> texts;
  std::map<int, size_t> seen;
  const BatchGenerateStats bs = generate_batch(batch, prompt, opt, seeds, bytes, std::nullopt,
                                               [&](int slot, int32_t, std::string_view t) {
                                                 texts[slot] += t;
                                                 return !(slot == cancelled && ++seen[slot] >= kCancelAfter);
                                               });
  ASSERT_EQ(bs.sequences.size(), seeds.size());
  int64_t decoded = 0;
  std::vector<int64_t> steps;  // decode steps of each sequence run alone
  for (size_t i = 0; i < seeds.size(); ++i) {
    GenerateOptions o = opt;
    o.sampling.seed = seeds[i];
    LlamaState st = model.new_state();
    std::string text;
    size_t n = 0;
    const GenerateStats one = generate(model, st, prompt, o, bytes, std::nullopt, [&](int32_t, std::string_view t) {
      text += t;
      return !(static_cast<int>(i) == cancelled && ++n >= kCancelAfter);
    });
    EXPECT_EQ(bs.sequences[i].tokens, one.tokens) << "slot " << i;
    EXPECT_EQ(bs.sequences[i].stop_reason, one.stop_reason) << "slot " << i;
    EXPECT_EQ(bs.sequences[i].decode_steps, one.decode_steps) << "slot " << i;
    EXPECT_EQ(texts[static_cast<int>(i)], text) << "slot " << i;
    decoded += one.decode_steps;
    steps.push_back(one.decode_steps);
  }
  EXPECT_EQ(bs.decoded_tokens, decoded);
  EXPECT_EQ(bs.batch_steps, static_cast<int64_t>(batch.active_per_step.size()));
  EXPECT_LT(steps.back(), *std::max_element(steps.begin(), steps.end())) << "the cancelled slot left early";
  // Slots leave as they stop: batch step j decodes exactly the sequences that take more than j decode
  // steps alone (the idle sixth slot never runs).
  std::vector<int> want(batch.active_per_step.size(), 0);
  for (int64_t n : steps)
    for (int64_t j = 0; j < n && j < static_cast<int64_t>(want.size()); ++j) ++want[static_cast<size_t>(j)];
  EXPECT_EQ(batch.active_per_step, want);
}

TEST(GenerateBatch, Refuses) {
  Seeded s;
  TinyModel tm = make_tiny(s, TinySpec{});
  const LlamaModel model(std::shared_ptr<const Checkpoint>(tm.ck));
  CpuBatch batch(model, 2);
  const std::vector<int32_t> prompt = {1, 2};
  GenerateOptions opt;
  auto bytes = [](int32_t) { return std::string(); };
  EXPECT_THROW(generate_batch(batch, prompt, opt, {1, 2, 3}, bytes, std::nullopt), Error);  // 3 > 2 slots
  EXPECT_THROW(generate_batch(batch, {}, opt, {1}, bytes, std::nullopt), Error);            // empty prompt
}

}  // namespace
