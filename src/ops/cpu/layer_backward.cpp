#include "ops/cpu/layer_backward.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace lizard {

template <>
void gemm<float>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N), int(K),
              alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

template <>
void gemm<double>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                  const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N), int(K),
              alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

template <typename T>
void linear_forward(const T* x, int64_t n, int64_t in, const T* W, int64_t out, const T* bias, T* y) {
  gemm<T>(false, true, n, out, in, T(1), x, in, W, in, T(0), y, out);
  if (bias)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t o = 0; o < out; ++o) y[i * out + o] += bias[o];
}

template <typename T>
void linear_backward_input(const T* dy, int64_t n, int64_t out, const T* W, int64_t in, T* dx, bool accumulate) {
  gemm<T>(false, false, n, in, out, T(1), dy, out, W, in, accumulate ? T(1) : T(0), dx, in);
}

template <typename T>
void lora_forward(const T* x, int64_t n, int64_t in, int64_t out, int r, T scale, const T* A, const T* B, T* h,
                  T* y) {
  gemm<T>(false, true, n, r, in, T(1), x, in, A, in, T(0), h, r);
  gemm<T>(false, true, n, out, r, scale, h, r, B, r, T(1), y, out);
}

template <typename T>
void lora_backward(const T* x, const T* h, const T* dy, int64_t n, int64_t in, int64_t out, int r, T scale, const T* A,
                   const T* B, T* dA, T* dB, T* dx) {
  std::vector<T> g(static_cast<size_t>(n * r));  // dy B  [n, r]
  gemm<T>(false, false, n, r, out, T(1), dy, out, B, r, T(0), g.data(), r);
  if (dB) gemm<T>(true, false, out, r, n, scale, dy, out, h, r, T(1), dB, r);
  if (dA) gemm<T>(true, false, r, in, n, scale, g.data(), r, x, in, T(1), dA, in);
  if (dx) gemm<T>(false, false, n, in, r, scale, g.data(), r, A, in, T(1), dx, in);
}

template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, int64_t rows, int64_t dim, double eps) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* xi = x + i * dim;
    double ss = 0;
    for (int64_t j = 0; j < dim; ++j) ss += double(xi[j]) * xi[j];
    const T inv = T(1.0 / std::sqrt(ss / double(dim) + eps));
    for (int64_t j = 0; j < dim; ++j) y[i * dim + j] = xi[j] * inv * w[j];
  }
}

// y_j = x_j s w_j, s = (mean x^2 + eps)^(-1/2):  dx_j = s w_j dy_j - x_j s^3 / dim * sum_k dy_k w_k x_k.
template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* dy, T* dx, int64_t rows, int64_t dim, double eps,
                      bool accumulate) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* xi = x + i * dim;
    const T* gi = dy + i * dim;
    double ss = 0, dot = 0;
    for (int64_t j = 0; j < dim; ++j) {
      ss += double(xi[j]) * xi[j];
      dot += double(gi[j]) * w[j] * xi[j];
    }
    const double s = 1.0 / std::sqrt(ss / double(dim) + eps);
    const double c = dot * s * s * s / double(dim);
    for (int64_t j = 0; j < dim; ++j) {
      const T v = T(s * double(w[j]) * gi[j] - double(xi[j]) * c);
      dx[i * dim + j] = accumulate ? dx[i * dim + j] + v : v;
    }
  }
}

template <typename T>
void swiglu_forward(const T* g, const T* u, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T s = T(1) / (T(1) + std::exp(-g[i]));
    out[i] = g[i] * s * u[i];
  }
}

template <typename T>
void swiglu_backward(const T* g, const T* u, const T* dout, T* dg, T* du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T s = T(1) / (T(1) + std::exp(-g[i]));
    const T silu = g[i] * s;
    const T d = dout[i];
    dg[i] = d * u[i] * s * (T(1) + g[i] * (T(1) - s));
    du[i] = d * silu;
  }
}

template <typename T>
void rope_rows(const LizardRope& rope, T* x, int64_t n, int n_heads, int head_dim, int64_t pos0, bool inverse) {
  for (int64_t i = 0; i < n; ++i)
    for (int h = 0; h < n_heads; ++h) rope.apply(x + (i * n_heads + h) * head_dim, pos0 + i, inverse);
}

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, int64_t n, int H, int Hkv, int D, T* y) {
  const int grp = H / Hkv;
  const T scale = T(1.0 / std::sqrt(double(D)));
#pragma omp parallel for schedule(dynamic, 1)
  for (int h = 0; h < H; ++h) {
    const int g = h / grp;
    std::vector<T> p(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const T* qi = q + (i * H + h) * D;
      T mx = -INFINITY;
      for (int64_t t = 0; t <= i; ++t) {
        const T* kt = k + (t * Hkv + g) * D;
        T s = 0;
        for (int e = 0; e < D; ++e) s += qi[e] * kt[e];
        p[t] = s * scale;
        mx = std::max(mx, p[t]);
      }
      T den = 0;
      for (int64_t t = 0; t <= i; ++t) den += (p[t] = std::exp(p[t] - mx));
      T* yi = y + (i * H + h) * D;
      std::fill(yi, yi + D, T(0));
      for (int64_t t = 0; t <= i; ++t) {
        const T w = p[t] / den;
        const T* vt = v + (t * Hkv + g) * D;
        for (int e = 0; e < D; ++e) yi[e] += w * vt[e];
      }
    }
  }
}

// dP_it = dy_i . v_t; dS_it = P_it (dP_it - sum_u P_iu dP_iu); dq_i = scale sum_t dS_it k_t;
// dk_t = scale sum_i dS_it q_i; dv_t = sum_i P_it dy_i. Query heads of one kv group share dk, dv, so
// threads take kv groups.
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* dy, int64_t n, int H, int Hkv, int D, T* dq,
                        T* dk, T* dv) {
  const int grp = H / Hkv;
  const T scale = T(1.0 / std::sqrt(double(D)));
  std::fill(dq, dq + n * H * D, T(0));
  std::fill(dk, dk + n * Hkv * D, T(0));
  std::fill(dv, dv + n * Hkv * D, T(0));
#pragma omp parallel for schedule(dynamic, 1)
  for (int g = 0; g < Hkv; ++g) {
    std::vector<T> p(static_cast<size_t>(n)), dp(static_cast<size_t>(n));
    for (int h = g * grp; h < (g + 1) * grp; ++h)
      for (int64_t i = 0; i < n; ++i) {
        const T* qi = q + (i * H + h) * D;
        const T* gi = dy + (i * H + h) * D;
        T mx = -INFINITY;
        for (int64_t t = 0; t <= i; ++t) {
          const T* kt = k + (t * Hkv + g) * D;
          T s = 0;
          for (int e = 0; e < D; ++e) s += qi[e] * kt[e];
          p[t] = s * scale;
          mx = std::max(mx, p[t]);
        }
        T den = 0;
        for (int64_t t = 0; t <= i; ++t) den += (p[t] = std::exp(p[t] - mx));
        T sum = 0;
        for (int64_t t = 0; t <= i; ++t) {
          p[t] /= den;
          const T* vt = v + (t * Hkv + g) * D;
          T s = 0;
          for (int e = 0; e < D; ++e) s += gi[e] * vt[e];
          dp[t] = s;
          sum += p[t] * s;
        }
        T* dqi = dq + (i * H + h) * D;
        for (int64_t t = 0; t <= i; ++t) {
          const T ds = p[t] * (dp[t] - sum) * scale;
          const T* kt = k + (t * Hkv + g) * D;
          T* dkt = dk + (t * Hkv + g) * D;
          T* dvt = dv + (t * Hkv + g) * D;
          for (int e = 0; e < D; ++e) {
            dqi[e] += ds * kt[e];
            dkt[e] += ds * qi[e];
            dvt[e] += p[t] * gi[e];
          }
        }
      }
  }
}

template <typename T>
double cross_entropy(const T* logits, const int32_t* targets, int64_t n, int64_t V, double weight, T* dlogits) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T* z = logits + i * V;
    double mx = -INFINITY;
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, double(z[j]));
    double den = 0;
    for (int64_t j = 0; j < V; ++j) den += std::exp(double(z[j]) - mx);
    const double lse = mx + std::log(den);
    total += lse - double(z[targets[i]]);
    if (dlogits) {
      T* d = dlogits + i * V;
      for (int64_t j = 0; j < V; ++j) d[j] = T(weight * std::exp(double(z[j]) - lse));
      d[targets[i]] -= T(weight);
    }
  }
  return total;
}

#define LZ_INST(T)                                                                                                   \
  template void linear_forward<T>(const T*, int64_t, int64_t, const T*, int64_t, const T*, T*);                     \
  template void linear_backward_input<T>(const T*, int64_t, int64_t, const T*, int64_t, T*, bool);                  \
  template void lora_forward<T>(const T*, int64_t, int64_t, int64_t, int, T, const T*, const T*, T*, T*);           \
  template void lora_backward<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, int, T, const T*, const T*, \
                                 T*, T*, T*);                                                                       \
  template void rmsnorm_forward<T>(const T*, const T*, T*, int64_t, int64_t, double);                               \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, double, bool);              \
  template void swiglu_forward<T>(const T*, const T*, T*, int64_t);                                                 \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t);                                  \
  template void rope_rows<T>(const LizardRope&, T*, int64_t, int, int, int64_t, bool);                              \
  template void attention_forward<T>(const T*, const T*, const T*, int64_t, int, int, int, T*);                     \
  template void attention_backward<T>(const T*, const T*, const T*, const T*, int64_t, int, int, int, T*, T*, T*);  \
  template double cross_entropy<T>(const T*, const int32_t*, int64_t, int64_t, double, T*);
LZ_INST(float)
LZ_INST(double)
#undef LZ_INST

}  // namespace lizard
