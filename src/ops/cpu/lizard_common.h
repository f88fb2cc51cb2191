// Private helpers shared by the three Lizard forms (not part of the public API).
#pragma once
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/lizard_attention.h"
#include "util/error.h"

namespace lizard::lz {

using Cfg = LizardConfig;

// Row-major C = alpha op(A) op(B) + beta C.
inline void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) C[size_t(i) * ldc + j] = beta == 0.f ? 0.f : beta * C[size_t(i) * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
              lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda,
                 const double* B, int ldb, double beta, double* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) C[size_t(i) * ldc + j] = beta == 0.0 ? 0.0 : beta * C[size_t(i) * ldc + j];
    return;
  }
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
              lda, B, ldb, beta, C, ldc);
}

// y = alpha op(A) x + beta y, A row-major [M, N] with leading dimension lda.
inline void gemv(bool ta, int M, int N, float alpha, const float* A, int lda, const float* x, float beta, float* y) {
  cblas_sgemv(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, M, N, alpha, A, lda, x, 1, beta, y, 1);
}
inline void gemv(bool ta, int M, int N, double alpha, const double* A, int lda, const double* x, double beta,
                 double* y) {
  cblas_dgemv(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, M, N, alpha, A, lda, x, 1, beta, y, 1);
}
// A += alpha x y^T
inline void ger(int M, int N, float alpha, const float* x, const float* y, float* A, int lda) {
  cblas_sger(CblasRowMajor, M, N, alpha, x, 1, y, 1, A, lda);
}
inline void ger(int M, int N, double alpha, const double* x, const double* y, double* A, int lda) {
  cblas_dger(CblasRowMajor, M, N, alpha, x, 1, y, 1, A, lda);
}

template <typename T>
inline T log_sigmoid(T a) {
  return a >= T(0) ? -std::log1p(std::exp(-a)) : a - std::log1p(std::exp(a));
}
template <typename T>
inline T sigmoid(T a) {
  return a >= T(0) ? T(1) / (T(1) + std::exp(-a)) : std::exp(a) / (T(1) + std::exp(a));
}

// phi[2F] from u[F].
template <typename T>
inline void feature_map(Cfg::FeatureAct act, int F, const T* u, T* phi) {
  if (act == Cfg::FeatureAct::Exp) {
    for (int f = 0; f < F; ++f) {
      phi[f] = std::exp(u[f]);
      phi[F + f] = std::exp(-u[f]);
    }
    return;
  }
  T mx = -std::numeric_limits<T>::infinity(), mn = std::numeric_limits<T>::infinity();
  for (int f = 0; f < F; ++f) mx = std::max(mx, u[f]), mn = std::min(mn, u[f]);
  T s1 = 0, s2 = 0;
  for (int f = 0; f < F; ++f) {
    phi[f] = std::exp(u[f] - mx);
    phi[F + f] = std::exp(mn - u[f]);
    s1 += phi[f];
    s2 += phi[F + f];
  }
  const T i1 = T(1) / s1, i2 = T(1) / s2;
  for (int f = 0; f < F; ++f) phi[f] *= i1, phi[F + f] *= i2;
}

// du[F] (overwritten) from phi[2F] and dphi[2F].
template <typename T>
inline void feature_map_bwd(Cfg::FeatureAct act, int F, const T* phi, const T* dphi, T* du) {
  if (act == Cfg::FeatureAct::Exp) {
    for (int f = 0; f < F; ++f) du[f] = dphi[f] * phi[f] - dphi[F + f] * phi[F + f];
    return;
  }
  T d1 = 0, d2 = 0;
  for (int f = 0; f < F; ++f) d1 += dphi[f] * phi[f], d2 += dphi[F + f] * phi[F + f];
  for (int f = 0; f < F; ++f) du[f] = phi[f] * (dphi[f] - d1) - phi[F + f] * (dphi[F + f] - d2);
}

// Eight partial sums: lets the compiler vectorise without -ffast-math.
template <typename T>
inline T dot(const T* a, const T* b, int n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  T s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline int64_t position(const int32_t* pos, int64_t i) { return pos ? int64_t(pos[i]) : i; }

inline bool window_uses_rope(const Cfg& c) { return c.window_rope || c.combine == Cfg::Combine::Lolcats; }
inline bool needs_rope(const Cfg& c) { return c.feature_on_rope || window_uses_rope(c); }

// Inputs as each branch sees them (RoPE applied where the options say) plus the log gates.
template <typename T>
struct Prepared {
  int64_t L = 0;
  int H = 0, Hkv = 0, D = 0, F = 0, G = 1;
  std::vector<T> q_rope, k_rope;  // filled only when some branch uses RoPE
  const T *qf = nullptr, *kf = nullptr, *qw = nullptr, *kw = nullptr;
  std::vector<T> a, lg;  // [L, G] gate pre-activation and log sigmoid (lizard only)
  int gate_col(int h) const { return G == 1 ? 0 : h; }
};

template <typename T>
void prepare(const Cfg& c, const LizardShape& s, const LizardParamsT<T>& p, const LizardRope* rope,
             const LizardInput<T>& in, Prepared<T>& pr) {
  c.validate();
  s.validate();
  p.check(c, s);
  LZ_CHECK(in.L >= 0, "lizard: negative length");
  LZ_CHECK(in.L == 0 || (in.q && in.k && in.v), "lizard: missing q, k or v");
  LZ_CHECK(!needs_rope(c) || rope, "lizard: the options need RoPE but no rope was given");
  LZ_CHECK(!rope || int(rope->inv_freq.size()) * 2 == s.head_dim, "lizard: rope built for head_dim {} not {}",
           rope ? rope->inv_freq.size() * 2 : 0, s.head_dim);
  LZ_CHECK(s.head_dim % 2 == 0 || !needs_rope(c), "lizard: RoPE needs an even head_dim");
  pr.L = in.L;
  pr.H = s.n_heads;
  pr.Hkv = s.n_kv_heads;
  pr.D = s.head_dim;
  pr.F = c.feature_dim;
  pr.G = c.gate == Cfg::Gate::PerHead ? s.n_heads : 1;
  const int64_t L = in.L;
  const int H = pr.H, Hkv = pr.Hkv, D = pr.D;
  if (needs_rope(c)) {
    pr.q_rope.assign(in.q, in.q + L * H * D);
    pr.k_rope.assign(in.k, in.k + L * Hkv * D);
    for (int64_t i = 0; i < L; ++i) {
      const int64_t ps = position(in.pos, i);
      for (int h = 0; h < H; ++h) rope->apply(&pr.q_rope[(i * H + h) * D], ps);
      for (int g = 0; g < Hkv; ++g) rope->apply(&pr.k_rope[(i * Hkv + g) * D], ps);
    }
  }
  pr.qf = c.feature_on_rope ? pr.q_rope.data() : in.q;
  pr.kf = c.feature_on_rope ? pr.k_rope.data() : in.k;
  pr.qw = window_uses_rope(c) ? pr.q_rope.data() : in.q;
  pr.kw = window_uses_rope(c) ? pr.k_rope.data() : in.k;
  if (c.combine == Cfg::Combine::Lizard) {
    LZ_CHECK(L == 0 || in.x, "lizard: missing x (the gate input)");
    const int G = pr.G, dm = s.d_model;
    pr.a.resize(size_t(L * G));
    pr.lg.resize(size_t(L * G));
    for (int64_t i = 0; i < L; ++i)
      for (int g = 0; g < G; ++g) {
        T a = p.gate_b[g] + dot(in.x + i * dm, p.gate_w.data() + size_t(g) * dm, dm);
        pr.a[i * G + g] = a;
        pr.lg[i * G + g] = log_sigmoid(a);
      }
  }
}

// Meta logits of head h (null when m = 0).
template <typename T>
inline const T* meta_row(const Cfg& c, const LizardParamsT<T>& p, int h) {
  if (c.meta_tokens == 0) return nullptr;
  return p.meta.data() + (c.meta_per_head ? size_t(h) * c.meta_tokens : 0);
}
// The meta sinks of a row as a shifted sum: max_j mu_j and sum_j e^(mu_j - max) (-inf and 0 for m = 0).
template <typename T>
struct MetaSum {
  T max = -std::numeric_limits<T>::infinity(), sum = 0;
  MetaSum(const T* mu, int m) {
    for (int j = 0; j < m; ++j) max = std::max(max, mu[j]);
    for (int j = 0; j < m; ++j) sum += std::exp(mu[j] - max);
  }
};
template <typename T>
inline T alpha_of(const Cfg& c, const LizardParamsT<T>& p, int h) {
  return c.alpha_per_layer ? p.alpha[0] : p.alpha[h];
}

}  // namespace lizard::lz
