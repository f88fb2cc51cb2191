// The shared GPU building blocks against CPU double-precision references on fresh random inputs of odd
// sizes: cuBLASLt GEMM (ops/cuda/gemm.h), the Lizard gate (ops/cuda/lizard_gate.h, reference backward
// checked by finite differences first), teacher weights on the GPU (model/cuda/device_weights.h, with
// and without LoRA) and split-K decode attention against a KV cache (ops/cuda/attention_decode.h).
// Each case prints one "[cuda-core] ..." line with its figure.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "../llama_fixture.h"
#include "gpu_test_util.h"
#include "model/cuda/device_weights.h"
#include "ops/cpu/rope.h"
#include "ops/cuda/attention_decode.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/lizard_gate.h"
#include "util/half.h"

namespace {

using lizard::cuda::DType;
using lizard::testing::Buf;
using lizard::testing::bf16r;
using lizard::testing::fresh_seed;

std::vector<double> rnd(size_t n, std::mt19937_64& g, double lo = -1, double hi = 1, bool bf16 = true) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<double> v(n);
  for (auto& e : v) e = bf16 ? bf16r(u(g)) : double(float(u(g)));
  return v;
}

void sync_ok() { ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess); }

// ---------------------------------------------------------------------------------------------- GEMM
// Error of D against the double reference, scaled by what the sum could lose: sum_k |a||b| (+ |beta C|)
// for the fp32 accumulation, plus a bf16 rounding of the result for bf16 outputs.
TEST(CudaCore, Gemm) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  struct Shape {
    int64_t M, N, K;
  };
  const Shape shapes[] = {{1, 7, 77}, {77, 130, 515}, {130, 1, 7}, {515, 77, 130}, {7, 515, 1}, {1, 1, 1}};
  for (const Shape& sh : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (DType dt : {DType::F32, DType::BF16})
          for (int mode = 0; mode < 3; ++mode) {  // 0: D = AB, 1: D += AB (C = D), 2: D = 0.5 AB - 2 C (C != D)
            const auto [M, N, K] = sh;
            const std::vector<double> a = rnd(size_t(M * K), g), b = rnd(size_t(K * N), g);
            std::vector<double> c0 = rnd(size_t(M * N), g, -1, 1, dt == DType::BF16);
            Buf A(DType::BF16, a), B(DType::BF16, b), D(dt, c0), C(dt, rnd(size_t(M * N), g, -1, 1, dt == DType::BF16));
            const std::vector<double> c_other = C.get();
            const float alpha = mode == 2 ? 0.5f : 1.f, beta = mode == 0 ? 0.f : (mode == 1 ? 1.f : -2.f);
            const void* cptr = mode == 0 ? nullptr : (mode == 1 ? D.p : C.p);
            lizard::cuda::gemm(ta, tb, M, N, K, A.p, B.p, dt, D.p, cptr, alpha, beta);
            sync_ok();
            const std::vector<double> d = D.get();
            const std::vector<double>& cin = mode == 1 ? c0 : c_other;
            double worst = 0;
            for (int64_t i = 0; i < M; ++i)
              for (int64_t j = 0; j < N; ++j) {
                double s = 0, mag = 0;
                for (int64_t k = 0; k < K; ++k) {
                  const double av = ta ? a[size_t(k * M + i)] : a[size_t(i * K + k)];
                  const double bv = tb ? b[size_t(j * K + k)] : b[size_t(k * N + j)];
                  s += av * bv;
                  mag += std::fabs(av * bv);
                }
                double ref = alpha * s;
                mag *= std::fabs(alpha);
                if (mode != 0) {
                  ref += beta * cin[size_t(i * N + j)];
                  mag += std::fabs(beta * cin[size_t(i * N + j)]);
                }
                const double err = std::fabs(d[size_t(i * N + j)] - ref);
                const double allowed = 2e-5 * mag + (dt == DType::BF16 ? std::ldexp(std::fabs(ref), -8) * 1.01 : 0.0);
                worst = std::max(worst, err / std::max(allowed, 1e-30));
                if (!(err <= allowed + 1e-30)) {
                  ADD_FAILURE() << "gemm ta " << ta << " tb " << tb << " M " << M << " N " << N << " K " << K
                                << " mode " << mode << " at (" << i << ", " << j << "): " << d[size_t(i * N + j)]
                                << " vs " << ref;
                  return;
                }
              }
            std::printf("[cuda-core] gemm ta %d tb %d M %lld N %lld K %lld out %s mode %s: max err / bound %.3f\n", ta,
                        tb, (long long)M, (long long)N, (long long)K, dt == DType::F32 ? "f32" : "bf16",
                        mode == 0 ? "D=AB" : (mode == 1 ? "D+=AB" : "D=.5AB-2C"), worst);
          }
}

// linear_fwd with a bias, and the two backward products, against double references.
TEST(CudaCore, Linear) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  const int64_t rows = 37;
  const int in = 130, out = 77;
  const std::vector<double> x = rnd(size_t(rows * in), g), w = rnd(size_t(out * in), g), bias = rnd(size_t(out), g),
                            dy = rnd(size_t(rows * out), g);
  Buf X(DType::BF16, x), W(DType::BF16, w), Bi(DType::BF16, bias), DY(DType::BF16, dy);
  Buf Y(DType::F32, size_t(rows * out)), DX(DType::F32, size_t(rows * in)), DW(DType::F32, size_t(out * in));
  lizard::cuda::linear_fwd(X.p, W.p, Bi.p, Y.p, DType::F32, rows, in, out);
  lizard::cuda::linear_bwd_input(DY.p, W.p, DX.p, DType::F32, rows, in, out);
  lizard::cuda::linear_bwd_weight(DY.p, X.p, DW.p, DType::F32, rows, in, out);
  sync_ok();
  const std::vector<double> y = Y.get(), dx = DX.get(), dw = DW.get();
  double ey = 0, edx = 0, edw = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double s = bias[size_t(o)];
      for (int i = 0; i < in; ++i) s += x[size_t(r * in + i)] * w[size_t(o * in + i)];
      ey = std::max(ey, std::fabs(y[size_t(r * out + o)] - s));
    }
  for (int64_t r = 0; r < rows; ++r)
    for (int i = 0; i < in; ++i) {
      double s = 0;
      for (int o = 0; o < out; ++o) s += dy[size_t(r * out + o)] * w[size_t(o * in + i)];
      edx = std::max(edx, std::fabs(dx[size_t(r * in + i)] - s));
    }
  for (int o = 0; o < out; ++o)
    for (int i = 0; i < in; ++i) {
      double s = 0;
      for (int64_t r = 0; r < rows; ++r) s += dy[size_t(r * out + o)] * x[size_t(r * in + i)];
      edw = std::max(edw, std::fabs(dw[size_t(o * in + i)] - s));
    }
  std::printf("[cuda-core] linear rows %lld in %d out %d: max abs err fwd(+bias) %.2e bwd_input %.2e bwd_weight %.2e\n",
              (long long)rows, in, out, ey, edx, edw);
  EXPECT_LT(ey, 1e-4);
  EXPECT_LT(edx, 1e-4);
  EXPECT_LT(edw, 1e-4);
}

// ---------------------------------------------------------------------------------------------- gate
struct GateRef {
  int64_t T;
  int d, G;
  std::vector<double> xn, w, b;
  std::vector<double> z() const {
    std::vector<double> z(size_t(T * G));
    for (int64_t t = 0; t < T; ++t)
      for (int gg = 0; gg < G; ++gg) {
        double s = b[size_t(gg)];
        for (int j = 0; j < d; ++j) s += xn[size_t(t * d + j)] * w[size_t(gg * d + j)];
        z[size_t(t * G + gg)] = s;
      }
    return z;
  }
  static double logsigmoid(double z) { return std::min(z, 0.0) - std::log1p(std::exp(-std::fabs(z))); }
  std::vector<double> fwd() const {
    std::vector<double> lg = z();
    for (auto& v : lg) v = logsigmoid(v);
    return lg;
  }
  // dlg -> dxn (pure gradient, not accumulated), dw, db.
  void bwd(const std::vector<double>& dlg, std::vector<double>& dxn, std::vector<double>& dw,
           std::vector<double>& db) const {
    const std::vector<double> zz = z();
    dxn.assign(size_t(T * d), 0.0);
    dw.assign(size_t(G * d), 0.0);
    db.assign(size_t(G), 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int gg = 0; gg < G; ++gg) {
        const double dz = dlg[size_t(t * G + gg)] / (1.0 + std::exp(zz[size_t(t * G + gg)]));
        db[size_t(gg)] += dz;
        for (int j = 0; j < d; ++j) {
          dw[size_t(gg * d + j)] += dz * xn[size_t(t * d + j)];
          dxn[size_t(t * d + j)] += dz * w[size_t(gg * d + j)];
        }
      }
  }
};

double loss_of(const GateRef& r, const std::vector<double>& dlg) {
  const std::vector<double> lg = r.fwd();
  double s = 0;
  for (size_t i = 0; i < lg.size(); ++i) s += lg[i] * dlg[i];
  return s;
}

// Directional finite difference of loss(x) against grad . dir, in double.
void fd_check(const char* what, std::vector<double>& x, const std::vector<double>& grad, const GateRef& r,
              const std::vector<double>& dlg, std::mt19937_64& g) {
  const std::vector<double> dir = rnd(x.size(), g, -1, 1, false), x0 = x;
  const double h = 1e-5;
  double an = 0;
  for (size_t i = 0; i < x.size(); ++i) an += grad[i] * dir[i];
  for (size_t i = 0; i < x.size(); ++i) x[i] = x0[i] + h * dir[i];
  const double lp = loss_of(r, dlg);
  for (size_t i = 0; i < x.size(); ++i) x[i] = x0[i] - h * dir[i];
  const double lm = loss_of(r, dlg);
  x = x0;
  const double fd = (lp - lm) / (2 * h);
  EXPECT_NEAR(fd, an, 1e-6 * std::max(1.0, std::fabs(an))) << what;
}

TEST(CudaCore, LizardGate) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  struct Case {
    int64_t T;
    int d, G;
  };
  for (const Case& c : {Case{1, 7, 1}, Case{77, 130, 1}, Case{515, 96, 9}, Case{1000, 515, 4}, Case{3, 64, 32}}) {
    GateRef r{c.T, c.d, c.G, rnd(size_t(c.T * c.d), g, -2, 2), rnd(size_t(c.G * c.d), g, -0.3, 0.3, false),
              rnd(size_t(c.G), g, 0, 4, false)};
    const std::vector<double> dlg = rnd(size_t(c.T * c.G), g, -1, 1, false);
    std::vector<double> rdxn, rdw, rdb;
    r.bwd(dlg, rdxn, rdw, rdb);
    if (c.T * c.d <= 100000) {  // the reference backward, by finite differences
      GateRef fr = r;
      fd_check("dw", fr.w, rdw, fr, dlg, g);
      fd_check("db", fr.b, rdb, fr, dlg, g);
      fd_check("dxn", fr.xn, rdxn, fr, dlg, g);
    }
    const std::vector<double> lg_ref = r.fwd();
    const std::vector<double> dxn0 = rnd(size_t(c.T * c.d), g);
    Buf X(DType::BF16, r.xn), W(DType::F32, r.w), Bg(DType::F32, r.b), LG(DType::F32, size_t(c.T * c.G)),
        DLG(DType::F32, dlg), DW(DType::F32, rnd(size_t(c.G * c.d), g)), DB(DType::F32, rnd(size_t(c.G), g)),
        DX(DType::BF16, dxn0);
    lizard::cuda::lizard_gate_fwd(X.p, W.f(), Bg.f(), LG.f(), c.T, c.d, c.G);
    lizard::cuda::lizard_gate_bwd(X.p, W.f(), Bg.f(), DLG.f(), DW.f(), DB.f(), DX.p, c.T, c.d, c.G);
    sync_ok();
    const std::vector<double> lg = LG.get(), dw = DW.get(), db = DB.get(), dx = DX.get();
    auto max_rel = [](const std::vector<double>& a, const std::vector<double>& b) {
      double m = 0, scale = 0;
      for (double v : b) scale = std::max(scale, std::fabs(v));
      for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
      return m / std::max(scale, 1e-30);
    };
    std::vector<double> dx_ref(dxn0.size());
    for (size_t i = 0; i < dx_ref.size(); ++i) dx_ref[i] = dxn0[i] + rdxn[i];
    const double e_lg = max_rel(lg, lg_ref), e_dw = max_rel(dw, rdw), e_db = max_rel(db, rdb),
                 e_dx = max_rel(dx, dx_ref);
    std::printf("[cuda-core] gate T %lld d %d G %d: max rel err log_gamma %.2e dw %.2e db %.2e dxn(+=, bf16) %.2e\n",
                (long long)c.T, c.d, c.G, e_lg, e_dw, e_db, e_dx);
    EXPECT_LT(e_lg, 1e-5);
    EXPECT_LT(e_dw, 1e-5);
    EXPECT_LT(e_db, 1e-5);
    EXPECT_LT(e_dx, 1e-2);
  }
}

// ---------------------------------------------------------------------------------------------- weights
// Every uploaded tensor, downloaded back, equals the CPU-decoded value rounded to bf16 (tolerance: one
// bf16 rounding of fp32 decode differences); LoRA-merged q/k/v equal W + (alpha / rank) B A.
void check_teacher(bool tied, bool bias, bool with_lora) {
  using namespace lizard;
  lizard::testing::Seeded s;
  SCOPED_TRACE(s.trace());
  lizard::testing::TinySpec sp;
  sp.d = 64, sp.heads = 4, sp.kv_heads = 2, sp.head_dim = 16, sp.ff = 96, sp.vocab = 97, sp.layers = 2;
  sp.tied = tied, sp.qkv_bias = bias;
  sp.weight_type = lizard::DType::Q8_0;
  sp.embd_type = lizard::DType::F16;
  const lizard::testing::TinyModel m = lizard::testing::make_tiny(s, sp);
  LoraSet lora;
  if (with_lora) {
    lora.rank = 3;
    lora.alpha = 6;
    lora.targets = {"q", "v"};
    auto adapter = [&](int64_t out, int64_t in) {
      LoraAdapter a;
      a.a = s.vec(size_t(lora.rank * in), 0.3f);
      a.b = s.vec(size_t(out * lora.rank), 0.3f);
      return a;
    };
    lora.layers[0]["q"] = adapter(sp.heads * sp.head_dim, sp.d);
    lora.layers[1]["v"] = adapter(sp.kv_heads * sp.head_dim, sp.d);
  }
  cuda::TeacherWeights tw(*m.ck, with_lora ? &lora : nullptr);
  double worst = 0;
  int checked = 0;
  auto compare = [&](const std::string& name, const void* dev, int layer, const char* target) {
    ASSERT_NE(dev, nullptr) << name;
    const std::vector<float>& ref0 = m.w(name);
    std::vector<double> ref(ref0.begin(), ref0.end());
    const TensorView& v = m.ck->tensor(name);
    if (with_lora && target) {
      auto lit = lora.layers.find(layer);
      if (lit != lora.layers.end())
        if (auto ait = lit->second.find(target); ait != lit->second.end()) {
          const int64_t rows = v.rows(), cols = v.cols(), r = lora.rank;
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) {
              double acc = 0;
              for (int64_t k = 0; k < r; ++k) acc += double(ait->second.b[size_t(i * r + k)]) * ait->second.a[size_t(k * cols + j)];
              ref[size_t(i * cols + j)] += lora.scale() * acc;
            }
        }
    }
    const std::vector<double> got = Buf::download(DType::BF16, dev, ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      // + 1e-6: the fp32 merge of W + delta may cancel to a value near 0
      const double err = std::fabs(got[i] - ref[i]), allowed = std::ldexp(std::fabs(ref[i]), -8) * 1.01 + 1e-6;
      worst = std::max(worst, err / std::max(std::fabs(ref[i]), 1e-3));
      ASSERT_LE(err, allowed) << name << "[" << i << "]: " << got[i] << " vs " << ref[i];
    }
    ++checked;
  };
  compare("token_embd.weight", tw.embedding(), -1, nullptr);
  compare("output_norm.weight", tw.out_norm(), -1, nullptr);
  compare(tied ? "token_embd.weight" : "output.weight", tw.head().w, -1, nullptr);
  EXPECT_EQ(tw.head().out, sp.vocab);
  EXPECT_EQ(tw.head().in, sp.d);
  ASSERT_EQ(tw.n_layers(), sp.layers);
  for (int i = 0; i < sp.layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    const cuda::DeviceLayer& L = tw.layer(i);
    compare(p + "attn_norm.weight", L.attn_norm, i, nullptr);
    compare(p + "ffn_norm.weight", L.ffn_norm, i, nullptr);
    compare(p + "attn_q.weight", L.q.w, i, "q");
    compare(p + "attn_k.weight", L.k.w, i, "k");
    compare(p + "attn_v.weight", L.v.w, i, "v");
    compare(p + "attn_output.weight", L.o.w, i, nullptr);
    compare(p + "ffn_gate.weight", L.gate.w, i, nullptr);
    compare(p + "ffn_up.weight", L.up.w, i, nullptr);
    compare(p + "ffn_down.weight", L.down.w, i, nullptr);
    EXPECT_EQ(L.q.out, sp.heads * sp.head_dim);
    EXPECT_EQ(L.q.in, sp.d);
    EXPECT_EQ(L.down.in, sp.ff);
    EXPECT_EQ(L.down.out, sp.d);
    if (bias) {
      compare(p + "attn_q.bias", L.q.bias, i, nullptr);
      compare(p + "attn_k.bias", L.k.bias, i, nullptr);
      compare(p + "attn_v.bias", L.v.bias, i, nullptr);
    } else {
      EXPECT_EQ(L.q.bias, nullptr);
    }
  }
  const std::vector<float> f = rope_inv_freq(sp.head_dim, sp.rope_theta, sp.scaling);
  std::vector<float> fd(f.size());
  ASSERT_EQ(cudaMemcpy(fd.data(), tw.rope_inv_freq(), f.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (size_t i = 0; i < f.size(); ++i) EXPECT_EQ(fd[i], f[i]) << "rope_inv_freq[" << i << "]";
  std::printf("[cuda-core] teacher weights (tied %d, qkv bias %d, lora %d): %d tensors, max rel err %.2e (bf16 rounding "
              "<= 3.9e-3; |w| floored at 1e-3), %zu bytes\n",
              int(tied), int(bias), int(with_lora), checked, worst, tw.bytes());
}

TEST(CudaCore, TeacherWeights) {
  check_teacher(false, false, false);
  check_teacher(true, true, false);
  check_teacher(false, true, true);
}

TEST(CudaCore, LizardWeights) {
  using namespace lizard;
  LizardConfig c;
  c.feature_dim = 8;
  c.gate = LizardConfig::Gate::PerHead;
  c.meta_tokens = 3;
  LizardShape sh;
  sh.d_model = 64, sh.n_heads = 4, sh.n_kv_heads = 2, sh.head_dim = 16;
  LizardParams p = init_lizard_params(c, sh, fresh_seed(), 1);
  cuda::LizardWeights lw;
  EXPECT_EQ(lw.find(1), nullptr);
  lw.upload(1, c, sh, p);
  ASSERT_NE(lw.find(1), nullptr);
  EXPECT_EQ(lw.find(0), nullptr);
  for (auto& v : p.gate_w) v += 1.f;  // overwrite in place
  lw.upload(1, c, sh, p);
  const cuda::DeviceLizardLayer* d = lw.find(1);
  ASSERT_NE(d, nullptr);
  auto same32 = [](const float* dev, const std::vector<float>& h) {
    std::vector<float> g(h.size());
    EXPECT_EQ(cudaMemcpy(g.data(), dev, h.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    return g == h;
  };
  EXPECT_TRUE(same32(d->gate_w, p.gate_w));
  EXPECT_TRUE(same32(d->gate_b, p.gate_b));
  EXPECT_TRUE(same32(d->feat_q32, p.feat_q));
  EXPECT_TRUE(same32(d->feat_k32, p.feat_k));
  EXPECT_TRUE(same32(d->meta, p.meta));
  EXPECT_TRUE(same32(d->alpha, p.alpha));
  const std::vector<double> fq = Buf::download(DType::BF16, d->feat_q, p.feat_q.size());
  double e = 0;
  for (size_t i = 0; i < fq.size(); ++i) e = std::max(e, std::fabs(fq[i] - bf16r(p.feat_q[i])));
  EXPECT_EQ(e, 0.0);
  std::printf("[cuda-core] lizard weights: upload + overwrite exact, %zu bytes\n", lw.bytes());
}

// ---------------------------------------------------------------------------------------------- decode
// Cache positions never written hold NaN: any read of them shows in the output.
void check_decode(int B, int n, int H, int Hkv, int D, int max_ctx, const std::vector<int>& lens, std::mt19937_64& g) {
  const int64_t cache_n = int64_t(B) * Hkv * max_ctx * D;
  std::vector<double> kc(size_t(cache_n), NAN), vc(size_t(cache_n), NAN);
  auto at = [&](int b, int kh, int pos) { return size_t(((int64_t(b) * Hkv + kh) * max_ctx + pos) * D); };
  std::uniform_real_distribution<double> u(-1, 1);
  for (int b = 0; b < B; ++b)
    for (int kh = 0; kh < Hkv; ++kh)
      for (int pos = 0; pos < std::max(0, lens[size_t(b)] - n); ++pos)
        for (int e = 0; e < D; ++e) {
          kc[at(b, kh, pos) + size_t(e)] = bf16r(u(g));
          vc[at(b, kh, pos) + size_t(e)] = bf16r(u(g));
        }
  const std::vector<double> knew = rnd(size_t(B) * n * Hkv * D, g), vnew = rnd(size_t(B) * n * Hkv * D, g),
                            q = rnd(size_t(B) * n * H * D, g, -2, 2), out0 = rnd(size_t(B) * n * H * D, g);
  std::vector<int> pos0(static_cast<size_t>(B));
  for (int b = 0; b < B; ++b) {
    pos0[size_t(b)] = lens[size_t(b)] > 0 ? lens[size_t(b)] - n : -1;
    if (pos0[size_t(b)] < 0) continue;
    for (int j = 0; j < n; ++j)
      for (int kh = 0; kh < Hkv; ++kh)
        for (int e = 0; e < D; ++e) {
          const size_t src = size_t(((int64_t(b) * n + j) * Hkv + kh) * D + e);
          kc[at(b, kh, pos0[size_t(b)] + j) + size_t(e)] = knew[src];
          vc[at(b, kh, pos0[size_t(b)] + j) + size_t(e)] = vnew[src];
        }
  }
  // The GPU cache starts with NaN everywhere except the old tokens; the new ones arrive by kv_cache_write.
  std::vector<double> kc_old = kc, vc_old = vc;
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < n && pos0[size_t(b)] >= 0; ++j)
      for (int kh = 0; kh < Hkv; ++kh)
        for (int e = 0; e < D; ++e) kc_old[at(b, kh, pos0[size_t(b)] + j) + size_t(e)] = vc_old[at(b, kh, pos0[size_t(b)] + j) + size_t(e)] = NAN;
  Buf K(DType::BF16, kc_old), V(DType::BF16, vc_old), KN(DType::BF16, knew), VN(DType::BF16, vnew), Q(DType::BF16, q),
      O(DType::BF16, out0);
  int *d_pos0 = nullptr, *d_lens = nullptr;
  ASSERT_EQ(cudaMalloc(&d_pos0, size_t(B) * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_lens, size_t(B) * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_pos0, pos0.data(), size_t(B) * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_lens, lens.data(), size_t(B) * 4, cudaMemcpyHostToDevice), cudaSuccess);
  const size_t ws_bytes = lizard::cuda::attention_decode_workspace_bytes(B, n, H, D, max_ctx);
  void* ws = nullptr;
  ASSERT_EQ(cudaMalloc(&ws, std::max<size_t>(ws_bytes, 4)), cudaSuccess);
  lizard::cuda::kv_cache_write(KN.p, K.p, B, n, Hkv, D, max_ctx, d_pos0);
  lizard::cuda::kv_cache_write(VN.p, V.p, B, n, Hkv, D, max_ctx, d_pos0);
  lizard::cuda::AttentionDecodeArgs a;
  a.B = B, a.n = n, a.H = H, a.Hkv = Hkv, a.D = D, a.max_ctx = max_ctx;
  a.q = Q.p, a.k_cache = K.p, a.v_cache = V.p, a.lens = d_lens, a.out = O.p;
  a.workspace = static_cast<float*>(ws);
  lizard::cuda::attention_decode(a);
  sync_ok();
  const std::vector<double> out = O.get(), kg = K.get();
  cudaFree(ws);
  cudaFree(d_pos0);
  cudaFree(d_lens);
  // kv_cache_write: the new tokens landed where the reference put them, nothing else changed (NaN == NaN).
  size_t cache_bad = 0;
  for (size_t i = 0; i < kc.size(); ++i)
    if (!(kg[i] == kc[i] || (std::isnan(kg[i]) && std::isnan(kc[i])))) ++cache_bad;
  EXPECT_EQ(cache_bad, 0u) << "kv_cache_write";
  const double scale = 1.0 / std::sqrt(double(D));
  double worst = 0;
  const int G = H / Hkv;
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < n; ++j)
      for (int h = 0; h < H; ++h) {
        const size_t row = size_t(((int64_t(b) * n + j) * H + h) * D);
        if (lens[size_t(b)] <= 0) {  // skipped: left as it was
          for (int e = 0; e < D; ++e) ASSERT_EQ(out[row + size_t(e)], bf16r(out0[row + size_t(e)])) << "inactive slot written";
          continue;
        }
        const int qpos = lens[size_t(b)] - n + j, kh = h / G;
        std::vector<double> sc(size_t(std::max(qpos + 1, 0)));
        double mx = -INFINITY;
        for (int p = 0; p <= qpos; ++p) {
          double s = 0;
          for (int e = 0; e < D; ++e) s += q[row + size_t(e)] * kc[at(b, kh, p) + size_t(e)];
          sc[size_t(p)] = s * scale;
          mx = std::max(mx, sc[size_t(p)]);
        }
        double den = 0;
        for (double& s : sc) den += (s = std::exp(s - mx));
        for (int e = 0; e < D; ++e) {
          double o = 0;
          for (int p = 0; p <= qpos; ++p) o += sc[size_t(p)] * vc[at(b, kh, p) + size_t(e)];
          o = den > 0 ? o / den : 0.0;
          const double err = std::fabs(out[row + size_t(e)] - o);
          worst = std::max(worst, err);
          ASSERT_LE(err, 4e-3 + 4e-3 * std::fabs(o)) << "b " << b << " j " << j << " h " << h << " e " << e << ": "
                                                     << out[row + size_t(e)] << " vs " << o;
        }
      }
  std::string ls;
  for (int l : lens) ls += (ls.empty() ? "" : ",") + std::to_string(l);
  std::printf("[cuda-core] attention_decode B %d n %d H %d Hkv %d D %d max_ctx %d lens %s: max abs err %.2e; "
              "kv_cache_write exact\n",
              B, n, H, Hkv, D, max_ctx, ls.c_str(), worst);
}

TEST(CudaCore, AttentionDecode) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  check_decode(3, 1, 9, 3, 64, 1300, {1, 1234, 77}, g);
  check_decode(3, 1, 4, 4, 128, 1300, {1234, 1, 300}, g);
  check_decode(3, 5, 9, 3, 128, 1300, {5, 1234, 0}, g);   // slot 2 inactive
  check_decode(3, 5, 4, 4, 64, 1111, {1111, 6, 130}, g);  // a full cache
  check_decode(2, 5, 8, 1, 256, 700, {700, 33}, g);       // 40 rows per kv head: three row groups
  check_decode(1, 1, 4, 2, 96, 5000, {4097}, g);          // D 96, many splits for one slot
  check_decode(2, 3, 6, 2, 50, 400, {400, 17}, g);        // D 50: the 4-byte load path
}

}  // namespace
