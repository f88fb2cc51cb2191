// Fused teacher kernels (ops/cuda/fused_ops.h) against the CPU ops and double-precision references
// on fresh random inputs of odd sizes; backward references checked by finite differences first.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"
#include "ops/cuda/fused_ops.h"
#include "util/half.h"
#include "gpu_test_util.h"

namespace {

using lizard::cuda::DType;
using lizard::testing::Buf;
using lizard::testing::fresh_seed;

std::vector<double> rnd(size_t n, std::mt19937_64& g, double sd = 1.0, bool round = false) {
  std::normal_distribution<double> nd(0.0, sd);
  std::vector<double> v(n);
  for (auto& e : v) e = round ? lizard::bf16_to_f32(lizard::f32_to_bf16(float(nd(g)))) : nd(g);
  return v;
}

double rel(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Directional finite difference of a scalar function f(x) . r against the analytic gradient.
void fd_check(const std::function<double(const std::vector<double>&)>& loss, const std::vector<double>& x,
              const std::vector<double>& grad, std::mt19937_64& g) {
  std::vector<double> dir = rnd(x.size(), g), xp = x, xm = x;
  const double h = 1e-5;
  double an = 0;
  for (size_t i = 0; i < x.size(); ++i) xp[i] += h * dir[i], xm[i] -= h * dir[i], an += grad[i] * dir[i];
  const double fd = (loss(xp) - loss(xm)) / (2 * h);
  EXPECT_NEAR(fd, an, 1e-6 * std::max(1.0, std::fabs(an)));
}

const DType kTypes[] = {DType::F32, DType::BF16};
double tol(DType t) { return t == DType::F32 ? 2e-6 : 1.5e-2; }
const char* name(DType t) { return t == DType::F32 ? "f32 " : "bf16"; }

TEST(FusedCuda, RmsNorm) {
  const uint64_t seed = fresh_seed();
  std::mt19937_64 g(seed);
  const int rows = 37, dim = 1000;
  const float eps = 1e-5f;
  for (DType t : kTypes) {
    const bool r = t == DType::BF16;
    auto x = rnd(size_t(rows) * dim, g, 1.0, r), w = rnd(dim, g, 0.5, r), dy = rnd(size_t(rows) * dim, g, 1.0, r);
    for (auto& e : w) e += 1.0;
    // double references: y, dx, dw
    std::vector<double> y(x.size()), dx(x.size()), dw(dim, 0.0);
    auto fwd = [&](const std::vector<double>& xx, std::vector<double>& yy) {
      for (int i = 0; i < rows; ++i) {
        double ss = 0;
        for (int j = 0; j < dim; ++j) ss += xx[i * dim + j] * xx[i * dim + j];
        const double inv = 1.0 / std::sqrt(ss / dim + eps);
        for (int j = 0; j < dim; ++j) yy[i * dim + j] = xx[i * dim + j] * inv * w[j];
      }
    };
    fwd(x, y);
    for (int i = 0; i < rows; ++i) {
      double ss = 0, gx = 0;
      for (int j = 0; j < dim; ++j) ss += x[i * dim + j] * x[i * dim + j], gx += dy[i * dim + j] * w[j] * x[i * dim + j];
      const double inv = 1.0 / std::sqrt(ss / dim + eps);
      for (int j = 0; j < dim; ++j) {
        dx[i * dim + j] = inv * dy[i * dim + j] * w[j] - x[i * dim + j] * inv * inv * inv * gx / dim;
        dw[j] += dy[i * dim + j] * x[i * dim + j] * inv;
      }
    }
    if (t == DType::F32) {
      fd_check([&](const std::vector<double>& xx) {
        std::vector<double> yy(xx.size());
        fwd(xx, yy);
        double s = 0;
        for (size_t i = 0; i < yy.size(); ++i) s += yy[i] * dy[i];
        return s;
      }, x, dx, g);
      // and the CPU op agrees with the double reference
      std::vector<float> xf(x.begin(), x.end()), wf(w.begin(), w.end()), yf(x.size());
      lizard::rmsnorm(xf.data(), wf.data(), yf.data(), rows, dim, eps);
      EXPECT_LT(rel(std::vector<double>(yf.begin(), yf.end()), y), 1e-6);
    }
    Buf bx(t, x), bw(t, w), by(t, x.size()), bdy(t, dy), bdx(t, x.size()), rstd(DType::F32, rows), bdw(DType::F32, dim);
    lizard::cuda::rmsnorm_fwd(t, bx.p, bw.p, by.p, rstd.f(), rows, dim, eps);
    lizard::cuda::rmsnorm_bwd(t, bx.p, bw.p, rstd.f(), bdy.p, bdx.p, bdw.f(), rows, dim);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const double ey = rel(by.get(), y), edx = rel(bdx.get(), dx), edw = rel(bdw.get(), dw);
    std::printf("[fused-cuda] rmsnorm %s rows %d dim %d: y %.2e dx %.2e dw %.2e (seed %llu)\n", name(t), rows, dim, ey,
                edx, edw, (unsigned long long)seed);
    EXPECT_LT(ey, tol(t));
    EXPECT_LT(edx, tol(t));
    EXPECT_LT(edw, t == DType::F32 ? 1e-5 : 1.5e-2);
  }
}

TEST(FusedCuda, SwiGLU) {
  const uint64_t seed = fresh_seed();
  std::mt19937_64 g(seed);
  const int n = 100003;
  for (DType t : kTypes) {
    const bool r = t == DType::BF16;
    auto a = rnd(n, g, 2.0, r), u = rnd(n, g, 1.0, r), d = rnd(n, g, 1.0, r);
    std::vector<double> o(n), da(n), du(n);
    for (int i = 0; i < n; ++i) {
      const double s = 1.0 / (1.0 + std::exp(-a[i]));
      o[i] = a[i] * s * u[i];
      da[i] = d[i] * u[i] * s * (1 + a[i] * (1 - s));
      du[i] = d[i] * a[i] * s;
    }
    if (t == DType::F32) {
      fd_check([&](const std::vector<double>& aa) {
        double sum = 0;
        for (int i = 0; i < n; ++i) sum += aa[i] / (1.0 + std::exp(-aa[i])) * u[i] * d[i];
        return sum;
      }, a, da, g);
      std::vector<float> af(a.begin(), a.end()), uf(u.begin(), u.end()), of(n);
      lizard::swiglu(af.data(), uf.data(), of.data(), n);
      EXPECT_LT(rel(std::vector<double>(of.begin(), of.end()), o), 1e-6);
    }
    Buf ba(t, a), bu(t, u), bo(t, n), bd(t, d), bda(t, n), bdu(t, n);
    lizard::cuda::swiglu_fwd(t, ba.p, bu.p, bo.p, n);
    lizard::cuda::swiglu_bwd(t, ba.p, bu.p, bd.p, bda.p, bdu.p, n);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const double e0 = rel(bo.get(), o), e1 = rel(bda.get(), da), e2 = rel(bdu.get(), du);
    std::printf("[fused-cuda] swiglu %s n %d: out %.2e dgate %.2e dup %.2e\n", name(t), n, e0, e1, e2);
    EXPECT_LT(e0, tol(t));
    EXPECT_LT(e1, tol(t));
    EXPECT_LT(e2, tol(t));
  }
}

TEST(FusedCuda, RopeMatchesCpuAndInverts) {
  const uint64_t seed = fresh_seed();
  std::mt19937_64 g(seed);
  const int n = 45, heads = 3, hd = 64, pos0 = 1777;
  const int64_t stride = heads * hd + 5;  // rows with padding
  std::vector<float> inv = lizard::rope_inv_freq(hd, 500000.f, {});
  float* dinv = nullptr;
  ASSERT_EQ(cudaMalloc(&dinv, inv.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dinv, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  auto x = rnd(size_t(n) * stride, g);
  std::vector<float> xf(x.begin(), x.end());
  lizard::rope_apply(xf.data(), n, stride, heads, hd, pos0, inv.data());
  std::vector<double> ref(xf.begin(), xf.end());
  Buf bx(DType::F32, x);
  lizard::cuda::rope_apply(DType::F32, bx.p, n, stride, heads, hd, pos0, dinv, false);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const double e = rel(bx.get(), ref);
  lizard::cuda::rope_apply(DType::F32, bx.p, n, stride, heads, hd, pos0, dinv, true);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const double ei = rel(bx.get(), x);
  std::printf("[fused-cuda] rope f32 vs CPU %.2e, inverse round trip %.2e (seed %llu)\n", e, ei,
              (unsigned long long)seed);
  EXPECT_LT(e, 1e-6);
  EXPECT_LT(ei, 1e-6);
  cudaFree(dinv);
}

TEST(FusedCuda, EmbeddingAndCrossEntropy) {
  const uint64_t seed = fresh_seed();
  std::mt19937_64 g(seed);
  const int vocab = 1031, dim = 77, n = 300;
  std::vector<int32_t> ids(n), tgt(n);
  std::uniform_int_distribution<int> ui(0, vocab - 1);
  for (int i = 0; i < n; ++i) ids[i] = ui(g), tgt[i] = i % 17 == 0 ? -1 : ui(g);
  int32_t *dids = nullptr, *dtgt = nullptr;
  ASSERT_EQ(cudaMalloc(&dids, n * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dtgt, n * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dids, ids.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dtgt, tgt.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
  for (DType t : kTypes) {
    const bool r = t == DType::BF16;
    auto table = rnd(size_t(vocab) * dim, g, 1.0, r), dout = rnd(size_t(n) * dim, g, 1.0, r);
    for (auto& x : table) x = static_cast<float>(x);  // a float table holds float values: the copy is exact
    std::vector<double> out(size_t(n) * dim), dtab(size_t(vocab) * dim, 0.0);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < dim; ++j) {
        out[size_t(i) * dim + j] = table[size_t(ids[i]) * dim + j];
        dtab[size_t(ids[i]) * dim + j] += dout[size_t(i) * dim + j];
      }
    Buf bt(t, table), bo(t, out.size()), bd(t, dout), bdt(DType::F32, dtab.size());
    lizard::cuda::embedding_fwd(t, bt.p, dids, bo.p, n, dim);
    lizard::cuda::embedding_bwd(t, bd.p, dids, bdt.f(), n, vocab, dim);
    // cross-entropy over logits [n, vocab]
    auto logits = rnd(size_t(n) * vocab, g, 3.0, r), dl = rnd(n, g);
    std::vector<double> loss(n), grad(logits.size());
    for (int i = 0; i < n; ++i) {
      const double* z = logits.data() + size_t(i) * vocab;
      double mx = -INFINITY, s = 0;
      for (int j = 0; j < vocab; ++j) mx = std::max(mx, z[j]);
      for (int j = 0; j < vocab; ++j) s += std::exp(z[j] - mx);
      const double lse = mx + std::log(s);
      loss[i] = tgt[i] >= 0 ? lse - z[tgt[i]] : 0.0;
      for (int j = 0; j < vocab; ++j)
        grad[size_t(i) * vocab + j] = tgt[i] >= 0 ? dl[i] * (std::exp(z[j] - lse) - (j == tgt[i])) : 0.0;
    }
    Buf bl(t, logits), bloss(DType::F32, n), blse(DType::F32, n), bdl(DType::F32, dl), bg(t, logits.size());
    lizard::cuda::cross_entropy_fwd(t, bl.p, dtgt, bloss.f(), blse.f(), n, vocab);
    lizard::cuda::cross_entropy_bwd(t, bl.p, dtgt, blse.f(), bdl.f(), bg.p, n, vocab);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const double e0 = rel(bo.get(), out), e1 = rel(bdt.get(), dtab), e2 = rel(bloss.get(), loss),
                 e3 = rel(bg.get(), grad);
    std::printf("[fused-cuda] embedding %s fwd %.2e bwd %.2e; cross-entropy loss %.2e dlogits %.2e (seed %llu)\n",
                name(t), e0, e1, e2, e3, (unsigned long long)seed);
    EXPECT_EQ(e0, 0.0);
    EXPECT_LT(e1, 1e-6);
    EXPECT_LT(e2, 1e-5);
    EXPECT_LT(e3, tol(t));
  }
  cudaFree(dids);
  cudaFree(dtgt);
}

}  // namespace
