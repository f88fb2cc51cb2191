// Flash attention (causal, GQA) on the GPU against a double-precision reference (output and lse),
// fresh random bf16-valued inputs of odd lengths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "ops/cuda/flash_attention.h"
#include "util/half.h"

namespace {

TEST(FlashCuda, CausalGqaMatchesCpu) {
  struct C {
    int B, L, H, Hkv, D;
  };
  for (C c : {C{2, 200, 6, 2, 64}, C{1, 131, 4, 4, 128}, C{1, 64, 2, 1, 128}, C{3, 7, 3, 1, 64}}) {
    std::random_device rd;
    const uint64_t seed = (uint64_t(rd()) << 32) ^ rd();
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
    a.q = dq, a.k = dk, a.v = dv, a.out = dout, a.lse = dlse;
    lizard::cuda::flash_attention_fwd(a);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<uint16_t> ho(nq);
    std::vector<float> lse(size_t(c.B) * c.H * c.L);
    cudaMemcpy(ho.data(), dout, nq * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost);
    const float scale = 1.f / std::sqrt(float(c.D));
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
    std::printf("[flash-cuda] B%d L%d H%d Hkv%d D%d: out rel err %.2e, lse max abs err %.2e (seed %llu)\n", c.B, c.L,
                c.H, c.Hkv, c.D, e, lerr, (unsigned long long)seed);
    EXPECT_LT(e, 1e-2);
    EXPECT_LT(lerr, 1e-3);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dlse);
  }
}

}  // namespace
