// Host-side pieces of the GPU evaluation and bench: the feed / preferred_chunk hooks that let a
// whole-sequence back end (eval/cuda_eval_model.h) share the CPU metric code, and the synthetic shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <vector>

#ifdef LIZARD_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "eval/cuda_eval_model.h"
#include "eval/eval_model.h"
#include "eval/perplexity.h"
#include "generate/bench_generate.h"
#include "llama_fixture.h"
#include "model/load_model.h"
#include "teacher_file_fixture.h"
#include "util/error.h"

namespace {

using namespace lizard;

// Logits that depend on (position, token) only, recording how it was called.
class CountingModel : public EvalModel {
 public:
  explicit CountingModel(int64_t chunk) : chunk_(chunk) {}
  std::string name() const override { return "counting"; }
  int vocab_size() const override { return 7; }
  int64_t context_length() const override { return 1000; }
  std::span<const float> forward(std::span<const int32_t> t, int64_t pos, bool all) override {
    ++forwards;
    if (all) ++logit_calls;
    out_.clear();
    for (size_t i = all ? 0 : t.size() - 1; i < t.size(); ++i)
      for (int v = 0; v < 7; ++v) out_.push_back(float(std::sin(0.3 * (pos + int64_t(i)) + t[i] * 0.7 + v)));
    return out_;
  }
  void feed(std::span<const int32_t>, int64_t) override { ++feeds; }
  bool can_rewind() const override { return true; }
  int64_t preferred_chunk() const override { return chunk_; }
  int forwards = 0, logit_calls = 0, feeds = 0;

 private:
  int64_t chunk_;
  std::vector<float> out_;
};

TEST(EvalDevice, PreferredChunkAsksEachWindowOnceWithTheSameResult) {
  std::vector<int32_t> toks(301);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t((i * 5 + 3) % 7);
  StrideOptions so;
  so.ctx = 64, so.stride = 40, so.chunk = 8;
  CountingModel small(0), whole(1 << 20);
  const PplStats a = perplexity(small, toks, so), b = perplexity(whole, toks, so);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_NEAR(a.nll, b.nll, 1e-9 * std::fabs(a.nll));
  const auto windows = int(stride_windows(int64_t(toks.size()), so).size());
  EXPECT_EQ(whole.logit_calls, windows);  // one call for each window's scored rows
  EXPECT_GT(small.logit_calls, windows);
  EXPECT_EQ(whole.feeds, windows - 1);    // every window but the first has an unscored prefix

  CountingModel t1(0), s1(0), t2(1 << 20), s2(0);
  const KlStats k1 = kl_divergence(t1, s1, toks, so), k2 = kl_divergence(t2, s2, toks, so);
  EXPECT_EQ(k1.tokens, k2.tokens);
  EXPECT_NEAR(k1.teacher.nll, k2.teacher.nll, 1e-9 * std::fabs(k1.teacher.nll));
  EXPECT_EQ(t2.logit_calls, windows);
  EXPECT_EQ(s2.logit_calls, windows);  // both models step together in the larger chunk
}

TEST(EvalDevice, SyntheticShapes) {
  const ModelConfig l = synthetic_model_config("llama3-8b");
  EXPECT_NEAR(double(l.param_count()), 8.03e9, 0.02e9);
  EXPECT_EQ(l.n_kv_heads, 8);
  EXPECT_EQ(l.head_dim, 128);
  const ModelConfig s = synthetic_model_config("smollm2");
  EXPECT_NEAR(double(s.param_count()), 134.5e6, 1e6);
  EXPECT_TRUE(s.tied_embeddings);
  EXPECT_THROW(synthetic_model_config("gpt2"), Error);
}

// The trainer's GPU evaluation reopens the saved checkpoint and its teacher; here (no GPU) it gets as far
// as making the GPU model, and an unknown directory is a clean Error.
TEST(EvalDevice, SavedCheckpointReopensUpToTheGpu) {
  namespace fs = std::filesystem;
  lizard::testing::Seeded s;
  SCOPED_TRACE(s.trace());
  lizard::testing::TinySpec sp;
  sp.vocab = 270;  // the GGUF fixture's tokenizer has 264 tokens
  sp.weight_type = DType::BF16;
  const lizard::testing::TinyModel tm = lizard::testing::make_tiny(s, sp);
  const lizard::fixtures::TempDir tmp;
  const fs::path dir = tmp.path();
  const std::string teacher = (dir / "teacher.gguf").string();
  lizard::testing::write_gguf_teacher(teacher, tm);
  LizardConfig lc;
  lc.feature_dim = 8;
  lc.window = 4;
  LizardCheckpoint lz = init_lizard_checkpoint(lc, tm.ck->config, 3);
  lz.teacher = fingerprint_teacher(teacher);
  save_lizard_dir((dir / "student").string(), lz);
  std::string what;
  try {
    cuda_eval_models_of((dir / "student").string(), 64);
  } catch (const Error& e) {
    what = e.what();
  }
#ifndef LIZARD_HAVE_CUDA
  EXPECT_NE(what.find("CUDA"), std::string::npos) << what;
#else
  // With a GPU the models are made; without one (CI) the only acceptable error is the missing device.
  int n_gpus = 0;
  if (cudaGetDeviceCount(&n_gpus) != cudaSuccess) n_gpus = 0;
  if (n_gpus > 0)
    EXPECT_TRUE(what.empty()) << what;
  else
    EXPECT_NE(what.find("no CUDA GPU available"), std::string::npos) << what;
#endif
  EXPECT_THROW(cuda_eval_models_of((dir / "nothing").string(), 64), Error);
}

}  // namespace
