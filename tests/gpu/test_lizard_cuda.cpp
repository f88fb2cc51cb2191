// GPU Lizard attention against the CPU reference (ops/cpu/lizard_attention.h, parallel form in
// double) on fresh random inputs of odd sizes. Prints relative errors ||y - ref|| / ||ref||.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "model/lizard_config.h"
#include "ops/cpu/lizard_attention.h"
#include "ops/cuda/lizard_attention.h"
#include "util/error.h"
#include "util/half.h"
#include "gpu_test_util.h"

namespace {

using lizard::LizardConfig;
using lizard::testing::bf16r;
using lizard::testing::Dev;
using lizard::testing::fresh_seed;
using lizard::LizardShape;
using lizard::cuda::LizardAttnArgs;

#define CK(x) ASSERT_EQ((x), cudaSuccess) << cudaGetErrorString(x)

struct Case {
  int B, L, Hq, Hkv, D, F, w, m;
  bool gate_per_head = false, meta_per_head = false, alpha_per_layer = false;
  LizardConfig::FeatureAct act = LizardConfig::FeatureAct::Softmax;
  bool mwg = false;  // meta_weights_gate
  bool sn = false;   // shared_normaliser (with mwg)
  bool skip = false; // gate_skips_window (w a multiple of 64)
  bool sep = false;  // window_rope with un-rotated feature maps (feature_on_rope false): two q/k sets
};

std::string describe(const Case& c) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "B%d L%d Hq%d Hkv%d D%d F%d w%d m%d%s%s%s%s%s%s%s", c.B, c.L, c.Hq, c.Hkv, c.D,
                c.F, c.w, c.m, c.gate_per_head ? " gate/head" : "", c.meta_per_head ? " meta/head" : "",
                c.alpha_per_layer ? " alpha/layer" : "", c.act == LizardConfig::FeatureAct::Exp ? " exp" : "",
                c.mwg ? " mwg" : "", c.sn ? " sn" : "", c.skip ? " skip" : "");
  if (c.sep) std::snprintf(buf + std::strlen(buf), sizeof buf - std::strlen(buf), " rope-window");
  return buf;
}

// Random problem; host data in double. `round` rounds q, k, v and the feature weights to bf16 values.
struct Problem {
  Case c;
  LizardConfig cfg;
  LizardShape shape;
  lizard::LizardParamsT<double> p;
  std::vector<double> x, q, k, v, lg;  // lg [B, L] or [B, L, Hq]
  std::vector<double> yref;            // [B, L, Hq, D]
  lizard::LizardRope rope;             // sep: RoPE of the window's q, k (the CPU applies it itself)
  std::vector<double> qr, kr;          // sep: q, k RoPE'd on the host (what the kernel's window reads)
  const lizard::LizardRope* rope_ptr() const { return c.sep ? &rope : nullptr; }

  Problem(const Case& cs, uint64_t seed, bool round) : c(cs) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd(0.0, 1.0);
    cfg.feature_dim = c.F;
    cfg.window = c.w;
    cfg.meta_tokens = c.m;
    cfg.meta_per_head = c.meta_per_head;
    cfg.alpha_per_layer = c.alpha_per_layer;
    cfg.gate = c.gate_per_head ? LizardConfig::Gate::PerHead : LizardConfig::Gate::Scalar;
    cfg.feature_act = c.act;
    cfg.meta_weights_gate = c.mwg;
    cfg.shared_normaliser = c.sn;
    cfg.gate_skips_window = c.skip;
    cfg.window_rope = c.sep;
    shape.d_model = 24;
    shape.n_heads = c.Hq;
    shape.n_kv_heads = c.Hkv;
    shape.head_dim = c.D;
    p.resize(cfg, shape);
    auto fill = [&](std::vector<double>& t, double sd, double mean = 0.0) {
      for (auto& e : t) e = mean + sd * nd(rng);
    };
    const double wsd = c.act == LizardConfig::FeatureAct::Exp ? 0.3 / std::sqrt(c.D) : 1.5 / std::sqrt(c.D);
    fill(p.feat_q, wsd);
    fill(p.feat_k, wsd);
    fill(p.gate_w, 0.3);
    for (auto& b : p.gate_b) b = 2.5 + 0.5 * nd(rng);  // gamma mostly 0.85-0.97
    fill(p.meta, 1.0);
    fill(p.alpha, 0.3, 1.0);
    const size_t nq = size_t(c.B) * c.L * c.Hq * c.D, nk = size_t(c.B) * c.L * c.Hkv * c.D;
    x.resize(size_t(c.B) * c.L * shape.d_model);
    q.resize(nq);
    k.resize(nk);
    v.resize(nk);
    fill(x, 1.0);
    fill(q, 1.0);
    fill(k, 1.0);
    fill(v, 1.0);
    if (round) {
      for (auto* t : {&q, &k, &v, &p.feat_q, &p.feat_k})
        for (auto& e : *t) e = bf16r(e);
    }
    const int G = c.gate_per_head ? c.Hq : 1;
    lg.resize(size_t(c.B) * c.L * G);
    for (int64_t i = 0; i < int64_t(c.B) * c.L; ++i)
      for (int h = 0; h < G; ++h) {
        double a = p.gate_b[h];
        for (int d = 0; d < shape.d_model; ++d) a += x[i * shape.d_model + d] * p.gate_w[h * shape.d_model + d];
        double l = a >= 0 ? -std::log1p(std::exp(-a)) : a - std::log1p(std::exp(a));
        lg[i * G + h] = static_cast<float>(l);  // the kernel sees it in fp32
      }
    if (c.sep) {  // positions 0..L-1 within each sequence; bf16 values again when round
      rope = lizard::LizardRope::make(c.D, 10000.0);
      qr = q, kr = k;
      for (int b = 0; b < c.B; ++b)
        for (int i = 0; i < c.L; ++i) {
          for (int h = 0; h < c.Hq; ++h) rope.apply(&qr[((size_t(b) * c.L + i) * c.Hq + h) * c.D], i);
          for (int h = 0; h < c.Hkv; ++h) rope.apply(&kr[((size_t(b) * c.L + i) * c.Hkv + h) * c.D], i);
        }
      if (round)
        for (auto* t : {&qr, &kr})
          for (auto& e : *t) e = bf16r(e);
    }
    yref.resize(nq);
    for (int b = 0; b < c.B; ++b) {
      lizard::LizardInput<double> in;
      in.L = c.L;
      in.x = x.data() + size_t(b) * c.L * shape.d_model;
      in.q = q.data() + size_t(b) * c.L * c.Hq * c.D;
      in.k = k.data() + size_t(b) * c.L * c.Hkv * c.D;
      in.v = v.data() + size_t(b) * c.L * c.Hkv * c.D;
      lizard::lizard_forward_parallel<double>(cfg, shape, p, rope_ptr(), in, yref.data() + size_t(b) * c.L * c.Hq * c.D);
    }
  }
};

double rel_err(const std::vector<double>& a, const std::vector<double>& ref, size_t* nonfinite) {
  double num = 0, den = 0;
  *nonfinite = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) ++*nonfinite;
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);  // an all-zero reference (an empty branch): absolute
}

// Device copies of a problem's inputs in element type T (T = float or bf16).
// sep: q, k are the host-RoPE'd ones (the window's) and qf, kf the plain ones (the feature maps').
template <typename T>
struct DevInputs {
  Dev<T> q, k, v, wq, wk, qf, kf;
  Dev<float> lg, meta, alpha;
  explicit DevInputs(const Problem& P)
      : q(P.c.sep ? P.qr : P.q), k(P.c.sep ? P.kr : P.k), v(P.v), wq(P.p.feat_q), wk(P.p.feat_k),
        qf(P.c.sep ? P.q : std::vector<double>(1)), kf(P.c.sep ? P.k : std::vector<double>(1)), lg(P.lg),
        meta(P.p.meta), alpha(P.p.alpha) {}
  LizardAttnArgs args(const Problem& P, void* y) const {
    LizardAttnArgs a = lizard::cuda::lizard_cuda_args(P.cfg, P.shape, P.c.B, P.c.L);
    a.q = q.p, a.k = k.p, a.v = v.p, a.wq = wq.p, a.wk = wk.p;
    if (P.c.sep) a.qf = qf.p, a.kf = kf.p;
    a.log_gamma = lg.p, a.meta = P.c.m > 0 ? meta.p : nullptr, a.alpha = alpha.p, a.y = y;
    return a;
  }
};

const std::vector<Case> kCases = {
    {2, 77, 4, 2, 64, 32, 16, 4},
    {1, 200, 2, 2, 128, 64, 100, 0, true, true, false},
    {2, 131, 3, 1, 64, 64, 64, 2, false, false, true},
    {1, 257, 2, 1, 128, 64, 128, 4, false, true, false},
    {1, 150, 2, 2, 64, 64, 1, 3},
    {1, 190, 2, 2, 64, 64, 130, 4},
    {1, 99, 2, 2, 128, 32, 65, 4, false, false, false, LizardConfig::FeatureAct::Exp},
};

// meta_weights_gate (y = p_meta y_gate + alpha y_anchor) over the options it combines with: window 1 (the
// sinks hold most of the mass), 130 (three key chunks), per-head sinks / gate, alpha per layer, exp features.
constexpr auto kSoftmax = LizardConfig::FeatureAct::Softmax, kExp = LizardConfig::FeatureAct::Exp;
const std::vector<Case> kMwgCases = {
    {2, 77, 4, 2, 64, 32, 16, 4, false, false, false, kSoftmax, true},
    {1, 257, 2, 1, 128, 64, 128, 4, false, true, false, kSoftmax, true},
    {1, 190, 2, 2, 64, 64, 130, 2, true, false, true, kExp, true},
    {1, 150, 2, 2, 64, 64, 1, 3, false, false, false, kSoftmax, true},
    {1, 99, 3, 1, 128, 32, 65, 1, true, true, false, kSoftmax, true},
};

// shared_normaliser (y = (p N + alpha A) / (p (den + eps) + 1 - p)): the same five cases, and the mwg ones
// together (the lists the tests below take).
std::vector<Case> shared_normaliser_cases() {
  std::vector<Case> out = kMwgCases;
  for (Case& c : out) c.sn = true;
  return out;
}
const std::vector<Case> kSnCases = shared_normaliser_cases();
std::vector<Case> mwg_and_sn_cases() {
  std::vector<Case> out = kMwgCases;
  out.insert(out.end(), kSnCases.begin(), kSnCases.end());
  return out;
}
const std::vector<Case> kMwgSnCases = mwg_and_sn_cases();

// gate_skips_window (the gated branch over keys t <= i - w; the GPU takes w a multiple of 64): with the
// shared normaliser (the configuration it is meant for), with mwg alone, without mwg and sinks, L < w (an
// empty gated branch everywhere), w 192 (three chunks of lag), per-head gate / sinks, exp features, GQA.
// Two q/k sets: the window on RoPE'd q, k, the feature maps on the plain ones (the paper's Lizard with a RoPE'd
// window): alone, with mwg + sn, with gate_skips_window too (its GPU forward lags the feature k tile), D 128.
const std::vector<Case> kSepCases = {
    {2, 150, 4, 2, 64, 32, 64, 4, false, false, false, kSoftmax, false, false, false, true},
    {1, 200, 2, 1, 64, 64, 128, 4, false, true, false, kSoftmax, true, true, false, true},
    {1, 190, 2, 2, 64, 64, 128, 4, false, true, false, kSoftmax, true, true, true, true},
    {1, 130, 2, 2, 128, 64, 64, 2, true, false, false, kExp, false, false, false, true},
};

const std::vector<Case> kSkipCases = {
    {2, 200, 4, 2, 64, 32, 64, 4, false, false, false, kSoftmax, true, true, true},
    {1, 333, 2, 1, 128, 64, 128, 4, false, true, false, kSoftmax, true, true, true},
    {1, 190, 2, 2, 64, 64, 128, 2, true, false, true, kExp, true, false, true},
    {2, 150, 3, 1, 64, 32, 64, 0, false, false, false, kSoftmax, false, false, true},
    {1, 50, 2, 1, 64, 64, 64, 4, false, false, false, kSoftmax, true, true, true},
    {1, 300, 2, 2, 128, 32, 192, 4, true, true, false, kSoftmax, true, true, true},
};

// `tag` names the forward variant in each figure line (e.g. "v3", "v0-split").
void chunked_bf16(const std::vector<Case>& cases, const char* tag = "v0") {
  for (const Case& c : cases) {
    const uint64_t seed = fresh_seed();
    Problem P(c, seed, /*round=*/true);
    DevInputs<__nv_bfloat16> in(P);
    Dev<__nv_bfloat16> y(P.yref.size());
    y.poison();
    lizard::cuda::lizard_attention_forward_bf16(in.args(P, y.p));
    CK(cudaDeviceSynchronize());
    size_t bad = 0;
    const double e = rel_err(y.get(), P.yref, &bad);
    std::printf("[lizard-cuda] chunked bf16 %-9s %-44s rel err %.3e (seed %llu)\n", tag, describe(c).c_str(), e,
                (unsigned long long)seed);
    EXPECT_EQ(bad, 0u) << describe(c) << " seed " << seed;
    EXPECT_LT(e, 2e-2) << describe(c) << " seed " << seed;
  }
}

// Every forward configuration under the forward variants: v0 (one CTA per (b, h), and with the value
// columns split over two CTAs), v3 (wgmma, the default; falls back to v0 where its shared memory
// does not fit, w > 129 at D128 F64, as in the last case: v0 split there, 2 B Hq <= SMs). Deleted variants
// (1, 2, 4: 2026-11-27; the two-pass 5, 6, 7: session 4) are refused.
TEST(LizardCuda, ChunkedBf16MatchesReference) {
  std::vector<Case> cases = kCases, v0cases = kCases;
  cases.push_back({1, 150, 2, 2, 128, 64, 130, 4});
  cases.insert(cases.end(), kMwgSnCases.begin(), kMwgSnCases.end());
  v0cases.insert(v0cases.end(), kMwgSnCases.begin(), kMwgSnCases.end());
  cases.insert(cases.end(), kSkipCases.begin(), kSkipCases.end());  // v0 runs them under either variant
  v0cases.insert(v0cases.end(), kSkipCases.begin(), kSkipCases.end());
  cases.insert(cases.end(), kSepCases.begin(), kSepCases.end());  // v0 too
  v0cases.insert(v0cases.end(), kSepCases.begin(), kSepCases.end());
  lizard::cuda::set_forward_variant(0);
  for (int mode : {1, 2}) {
    lizard::cuda::set_forward_split(mode);
    chunked_bf16(v0cases, mode == 2 ? "v0-split" : "v0");  // v0 unsplit does not fit w 130 at D128 F64
  }
  lizard::cuda::set_forward_split(0);
  lizard::cuda::set_forward_variant(3);
  chunked_bf16(cases, "v3");
  for (int deleted : {1, 2, 4, 5, 6, 7}) EXPECT_ANY_THROW(lizard::cuda::set_forward_variant(deleted));
  lizard::cuda::set_forward_variant(lizard::cuda::kForwardVariantDefault);
}

// Forward variants 0 and 3 at chunk-edge lengths (1, 17, 63, 64, 65, 200, 1000), D 64 and 128, the
// paper's F 64 / w 128 / 4 meta sinks plus F 32, exp features and per-head gates: y against the CPU
// reference and the final state (S, z) of v3 against v0's (v0's is checked against the decode state in
// DecodeMatchesReferenceAndChunkedState).
TEST(LizardCuda, ChunkedBf16WgmmaOddLengths) {
  std::vector<Case> cases;
  for (int L : {1, 17, 63, 64, 65, 200, 1000})
    for (int D : {64, 128}) cases.push_back({1, L, 2, 1, D, 64, 128, 4});
  cases.push_back({2, 130, 2, 2, 128, 32, 100, 2, true, true, false});
  cases.push_back({1, 333, 3, 1, 64, 32, 64, 0, false, false, false, LizardConfig::FeatureAct::Exp});
  cases.push_back({1, 129, 2, 1, 128, 64, 1, 4, true, false, false, LizardConfig::FeatureAct::Exp});
  for (int variant : {0, 3}) {
    lizard::cuda::set_forward_variant(variant);
    chunked_bf16(cases, variant == 0 ? "v0" : "v3");
  }
  for (const Case& c : cases) {
    const uint64_t seed = fresh_seed();
    Problem P(c, seed, /*round=*/true);
    DevInputs<__nv_bfloat16> in(P);
    const size_t nS = size_t(c.B) * c.Hq * 2 * c.F * c.D, nz = size_t(c.B) * c.Hq * 2 * c.F;
    std::vector<double> S0, z0;
    for (int variant : {0, 3}) {
      lizard::cuda::set_forward_variant(variant);
      Dev<__nv_bfloat16> y(P.yref.size());
      Dev<float> S(nS), z(nz);
      S.poison(), z.poison();
      LizardAttnArgs a = in.args(P, y.p);
      a.state_s = S.p, a.state_z = z.p;
      lizard::cuda::lizard_attention_forward_bf16(a);
      CK(cudaDeviceSynchronize());
      size_t bad = 0;
      const std::vector<double> yv = y.get();
      const double ey = rel_err(yv, P.yref, &bad);
      EXPECT_EQ(bad, 0u) << describe(c) << " v" << variant;
      EXPECT_LT(ey, 2e-2) << describe(c) << " v" << variant << " seed " << seed;
      if (variant == 0) {
        S0 = S.get(), z0 = z.get();
        continue;
      }
      const int against = 0;  // v3 against v0
      const std::vector<double> Sv = S.get(), zv = z.get();
      const double es = rel_err(Sv, S0, &bad);
      EXPECT_EQ(bad, 0u) << describe(c) << " v" << variant;
      const double ez = rel_err(zv, z0, &bad);
      EXPECT_EQ(bad, 0u) << describe(c) << " v" << variant;
      std::printf("[lizard-cuda] final state v%d vs v%d %-44s S %.3e z %.3e (seed %llu)\n", variant, against,
                  describe(c).c_str(), es, ez, (unsigned long long)seed);
      EXPECT_LT(es, 1e-2) << describe(c) << " v" << variant << " seed " << seed;
      EXPECT_LT(ez, 1e-2) << describe(c) << " v" << variant << " seed " << seed;
    }
  }
  lizard::cuda::set_forward_variant(lizard::cuda::kForwardVariantDefault);
}

// Small cases for compute-sanitizer (memcheck, racecheck): scripts/device_cuda.sh runs this one.
TEST(LizardCuda, SanitizerSmall) {
  const std::vector<Case> small = {{1, 77, 2, 1, 64, 32, 16, 4}, {1, 130, 1, 1, 128, 64, 128, 4}, {1, 140, 1, 1, 64, 32, 1, 2},
                                   {1, 150, 2, 1, 64, 32, 64, 4, false, false, false, kSoftmax, true, true, true},
                                   {1, 100, 2, 1, 64, 64, 65, 2, false, false, false, kSoftmax, true}};
  lizard::cuda::set_forward_variant(0);
  chunked_bf16(small, "v0");
  lizard::cuda::set_forward_variant(3);
  chunked_bf16(small, "v3");
  lizard::cuda::set_forward_variant(lizard::cuda::kForwardVariantDefault);
}

TEST(LizardCuda, RecurrentFp32AndBf16MatchReference) {
  std::vector<Case> cases = kCases;
  cases.insert(cases.end(), kMwgSnCases.begin(), kMwgSnCases.end());
  cases.insert(cases.end(), kSkipCases.begin(), kSkipCases.end());
  cases.insert(cases.end(), kSepCases.begin(), kSepCases.end());
  for (const Case& c : cases) {
    const uint64_t seed = fresh_seed();
    {
      Problem P(c, seed, false);
      DevInputs<float> in(P);
      Dev<float> y(P.yref.size());
      y.poison();
      lizard::cuda::lizard_attention_forward_recurrent(in.args(P, y.p), true);
      CK(cudaDeviceSynchronize());
      size_t bad = 0;
      const double e = rel_err(y.get(), P.yref, &bad);
      std::printf("[lizard-cuda] recurrent f32 %-44s rel err %.3e (seed %llu)\n", describe(c).c_str(), e,
                  (unsigned long long)seed);
      EXPECT_EQ(bad, 0u);
      EXPECT_LT(e, 2e-5) << describe(c) << " seed " << seed;
    }
    {
      Problem P(c, seed, true);
      DevInputs<__nv_bfloat16> in(P);
      Dev<__nv_bfloat16> y(P.yref.size());
      y.poison();
      lizard::cuda::lizard_attention_forward_recurrent(in.args(P, y.p), false);
      CK(cudaDeviceSynchronize());
      size_t bad = 0;
      const double e = rel_err(y.get(), P.yref, &bad);
      std::printf("[lizard-cuda] recurrent bf16 %-43s rel err %.3e\n", describe(c).c_str(), e);
      EXPECT_EQ(bad, 0u);
      EXPECT_LT(e, 1e-2) << describe(c) << " seed " << seed;
    }
  }
}

// Token-by-token decode from an empty state reproduces the reference at every position, and ends in the
// state the chunked kernel hands on (forward variants 0 and 3; not under gate_skips_window or two q/k sets,
// whose chunked forward hands on none) and in the state lizard_attention_prompt_state makes from the whole
// prompt (every case; under gate_skips_window also its rings of feature keys and log gammas).
void decode_case(const Case& c) {
  const uint64_t seed = fresh_seed();
  Problem P(c, seed, true);
  DevInputs<float> in(P);
  const int F2 = 2 * c.F;
  Dev<float> S(size_t(c.B) * c.Hq * F2 * c.D), z(size_t(c.B) * c.Hq * F2);
  CK(cudaMemset(S.p, 0, S.n * 4));
  CK(cudaMemset(z.p, 0, z.n * 4));
  Dev<float> rk(size_t(c.B) * c.Hkv * c.w * c.D), rv(rk.n), rkf(rk.n), rlg(size_t(c.B) * c.Hq * c.w);
  for (Dev<float>* r : {&rk, &rv, &rkf, &rlg}) CK(cudaMemset(r->p, 0, r->n * 4));
  lizard::cuda::LizardDecodeRings rings;
  rings.k = rk.p, rings.v = rv.p;
  if (c.skip) rings.kf = rkf.p, rings.lg = rlg.p;
  Dev<int> pos(c.B);
  const int G = c.gate_per_head ? c.Hq : 1;
  std::vector<double> yd(P.yref.size());
  for (int t = 0; t < c.L; ++t) {
    std::vector<double> qt, kt, vt, lt, qft, kft;
    for (int b = 0; b < c.B; ++b) {
      auto tok = [&](const std::vector<double>& src, int H, std::vector<double>& dst) {
        const double* s = src.data() + (size_t(b) * c.L + t) * H * c.D;
        dst.insert(dst.end(), s, s + size_t(H) * c.D);
      };
      tok(c.sep ? P.qr : P.q, c.Hq, qt);  // the window's q, k
      tok(c.sep ? P.kr : P.k, c.Hkv, kt);
      tok(P.q, c.Hq, qft);  // the feature maps' (two q/k sets)
      tok(P.k, c.Hkv, kft);
      tok(P.v, c.Hkv, vt);
      for (int h = 0; h < G; ++h) lt.push_back(P.lg[(size_t(b) * c.L + t) * G + h]);
    }
    Dev<float> dq(qt), dk(kt), dv(vt), dl(lt), dy(qt.size()), dqf(qft), dkf(kft);
    std::vector<int> ph(c.B, t);
    CK(cudaMemcpy(pos.p, ph.data(), c.B * sizeof(int), cudaMemcpyHostToDevice));
    LizardAttnArgs a = in.args(P, dy.p);
    a.q = dq.p, a.k = dk.p, a.v = dv.p, a.log_gamma = dl.p, a.state_s = S.p, a.state_z = z.p;
    if (c.sep) a.qf = dqf.p, a.kf = dkf.p;
    lizard::cuda::lizard_attention_decode(a, true, pos.p, rings);
    std::vector<double> yt = dy.get();
    for (int b = 0; b < c.B; ++b)
      for (size_t j = 0; j < size_t(c.Hq) * c.D; ++j)
        yd[(size_t(b) * c.L + t) * c.Hq * c.D + j] = yt[size_t(b) * c.Hq * c.D + j];
  }
  CK(cudaDeviceSynchronize());
  size_t bad = 0;
  const double e = rel_err(yd, P.yref, &bad);
  std::printf("[lizard-cuda] decode f32    %-44s rel err %.3e (seed %llu)\n", describe(c).c_str(), e,
              (unsigned long long)seed);
  EXPECT_EQ(bad, 0u);
  // two q/k sets: the window's q, k are the host's RoPE of bf16 values, rounded to bf16 again (DevInputs)
  EXPECT_LT(e, c.sep ? 2e-2 : 2e-5) << describe(c) << " seed " << seed;

  DevInputs<__nv_bfloat16> inb(P);
  // Final state of the chunked bf16 kernel (forward variants 0 and 3) vs the fp32 decode state.
  for (int variant : {0, 3}) {
    if (c.skip || c.sep) break;
    lizard::cuda::set_forward_variant(variant);
    Dev<__nv_bfloat16> yb(P.yref.size());
    Dev<float> S2(S.n), z2(z.n);
    S2.poison(), z2.poison();
    LizardAttnArgs a = inb.args(P, yb.p);
    a.state_s = S2.p, a.state_z = z2.p;
    lizard::cuda::lizard_attention_forward_bf16(a);
    CK(cudaDeviceSynchronize());
    const double es = rel_err(S2.get(), S.get(), &bad);
    EXPECT_EQ(bad, 0u);
    const double ez = rel_err(z2.get(), z.get(), &bad);
    EXPECT_EQ(bad, 0u);
    std::printf("[lizard-cuda] chunked final state vs decode v%d: S %.3e z %.3e\n", variant, es, ez);
    EXPECT_LT(es, 2e-2);
    EXPECT_LT(ez, 2e-2);
  }
  lizard::cuda::set_forward_variant(lizard::cuda::kForwardVariantDefault);
  {  // the prompt's state from bf16 inputs (the same values as the fp32 decode read), fp32 arithmetic
    Dev<__nv_bfloat16> yb(P.yref.size());
    Dev<float> S2(S.n), z2(z.n), plg(rlg.n);
    Dev<__nv_bfloat16> pkf(rkf.n);
    S2.poison(), z2.poison();
    CK(cudaMemset(plg.p, 0, plg.n * 4));
    CK(cudaMemset(pkf.p, 0, pkf.n * 2));
    LizardAttnArgs a = inb.args(P, yb.p);
    a.state_s = S2.p, a.state_z = z2.p;
    lizard::cuda::LizardDecodeRings pr;
    if (c.skip) pr.kf = pkf.p, pr.lg = plg.p;
    lizard::cuda::lizard_attention_prompt_state(a, pr);
    CK(cudaDeviceSynchronize());
    const double es = rel_err(S2.get(), S.get(), &bad);
    EXPECT_EQ(bad, 0u);
    const double ez = rel_err(z2.get(), z.get(), &bad);
    EXPECT_EQ(bad, 0u);
    double er = 0;
    if (c.skip) er = std::max(rel_err(plg.get(), rlg.get(), &bad), rel_err(pkf.get(), rkf.get(), &bad));
    std::printf("[lizard-cuda] prompt state vs decode: S %.3e z %.3e rings (kf, lg) %.3e\n", es, ez, er);
    EXPECT_LT(es, 1e-4);
    EXPECT_LT(ez, 1e-4);
    EXPECT_LT(er, 1e-6);
  }
}

TEST(LizardCuda, DecodeMatchesReferenceAndChunkedState) {
  for (const Case& c : {kCases[0], kCases[1], kCases[3], kMwgCases[1], kMwgCases[2], kSnCases[1], kSnCases[2],
                        kSkipCases[0], kSkipCases[2], kSkipCases[4], kSkipCases[5], kSepCases[0], kSepCases[2],
                        kSepCases[3]})
    decode_case(c);
}

// compute-sanitizer's decode cases: gate_skips_window with two q/k sets (the rings of feature keys and gammas,
// the ring write after the step) and the prompt state.
TEST(LizardCuda, SanitizerSmallDecode) {
  decode_case({1, 70, 2, 1, 64, 32, 64, 2, false, true, false, kSoftmax, true, true, true, true});
}

TEST(LizardCuda, RefusesWhatItCannotDo) {
  LizardConfig cfg;
  LizardShape s{64, 4, 2, 64};
  cfg.combine = LizardConfig::Combine::Lolcats;
  EXPECT_THROW(lizard::cuda::lizard_cuda_args(cfg, s, 1, 10), lizard::Error);
  cfg = LizardConfig{};
  cfg.feature_on_rope = true;  // window_rope false: two q/k sets, so the calls need qf, kf
  {
    LizardAttnArgs m = lizard::cuda::lizard_cuda_args(cfg, s, 1, 10);
    EXPECT_TRUE(m.separate_feature_qk);
    int dummy = 0;
    m.q = m.k = m.v = m.wq = m.wk = m.y = &dummy;
    m.log_gamma = m.alpha = m.meta = reinterpret_cast<float*>(&dummy);
    EXPECT_THROW(lizard::cuda::lizard_attention_forward_bf16(m), lizard::Error);  // no qf, kf
  }
  cfg = LizardConfig{};
  LizardAttnArgs a = lizard::cuda::lizard_cuda_args(cfg, LizardShape{64, 4, 2, 96}, 1, 10);
  int dummy = 0;
  a.q = a.k = a.v = a.wq = a.wk = &dummy;
  a.y = &dummy;
  a.log_gamma = a.alpha = a.meta = reinterpret_cast<float*>(&dummy);
  {  // meta_weights_gate: the chunked backward only (refused by name before anything runs)
    LizardAttnArgs m = a;
    m.D = 64, m.meta_weights_gate = true;
    float fd = 0.f;
    lizard::cuda::LizardAttnGrads g;
    g.dq = g.dk = g.dv = &fd;
    try {
      lizard::cuda::lizard_attention_backward_parallel(m, true, &dummy, g);
      ADD_FAILURE() << "the parallel backward took meta_weights_gate";
    } catch (const lizard::Error& e) {
      EXPECT_NE(std::string(e.what()).find("meta_weights_gate"), std::string::npos) << e.what();
    }
    m.n_meta = 0;
    EXPECT_THROW(lizard::cuda::lizard_attention_forward_bf16(m), lizard::Error);  // needs the sinks
    m = a;
    m.shared_normaliser = true;  // without meta_weights_gate
    try {
      lizard::cuda::lizard_attention_forward_bf16(m);
      ADD_FAILURE() << "the forward took shared_normaliser without meta_weights_gate";
    } catch (const lizard::Error& e) {
      EXPECT_NE(std::string(e.what()).find("shared_normaliser"), std::string::npos) << e.what();
    }
  }
  {  // gate_skips_window: the chunked forward and backward only, w a multiple of 64
    LizardAttnArgs m = a;
    m.D = 64, m.window = 64, m.gate_skips_window = true;
    float fd = 0.f;
    int pos = 0;
    lizard::cuda::LizardAttnGrads g;
    g.dq = g.dk = g.dv = &fd;
    auto refused = [&](const char* what, auto&& call) {
      try {
        call();
        ADD_FAILURE() << what << " took gate_skips_window";
      } catch (const lizard::Error& e) {
        EXPECT_NE(std::string(e.what()).find("gate_skips_window"), std::string::npos) << e.what();
      }
    };
    refused("the parallel backward", [&] { lizard::cuda::lizard_attention_backward_parallel(m, true, &dummy, g); });
    m.state_s = m.state_z = &fd;
    lizard::cuda::LizardDecodeRings kv_only;
    kv_only.k = kv_only.v = &dummy;
    refused("decode without the feature-key and gamma rings",
            [&] { lizard::cuda::lizard_attention_decode(m, true, &pos, kv_only); });
    refused("a forward with state out", [&] { lizard::cuda::lizard_attention_forward_bf16(m); });
    m.state_s = m.state_z = nullptr;
    m.window = 100;
    refused("w 100", [&] { lizard::cuda::lizard_attention_forward_bf16(m); });
    LizardConfig sc;
    sc.gate_skips_window = true, sc.window = 96;
    EXPECT_THROW(lizard::cuda::lizard_cuda_args(sc, LizardShape{64, 4, 2, 64}, 1, 10), lizard::Error);
    sc.window = 128;
    EXPECT_TRUE(lizard::cuda::lizard_cuda_args(sc, LizardShape{64, 4, 2, 64}, 1, 10).gate_skips_window);
  }
  EXPECT_THROW(lizard::cuda::lizard_attention_forward_bf16(a), lizard::Error);  // D = 96
  a.D = 128;
  a.window = 400;
  EXPECT_THROW(lizard::cuda::lizard_attention_forward_bf16(a), lizard::Error);  // shared memory
}

}  // namespace

namespace {

// Backward (parallel form, fp32 arithmetic) against the CPU chunked backward in double. The CPU
// reports gate gradients for gate_w/gate_b; the GPU gives d log_gamma, chained here through
// d lg / d a = sigmoid(-a).
// chunked: lizard_attention_backward_chunked (bf16 tensor-core gate branch), also compared with the
// parallel-form GPU backward; gate_tol for d gate (a suffix sum of dbq + dbk, which cancel in total).
// dy_i . A_i of the window branch (softmax over the window keys and the meta sinks), in double, for
// every (b, h, i) ([B, Hq, L]): the terms whose sum is dalpha. abs_terms: sum_e |dy_ie A_ie| instead (the
// scale of one row's rounding: a row's dy . A can itself cancel to near zero).
std::vector<double> window_dya(const Problem& P, const std::vector<double>& dy, bool abs_terms = false) {
  const Case& c = P.c;
  const int D = c.D, grp = c.Hq / c.Hkv;
  std::vector<double> out(size_t(c.B) * c.Hq * c.L), s(static_cast<size_t>(c.w)), A(static_cast<size_t>(D));
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h)
      for (int i = 0; i < c.L; ++i) {
        const double* q = &P.q[((size_t(b) * c.L + i) * c.Hq + h) * D];
        const int tlo = std::max(0, i - c.w + 1);
        double mx = -INFINITY;
        for (int t = tlo; t <= i; ++t) {
          const double* kt = &P.k[((size_t(b) * c.L + t) * c.Hkv + h / grp) * D];
          double a = 0;
          for (int e = 0; e < D; ++e) a += q[e] * kt[e];
          s[t - tlo] = a / std::sqrt(double(D));
          mx = std::max(mx, s[t - tlo]);
        }
        const double* mu = P.p.meta.data() + (c.meta_per_head ? size_t(h) * c.m : 0);
        for (int j = 0; j < c.m; ++j) mx = std::max(mx, mu[j]);
        double Z = 0;
        for (int j = 0; j < c.m; ++j) Z += std::exp(mu[j] - mx);
        std::fill(A.begin(), A.end(), 0.0);
        for (int t = tlo; t <= i; ++t) {
          const double pt = std::exp(s[t - tlo] - mx);
          Z += pt;
          const double* vt = &P.v[((size_t(b) * c.L + t) * c.Hkv + h / grp) * D];
          for (int e = 0; e < D; ++e) A[e] += pt * vt[e];
        }
        const double* g = &dy[((size_t(b) * c.L + i) * c.Hq + h) * D];
        double r = 0;
        for (int e = 0; e < D; ++e) r += abs_terms ? std::fabs(g[e] * A[e]) : g[e] * A[e];
        out[(size_t(b) * c.Hq + h) * c.L + i] = r / Z;
      }
  return out;
}

// meta_weights_gate: dy_i . (p_i y_gate_i) for every (b, h, i) ([B, Hq, L]), from the CPU forward with
// alpha = 0 (y = p_i y_gate_i), in double.
std::vector<double> weighted_gate_dot(const Problem& P, const std::vector<double>& dy) {
  const Case& c = P.c;
  lizard::LizardParamsT<double> p0 = P.p;
  std::fill(p0.alpha.begin(), p0.alpha.end(), 0.0);
  std::vector<double> yg(P.yref.size()), out(size_t(c.B) * c.Hq * c.L);
  for (int b = 0; b < c.B; ++b) {
    lizard::LizardInput<double> in;
    in.L = c.L;
    in.x = P.x.data() + size_t(b) * c.L * P.shape.d_model;
    in.q = P.q.data() + size_t(b) * c.L * c.Hq * c.D;
    in.k = P.k.data() + size_t(b) * c.L * c.Hkv * c.D;
    in.v = P.v.data() + size_t(b) * c.L * c.Hkv * c.D;
    lizard::lizard_forward_parallel<double>(P.cfg, P.shape, p0, P.rope_ptr(), in, yg.data() + size_t(b) * c.L * c.Hq * c.D);
  }
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h)
      for (int i = 0; i < c.L; ++i) {
        const size_t o = ((size_t(b) * c.L + i) * c.Hq + h) * c.D;
        double r = 0;
        for (int e = 0; e < c.D; ++e) r += dy[o + e] * yg[o + e];
        out[(size_t(b) * c.Hq + h) * c.L + i] = r;
      }
  return out;
}

// How well the instance itself conditions its feature-map gradients: the CPU float backward's relative error
// against the double one (the larger of dfeat_q, dfeat_k). Typical cases read ~5e-7; an instance whose
// feature-map gradient cancels reads more, and every float or bf16 computation of it errs more in proportion
// (seed 17710813796239044152 of a mwg + sn case: 4.5e-6 on the CPU, 10x its neighbours, where the GPU's dfeat
// read 3.8e-2 with bf16 inputs and 1.1e-2 with fp32 ones against ~4e-3 usually).
double feature_grad_float_err(const Problem& P, const std::vector<double>& dy, const lizard::LizardParamsT<double>& dp) {
  const Case& c = P.c;
  auto f32 = [](const std::vector<double>& a) { return std::vector<float>(a.begin(), a.end()); };
  lizard::LizardParamsT<float> pf;
  pf.feat_q = f32(P.p.feat_q), pf.feat_k = f32(P.p.feat_k), pf.gate_w = f32(P.p.gate_w), pf.gate_b = f32(P.p.gate_b);
  pf.meta = f32(P.p.meta), pf.alpha = f32(P.p.alpha), pf.lolcats_f = f32(P.p.lolcats_f);
  const std::vector<float> x = f32(P.x), q = f32(P.q), k = f32(P.k), v = f32(P.v), g = f32(dy);
  lizard::LizardParamsT<float> df;
  for (int b = 0; b < c.B; ++b) {
    lizard::LizardInput<float> in;
    in.L = c.L;
    in.x = x.data() + size_t(b) * c.L * P.shape.d_model;
    in.q = q.data() + size_t(b) * c.L * c.Hq * c.D;
    in.k = k.data() + size_t(b) * c.L * c.Hkv * c.D;
    in.v = v.data() + size_t(b) * c.L * c.Hkv * c.D;
    lizard::lizard_backward_chunked<float>(P.cfg, P.shape, pf, P.rope_ptr(), in, g.data() + size_t(b) * c.L * c.Hq * c.D,
                                           df, nullptr, nullptr, nullptr, nullptr);
  }
  size_t bad = 0;
  const std::vector<double> fq(df.feat_q.begin(), df.feat_q.end()), fk(df.feat_k.begin(), df.feat_k.end());
  return std::max(rel_err(fq, dp.feat_q, &bad), rel_err(fk, dp.feat_k, &bad));
}

// stages (chunked only): the stage variant in force, or -1 for no diagnostics; when set, the call is
// repeated, dalpha is bisected by query block, and the tensor-core window statistics (dalpha, dmeta) are
// compared with the parallel backward's fp32 CUDA-core ones on the same inputs (all printed, not asserted).
// saved (bf16, chunked): the forward runs first and keeps the window statistics (LizardAttnArgs::win_lse,
// win_out), which the backward reads instead of recomputing them.
template <typename T>
void backward_case(const Case& c, uint64_t seed, bool round, double tol, bool chunked = false, double gate_tol = 0,
                   int stages = -1, bool saved = false) {
  Problem P(c, seed, round);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> dy(P.yref.size());
  for (auto& e : dy) e = round ? bf16r(nd(rng)) : nd(rng);
  const int D = c.D, dm = P.shape.d_model;
  // CPU reference.
  lizard::LizardParamsT<double> dp;
  std::vector<double> dq(P.q.size()), dk(P.k.size()), dv(P.v.size());
  for (int b = 0; b < c.B; ++b) {
    lizard::LizardInput<double> in;
    in.L = c.L;
    in.x = P.x.data() + size_t(b) * c.L * dm;
    in.q = P.q.data() + size_t(b) * c.L * c.Hq * D;
    in.k = P.k.data() + size_t(b) * c.L * c.Hkv * D;
    in.v = P.v.data() + size_t(b) * c.L * c.Hkv * D;
    lizard::lizard_backward_chunked<double>(P.cfg, P.shape, P.p, P.rope_ptr(), in, dy.data() + size_t(b) * c.L * c.Hq * D,
                                            dp, nullptr, dq.data() + size_t(b) * c.L * c.Hq * D,
                                            dk.data() + size_t(b) * c.L * c.Hkv * D,
                                            dv.data() + size_t(b) * c.L * c.Hkv * D);
  }
  const double feat_cond = feature_grad_float_err(P, dy, dp);
  // GPU.
  DevInputs<T> in(P);
  Dev<T> ddy(dy);
  Dev<float> y(P.yref.size());
  Dev<float> gq(P.q.size()), gk(P.k.size()), gv(P.v.size()), gwq(P.p.feat_q.size()), gwk(P.p.feat_k.size()),
      glg(P.lg.size()), gmeta(std::max<size_t>(P.p.meta.size(), 1)), galpha(P.p.alpha.size());
  for (Dev<float>* t : {&gq, &gk, &gv, &gwq, &gwk, &glg, &gmeta, &galpha}) t->poison();
  lizard::cuda::LizardAttnGrads g;
  g.dq = gq.p, g.dk = gk.p, g.dv = gv.p, g.dwq = gwq.p, g.dwk = gwk.p, g.dlog_gamma = glg.p;
  g.dmeta = c.m > 0 ? gmeta.p : nullptr, g.dalpha = galpha.p;
  Dev<float> gqf(c.sep ? P.q.size() : 1), gkf(c.sep ? P.k.size() : 1);  // sep: the feature maps' part
  if (c.sep) g.dqf = gqf.p, g.dkf = gkf.p;
  LizardAttnArgs args = in.args(P, y.p);
  Dev<float> wl(saved ? size_t(c.B) * c.Hq * c.L : 1);
  Dev<__nv_bfloat16> wo(saved ? P.yref.size() : 1);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if (saved) {
      wl.poison(), wo.poison();
      Dev<__nv_bfloat16> yb(P.yref.size());
      args.win_lse = wl.p, args.win_out = wo.p;
      LizardAttnArgs fa = args;
      fa.y = yb.p;
      lizard::cuda::lizard_attention_forward_bf16(fa);
      CK(cudaDeviceSynchronize());
    }
  }
  if (chunked)
    lizard::cuda::lizard_attention_backward_chunked(args, std::is_same_v<T, float>, ddy.p, g);
  else
    lizard::cuda::lizard_attention_backward_parallel(in.args(P, y.p), std::is_same_v<T, float>, ddy.p, g);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  std::string vs_parallel;
  if (chunked && !c.mwg && !c.skip && !c.sep) {  // the all-pairs backward on the same inputs, as the second check (it
                                       // refuses mwg and gate_skips_window)
    Dev<float> pq(P.q.size()), pk(P.k.size()), pv(P.v.size());
    lizard::cuda::LizardAttnGrads pg;
    pg.dq = pq.p, pg.dk = pk.p, pg.dv = pv.p;
    lizard::cuda::lizard_attention_backward_parallel(in.args(P, y.p), std::is_same_v<T, float>, ddy.p, pg);
    CK(cudaDeviceSynchronize());
    size_t bad = 0;
    const double eq = rel_err(gq.get(), pq.get(), &bad), ek = rel_err(gk.get(), pk.get(), &bad),
                 ev = rel_err(gv.get(), pv.get(), &bad);
    char buf[128];
    std::snprintf(buf, sizeof buf, " | vs parallel GPU: dq %.1e dk %.1e dv %.1e", eq, ek, ev);
    vs_parallel = buf;
    EXPECT_LT(std::max({eq, ek, ev}), tol) << "chunked vs parallel " << describe(c) << " seed " << seed;
  }
  std::string stats_check;
  if (chunked && stages >= 0 && !c.sep) {  // not in the sanitizer cases (stages -1): 3-6 more calls each
    // The same inputs twice more: an identical call (any difference: a race or a read of stale
    // workspace) and the parallel backward (fp32 CUDA-core statistics), so that a dalpha or dmeta error
    // can be pinned on the statistics stage instead of the reference. dalpha = sum dy . A reads only
    // the statistics stage's dy . A.
    auto rerun = [&](std::vector<double>& alpha_out, std::vector<double>& meta_out, bool parallel = false) {
      Dev<float> rq(P.q.size()), rk(P.k.size()), rv(P.v.size()), rmeta(std::max<size_t>(P.p.meta.size(), 1)),
          ralpha(P.p.alpha.size());
      lizard::cuda::LizardAttnGrads rg;
      rg.dq = rq.p, rg.dk = rk.p, rg.dv = rv.p, rg.dalpha = ralpha.p, rg.dmeta = c.m > 0 ? rmeta.p : nullptr;
      if (parallel)
        lizard::cuda::lizard_attention_backward_parallel(in.args(P, y.p), std::is_same_v<T, float>, ddy.p, rg);
      else
        lizard::cuda::lizard_attention_backward_chunked(in.args(P, y.p), std::is_same_v<T, float>, ddy.p, rg);
      CK(cudaDeviceSynchronize());
      alpha_out = ralpha.get();
      meta_out = c.m > 0 ? rmeta.get() : std::vector<double>();
    };
    const std::vector<double> a0 = galpha.get(), m0 = c.m > 0 ? gmeta.get() : std::vector<double>();
    std::vector<double> a1, m1;
    rerun(a1, m1);
    // Relative to the largest entry; atomics reassociate the sums, so only ~1e-7 is expected here.
    double diff = 0, big = 0;
    for (size_t j = 0; j < a0.size(); ++j) diff = std::max(diff, std::fabs(a1[j] - a0[j])), big = std::max(big, std::fabs(a0[j]));
    for (size_t j = 0; j < m0.size(); ++j) diff = std::max(diff, std::fabs(m1[j] - m0[j])), big = std::max(big, std::fabs(m0[j]));
    char buf[160];
    std::snprintf(buf, sizeof buf, " | rerun dalpha/dmeta max diff %.1e", big > 0 ? diff / big : diff);
    stats_check = buf;
    // Bound 20x above the largest seen on the H200 (session 4: 2.3e-7): a race or a stale workspace read
    // shows up as O(1).
    // gate_skips_window + shared_normaliser: rows i < w (no gated branch) add dmeta terms that cancel against
    // the window stage's (their y does not depend on the sinks up to eps), so the atomics' order moves a
    // smaller total by more: seen 7.5e-6 on the H200 (session 7); a race still reads O(1).
    EXPECT_LT(big > 0 ? diff / big : diff, c.skip && c.sn ? 5e-5 : 5e-6) << "rerun differs";
    // dalpha bisected over 64-query blocks: dy zeroed outside the block, so dalpha is that block's
    // sum of dy . A; its error is printed in units of the block's sum over rows and columns |dy_ie A_ie|
    // (the scale of the rounding of a sum of terms of both signs; per row, not |dy . A|: a block of one
    // row, L 257's last, whose dy . A cancelled to ~1/1000 of its terms read 9.9e-4 that way on the H200,
    // session 5). Locates a window-statistics error by query block. Not under shared_normaliser, whose
    // dalpha is sum dy . A / Q_i (Q_i from the gated branch too): there the whole dalpha is checked below.
    if (!c.sn) {
      const std::vector<double> dya = window_dya(P, dy), dya_abs = window_dya(P, dy, /*abs_terms=*/true);
      const size_t na = P.p.alpha.size();
      auto slot = [&](int h) { return na == 1 ? 0 : size_t(h); };
      std::string blocks = ", dalpha per 64-query block (err / sum|dy*A|):";
      for (int i0 = 0; i0 < c.L; i0 += 64) {
        std::vector<double> dym(dy.size(), 0.0), ref(na, 0.0), scale(na, 0.0);
        for (int b = 0; b < c.B; ++b)
          for (int i = i0; i < std::min(c.L, i0 + 64); ++i)
            for (int h = 0; h < c.Hq; ++h) {
              const size_t o = (size_t(b) * c.L + i) * c.Hq + h;
              std::copy(dy.begin() + o * D, dy.begin() + (o + 1) * D, dym.begin() + o * D);
              const double t = dya[(size_t(b) * c.Hq + h) * c.L + i];
              ref[slot(h)] += t;
              scale[slot(h)] += dya_abs[(size_t(b) * c.Hq + h) * c.L + i];
            }
        Dev<T> ddm(dym);
        Dev<float> rq(P.q.size()), rk(P.k.size()), rv(P.v.size()), ralpha(na);
        lizard::cuda::LizardAttnGrads rg;
        rg.dq = rq.p, rg.dk = rk.p, rg.dv = rv.p, rg.dalpha = ralpha.p;
        lizard::cuda::lizard_attention_backward_chunked(in.args(P, y.p), std::is_same_v<T, float>, ddm.p, rg);
        CK(cudaDeviceSynchronize());
        const std::vector<double> got = ralpha.get();
        double e = 0;
        for (size_t j = 0; j < na; ++j) e = std::max(e, std::fabs(got[j] - ref[j]) / std::max(scale[j], 1e-30));
        std::snprintf(buf, sizeof buf, " %.1e", e);
        blocks += buf;
        EXPECT_LT(e, 2e-4) << "dalpha of query block " << i0 / 64;  // H200 session 4: <= 2.4e-5
      }
      stats_check += blocks;
    }
    if (!c.mwg && !c.skip) {
      rerun(a1, m1, /*parallel=*/true);
      size_t bad = 0;
      const double ea = rel_err(a0, a1, &bad), em = c.m > 0 ? rel_err(m0, m1, &bad) : 0.0;
      std::snprintf(buf, sizeof buf, ", tc vs fp32 stats: dalpha %.1e dmeta %.1e", ea, em);
      stats_check += buf;
      EXPECT_LT(std::max(ea, em), 4e-3) << "window statistics vs the parallel backward's";  // H200: <= 4.0e-4
    }
  }
  // Gate chain rule on the host.
  const int G = c.gate_per_head ? c.Hq : 1;
  std::vector<double> lgd = glg.get(), gb(G, 0.0), gb_abs(G, 0.0), gw(size_t(G) * dm, 0.0);
  for (int64_t i = 0; i < int64_t(c.B) * c.L; ++i)
    for (int h = 0; h < G; ++h) {
      double a = P.p.gate_b[h];
      for (int e = 0; e < dm; ++e) a += P.x[i * dm + e] * P.p.gate_w[h * dm + e];
      const double s = 1.0 / (1.0 + std::exp(a));  // sigmoid(-a)
      const double da = lgd[i * G + h] * s;
      gb[h] += da;
      gb_abs[h] += std::fabs(da);
      for (int e = 0; e < dm; ++e) gw[h * dm + e] += da * P.x[i * dm + e];
    }
  struct Cmp {
    const char* name;
    std::vector<double> got, ref;
  };
  // sep: d q = RoPE^T (the window's dq) + dqf (the feature maps'), k likewise
  auto full_grad = [&](Dev<float>& gw, Dev<float>& gf, int heads) {
    std::vector<double> out = gw.get();
    if (!c.sep) return out;
    const std::vector<double> f = gf.get();
    for (int b = 0; b < c.B; ++b)
      for (int i = 0; i < c.L; ++i)
        for (int h = 0; h < heads; ++h) P.rope.apply(&out[((size_t(b) * c.L + i) * heads + h) * D], i, /*inverse=*/true);
    for (size_t j = 0; j < out.size(); ++j) out[j] += f[j];
    return out;
  };
  std::vector<Cmp> cmps = {{"dq", full_grad(gq, gqf, c.Hq), dq}, {"dk", full_grad(gk, gkf, c.Hkv), dk},
                           {"dv", gv.get(), dv},          {"dfeat_q", gwq.get(), dp.feat_q},
                           {"dfeat_k", gwk.get(), dp.feat_k}, {"dgate_w", gw, dp.gate_w},
                           {"dgate_b", gb, dp.gate_b},    {"dalpha", galpha.get(), dp.alpha}};
  if (c.m > 0) cmps.push_back({"dmeta", gmeta.get(), dp.meta});
  std::string line;
  for (auto& m : cmps) {
    m.got.resize(m.ref.size());
    size_t bad = 0;
    double e = rel_err(m.got, m.ref, &bad);
    if (std::string(m.name) == "dalpha") {
      // Also a sum over tokens of terms of both signs (dy . A of the window branch): measured, like
      // dgate_b, against the sum of |terms|. On the H200 its |sum| was 1/50 of that scale in some
      // cases, and the split-bf16 statistics stage's ~1e-6 of the terms' scale (the per-64-query-block
      // figures below) then read as 3e-4 of |sum|. Bound: a few times that rounding.
      const std::vector<double> dya = window_dya(P, dy);
      const size_t na = P.p.alpha.size();
      std::vector<double> scale(na, 0.0);
      for (int b = 0; b < c.B; ++b)
        for (int h = 0; h < c.Hq; ++h)
          for (int i = 0; i < c.L; ++i) scale[na == 1 ? 0 : size_t(h)] += std::fabs(dya[(size_t(b) * c.Hq + h) * c.L + i]);
      double err = 0;
      for (size_t j = 0; j < na; ++j) err = std::max(err, std::fabs(m.got[j] - m.ref[j]) / std::max(scale[j], 1e-30));
      e = err;
    }
    if (std::string(m.name) == "dmeta") {
      // dmeta_j = -sum over tokens of p_sink_j * alpha dy . A: a cancelling sum too (at w 1 the sinks hold
      // most of the window's mass and |sum| fell to ~1/100 of the terms on the H200, where the split-bf16
      // and fp32 statistics stages then differed by 7.5e-4 of |sum|). Scale: sum |alpha dy . A| per meta
      // set, an upper bound of sum |terms| (p_sink <= 1).
      // meta_weights_gate adds sum_i exp(mu_j - lse_i) g_i and p_i g_i to delta_i (g_i = dy_i . y_gate_i):
      // the scale then also takes 2 sum |p_i g_i|, with p_i y_gate_i the output of an alpha = 0 forward.
      const std::vector<double> dya = window_dya(P, dy), gp = c.mwg ? weighted_gate_dot(P, dy) : std::vector<double>();
      const size_t nm = P.p.meta.size() / size_t(c.m), na = P.p.alpha.size();
      std::vector<double> scale(nm, 0.0);
      for (int b = 0; b < c.B; ++b)
        for (int h = 0; h < c.Hq; ++h)
          for (int i = 0; i < c.L; ++i) {
            const size_t o = (size_t(b) * c.Hq + h) * c.L + i;
            scale[nm == 1 ? 0 : size_t(h)] += std::fabs(P.p.alpha[na == 1 ? 0 : size_t(h)] * dya[o]) +
                                              (c.mwg ? 2 * std::fabs(gp[o]) : 0.0);
          }
      double err = 0;
      for (size_t j = 0; j < m.ref.size(); ++j)
        err = std::max(err, std::fabs(m.got[j] - m.ref[j]) / std::max(scale[j / size_t(c.m)], 1e-30));
      e = err;
    }
    if (std::string(m.name) == "dgate_b") {
      // A sum over tokens of terms of both signs: measure its error against the sum of |terms|,
      // the scale its rounding error lives on, not against |sum| (which cancellation can shrink).
      double err = 0, scale = 0;
      for (int h = 0; h < G; ++h) err = std::max(err, std::fabs(m.got[h] - m.ref[h])), scale = std::max(scale, gb_abs[h]);
      e = scale > 0 ? err / scale : err;
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, " %s %.1e", m.name, e);
    line += buf;
    EXPECT_EQ(bad, 0u) << m.name << " " << describe(c) << " seed " << seed;
    const std::string nm = m.name;
    // dmeta under meta_weights_gate takes the gate passes' p g (bf16 products): the tolerance of dq, dk, dv.
    // bf16 two q/k sets: the window reads bf16(RoPE(q)), one rounding more than the reference's RoPE of the
    // bf16 q (the logits move by ~2^-9 of themselves): dalpha read 1.5e-4..3.6e-4 on the H100 (session 8).
    // saved: dy . A from the forward's A, whose P was rounded to bf16 (the statistics stage splits P into
    // bf16 hi + lo) and which is stored as bf16: ~2^-8 of the terms, not ~1e-6. Read 7.6e-6..9.8e-4 over
    // 27 cases in each of two runs (H200, H100; session 9; dmeta <= 5.3e-5): bound 4e-3.
    const double exact_tol = c.sep && round ? 2e-3 : saved ? 4e-3 : 2e-5;
    // The feature maps' gradients: tol, widened by the instance's own conditioning (feature_grad_float_err
    // beyond 1e-6, twice the typical CPU float error).
    const double feat_widen = std::max(1.0, feat_cond / 1e-6);
    const double t = nm == "dalpha" || (nm == "dmeta" && !c.mwg) ? exact_tol
                     : chunked && nm.rfind("dgate", 0) == 0 ? gate_tol
                     : nm.rfind("dfeat", 0) == 0            ? tol * feat_widen
                                                             : tol;
    EXPECT_LT(e, t) << m.name << " " << describe(c) << " seed " << seed;
  }
  if (feat_cond > 1e-6) {
    char note[96];
    std::snprintf(note, sizeof note, ", feature maps ill-conditioned here (CPU float %.1e): bound x%.1f", feat_cond,
                  feat_cond / 1e-6);
    line += note;
  }
  std::printf("[lizard-cuda] backward%s%s %s %-40s%s%s%s (seed %llu)\n", chunked ? " chunked" : "",
              saved ? " (saved stats)" : "", round ? "bf16" : "f32 ",
              describe(c).c_str(), line.c_str(), vs_parallel.c_str(), stats_check.c_str(), (unsigned long long)seed);
}

TEST(LizardCuda, BackwardMatchesReference) {
  for (const Case& c : {kCases[0], kCases[1], kCases[2], kCases[4], kCases[6]}) {
    const uint64_t seed = fresh_seed();
    backward_case<float>(c, seed, false, 1e-4);
    backward_case<__nv_bfloat16>(c, seed, true, 1e-4);
  }
}

// Chunked backward (tensor-core gate branch, bf16 operands): every configuration, fresh seeds, odd L, plus a
// case of 12 chunks (L 707, a partial last one). The gate branch always runs its state passes (each chunk's
// incoming bf16 state stored) and one CTA per (b, h, chunk) output passes. Stage variant 2 first (the
// default: cp.async loaders, double-buffered window kernels without dk/dv atomics, dW over batch-aligned
// token tiles), then stage variant 1 (the kernels misaligned pointers get), both under the default state
// passes; last the other state-pass variant (1: gate_state_kernel, 2: gate_state2_kernel, cp.async
// double-buffered) under the default stages.
TEST(LizardCuda, ChunkedBackwardVsReference) {
  static_assert(lizard::cuda::kBackwardStageDefault == 2, "the first pass below is the default");
  constexpr int kState = lizard::cuda::kBackwardStateDefault, kStateOther = 3 - kState;
  static_assert(kState == 1 || kState == 2, "state variants 1 and 2");
  for (const auto& [stages, statev] : {std::pair{2, kState}, std::pair{1, kState}, std::pair{2, kStateOther}}) {
    lizard::cuda::set_backward_stage_variant(stages);
    lizard::cuda::set_backward_state_variant(statev);
    std::printf("[lizard-cuda] chunked backward, stage variant %d (%s), state variant %d: state passes + "
                "chunk-parallel outputs\n",
                stages, stages == 2 ? "tensor cores, split bf16, v2 loaders/window/dW" : "tensor cores, split bf16",
                statev);
    std::vector<Case> cases = kCases;
    cases.push_back({1, 707, 2, 1, 64, 32, 64, 4, true});
    cases.insert(cases.end(), kMwgSnCases.begin(), kMwgSnCases.end());
    cases.insert(cases.end(), kSkipCases.begin(), kSkipCases.end());
    cases.insert(cases.end(), kSepCases.begin(), kSepCases.end());
    for (const Case& c : cases) {
      const uint64_t seed = fresh_seed();
      backward_case<float>(c, seed, false, 3e-2, true, 2.5e-1, stages);
      backward_case<__nv_bfloat16>(c, seed, true, 3e-2, true, 2.5e-1, stages);
    }
    // The seed that gave dalpha 4.2e-4 (f32) and 1.6e-4 (bf16) under the (deleted) CUDA-core window stage
    // with stage variant 1 on the H200 (2026-11-27), 50-80x what a CPU emulation of the split-bf16
    // statistics stage gives for it: kept to show whether that is reproducible.
    constexpr uint64_t kSeenSeed = 15252308529606865403ull;
    backward_case<float>(kCases[5], kSeenSeed, false, 3e-2, true, 2.5e-1, stages);
    backward_case<__nv_bfloat16>(kCases[5], kSeenSeed, true, 3e-2, true, 2.5e-1, stages);
  }
  lizard::cuda::set_backward_stage_variant(lizard::cuda::kBackwardStageDefault);
  lizard::cuda::set_backward_state_variant(lizard::cuda::kBackwardStateDefault);
  for (int deleted : {0, 3}) EXPECT_ANY_THROW(lizard::cuda::set_backward_stage_variant(deleted));
  for (int unknown : {0, 3}) EXPECT_ANY_THROW(lizard::cuda::set_backward_state_variant(unknown));
}

// The forward keeps the window statistics (win_lse, win_out) and the backward reads them instead of its
// statistics stage: v3 forwards for the plain, mwg and sn cases, v0 for gate_skips_window, two q/k sets and
// w > 129 at D 128; the default backward stages; the same CPU reference and bounds (dalpha / dmeta: 2e-4).
TEST(LizardCuda, ChunkedBackwardWithForwardStats) {
  std::vector<Case> cases = kCases;
  cases.insert(cases.end(), kMwgSnCases.begin(), kMwgSnCases.end());
  cases.insert(cases.end(), kSkipCases.begin(), kSkipCases.end());
  cases.insert(cases.end(), kSepCases.begin(), kSepCases.end());
  for (const Case& c : cases)
    backward_case<__nv_bfloat16>(c, fresh_seed(), true, 3e-2, true, 2.5e-1, /*stages=*/-1, /*saved=*/true);
}

// Stage variants 2 (its bf16 kernels: cp.async tiles, double buffers, staged read-modify-writes) and 1,
// both with the gate's state passes (into the per-chunk state buffer) and one CTA per (b, h, chunk) output
// passes (L 77: 2 chunks, L 130: 3, a partial last one): the defaults, stage variant 1, then the other
// state-pass variant (cp.async stages of raw rows, rows past L zero-filled) under the default stages.
TEST(LizardCuda, SanitizerSmallChunkedBackward) {
  constexpr int kState = lizard::cuda::kBackwardStateDefault, kStateOther = 3 - kState;
  for (const auto& [stages, statev] : {std::pair{2, kState}, std::pair{1, kState}, std::pair{2, kStateOther}}) {
    lizard::cuda::set_backward_stage_variant(stages);
    lizard::cuda::set_backward_state_variant(statev);
    std::printf("[lizard-cuda] small chunked backward, stage variant %d, state variant %d\n", stages, statev);
    backward_case<__nv_bfloat16>({1, 77, 2, 1, 64, 32, 16, 4}, fresh_seed(), true, 3e-2, true, 2.5e-1);
    backward_case<__nv_bfloat16>({1, 130, 2, 2, 128, 64, 65, 2, true}, fresh_seed(), true, 3e-2, true, 2.5e-1);
    backward_case<__nv_bfloat16>(kMwgCases[0], fresh_seed(), true, 3e-2, true, 2.5e-1);
    backward_case<__nv_bfloat16>(kSnCases[1], fresh_seed(), true, 3e-2, true, 2.5e-1);
    backward_case<__nv_bfloat16>({1, 150, 2, 1, 64, 32, 64, 4, false, false, false, kSoftmax, true, true, true},
                                 fresh_seed(), true, 3e-2, true, 2.5e-1);
  }
  lizard::cuda::set_backward_stage_variant(lizard::cuda::kBackwardStageDefault);
  lizard::cuda::set_backward_state_variant(lizard::cuda::kBackwardStateDefault);
}

// dy 2 bytes and the gradient buffers 4 bytes past a 16-byte boundary (as a caller's sub-tensors can be):
// dy takes the kernels without vector loads (stage variant 1, the gate output passes' scalar loads),
// the gradients aligned temporaries; the same gradients as aligned buffers, to bf16 rounding
// level, on the same inputs (bf16, GQA, meta_weights_gate too). (Seen on the H200 before the temporaries:
// the variant-1 window kernel's 8-byte dq stores faulted on such a buffer.)
TEST(LizardCuda, ChunkedBackwardMisalignedGradients) {
  for (const Case& c : {Case{1, 130, 4, 2, 64, 32, 64, 4}, kMwgCases[1], kSnCases[2]}) {
    const uint64_t seed = fresh_seed();
    Problem P(c, seed, /*round=*/true);
    DevInputs<__nv_bfloat16> in(P);
    std::mt19937_64 rng(seed + 1);
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<double> dy(P.yref.size());
    for (auto& e : dy) e = bf16r(nd(rng));
    Dev<__nv_bfloat16> ddy(dy), ddy_off(dy.size() + 1);
    CK(cudaMemcpy(ddy_off.p + 1, ddy.p, dy.size() * sizeof(__nv_bfloat16), cudaMemcpyDeviceToDevice));
    Dev<float> y(P.yref.size());
    std::vector<std::vector<double>> out[2];
    for (int off : {0, 1}) {
      Dev<float> gq(P.q.size() + 1), gk(P.k.size() + 1), gv(P.v.size() + 1);
      for (Dev<float>* t : {&gq, &gk, &gv}) t->poison();
      lizard::cuda::LizardAttnGrads g;
      g.dq = gq.p + off, g.dk = gk.p + off, g.dv = gv.p + off;
      lizard::cuda::lizard_attention_backward_chunked(in.args(P, y.p), false, off ? ddy_off.p + 1 : ddy.p, g);
      CK(cudaDeviceSynchronize());
      for (Dev<float>* t : {&gq, &gk, &gv}) {
        std::vector<double> h = t->get();
        out[off].emplace_back(h.begin() + off, h.end() - 1 + off);
      }
    }
    const char* names[3] = {"dq", "dk", "dv"};
    std::string line;
    for (int i = 0; i < 3; ++i) {
      size_t bad = 0;
      const double e = rel_err(out[1][i], out[0][i], &bad);
      EXPECT_EQ(bad, 0u) << names[i];
      // The misaligned run takes stage variant 1 (split-bf16 operands, close to fp32), the aligned one
      // variant 2 (bf16 operands): they differ at bf16 rounding level (H200: 1.2e-3..2.7e-3), each within
      // ~3e-3 of the double reference (ChunkedBackwardVsReference); a wrong row or a lost write reads O(1).
      EXPECT_LT(e, 1e-2) << names[i] << " " << describe(c) << " seed " << seed;
      char buf[48];
      std::snprintf(buf, sizeof buf, " %s %.1e", names[i], e);
      line += buf;
    }
    std::printf("[lizard-cuda] misaligned dy and gradient buffers vs aligned %-40s%s (seed %llu)\n", describe(c).c_str(),
                line.c_str(), (unsigned long long)seed);
  }
}

TEST(LizardCuda, ChunkedBackwardRefusesUnsupportedSizes) {
  LizardAttnArgs a;
  a.B = 1, a.L = 8, a.Hq = 1, a.Hkv = 1, a.D = 96, a.F = 32;
  lizard::cuda::LizardAttnGrads g;
  EXPECT_THROW(lizard::cuda::lizard_attention_backward_chunked(a, true, nullptr, g), lizard::Error);
}

}  // namespace
