// The GPU model (model/cuda/cuda_model.h) against the CPU LlamaModel on tiny random teachers (bf16
// weights, so both sides hold the same numbers) and Lizard checkpoints: prefill logits, 20 decode steps,
// every position's logits, a batch of 3 slots against 3 single-slot runs, a prompt of many prefill
// pieces. Prints one "[cuda-model] ..." line per figure.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "cuda_model_fixture.h"
#include "generate/cuda_generate.h"
#include "generate/generate.h"
#include "util/error.h"

namespace {

using namespace lizard;
using namespace lizard::testing;
using cuda::CudaBatch;
using cuda::CudaModel;
using cuda::CudaModelOptions;

struct Case {
  std::string name;
  TinySpec spec = gpu_tiny_spec();
  bool lizard = false;
  std::vector<int> lizard_layers;  // empty: all (when lizard)
  bool lora = false;
  bool rope_features = false;      // feature_on_rope = window_rope = true
  int options = 0;                 // LizardVariant::options
};

Case named(const std::string& name) {
  Case c;
  c.name = name;
  return c;
}

std::vector<Case> cases() {
  std::vector<Case> v;
  v.push_back(named("llama-gqa"));
  Case mha = named("llama-mha");
  mha.spec.kv_heads = mha.spec.heads;
  v.push_back(mha);
  Case qwen = named("qwen2-bias");
  qwen.spec.arch = "qwen2";
  qwen.spec.qkv_bias = true;
  v.push_back(qwen);
  Case tied = named("tied-head");
  tied.spec.tied = true;
  v.push_back(tied);
  Case all = named("lizard-all");
  all.lizard = true;
  v.push_back(all);
  Case hyb = named("lizard-hybrid-lora");
  hyb.lizard = true;
  hyb.lizard_layers = {1};
  hyb.lora = true;
  hyb.spec.layers = 3;
  v.push_back(hyb);
  Case rope = named("lizard-rope");
  rope.lizard = true;
  rope.rope_features = true;
  v.push_back(rope);
  Case two = named("lizard-rope-window");  // two q/k sets
  two.lizard = true;
  two.options = 1;
  v.push_back(two);
  Case recipe = named("lizard-recipe");  // two q/k sets, mwg, sn, gate_skips_window, window 64
  recipe.lizard = true;
  recipe.options = 2;
  v.push_back(recipe);
  return v;
}

CpuGpuModels build(Seeded& s, const Case& c, const CudaModelOptions& opt = {}) {
  std::optional<LizardVariant> lizard;
  if (c.lizard) lizard = LizardVariant{c.lizard_layers, c.lora, c.rope_features, c.options};
  return build_cpu_gpu(s, c.spec, lizard, opt);
}

int32_t argmax(const float* x, size_t n) { return int32_t(std::max_element(x, x + n) - x); }

constexpr double kTol = 4e-2;  // bf16 activations through a few layers

TEST(CudaModel, PrefillDecodeAndAllLogitsMatchCpu) {
  for (const Case& c : cases()) {
    Seeded s;
    SCOPED_TRACE(c.name + " " + s.trace());
    CpuGpuModels b = build(s, c);
    const int V = c.spec.vocab;
    const int64_t L = 77;
    const auto prompt = random_tokens(s, L, V);

    LlamaState st = b.cpu->new_state();
    auto r0 = b.cpu->forward(prompt, 0, st);
    std::vector<float> ref(r0.begin(), r0.end());
    CudaBatch batch = b.gpu->new_batch(1, L + 21);
    std::vector<float> got = b.gpu->prefill(batch, 0, prompt.data(), L);
    const double e_prefill = rel_err(got.data(), ref.data(), size_t(V));

    double e_decode = 0;
    int agree = 0;
    const int steps = 20;
    for (int i = 0; i < steps; ++i) {
      const int32_t next = argmax(ref.data(), size_t(V));  // both sides run the CPU's choice
      auto r = b.cpu->forward(&next, 1, st.n_past(), st);
      ref.assign(r.begin(), r.end());
      const bool active = true;
      got = b.gpu->decode(batch, &next, &active);
      e_decode = std::max(e_decode, rel_err(got.data(), ref.data(), size_t(V)));
      agree += argmax(got.data(), size_t(V)) == argmax(ref.data(), size_t(V));
    }
    EXPECT_EQ(batch.n_past(0), L + steps);

    LlamaState st2 = b.cpu->new_state();
    auto all_ref = b.cpu->forward(prompt, 0, st2, /*all_logits=*/true);
    std::vector<float> all = b.gpu->all_logits(prompt.data(), L);
    ASSERT_EQ(all.size(), all_ref.size());
    const double e_all = rel_err(all.data(), all_ref.data(), all.size());

    std::printf("[cuda-model] %s: prefill logits max rel err %.2e, decode %d steps max rel err %.2e, argmax agree "
                "%d/%d, all-position logits max rel err %.2e (L %lld, vocab %d)\n",
                c.name.c_str(), e_prefill, steps, e_decode, agree, steps, e_all, static_cast<long long>(L), V);
    EXPECT_LT(e_prefill, kTol);
    EXPECT_LT(e_decode, kTol);
    EXPECT_LT(e_all, kTol);
    EXPECT_GE(agree, steps - 3);
  }
}

// Slots of different prompt lengths decoded together equal each slot run alone; a slot left inactive
// for some steps neither moves nor changes.
TEST(CudaModel, BatchedDecodeEqualsSingleSlots) {
  for (const Case& c : cases()) {
    if (c.name != "llama-gqa" && c.name != "lizard-hybrid-lora" && c.name != "lizard-all" && c.name != "lizard-recipe")
      continue;
    Seeded s;
    SCOPED_TRACE(c.name + " " + s.trace());
    CpuGpuModels b = build(s, c);
    const int V = c.spec.vocab, steps = 12;
    const int64_t lens[3] = {5, 40, 23};  // below and above the Lizard window (16)
    std::vector<std::vector<int32_t>> prompts, fed(3);
    for (int64_t n : lens) prompts.push_back(random_tokens(s, n, V));
    // Which slots run at each step: slot 1 pauses for steps 3..6.
    auto runs = [](int slot, int step) { return !(slot == 1 && step >= 3 && step <= 6); };

    CudaBatch batch = b.gpu->new_batch(3, 64);
    std::vector<std::vector<float>> last(3);
    for (int k = 0; k < 3; ++k) last[size_t(k)] = b.gpu->prefill(batch, k, prompts[size_t(k)].data(), lens[k]);
    std::vector<std::vector<std::vector<float>>> batched(3);  // per slot, per step it ran
    for (int i = 0; i < steps; ++i) {
      int32_t tok[3];
      bool active[3];
      for (int k = 0; k < 3; ++k) {
        active[k] = runs(k, i);
        tok[k] = argmax(last[size_t(k)].data(), size_t(V));
      }
      const std::vector<float> out = b.gpu->decode(batch, tok, active);
      for (int k = 0; k < 3; ++k)
        if (active[k]) {
          fed[size_t(k)].push_back(tok[k]);
          last[size_t(k)].assign(out.begin() + int64_t(k) * V, out.begin() + int64_t(k + 1) * V);
          batched[size_t(k)].push_back(last[size_t(k)]);
        }
    }
    double e = 0;
    for (int k = 0; k < 3; ++k) {
      EXPECT_EQ(batch.n_past(k), lens[k] + int64_t(fed[size_t(k)].size()));
      CudaBatch one = b.gpu->new_batch(1, 64);
      b.gpu->prefill(one, 0, prompts[size_t(k)].data(), lens[k]);
      const bool on = true;
      for (size_t i = 0; i < fed[size_t(k)].size(); ++i) {
        const std::vector<float> o = b.gpu->decode(one, &fed[size_t(k)][i], &on);
        e = std::max(e, rel_err(batched[size_t(k)][i].data(), o.data(), size_t(V)));
      }
    }
    std::printf("[cuda-model] %s: batch of 3 slots (prompts 5, 40, 23; slot 1 paused 4 steps) vs single-slot runs "
                "max rel err %.2e over %d steps\n",
                c.name.c_str(), e, steps);
    EXPECT_LT(e, 2e-2);  // GEMMs of 3 rows and of 1 may round differently
  }
}

// A prompt of many prefill pieces (piece = 16 rows) matches the CPU; then decoding continues from it. copy_slot gives a second slot the same continuation.
TEST(CudaModel, PromptLongerThanOnePiece) {
  for (const Case& c : cases()) {
    if (c.name != "qwen2-bias" && c.name != "lizard-hybrid-lora" && c.name != "lizard-recipe") continue;
    Seeded s;
    SCOPED_TRACE(c.name + " " + s.trace());
    CudaModelOptions small;
    small.prefill_piece = 16;
    CpuGpuModels b = build(s, c, small);
    const int V = c.spec.vocab;
    const int64_t L = 203;
    const auto prompt = random_tokens(s, L, V);
    LlamaState st = b.cpu->new_state();
    auto r = b.cpu->forward(prompt, 0, st);
    std::vector<float> ref(r.begin(), r.end());
    CudaBatch batch = b.gpu->new_batch(2, L + 4);
    std::vector<float> got = b.gpu->prefill(batch, 0, prompt.data(), L);
    const double e_cpu = rel_err(got.data(), ref.data(), size_t(V));
    b.gpu->copy_slot(batch, 0, 1);
    const int32_t next = argmax(ref.data(), size_t(V));
    auto r2 = b.cpu->forward(&next, 1, L, st);
    const int32_t toks[2] = {next, next};
    const bool active[2] = {true, true};
    const std::vector<float> out = b.gpu->decode(batch, toks, active);
    const double e_step = std::max(rel_err(out.data(), r2.data(), size_t(V)),
                                   rel_err(out.data() + V, r2.data(), size_t(V)));

    std::vector<float> all16 = b.gpu->all_logits(prompt.data(), L);
    LlamaState st2 = b.cpu->new_state();
    auto all_ref = b.cpu->forward(prompt, 0, st2, true);
    const double e_all = rel_err(all16.data(), all_ref.data(), all16.size());
    std::printf("[cuda-model] %s: prompt of %lld tokens in pieces of 16: last logits max rel err %.2e, all positions "
                "%.2e, next step (2 slots, one copied) %.2e\n",
                c.name.c_str(), static_cast<long long>(L), e_cpu, e_all, e_step);
    EXPECT_LT(e_cpu, kTol);
    EXPECT_LT(e_all, kTol);
    EXPECT_LT(e_step, kTol);
  }
}

// generate() / generate_batch() on the GPU adapters (what `lizard generate --device cuda` runs): greedy
// slots of one prompt agree exactly (one prefill copied, identical rows); agreement with the CPU's
// greedy tokens and of sampled slots with single-sequence runs is printed.
TEST(CudaModel, GenerateThroughTheAdapters) {
  for (const Case& c : cases()) {
    if (c.name != "llama-gqa" && c.name != "lizard-hybrid-lora") continue;
    Seeded s;
    SCOPED_TRACE(c.name + " " + s.trace());
    CpuGpuModels b = build(s, c);
    const auto prompt = random_tokens(s, 29, c.spec.vocab);
    auto bytes = [](int32_t) { return std::string(); };
    GenerateOptions greedy;
    greedy.max_new_tokens = 16;
    greedy.sampling.temperature = 0;
    CudaBatchModel bm(*b.gpu, 3, 64);
    const BatchGenerateStats bs = generate_batch(bm, prompt, greedy, {1, 2, 3}, bytes, std::nullopt);
    ASSERT_EQ(bs.sequences.size(), 3u);
    EXPECT_EQ(bs.sequences[0].tokens, bs.sequences[1].tokens);
    EXPECT_EQ(bs.sequences[0].tokens, bs.sequences[2].tokens);
    EXPECT_EQ(bs.sequences[0].new_tokens, 16);
    EXPECT_EQ(bs.decoded_tokens, 3 * 15);

    LlamaState st = b.cpu->new_state();
    const GenerateStats cpu = generate(*b.cpu, st, prompt, greedy, bytes, std::nullopt);
    CudaSequence seq(*b.gpu, 64);
    const GenerateStats one = generate(seq, prompt, greedy, bytes, std::nullopt);
    auto leading = [](const std::vector<int32_t>& a, const std::vector<int32_t>& r) {
      size_t i = 0;
      while (i < a.size() && i < r.size() && a[i] == r[i]) ++i;
      return i;
    };

    GenerateOptions sampled = greedy;
    sampled.sampling.temperature = 1.0f;
    CudaBatchModel bm2(*b.gpu, 3, 64);
    const BatchGenerateStats bs2 = generate_batch(bm2, prompt, sampled, {7, 8, 9}, bytes, std::nullopt);
    size_t same = 0;
    for (int i = 0; i < 3; ++i) {
      GenerateOptions o = sampled;
      o.sampling.seed = 7 + uint64_t(i);
      CudaSequence sq(*b.gpu, 64);
      same += leading(bs2.sequences[size_t(i)].tokens, generate(sq, prompt, o, bytes, std::nullopt).tokens);
    }
    std::printf("[cuda-model] %s: generate greedy 16 tokens: batch slots equal, single-slot GPU run agrees on %zu "
                "leading tokens, CPU on %zu; sampled (T 1, 3 seeds): batch vs single-slot %zu/48 leading tokens\n",
                c.name.c_str(), leading(bs.sequences[0].tokens, one.tokens), leading(bs.sequences[0].tokens, cpu.tokens),
                same);
  }
}

TEST(CudaModel, RefusesWhatTheKernelsCannotDo) {
  Seeded s;
  TinyModel tm = make_tiny(s, gpu_tiny_spec());
  {  // LoLCATs runs all_logits only (the held-out evaluation): generation needs a batch, which it refuses
    LizardConfig lc = LizardConfig::lolcats();
    lc.feature_dim = 32;
    const LizardCheckpoint lz = init_lizard_checkpoint(lc, tm.ck->config, 1);
    CudaModel m(*tm.ck, &lz);
    EXPECT_FALSE(m.can_generate());
    try {
      m.new_batch(1, 8);
      ADD_FAILURE() << "LoLCATs made a batch";
    } catch (const Error& e) {
      std::printf("[cuda-model] refused a batch (lolcats): %s\n", e.what());
    }
  }
  {  // two q/k sets either way round generate
    LizardConfig lc;
    lc.feature_dim = 32;
    lc.feature_on_rope = true, lc.window_rope = false;
    const LizardCheckpoint lz = init_lizard_checkpoint(lc, tm.ck->config, 1);
    CudaModel m(*tm.ck, &lz);
    EXPECT_TRUE(m.can_generate());
  }
  CudaModel m(*tm.ck, nullptr);
  CudaBatch b = m.new_batch(2, 8);
  const std::vector<int32_t> p(9, 1);
  EXPECT_THROW(m.prefill(b, 0, p.data(), 9), Error);  // longer than the batch's context
  EXPECT_THROW(m.prefill(b, 2, p.data(), 3), Error);  // no such slot
  const int32_t bad[2] = {1, 999};
  const bool act[2] = {true, true};
  m.prefill(b, 0, p.data(), 8);
  EXPECT_THROW(m.decode(b, bad, act), Error);          // token out of range
  const int32_t ok[2] = {1, 1};
  const bool only0[2] = {true, false};
  EXPECT_THROW(m.decode(b, ok, only0), Error);         // slot 0 is full
}

}  // namespace
