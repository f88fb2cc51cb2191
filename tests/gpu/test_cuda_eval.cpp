// GPU evaluation (eval/cuda_eval_model.h) against the CPU: the same windows and metrics code, so the
// perplexities, KL and top-1 agreement differ only by the GPU's bf16 activations.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <memory>
#include <vector>

#include "model/load_model.h"
#include "../teacher_file_fixture.h"
#include "cuda_model_fixture.h"
#include "eval/cuda_eval_model.h"
#include "eval/perplexity.h"
#include "util/error.h"

namespace {

using namespace lizard;
using namespace lizard::testing;

struct Pair {
  TinyModel tm;
  LizardCheckpoint lz;
  std::unique_ptr<LlamaModel> cpu_teacher, cpu_student;
  std::shared_ptr<cuda::CudaModel> gpu_teacher, gpu_student;
};

Pair build_pair(Seeded& s, bool lolcats = false, int vocab = 251) {
  Pair p;
  p.tm = make_gpu_tiny(s, gpu_tiny_spec(vocab));
  p.cpu_teacher = exact_cpu_model(p.tm);
  p.cpu_student = exact_cpu_model(p.tm);
  p.lz = gpu_lizard_checkpoint(s, p.tm.ck->config, {}, lolcats);
  apply_lizard(*p.cpu_student, p.lz);
  p.gpu_teacher = std::make_shared<cuda::CudaModel>(*p.tm.ck, nullptr);
  p.gpu_student = std::make_shared<cuda::CudaModel>(*p.tm.ck, &p.lz);
  return p;
}

double rel(double a, double ref) { return std::fabs(a - ref) / std::max(std::fabs(ref), 1e-30); }

void check_ppl_kl(bool lolcats) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  Pair p = build_pair(s, lolcats);
  const auto toks = random_tokens(s, 333, 251);
  StrideOptions so;
  so.ctx = 128, so.stride = 50, so.chunk = 32;  // odd sizes; the CPU path steps in chunks of 32

  LlamaEvalModel ct(*p.cpu_teacher, "teacher"), cs(*p.cpu_student, "student");
  CudaEvalModel gt(p.gpu_teacher, "teacher", 1024), gs(p.gpu_student, "student", 1024);
  const PplStats pc = perplexity(ct, toks, so), pg = perplexity(gt, toks, so);
  const KlStats kc = kl_divergence(ct, cs, toks, so), kg = kl_divergence(gt, gs, toks, so);

  EXPECT_EQ(pc.tokens, pg.tokens);
  EXPECT_EQ(kc.tokens, kg.tokens);
  const double e_ppl = rel(pg.ppl(), pc.ppl()), e_tppl = rel(kg.teacher.ppl(), kc.teacher.ppl()),
               e_sppl = rel(kg.student.ppl(), kc.student.ppl()), e_kl = rel(kg.kl_per_token(), kc.kl_per_token());
  const double d_top1 = std::fabs(kg.agreement() - kc.agreement());
  std::printf("[cuda-eval] %s ppl cpu %.5f gpu %.5f rel %.2e; kl-run teacher ppl rel %.2e, student ppl rel %.2e, "
              "KL cpu %.5f gpu %.5f rel %.2e, top-1 cpu %.4f gpu %.4f (%lld tokens, ctx 128, stride 50)\n",
              lolcats ? "lolcats" : "lizard", pc.ppl(), pg.ppl(), e_ppl, e_tppl, e_sppl, kc.kl_per_token(), kg.kl_per_token(), e_kl, kc.agreement(),
              kg.agreement(), static_cast<long long>(kc.tokens));
  EXPECT_LT(e_ppl, 1e-2);
  EXPECT_LT(e_tppl, 1e-2);
  EXPECT_LT(e_sppl, 1e-2);
  EXPECT_LT(std::fabs(kg.kl_per_token() - kc.kl_per_token()), 0.05 * kc.kl_per_token() + 2e-3);
  EXPECT_LT(d_top1, 0.05);
}

TEST(CudaEval, PerplexityAndKlMatchCpu) { check_ppl_kl(false); }
// The LoLCATs baseline is evaluated the same way: all_logits through the GPU LoLCATs kernel.
TEST(CudaEval, LolcatsPerplexityAndKlMatchCpu) { check_ppl_kl(true); }

// The trainer's GPU held-out evaluation: teacher and student from a saved checkpoint dir (the teacher
// found by its recorded path) give the CPU's KL and perplexities.
TEST(CudaEval, ModelsOfASavedCheckpointMatchCpu) {
  namespace fs = std::filesystem;
  Seeded s;
  SCOPED_TRACE(s.trace());
  Pair p = build_pair(s, false, 270);  // the GGUF fixture's tokenizer has 264 tokens
  const lizard::fixtures::TempDir tmp;
  const fs::path dir = tmp.path();
  const std::string teacher = (dir / "teacher.gguf").string();
  write_gguf_teacher(teacher, p.tm);
  LizardCheckpoint lz = p.lz;
  lz.teacher = fingerprint_teacher(teacher);
  save_lizard_dir((dir / "student").string(), lz);
  const CudaEvalPair g = cuda_eval_models_of((dir / "student").string(), 128);
  const auto toks = random_tokens(s, 300, 270);
  StrideOptions so;
  so.ctx = 128, so.stride = 64, so.chunk = 32;
  // The CPU side opens the same files (the writer stores Q/K rows in HF order while a GGUF reader
  // un-permutes them: comparing with the in-memory pair compared different weights).
  const LoadedModel cpu_t = load_model(teacher), cpu_s = load_model((dir / "student").string());
  LlamaEvalModel ct(*cpu_t.model, "teacher"), cs(*cpu_s.model, "student");
  const KlStats kc = kl_divergence(ct, cs, toks, so), kg = kl_divergence(*g.teacher, *g.student, toks, so);
  std::printf("[cuda-eval] saved checkpoint: teacher ppl rel %.2e, student ppl rel %.2e, KL cpu %.5f gpu %.5f, "
              "top-1 cpu %.4f gpu %.4f (%lld tokens)\n",
              rel(kg.teacher.ppl(), kc.teacher.ppl()), rel(kg.student.ppl(), kc.student.ppl()), kc.kl_per_token(),
              kg.kl_per_token(), kc.agreement(), kg.agreement(), static_cast<long long>(kc.tokens));
  EXPECT_EQ(kc.tokens, kg.tokens);
  EXPECT_LT(rel(kg.teacher.ppl(), kc.teacher.ppl()), 1e-2);
  EXPECT_LT(rel(kg.student.ppl(), kc.student.ppl()), 1e-2);
  EXPECT_LT(std::fabs(kg.kl_per_token() - kc.kl_per_token()), 0.05 * kc.kl_per_token() + 2e-3);
}

// forward(..., false) prefills, a next single token decodes: both equal all_logits' rows.
TEST(CudaEval, PrefillDecodePathMatchesAllLogits) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  Pair p = build_pair(s);
  for (auto model : {p.gpu_teacher, p.gpu_student}) {
    CudaEvalModel m(model, "m", 1024);
    const auto toks = random_tokens(s, 97, 251);
    const std::vector<float> ref = model->all_logits(toks.data(), 97);
    const size_t V = 251;
    auto a = m.forward(std::span<const int32_t>(toks).subspan(0, 95), 0, false);
    const std::vector<float> last_prefill(a.begin(), a.end());
    auto b = m.forward(std::span<const int32_t>(toks).subspan(95, 1), 95, false);  // decode
    const std::vector<float> dec1(b.begin(), b.end());
    auto c = m.forward(std::span<const int32_t>(toks).subspan(96, 1), 96, false);  // decode
    const std::vector<float> dec2(c.begin(), c.end());
    double e = 0, mx = 0;
    for (size_t i = 0; i < V; ++i) {
      for (auto [x, r] : {std::pair{last_prefill[i], ref[94 * V + i]}, std::pair{dec1[i], ref[95 * V + i]},
                          std::pair{dec2[i], ref[96 * V + i]}}) {
        e = std::max(e, std::fabs(double(x) - r));
        mx = std::max(mx, std::fabs(double(r)));
      }
    }
    std::printf("[cuda-eval] %s prefill/decode vs all_logits max rel err %.2e (L 97)\n",
                model == p.gpu_teacher ? "teacher" : "student", e / mx);
    EXPECT_LT(e / mx, 2e-2);
    // A rewind re-runs the history: the same rows again.
    auto r = m.forward(std::span<const int32_t>(toks).subspan(50, 47), 50, true);
    double e2 = 0;
    for (size_t i = 0; i < r.size(); ++i) e2 = std::max(e2, std::fabs(double(r[i]) - ref[50 * V + i]));
    EXPECT_LT(e2 / mx, 1e-5);
  }
}

// bench generate --shape: a synthetic model of a hand-filled tiny shape (teacher and all-Lizard) builds on
// the GPU, prefills and decodes finite logits that agree with its own all_logits; a batch too large for
// the card is a clean Error that leaves the device memory as it was.
TEST(CudaEval, SyntheticShapeBuildsAndDecodes) {
  ModelConfig c;
  c.arch = "llama";
  c.vocab_size = 301, c.d_model = 256, c.n_layers = 3, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64;
  c.d_ff = 344, c.max_seq_len = 4096, c.rope_theta = 10000.0f;
  LizardConfig lc;
  lc.feature_dim = 32;
  lc.window = 16;
  const LizardCheckpoint lz = init_lizard_checkpoint(lc, c, 7);
  for (int which = 0; which < 2; ++which) {
    cuda::CudaModel m(c, 11, which == 0 ? nullptr : &lz);
    std::vector<int32_t> toks(77);
    for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t((i * 37 + 5) % 301);
    const std::vector<float> ref = m.all_logits(toks.data(), 77);
    cuda::CudaBatch b = m.new_batch(3, 128);
    const std::vector<float> last = m.prefill(b, 0, toks.data(), 76);
    m.copy_slot(b, 0, 1);
    m.copy_slot(b, 0, 2);
    const int32_t next[3] = {toks[76], toks[76], toks[76]};
    const bool active[3] = {true, false, true};
    const std::vector<float> dec = m.decode(b, next, active);
    double e = 0, mx = 0;
    bool finite = true;
    for (size_t i = 0; i < 301; ++i) {
      for (auto [x, r] : {std::pair{last[i], ref[75 * 301 + i]}, std::pair{dec[i], ref[76 * 301 + i]},
                          std::pair{dec[2 * 301 + i], ref[76 * 301 + i]}}) {
        finite = finite && std::isfinite(x);
        e = std::max(e, std::fabs(double(x) - r));
        mx = std::max(mx, std::fabs(double(r)));
      }
    }
    std::printf("[cuda-eval] synthetic %s: weights %.1f MiB, prefill/decode vs all_logits max rel err %.2e, "
                "logit max %.3f (L 77, B 3)\n",
                which == 0 ? "teacher" : "lizard", double(m.weight_bytes()) / 1048576.0, e / std::max(mx, 1e-30), mx);
    EXPECT_TRUE(finite);
    EXPECT_GT(mx, 0.0);
    EXPECT_LT(e / std::max(mx, 1e-30), 2e-2);
  }
  // The teacher's KV cache for far more memory than any card: a clean Error, nothing left allocated.
  cuda::CudaModel m(c, 11, nullptr);
  size_t free0 = 0, total = 0, free1 = 0;
  cuda::device_memory(free0, total);
  EXPECT_THROW(m.new_batch(4096, int64_t(1) << 30), Error);
  cuda::device_memory(free1, total);
  std::printf("[cuda-eval] synthetic out-of-memory batch: free before %.0f MiB, after %.0f MiB\n",
              double(free0) / 1048576.0, double(free1) / 1048576.0);
  EXPECT_LE(free0 - std::min(free0, free1), size_t(64) << 20);
  cuda::CudaBatch ok = m.new_batch(2, 64);  // the model still works
  const std::vector<int32_t> t{1, 2, 3};
  EXPECT_EQ(m.prefill(ok, 1, t.data(), 3).size(), size_t(301));
}

}  // namespace
