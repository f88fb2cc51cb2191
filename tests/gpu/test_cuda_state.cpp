// Continuing a GPU sequence and moving it through a saved state (model/cuda/cuda_model.h: extend,
// download_slot, upload_slot; generate/state_io.h's format), on tiny random teachers and Lizard
// checkpoints (teacher, all-Lizard, hybrid with LoRA, Lizard with RoPE'd features, the recommended recipe):
//   prefill A + extend B  vs  prefill A+B on the GPU, and vs the CPU; decode steps after the extend;
//   GPU -> LZSTATE bytes -> GPU continues as the uninterrupted GPU run (bit for bit);
//   GPU -> bytes -> CPU, and CPU -> bytes -> GPU, continue close to the CPU's uninterrupted run.
// Prints one "[cuda-state] ..." line per figure.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "cuda_model_fixture.h"
#include "generate/cuda_generate.h"
#include "generate/state_io.h"

namespace {

using namespace lizard;
using namespace lizard::testing;
using cuda::CudaBatch;
using cuda::CudaModel;

struct Case {
  std::string name;
  bool lizard = false;
  std::vector<int> lizard_layers;  // empty: all (when lizard)
  bool lora = false;
  bool rope_features = false;
  int layers = 2;
  int options = 0;  // LizardVariant::options
};

std::vector<Case> cases() {
  return {{"teacher", false, {}, false, false, 2},
          {"lizard-all", true, {}, false, false, 2},
          {"lizard-hybrid-lora", true, {1}, true, false, 3},
          {"lizard-rope", true, {}, false, true, 2},
          {"lizard-recipe", true, {}, false, false, 2, 2}};
}

// Lizard window 16: the prompts below cross it.
CpuGpuModels build(Seeded& s, const Case& c) {
  std::optional<LizardVariant> lizard;
  if (c.lizard) lizard = LizardVariant{c.lizard_layers, c.lora, c.rope_features, c.options};
  return build_cpu_gpu(s, gpu_tiny_spec(251, c.layers), lizard);
}

std::vector<float> cpu_run(const LlamaModel& m, LlamaState& st, const std::vector<int32_t>& t) {
  auto r = m.forward(t, st.n_past(), st);
  return {r.begin(), r.end()};
}

int32_t argmax(const std::vector<float>& x) { return int32_t(std::max_element(x.begin(), x.end()) - x.begin()); }

std::vector<int32_t> concat(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  std::vector<int32_t> out(a);
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

std::vector<float> decode1(CudaModel& m, CudaBatch& b, int32_t tok) {
  const bool on = true;
  return m.decode(b, &tok, &on);
}

constexpr double kTol = 4e-2;  // bf16 activations through a few layers (as test_cuda_model.cpp)
constexpr int64_t kA = 37, kB = 70;  // B crosses a continuation piece (64 queries) and the window (16)

TEST(CudaState, ExtendEqualsWholePromptAndCpu) {
  for (const Case& c : cases()) {
    Seeded s;
    SCOPED_TRACE(c.name + " " + s.trace());
    CpuGpuModels b = build(s, c);
    const int V = b.gpu->vocab_size();
    const auto A = random_tokens(s, kA, V), B = random_tokens(s, kB, V), AB = concat(A, B);

    CudaBatch split = b.gpu->new_batch(2, 256);  // slot 1: so the slot offsets are exercised
    b.gpu->prefill(split, 1, A.data(), kA);
    std::vector<float> got = b.gpu->extend(split, 1, B.data(), kB);
    EXPECT_EQ(split.n_past(1), kA + kB);
    CudaBatch whole = b.gpu->new_batch(1, 256);
    const std::vector<float> gpu_whole = b.gpu->prefill(whole, 0, AB.data(), kA + kB);
    LlamaState st = b.cpu->new_state();
    cpu_run(*b.cpu, st, A);
    std::vector<float> ref = cpu_run(*b.cpu, st, B);
    const double e_whole = rel_err(got, gpu_whole), e_cpu = rel_err(got, ref);

    // The state after the extend: a few decode steps (the CPU's choices) against the CPU.
    double e_dec = 0;
    const int steps = 6;
    for (int i = 0; i < steps; ++i) {
      const int32_t next = argmax(ref);
      ref = cpu_run(*b.cpu, st, {next});
      const bool on[2] = {false, true};
      const int32_t toks[2] = {0, next};
      const std::vector<float> out = b.gpu->decode(split, toks, on);
      got.assign(out.begin() + V, out.begin() + 2 * V);
      e_dec = std::max(e_dec, rel_err(got, ref));
    }
    // A second extend on top (a third chat turn), short: 3 tokens.
    const auto C = random_tokens(s, 3, V);
    got = b.gpu->extend(split, 1, C.data(), 3);
    ref = cpu_run(*b.cpu, st, C);
    const double e_third = rel_err(got, ref);
    std::printf("[cuda-state] %s: prefill A (%lld) + extend B (%lld) vs GPU prefill A+B max rel err %.2e, vs CPU "
                "%.2e; %d decode steps after vs CPU %.2e; extend of 3 more vs CPU %.2e\n",
                c.name.c_str(), static_cast<long long>(kA), static_cast<long long>(kB), e_whole, e_cpu, steps, e_dec,
                e_third);
    EXPECT_LT(e_whole, kTol);
    EXPECT_LT(e_cpu, kTol);
    EXPECT_LT(e_dec, kTol);
    EXPECT_LT(e_third, kTol);
  }
}

TEST(CudaState, GpuSaveLoadContinuesExactly) {
  for (const Case& c : cases()) {
    Seeded s;
    SCOPED_TRACE(c.name + " " + s.trace());
    CpuGpuModels b = build(s, c);
    const int V = b.gpu->vocab_size();
    const auto A = random_tokens(s, kA, V), B = random_tokens(s, kB, V);

    CudaBatch run = b.gpu->new_batch(1, 256);
    std::vector<float> last = b.gpu->prefill(run, 0, A.data(), kA);
    SavedSequence seq;
    seq.tokens = A;
    for (int i = 0; i < 3; ++i) {  // a short answer: position no longer a multiple of anything
      const int32_t t = argmax(last);
      seq.tokens.push_back(t);
      last = decode1(*b.gpu, run, t);
    }
    seq.tokens.push_back(argmax(last));  // sampled, not yet run: pending
    LlamaState st = b.cpu->new_state();
    b.gpu->download_slot(run, 0, st);
    EXPECT_EQ(st.n_past(), kA + 3);
    const std::string bytes = serialize_state(*b.cpu, st, seq);

    LlamaState st2 = b.cpu->new_state();
    const SavedSequence back = deserialize_state(*b.cpu, st2, bytes);
    CudaBatch restored = b.gpu->new_batch(3, 256);
    b.gpu->upload_slot(restored, 2, st2);
    EXPECT_EQ(restored.n_past(2), kA + 3);
    // GPU -> file -> GPU is lossless: downloading the restored slot writes the same bytes.
    LlamaState st3 = b.cpu->new_state();
    b.gpu->download_slot(restored, 2, st3);
    const bool same_bytes = serialize_state(*b.cpu, st3, back) == bytes;

    // The extend runs one slot whatever the batch: slot 2 of 3 must give the same numbers. Decode GEMMs
    // depend on the batch's row count, so the decode steps compare a one-slot restored batch.
    CudaBatch restored1 = b.gpu->new_batch(1, 256);
    b.gpu->upload_slot(restored1, 0, st2);
    const std::vector<int32_t> more = continuation(back, st2, B);
    std::vector<float> a = b.gpu->extend(run, 0, more.data(), int64_t(more.size()));
    const std::vector<float> r = b.gpu->extend(restored, 2, more.data(), int64_t(more.size()));
    std::vector<float> r1 = b.gpu->extend(restored1, 0, more.data(), int64_t(more.size()));
    double e = std::max(rel_err(r, a), rel_err(r1, a));
    for (int i = 0; i < 4; ++i) {
      const int32_t t = argmax(a);
      a = decode1(*b.gpu, run, t);
      r1 = decode1(*b.gpu, restored1, t);
      e = std::max(e, rel_err(r1, a));
    }
    std::printf("[cuda-state] %s: GPU save (%zu bytes, %lld positions) -> load -> extend %zu + 4 decode vs "
                "uninterrupted GPU max rel err %.2e; re-saved bytes identical: %s\n",
                c.name.c_str(), bytes.size(), static_cast<long long>(kA + 3), more.size(), e,
                same_bytes ? "yes" : "NO");
    EXPECT_TRUE(same_bytes);
    EXPECT_LE(e, 1e-6);
  }
}

TEST(CudaState, StateMovesBetweenGpuAndCpu) {
  for (const Case& c : cases()) {
    Seeded s;
    SCOPED_TRACE(c.name + " " + s.trace());
    CpuGpuModels b = build(s, c);
    const int V = b.gpu->vocab_size();
    const auto A = random_tokens(s, kA, V), B = random_tokens(s, kB, V);
    SavedSequence seq;
    seq.tokens = A;

    // The CPU's uninterrupted run: A then B.
    LlamaState whole = b.cpu->new_state();
    cpu_run(*b.cpu, whole, A);
    const std::vector<float> ref = cpu_run(*b.cpu, whole, B);

    // GPU prefill A -> file bytes -> CPU continues with B.
    CudaBatch g = b.gpu->new_batch(1, 256);
    b.gpu->prefill(g, 0, A.data(), kA);
    LlamaState down = b.cpu->new_state();
    b.gpu->download_slot(g, 0, down);
    const std::string from_gpu = serialize_state(*b.cpu, down, seq);
    LlamaState on_cpu = b.cpu->new_state();
    deserialize_state(*b.cpu, on_cpu, from_gpu);
    const double e_g2c = rel_err(cpu_run(*b.cpu, on_cpu, B), ref);

    // CPU prefill A -> file bytes -> GPU continues with B (the CPU's fp32 caches rounded to bf16).
    LlamaState cst = b.cpu->new_state();
    cpu_run(*b.cpu, cst, A);
    const std::string from_cpu = serialize_state(*b.cpu, cst, seq);
    LlamaState up = b.cpu->new_state();
    deserialize_state(*b.cpu, up, from_cpu);
    CudaBatch g2 = b.gpu->new_batch(1, 256);
    b.gpu->upload_slot(g2, 0, up);
    const double e_c2g = rel_err(b.gpu->extend(g2, 0, B.data(), kB), ref);

    std::printf("[cuda-state] %s: GPU prefill A (%lld) -> state -> CPU continues B (%lld) vs CPU uninterrupted max "
                "rel err %.2e; CPU A -> state -> GPU continues B %.2e\n",
                c.name.c_str(), static_cast<long long>(kA), static_cast<long long>(kB), e_g2c, e_c2g);
    EXPECT_LT(e_g2c, kTol);
    EXPECT_LT(e_c2g, kTol);
  }
}

// The one-sequence adapter the CLI uses: a restored state then a multi-token prompt goes through extend.
TEST(CudaState, CudaSequenceContinuesARestoredState) {
  Seeded s;
  CpuGpuModels b = build(s, cases()[2]);  // hybrid
  const int V = b.gpu->vocab_size();
  const auto A = random_tokens(s, kA, V), B = random_tokens(s, 9, V);
  CudaSequence one(*b.gpu, 128);
  one.forward(A);
  LlamaState st = b.cpu->new_state();
  one.download(st);
  CudaSequence two(*b.gpu, 128);
  two.upload(st);
  EXPECT_EQ(two.n_past(), kA);
  const auto x = one.forward(B), y = two.forward(B);
  const double e = rel_err(std::vector<float>(y.begin(), y.end()), std::vector<float>(x.begin(), x.end()));
  std::printf("[cuda-state] CudaSequence: restored + 9-token prompt vs uninterrupted max rel err %.2e\n", e);
  EXPECT_LE(e, 1e-6);
}

// A state refuses a batch too small for it, and another model's layout.
TEST(CudaState, UploadRefusesWhatDoesNotFit) {
  Seeded s;
  CpuGpuModels b = build(s, cases()[0]);  // teacher: KV caches bounded by the batch's context
  const auto A = random_tokens(s, kA, b.gpu->vocab_size());
  LlamaState st = b.cpu->new_state();
  cpu_run(*b.cpu, st, A);
  CudaBatch small = b.gpu->new_batch(1, 16);
  EXPECT_THROW(b.gpu->upload_slot(small, 0, st), Error);
  Seeded s2;
  CpuGpuModels lz = build(s2, cases()[1]);  // all-Lizard: its layers are not softmax caches
  CudaBatch other = lz.gpu->new_batch(1, 64);
  EXPECT_THROW(lz.gpu->upload_slot(other, 0, st), Error);
}

}  // namespace
