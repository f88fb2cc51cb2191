// CPU ops against plain double-precision references on random inputs of odd sizes.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "llama_fixture.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/fast_exp.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/softmax_attention.h"
#include "ops/cpu/swiglu.h"
#include "util/error.h"

using namespace lizard;
using lizard::testing::Seeded;

namespace {

void expect_close(const std::vector<double>& ref, const float* got, double rel, double abs, const std::string& what) {
  double scale = 0;
  for (double r : ref) scale = std::max(scale, std::fabs(r));
  for (size_t i = 0; i < ref.size(); ++i)
    ASSERT_NEAR(got[i], ref[i], rel * scale + abs) << what << " at " << i;
}

// Plain references.
std::vector<double> ref_rmsnorm(const std::vector<float>& x, const std::vector<float>& w, int rows, int dim, double eps) {
  std::vector<double> y(x.size());
  for (int r = 0; r < rows; ++r) {
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (int i = 0; i < dim; ++i) y[r * dim + i] = x[r * dim + i] * inv * w[i];
  }
  return y;
}

// Written from the Llama-3 description: wavelengths above original/low are divided by factor,
// below original/high kept, and between interpolated on original/wavelen.
std::vector<double> ref_inv_freq(int D, double theta, const RopeScaling& s) {
  std::vector<double> f(D / 2);
  for (int j = 0; j < D / 2; ++j) {
    double base = std::pow(theta, -2.0 * j / D);
    if (s.kind == RopeScaling::Kind::Linear) base /= s.factor;
    if (s.kind == RopeScaling::Kind::Llama3) {
      const double wl = 2 * std::numbers::pi / base;
      const double lo = s.original_max_position / s.low_freq_factor, hi = s.original_max_position / s.high_freq_factor;
      if (wl > lo) {
        base = base / s.factor;
      } else if (wl >= hi) {
        const double t = (s.original_max_position / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        base = (1 - t) * base / s.factor + t * base;
      }
    }
    f[j] = base;
  }
  return f;
}

}  // namespace

TEST(OpsCpu, RmsNorm) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  for (int rows : {1, 3, 19}) {
    const int dim = 77;
    auto x = s.vec(rows * dim, 3.0f), w = s.vec(dim, 2.0f);
    std::vector<float> y(x.size());
    rmsnorm(x.data(), w.data(), y.data(), rows, dim, 1e-5f);
    expect_close(ref_rmsnorm(x, w, rows, dim, 1e-5), y.data(), 2e-6, 0, "rmsnorm");
    rmsnorm(x.data(), w.data(), x.data(), rows, dim, 1e-5f);  // in place
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], y[i]);
  }
}

TEST(OpsCpu, SwiGLU) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  for (int n : {1, 31, 40001}) {
    auto g = s.vec(n, 12.0f), u = s.vec(n, 3.0f);
    std::vector<float> y(n);
    swiglu(g.data(), u.data(), y.data(), n);
    for (int i = 0; i < n; ++i) {
      const double ref = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
      ASSERT_NEAR(y[i], ref, 2e-6 * std::fabs(ref) + 1e-7) << i;
    }
  }
}

TEST(OpsCpu, RopeInvFreqPlainAndScaled) {
  for (int D : {16, 64, 128}) {
    RopeScaling none;
    RopeScaling lin;
    lin.kind = RopeScaling::Kind::Linear;
    lin.factor = 4;
    RopeScaling l3;  // Llama-3.1 values; with D=128 and theta 5e5 all three bands occur
    l3.kind = RopeScaling::Kind::Llama3;
    l3.factor = 8;
    l3.low_freq_factor = 1;
    l3.high_freq_factor = 4;
    l3.original_max_position = 8192;
    RopeScaling l3small = l3;  // bands at small D too
    l3small.original_max_position = 64;
    for (auto* sc : {&none, &lin, &l3, &l3small}) {
      auto got = rope_inv_freq(D, 500000.0f, *sc);
      auto ref = ref_inv_freq(D, 500000.0, *sc);
      ASSERT_EQ(got.size(), ref.size());
      for (size_t j = 0; j < ref.size(); ++j) ASSERT_NEAR(got[j], ref[j], 1e-6 * ref[j]) << "D " << D << " j " << j;
    }
  }
  // The three bands really are exercised at D=128: some kept, some divided, some blended.
  RopeScaling l3;
  l3.kind = RopeScaling::Kind::Llama3;
  l3.factor = 8;
  auto plain = rope_inv_freq(128, 500000.0f, {});
  auto sc = rope_inv_freq(128, 500000.0f, l3);
  int kept = 0, divided = 0, blended = 0;
  for (size_t j = 0; j < sc.size(); ++j) {
    const double r = plain[j] / sc[j];
    if (std::fabs(r - 1) < 1e-6) ++kept;
    else if (std::fabs(r - 8) < 1e-5) ++divided;
    else ++blended;
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
}

TEST(OpsCpu, RopeRotateHalf) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  const int n = 23, heads = 3, D = 18, stride = heads * D + 5;  // odd half, padded rows
  const int64_t pos0 = 37;
  auto inv = rope_inv_freq(D, 10000.0f, {});
  auto x = s.vec(n * stride, 2.0f);
  auto y = x;
  rope_apply(y.data(), n, stride, heads, D, pos0, inv.data());
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < heads; ++h)
      for (int j = 0; j < D / 2; ++j) {
        const double a = double(pos0 + i) * inv[j];
        const float* xr = &x[i * stride + h * D];
        const float* yr = &y[i * stride + h * D];
        const double lo = xr[j] * std::cos(a) - xr[j + D / 2] * std::sin(a);
        const double hi = xr[j + D / 2] * std::cos(a) + xr[j] * std::sin(a);
        ASSERT_NEAR(yr[j], lo, 1e-5) << i << " " << h << " " << j;
        ASSERT_NEAR(yr[j + D / 2], hi, 1e-5) << i << " " << h << " " << j;
      }
  for (int i = 0; i < n; ++i)  // padding untouched
    for (int p = heads * D; p < stride; ++p) ASSERT_EQ(y[i * stride + p], x[i * stride + p]);
}

TEST(OpsCpu, SoftmaxAttentionGQA) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  const AttentionDims dims{6, 2, 20};
  const int H = 6, Hkv = 2, D = 20, group = 3;
  for (auto [n, pos0, window] : {std::tuple{7, 5, 0}, std::tuple{1, 40, 0}, std::tuple{13, 0, 0},
                                 std::tuple{9, 11, 6}, std::tuple{1, 30, 1}, std::tuple{70, 3, 0},
                                 std::tuple{45, 20, 17}, std::tuple{33, 0, 1},
                                 std::tuple{1, 1500, 0}, std::tuple{2, 900, 0}, std::tuple{1, 1100, 700}}) {
    const int total = pos0 + n, stride = Hkv * D + 3;
    auto q = s.vec(n * H * D, 2.0f);
    auto k = s.vec(total * stride, 2.0f), v = s.vec(total * stride, 1.0f);
    std::vector<float> out(n * H * D);
    const float scale = 1.0f / std::sqrt(float(D));
    // 8 threads for 6 heads: long decodes split the keys over tasks and merge the parts.
    const int prev = omp_get_max_threads();
    omp_set_num_threads(n < 8 && pos0 > 500 ? 8 : prev);
    softmax_attention(q.data(), n, pos0, k.data(), v.data(), stride, dims, scale, out.data(), window);
    omp_set_num_threads(prev);
    std::vector<double> ref(out.size());
    for (int i = 0; i < n; ++i)
      for (int h = 0; h < H; ++h) {
        const int kvh = h / group, pos = pos0 + i, t0 = window ? std::max(0, pos - window + 1) : 0;
        std::vector<double> sc;
        for (int t = t0; t <= pos; ++t) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += double(q[(i * H + h) * D + d]) * k[t * stride + kvh * D + d];
          sc.push_back(dot * scale);
        }
        const double mx = *std::max_element(sc.begin(), sc.end());
        double z = 0;
        for (auto& e : sc) z += (e = std::exp(e - mx));
        for (int d = 0; d < D; ++d) {
          double acc = 0;
          for (int t = t0; t <= pos; ++t) acc += sc[t - t0] * v[t * stride + kvh * D + d];
          ref[(i * H + h) * D + d] = acc / z;
        }
      }
    expect_close(ref, out.data(), 1e-5, 1e-6, "attention n=" + std::to_string(n) + " pos0=" + std::to_string(pos0));
  }
}

TEST(OpsCpu, SoftmaxAttentionHugeScoresStayFinite) {
  const AttentionDims dims{1, 1, 4};
  std::vector<float> q = {100, 100, 100, 100}, k = {100, 100, 100, 100, -100, -100, -100, -100}, v = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<float> out(4);
  softmax_attention(q.data(), 1, 1, k.data(), v.data(), 4, dims, 1.0f, out.data());
  for (int d = 0; d < 4; ++d) EXPECT_FLOAT_EQ(out[d], float(d + 1));
}

TEST(OpsCpu, EmbeddingAnyDtype) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_1}) {
    auto b = lizard::testing::make_tensor(s, t, {29, 96}, 1.0f);
    auto view = lizard::testing::view_of("emb", b);
    std::vector<int32_t> ids = {0, 28, 5, 5, 17};
    std::vector<float> out(ids.size() * 96);
    embedding_lookup(view, ids.data(), ids.size(), out.data());
    for (size_t i = 0; i < ids.size(); ++i)
      for (int j = 0; j < 96; ++j)
        ASSERT_NEAR(out[i * 96 + j], b.values[ids[i] * 96 + j], 1e-6) << dtype_name(t);
    int32_t bad = 29;
    EXPECT_THROW(embedding_lookup(view, &bad, 1, out.data()), Error);
  }
}

// Every path of y = x W^T: matvec (n <= 2), tiled dequantize + sgemm, the fp32 cache, the bias.
TEST(OpsCpu, MatmulAllDtypesAndPaths) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_1}) {
    for (auto [out, in] : {std::pair{37, 64}, std::pair{333, 96}, std::pair{1, 32}}) {
      auto w = lizard::testing::make_tensor(s, t, {out, in}, 0.5f);
      auto view = lizard::testing::view_of("w", w);
      auto bias = s.vec(out, 1.0f);
      for (int n : {1, 2, 3, 17, 64}) {
        auto x = s.vec(n * in, 2.0f);
        for (int variant = 0; variant < 4; ++variant) {  // plain, fp32 cache, bias, exact
          std::vector<float> f32 = dequantize_tensor(view);
          const float* cache = variant == 1 ? f32.data() : nullptr;
          const float* b = variant == 2 ? bias.data() : nullptr;
          std::vector<float> y(n * out);
          matmul(view, x.data(), n, y.data(), cache, b, variant == 3);
          // Block-quantized decode rounds the activations to 8 bits: bound that error per row.
          const bool q8 = n <= kMatvecMaxRows && (t == DType::Q8_0 || t == DType::Q4_1) && variant != 3;
          for (int i = 0; i < n; ++i)
            for (int r = 0; r < out; ++r) {
              double ref = b ? b[r] : 0.0, mag = 0, xmax = 0;
              for (int j = 0; j < in; ++j) {
                ref += double(x[i * in + j]) * w.values[r * in + j];
                mag += std::fabs(double(x[i * in + j]) * w.values[r * in + j]);
                xmax = std::max(xmax, double(std::fabs(x[i * in + j])));
              }
              double wsum = 0;
              for (int j = 0; j < in; ++j) wsum += std::fabs(w.values[r * in + j]);
              const double tol = q8 ? wsum * xmax / 127.0 + 1e-4 : 2e-6 * mag + 1e-6;
              ASSERT_NEAR(y[i * out + r], ref, tol)
                  << dtype_name(t) << " out " << out << " in " << in << " n " << n << " variant " << variant;
            }
        }
      }
    }
  }
}

TEST(OpsCpu, MatvecManyEqualsMatvecs) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  auto a = lizard::testing::make_tensor(s, DType::Q4_1, {67, 96}, 0.5f);
  auto b = lizard::testing::make_tensor(s, DType::F32, {5, 96}, 0.5f);
  auto c = lizard::testing::make_tensor(s, DType::Q8_0, {130, 96}, 0.5f);
  auto va = lizard::testing::view_of("a", a), vb = lizard::testing::view_of("b", b), vc = lizard::testing::view_of("c", c);
  auto x = s.vec(96, 1.0f), bias = s.vec(130, 1.0f);
  std::vector<float> ya(67), yb(5), yc(130), ra(67), rb(5), rc(130);
  const MatvecJob jobs[3] = {{&va, ya.data()}, {&vb, yb.data()}, {&vc, yc.data(), bias.data()}};
  matvec_many(jobs, 3, x.data());
  matmul(va, x.data(), 1, ra.data());
  matmul(vb, x.data(), 1, rb.data());
  matmul(vc, x.data(), 1, rc.data(), nullptr, bias.data());
  EXPECT_EQ(ya, ra);
  EXPECT_EQ(yb, rb);
  EXPECT_EQ(yc, rc);
}

TEST(OpsCpu, DequantizeTensorMatchesBlocks) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  for (DType t : {DType::Q8_0, DType::Q4_1, DType::F16}) {
    auto w = lizard::testing::make_tensor(s, t, {11, 160}, 1.0f);
    auto f = dequantize_tensor(lizard::testing::view_of("w", w));
    for (size_t i = 0; i < f.size(); ++i) ASSERT_EQ(f[i], w.values[i]) << dtype_name(t) << " " << i;
  }
}

TEST(OpsCpu, FastExp) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  for (int i = 0; i < 200000; ++i) {
    const float x = s.uniform(-87.0f, 88.0f);
    const double ref = std::exp(double(x));
    ASSERT_NEAR(fast_exp(x), ref, 3e-7 * ref) << x;
  }
  EXPECT_EQ(fast_exp(0.0f), 1.0f);
  EXPECT_GT(fast_exp(-1000.0f), 0.0f);
  EXPECT_LT(fast_exp(-1000.0f), 1e-37f);
  EXPECT_TRUE(std::isfinite(fast_exp(1000.0f)));
}
