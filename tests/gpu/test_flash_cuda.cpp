// Flash attention (causal, GQA) on the GPU against a double-precision reference (output and lse),
// fresh random bf16-valued inputs of odd lengths.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "ops/cuda/flash_attention.h"
#include "util/half.h"
#include "gpu_test_util.h"

namespace {

using lizard::testing::fresh_seed;

struct FwdCase {
  int B, L, H, Hkv, D;
  float scale = 0.f;  // 0: 1/sqrt(D)
};

// The forward on one case against the double-precision reference (output and lse).
void check_fwd_case(FwdCase c) {
  const uint64_t seed = fresh_seed();
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  const size_t nq = size_t(c.B) * c.L * c.H * c.D, nk = size_t(c.B) * c.L * c.Hkv * c.D;
  std::vector<uint16_t> hq(nq), hk(nk), hv(nk);
  std::vector<float> fq(nq), fk(nk), fv(nk);
  auto fill = [&](std::vector<uint16_t>& h, std::vector<float>& f, float sd) {
    for (size_t i = 0; i < h.size(); ++i) h[i] = lizard::f32_to_bf16(sd * nd(g)), f[i] = lizard::bf16_to_f32(h[i]);
  };
  fill(hq, fq, 1.5f);
  fill(hk, fk, 1.5f);
  fill(hv, fv, 1.f);
  void *dq, *dk, *dv, *dout;
  float* dlse;
  ASSERT_EQ(cudaMalloc(&dq, nq * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dk, nk * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dv, nk * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, nq * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dlse, size_t(c.B) * c.H * c.L * 4), cudaSuccess);
  cudaMemcpy(dq, hq.data(), nq * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dk, hk.data(), nk * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dv, hv.data(), nk * 2, cudaMemcpyHostToDevice);
  cudaMemset(dout, 0xff, nq * 2);
  lizard::cuda::FlashArgs a;
  a.B = c.B, a.L = c.L, a.H = c.H, a.Hkv = c.Hkv, a.D = c.D;
  a.q = dq, a.k = dk, a.v = dv, a.out = dout, a.lse = dlse, a.scale = c.scale;
  lizard::cuda::flash_attention_fwd(a);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint16_t> ho(nq);
  std::vector<float> lse(size_t(c.B) * c.H * c.L);
  cudaMemcpy(ho.data(), dout, nq * 2, cudaMemcpyDeviceToHost);
  cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost);
  const float scale = c.scale > 0 ? c.scale : 1.f / std::sqrt(float(c.D));
  double num = 0, den = 0, lerr = 0;
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h)
      for (int i = 0; i < c.L; ++i) {
        const float* qi = fq.data() + ((size_t(b) * c.L + i) * c.H + h) * c.D;
        const size_t kvh = h / (c.H / c.Hkv);
        double mx = -INFINITY;
        std::vector<double> s(i + 1);
        for (int t = 0; t <= i; ++t) {
          const float* kt = fk.data() + ((size_t(b) * c.L + t) * c.Hkv + kvh) * c.D;
          double d = 0;
          for (int e = 0; e < c.D; ++e) d += double(qi[e]) * kt[e];
          s[t] = d * scale;
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int e = 0; e < c.D; ++e) {
          double r = 0;
          for (int t = 0; t <= i; ++t) r += s[t] * fv[((size_t(b) * c.L + t) * c.Hkv + kvh) * c.D + e];
          r /= sum;
          const double o = lizard::bf16_to_f32(ho[((size_t(b) * c.L + i) * c.H + h) * c.D + e]);
          num += (o - r) * (o - r);
          den += r * r;
        }
        lerr = std::max(lerr, std::fabs(lse[(size_t(b) * c.H + h) * c.L + i] - (mx + std::log(sum))));
      }
  const double e = std::sqrt(num / den);
  std::printf("[flash-cuda] fwd B%d L%d H%d Hkv%d D%d scale %g: out rel err %.2e, lse max abs err %.2e (seed %llu)\n",
              c.B, c.L, c.H, c.Hkv, c.D, double(scale), e, lerr, (unsigned long long)seed);
  EXPECT_LT(e, 1e-2);
  // The kernel's row sum adds the bf16-rounded probabilities that also weight V (so out is
  // normalised consistently); lse carries their rounding, ~2^-9 relative per term.
  EXPECT_LT(lerr, 3e-3);
  cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dlse);
}

TEST(FlashCuda, CausalGqaMatchesCpu) {
  for (FwdCase c : {FwdCase{2, 200, 6, 2, 64}, FwdCase{1, 131, 4, 4, 128}, FwdCase{1, 64, 2, 1, 128},
                    FwdCase{3, 7, 3, 1, 64}, FwdCase{1, 300, 4, 2, 128}, FwdCase{2, 129, 3, 1, 64}})
    check_fwd_case(c);
}

// The wgmma forward (CTAs of 2 warpgroups x 64 query rows, 64-key blocks at D 128, 128-key at D 64):
// lengths around every tile edge (1, 17, 63/64/65, 127/128/129, 191/192/193) and long ones, both head
// dims, GQA, and an explicit scale.
TEST(FlashCuda, WgmmaForwardOddLengths) {
  for (int D : {64, 128})
    for (int L : {1, 17, 63, 64, 65, 127, 128, 129, 191, 192, 193, 1000}) check_fwd_case(FwdCase{2, L, 6, 2, D});
  check_fwd_case(FwdCase{1, 333, 9, 3, 64, 0.3f});
  check_fwd_case(FwdCase{1, 257, 4, 1, 128, 0.05f});
}

// Backward: GPU forward (out, lse), then GPU backward, against a double-precision reference of the
// gradients on the same bf16-valued inputs. Outputs are poisoned (NaN bf16) before the run.
#define CK(x) ASSERT_EQ((x), cudaSuccess) << #x
struct BwdCase {
  int B, L, H, Hkv, D;
};

void run_backward_case(BwdCase c, double tol) {
  const uint64_t seed = fresh_seed();
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  const size_t nq = size_t(c.B) * c.L * c.H * c.D, nk = size_t(c.B) * c.L * c.Hkv * c.D;
  const size_t nl = size_t(c.B) * c.H * c.L;
  std::vector<uint16_t> hq(nq), hk(nk), hv(nk), hdo(nq);
  std::vector<float> fq(nq), fk(nk), fv(nk), fdo(nq);
  auto fill = [&](std::vector<uint16_t>& h, std::vector<float>& f, float sd) {
    for (size_t i = 0; i < h.size(); ++i) h[i] = lizard::f32_to_bf16(sd * nd(g)), f[i] = lizard::bf16_to_f32(h[i]);
  };
  fill(hq, fq, 1.5f);
  fill(hk, fk, 1.5f);
  fill(hv, fv, 1.f);
  fill(hdo, fdo, 1.f);
  void *dq, *dk, *dv, *dout, *ddo, *gq, *gk, *gv;
  float *dlse, *ddelta;
  CK(cudaMalloc(&dq, nq * 2));
  CK(cudaMalloc(&dk, nk * 2));
  CK(cudaMalloc(&dv, nk * 2));
  CK(cudaMalloc(&dout, nq * 2));
  CK(cudaMalloc(&ddo, nq * 2));
  CK(cudaMalloc(&gq, nq * 2));
  CK(cudaMalloc(&gk, nk * 2));
  CK(cudaMalloc(&gv, nk * 2));
  CK(cudaMalloc(&dlse, nl * 4));
  CK(cudaMalloc(&ddelta, nl * 4));
  CK(cudaMemcpy(dq, hq.data(), nq * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dk, hk.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dv, hv.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(ddo, hdo.data(), nq * 2, cudaMemcpyHostToDevice));
  CK(cudaMemset(dout, 0xff, nq * 2));
  CK(cudaMemset(dlse, 0xff, nl * 4));
  CK(cudaMemset(ddelta, 0xff, nl * 4));
  CK(cudaMemset(gq, 0xff, nq * 2));
  CK(cudaMemset(gk, 0xff, nk * 2));
  CK(cudaMemset(gv, 0xff, nk * 2));
  lizard::cuda::FlashArgs a;
  a.B = c.B, a.L = c.L, a.H = c.H, a.Hkv = c.Hkv, a.D = c.D;
  a.q = dq, a.k = dk, a.v = dv, a.out = dout, a.lse = dlse;
  lizard::cuda::flash_attention_fwd(a);
  CK(cudaDeviceSynchronize());
  lizard::cuda::FlashBwdArgs ba;
  ba.B = c.B, ba.L = c.L, ba.H = c.H, ba.Hkv = c.Hkv, ba.D = c.D;
  ba.q = dq, ba.k = dk, ba.v = dv, ba.out = dout, ba.dout = ddo, ba.lse = dlse;
  ba.dq = gq, ba.dk = gk, ba.dv = gv, ba.delta = ddelta;
  lizard::cuda::flash_attention_bwd(ba);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  std::vector<uint16_t> hgq(nq), hgk(nk), hgv(nk);
  CK(cudaMemcpy(hgq.data(), gq, nq * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(hgk.data(), gk, nk * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(hgv.data(), gv, nk * 2, cudaMemcpyDeviceToHost));
  // double reference
  const double scale = 1.0 / std::sqrt(double(c.D));
  std::vector<double> rq(nq, 0.0), rk(nk, 0.0), rv(nk, 0.0);
  std::vector<double> p(c.L), dp(c.L);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      const size_t kvh = h / (c.H / c.Hkv);
      for (int i = 0; i < c.L; ++i) {
        const size_t qoff = ((size_t(b) * c.L + i) * c.H + h) * c.D;
        double mx = -INFINITY;
        for (int t = 0; t <= i; ++t) {
          const size_t koff = ((size_t(b) * c.L + t) * c.Hkv + kvh) * c.D;
          double d = 0, e2 = 0;
          for (int e = 0; e < c.D; ++e) d += double(fq[qoff + e]) * fk[koff + e], e2 += double(fdo[qoff + e]) * fv[koff + e];
          p[t] = d * scale, dp[t] = e2;
          mx = std::max(mx, p[t]);
        }
        double sum = 0;
        for (int t = 0; t <= i; ++t) sum += (p[t] = std::exp(p[t] - mx));
        double delta = 0;
        for (int t = 0; t <= i; ++t) p[t] /= sum, delta += p[t] * dp[t];
        for (int t = 0; t <= i; ++t) {
          const size_t koff = ((size_t(b) * c.L + t) * c.Hkv + kvh) * c.D;
          const double ds = p[t] * (dp[t] - delta) * scale;
          for (int e = 0; e < c.D; ++e) {
            rq[qoff + e] += ds * fk[koff + e];
            rk[koff + e] += ds * fq[qoff + e];
            rv[koff + e] += p[t] * fdo[qoff + e];
          }
        }
      }
    }
  auto rel = [](const std::vector<uint16_t>& got, const std::vector<double>& ref, double& maxrel, size_t& nonfinite) {
    double num = 0, den = 0, mref = 0, merr = 0;
    nonfinite = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double x = lizard::bf16_to_f32(got[i]);
      if (!std::isfinite(x)) ++nonfinite;
      num += (x - ref[i]) * (x - ref[i]), den += ref[i] * ref[i];
      mref = std::max(mref, std::fabs(ref[i])), merr = std::max(merr, std::fabs(x - ref[i]));
    }
    maxrel = merr / std::max(mref, 1e-30);
    return std::sqrt(num / std::max(den, 1e-300));
  };
  double mq, mk, mv;
  size_t nfq, nfk, nfv;
  const double eq = rel(hgq, rq, mq, nfq), ek = rel(hgk, rk, mk, nfk), ev = rel(hgv, rv, mv, nfv);
  std::printf("[flash-cuda-bwd] B%d L%d H%d Hkv%d D%d: rel err dq %.2e dk %.2e dv %.2e | max abs err / max |ref|: "
              "dq %.2e dk %.2e dv %.2e (seed %llu)\n",
              c.B, c.L, c.H, c.Hkv, c.D, eq, ek, ev, mq, mk, mv, (unsigned long long)seed);
  EXPECT_EQ(nfq + nfk + nfv, 0u) << "non-finite gradients (unwritten poison?)";
  EXPECT_LT(eq, tol);
  EXPECT_LT(ek, tol);
  EXPECT_LT(ev, tol);
  EXPECT_LT(mq, 5 * tol);
  EXPECT_LT(mk, 5 * tol);
  EXPECT_LT(mv, 5 * tol);
  for (void* x : {dq, dk, dv, dout, ddo, gq, gk, gv}) CK(cudaFree(x));
  CK(cudaFree(dlse));
  CK(cudaFree(ddelta));
}

TEST(FlashCuda, BackwardVsCpu) {
  for (BwdCase c : {BwdCase{2, 200, 6, 2, 64}, BwdCase{1, 131, 4, 4, 128}, BwdCase{1, 64, 2, 1, 128},
                    BwdCase{3, 7, 3, 1, 64}, BwdCase{1, 257, 8, 2, 128}, BwdCase{2, 129, 9, 3, 64}}) {
    run_backward_case(c, 2e-2);
  }
}

// Small enough for compute-sanitizer memcheck / racecheck (scripts/device_cuda.sh run).
TEST(FlashCuda, SanitizerSmallBackward) {
  run_backward_case(BwdCase{1, 70, 2, 1, 64}, 2e-2);
  run_backward_case(BwdCase{1, 65, 2, 2, 128}, 2e-2);
}

// Lengths around the backward's 64-row tile edges, both head dims, GQA.
TEST(FlashCuda, BackwardOddLengths) {
  for (int D : {64, 128})
    for (int L : {17, 63, 64, 65, 127, 128, 129, 193}) run_backward_case(BwdCase{1, L, 6, 2, D}, 2e-2);
}

TEST(FlashCuda, BackwardRefusesBadArgs) {
  lizard::cuda::FlashBwdArgs ba;
  ba.B = 1, ba.L = 8, ba.H = 2, ba.Hkv = 1, ba.D = 64;
  EXPECT_ANY_THROW(lizard::cuda::flash_attention_bwd(ba));  // null pointers
}

}  // namespace
