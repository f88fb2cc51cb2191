// GPU LoLCATs attention (ops/cuda/lolcats_attention.h) against the CPU reference in double
// (ops/cpu/lizard_attention.h with combine = lolcats: the parallel forward and the chunked backward)
// on fresh random inputs of odd sizes. The kernels take q, k after RoPE; the reference is run with every
// position 0 (RoPE is then the identity), so both see the same q, k and dq, dk need no un-rotation.
// Prints relative errors ||x - ref|| / ||ref|| in "[lolcats-cuda] ..." lines.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "model/lizard_config.h"
#include "ops/cpu/lizard_attention.h"
#include "ops/cuda/lolcats_attention.h"
#include "util/error.h"
#include "util/half.h"
#include "gpu_test_util.h"

namespace {

using lizard::LizardConfig;
using lizard::testing::bf16r;
using lizard::testing::Dev;
using lizard::testing::fresh_seed;
using lizard::LizardShape;
using lizard::cuda::LolcatsAttnArgs;
using lizard::cuda::LolcatsAttnGrads;

#define CK(x) ASSERT_EQ((x), cudaSuccess) << cudaGetErrorString(x)

struct Case {
  int B, L, Hq, Hkv, D, F, w;
  LizardConfig::FeatureAct act = LizardConfig::FeatureAct::Softmax;
  double qscale = 1.0;  // > 1: peaky window scores (exercises the max shift)
};

std::string describe(const Case& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "B%d L%d Hq%d Hkv%d D%d F%d w%d%s%s", c.B, c.L, c.Hq, c.Hkv, c.D, c.F, c.w,
                c.act == LizardConfig::FeatureAct::Exp ? " exp" : "", c.qscale != 1.0 ? " peaky" : "");
  return buf;
}

// Relative error ||a - ref|| / max(||ref||, 1e-2 sqrt(n)); counts non-finite entries of a. The floor
// (RMS 1e-2, so 1e-6 RMS absolute at the fp32 gradient bound 1e-4) is for gradients that are
// eps-sized by construction: at L = 1 the one key has window weight 1 - O(eps), so dq, dk =
// p (dy.v - dy.y) scale k (~1e-7 RMS) are the difference of two O(8) dot products, whose fp32
// rounding (measured 1.5e-7 RMS on the H200) is the expected error of the flash-style backward; 1e-6
// is about 10 ulps of those unit-sized terms. (d f at L <= w is eps-sized too, but the kernel now
// computes it without cancelling, so it matches to fp32 relative accuracy.)
double rel_err(const std::vector<double>& a, const std::vector<double>& ref, size_t* nonfinite) {
  double num = 0, den = 0;
  *nonfinite = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) ++*nonfinite;
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-2 * std::sqrt(double(a.size())));
}

// Random problem with its CPU reference (forward and gradients) in double. `round` rounds q, k, v,
// dy and the feature weights to bf16 values so that bf16 inputs carry no extra rounding.
struct Problem {
  Case c;
  LizardConfig cfg = LizardConfig::lolcats();
  LizardShape shape;
  lizard::LizardParamsT<double> p;
  std::vector<double> q, k, v, dy;
  std::vector<double> y, dq, dk, dv;
  lizard::LizardParamsT<double> dp;

  Problem(const Case& cs, uint64_t seed, bool round) : c(cs) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd(0.0, 1.0);
    cfg.feature_dim = c.F;
    cfg.window = c.w;
    cfg.feature_act = c.act;
    cfg.meta_tokens = 0;
    shape.d_model = 24;
    shape.n_heads = c.Hq;
    shape.n_kv_heads = c.Hkv;
    shape.head_dim = c.D;
    p.resize(cfg, shape);
    auto fill = [&](std::vector<double>& t, double sd) {
      for (auto& e : t) e = sd * nd(rng);
    };
    const double wsd = c.act == LizardConfig::FeatureAct::Exp ? 0.3 / std::sqrt(c.D) : 1.5 / std::sqrt(c.D);
    fill(p.feat_q, wsd);
    fill(p.feat_k, wsd);
    for (auto& f : p.lolcats_f) f = -1.0 + 1.5 * nd(rng);
    const size_t nq = size_t(c.B) * c.L * c.Hq * c.D, nk = size_t(c.B) * c.L * c.Hkv * c.D;
    q.resize(nq);
    k.resize(nk);
    v.resize(nk);
    dy.resize(nq);
    fill(q, c.qscale);
    fill(k, 1.0);
    fill(v, 1.0);
    fill(dy, 1.0);
    if (round)
      for (auto* t : {&q, &k, &v, &dy, &p.feat_q, &p.feat_k})
        for (auto& e : *t) e = bf16r(e);
    // Reference: every position 0, so RoPE (which lolcats applies) is the identity.
    const lizard::LizardRope rope = lizard::LizardRope::make(c.D, 10000.0);
    const std::vector<int32_t> pos(size_t(c.L), 0);
    y.resize(nq);
    dq.resize(nq);
    dk.resize(nk);
    dv.resize(nk);
    for (int b = 0; b < c.B; ++b) {
      lizard::LizardInput<double> in;
      in.L = c.L;
      in.q = q.data() + size_t(b) * c.L * c.Hq * c.D;
      in.k = k.data() + size_t(b) * c.L * c.Hkv * c.D;
      in.v = v.data() + size_t(b) * c.L * c.Hkv * c.D;
      in.pos = pos.data();
      lizard::lizard_forward_parallel<double>(cfg, shape, p, &rope, in, y.data() + size_t(b) * c.L * c.Hq * c.D);
      lizard::lizard_backward_chunked<double>(cfg, shape, p, &rope, in, dy.data() + size_t(b) * c.L * c.Hq * c.D, dp,
                                              nullptr, dq.data() + size_t(b) * c.L * c.Hq * c.D,
                                              dk.data() + size_t(b) * c.L * c.Hkv * c.D,
                                              dv.data() + size_t(b) * c.L * c.Hkv * c.D);
    }
  }
};

template <typename T>
struct DevProblem {
  Dev<T> q, k, v, wq, wk, dy;
  Dev<float> f;
  explicit DevProblem(const Problem& P) : q(P.q), k(P.k), v(P.v), wq(P.p.feat_q), wk(P.p.feat_k), dy(P.dy), f(P.p.lolcats_f) {}
  LolcatsAttnArgs args(const Problem& P, void* y) const {
    LolcatsAttnArgs a = lizard::cuda::lolcats_cuda_args(P.cfg, P.shape, P.c.B, P.c.L);
    a.fp32 = std::is_same_v<T, float>;
    a.q = q.p, a.k = k.p, a.v = v.p, a.wq = wq.p, a.wk = wk.p, a.lolcats_f = f.p, a.y = y;
    return a;
  }
};

// Forward and every gradient of one case against the reference; tol_y for y, tol_g for the gradients
// (the window-weight gradient, a sum of cancelling terms over all rows, gets 10x).
template <typename T>
void check_case(const Case& c, double tol_y, double tol_g) {
  const uint64_t seed = fresh_seed();
  const bool bf = std::is_same_v<T, __nv_bfloat16>;
  Problem P(c, seed, bf);
  DevProblem<T> in(P);
  Dev<T> y(P.y.size());
  y.poison();
  lizard::cuda::lolcats_attention_forward(in.args(P, y.p));
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  size_t bad = 0;
  const double ey = rel_err(y.get(), P.y, &bad);
  EXPECT_EQ(bad, 0u) << describe(c) << " seed " << seed;
  EXPECT_LT(ey, tol_y) << describe(c) << " seed " << seed;

  Dev<float> dq(P.q.size()), dk(P.k.size()), dv(P.v.size()), dwq(P.p.feat_q.size()), dwk(P.p.feat_k.size()),
      df(P.p.lolcats_f.size());
  for (Dev<float>* t : {&dq, &dk, &dv, &dwq, &dwk, &df}) t->poison();
  LolcatsAttnGrads g;
  g.dq = dq.p, g.dk = dk.p, g.dv = dv.p, g.dwq = dwq.p, g.dwk = dwk.p, g.dlolcats_f = df.p;
  lizard::cuda::lolcats_attention_backward(in.args(P, nullptr), in.dy.p, g);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  struct Item {
    const char* name;
    const Dev<float>* got;
    const std::vector<double>* ref;
    double tol;
  } items[] = {{"dq", &dq, &P.dq, tol_g},          {"dk", &dk, &P.dk, tol_g},
               {"dv", &dv, &P.dv, tol_g},          {"dwq", &dwq, &P.dp.feat_q, tol_g},
               {"dwk", &dwk, &P.dp.feat_k, tol_g}, {"df", &df, &P.dp.lolcats_f, 10 * tol_g}};
  std::string line;
  for (const Item& it : items) {
    const double e = rel_err(it.got->get(), *it.ref, &bad);
    char buf[48];
    std::snprintf(buf, sizeof buf, " %s %.2e", it.name, e);
    line += buf;
    EXPECT_EQ(bad, 0u) << it.name << " " << describe(c) << " seed " << seed;
    EXPECT_LT(e, it.tol) << it.name << " " << describe(c) << " seed " << seed;
  }
  std::printf("[lolcats-cuda] %s %-36s y %.2e |%s (seed %llu)\n", bf ? "bf16" : "f32 ", describe(c).c_str(), ey,
              line.c_str(), (unsigned long long)seed);
}

const std::vector<Case> kCases = {
    {1, 1, 4, 4, 64, 32, 16},
    {2, 63, 9, 3, 64, 64, 64},
    {1, 65, 4, 4, 128, 32, 1},
    {2, 200, 9, 3, 64, 64, 100},
    {1, 200, 4, 4, 128, 64, 16, LizardConfig::FeatureAct::Softmax, 3.0},
    {1, 777, 9, 3, 64, 64, 64},
    {1, 777, 4, 4, 128, 32, 100},
    {1, 777, 9, 3, 64, 32, 16, LizardConfig::FeatureAct::Exp},
    {1, 300, 2, 1, 128, 64, 1, LizardConfig::FeatureAct::Exp},
    {1, 150, 4, 2, 64, 64, 128},
};

TEST(LolcatsCuda, Fp32MatchesReference) {
  for (const Case& c : kCases) check_case<float>(c, 1e-5, 1e-4);
}

// bf16 inputs (the reference uses the same rounded values); y is rounded to bf16 on output.
TEST(LolcatsCuda, Bf16MatchesReference) {
  for (const Case& c : kCases) check_case<__nv_bfloat16>(c, 1e-2, 1e-4);
}

// Small cases for compute-sanitizer (memcheck, racecheck).
TEST(LolcatsCuda, SanitizerSmall) {
  check_case<float>({1, 77, 2, 1, 64, 32, 16}, 1e-5, 1e-4);
  check_case<__nv_bfloat16>({1, 130, 3, 3, 128, 64, 100}, 1e-2, 1e-4);
}

TEST(LolcatsCuda, RefusesWhatItCannotDo) {
  LizardShape s{64, 4, 2, 64};
  EXPECT_THROW(lizard::cuda::lolcats_cuda_args(LizardConfig{}, s, 1, 10), lizard::Error);  // combine = lizard
  LizardConfig cfg = LizardConfig::lolcats();
  cfg.feature_on_rope = false;
  EXPECT_THROW(lizard::cuda::lolcats_cuda_args(cfg, s, 1, 10), lizard::Error);
  LolcatsAttnArgs a = lizard::cuda::lolcats_cuda_args(LizardConfig::lolcats(), LizardShape{64, 4, 2, 256}, 1, 10);
  int dummy = 0;
  a.q = a.k = a.v = a.wq = a.wk = &dummy;
  a.y = &dummy;
  a.lolcats_f = reinterpret_cast<float*>(&dummy);
  EXPECT_THROW(lizard::cuda::lolcats_attention_forward(a), lizard::Error);  // D = 256
  a.D = 64;
  a.F = 128;
  EXPECT_THROW(lizard::cuda::lolcats_attention_forward(a), lizard::Error);  // F = 128
}

// SmolLM2-135M shape, bf16: forward alone and forward + backward (the backward recomputes the forward).
TEST(LolcatsCuda, TimingSmolLM2) {
  for (int w : {64, 128}) {
    const Case c{8, 2048, 9, 3, 64, 64, w};
    LizardConfig cfg = LizardConfig::lolcats();
    cfg.window = w;
    const LizardShape s{576, 9, 3, 64};
    const size_t nq = size_t(c.B) * c.L * c.Hq * c.D, nk = size_t(c.B) * c.L * c.Hkv * c.D;
    std::mt19937_64 rng(7);
    std::normal_distribution<double> nd(0.0, 1.0);
    auto rnd = [&](size_t n, double sd) {
      std::vector<double> t(n);
      for (auto& e : t) e = sd * nd(rng);
      return t;
    };
    Dev<__nv_bfloat16> q(rnd(nq, 1.0)), k(rnd(nk, 1.0)), v(rnd(nk, 1.0)), dy(rnd(nq, 1.0)), y(nq);
    Dev<__nv_bfloat16> wq(rnd(size_t(c.Hq) * c.D * c.F, 0.02)), wk(rnd(size_t(c.Hq) * c.D * c.F, 0.02));
    Dev<float> f(std::vector<double>(c.Hq, -2.197));
    Dev<float> dq(nq), dk(nk), dv(nk), dwq(wq.n), dwk(wk.n), df(c.Hq);
    LolcatsAttnArgs a = lizard::cuda::lolcats_cuda_args(cfg, s, c.B, c.L);
    a.q = q.p, a.k = k.p, a.v = v.p, a.wq = wq.p, a.wk = wk.p, a.lolcats_f = f.p, a.y = y.p;
    LolcatsAttnGrads g{dq.p, dk.p, dv.p, dwq.p, dwk.p, df.p};
    cudaEvent_t e0, e1, e2;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaEventCreate(&e2));
    lizard::cuda::lolcats_attention_forward(a);  // warm-up
    lizard::cuda::lolcats_attention_backward(a, dy.p, g);
    CK(cudaDeviceSynchronize());
    const int reps = 5;
    CK(cudaEventRecord(e0));
    for (int r = 0; r < reps; ++r) lizard::cuda::lolcats_attention_forward(a);
    CK(cudaEventRecord(e1));
    for (int r = 0; r < reps; ++r) {
      lizard::cuda::lolcats_attention_forward(a);
      lizard::cuda::lolcats_attention_backward(a, dy.p, g);
    }
    CK(cudaEventRecord(e2));
    CK(cudaEventSynchronize(e2));
    float t_fwd = 0, t_all = 0;
    CK(cudaEventElapsedTime(&t_fwd, e0, e1));
    CK(cudaEventElapsedTime(&t_all, e1, e2));
    std::printf("[lolcats-cuda] timing %s bf16: forward %.2f ms, forward + backward %.2f ms\n", describe(c).c_str(),
                t_fwd / reps, t_all / reps);
    std::vector<double> gq = dq.get();
    size_t bad = 0;
    for (double x : gq) bad += !std::isfinite(x);
    EXPECT_EQ(bad, 0u);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaEventDestroy(e2);
  }
}

}  // namespace
