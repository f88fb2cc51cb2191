// Training ops for the decoder (stage 2 LoRA fine-tuning): each forward keeps what its backward
// needs; each backward gives input gradients (weights are frozen) and, for LoRA, the adapter's
// gradients. Plain reference code in T = float (training) or double (finite-difference checks);
// products go through cblas (s/d gemm). Row-major everywhere; W [out, in] as stored by the model.
#pragma once
#include <cstdint>
#include <vector>

#include "ops/cpu/lizard_attention.h"

namespace lizard {

// C[M,N] = alpha op(A) op(B) + beta C (row-major; ta/tb: transpose A/B).
template <typename T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc);

// y [n, out] = x [n, in] W^T (+ bias [out], may be null).
template <typename T>
void linear_forward(const T* x, int64_t n, int64_t in, const T* W, int64_t out, const T* bias, T* y);
// dx [n, in] = dy [n, out] W, ADDED into dx when accumulate.
template <typename T>
void linear_backward_input(const T* dy, int64_t n, int64_t out, const T* W, int64_t in, T* dx, bool accumulate);

// LoRA on a frozen linear layer: y += scale (x A^T) B^T, A [r, in], B [out, r]; h = x A^T [n, r] is
// kept for the backward.
template <typename T>
void lora_forward(const T* x, int64_t n, int64_t in, int64_t out, int r, T scale, const T* A, const T* B, T* h,
                  T* y);
// ADDS dA = scale (dy B)^T x, dB = scale dy^T h into dA, dB (either may be null) and scale (dy B) A into dx
// (null: skipped).
template <typename T>
void lora_backward(const T* x, const T* h, const T* dy, int64_t n, int64_t in, int64_t out, int r, T scale, const T* A,
                   const T* B, T* dA, T* dB, T* dx);

// RMSNorm y = x / sqrt(mean(x^2) + eps) * w per row; backward gives dx only (w frozen), ADDED when accumulate.
template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, int64_t rows, int64_t dim, double eps);
template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* dy, T* dx, int64_t rows, int64_t dim, double eps,
                      bool accumulate);

// out = silu(g) * u; backward: dg, du (overwritten).
template <typename T>
void swiglu_forward(const T* g, const T* u, T* out, int64_t n);
template <typename T>
void swiglu_backward(const T* g, const T* u, const T* dout, T* dg, T* du, int64_t n);

// RoPE (rotate-half) on rows of n_heads heads at positions pos0.. in place; inverse = the transpose,
// which is also the backward (the rotation is orthogonal): dx = R^T dy.
template <typename T>
void rope_rows(const LizardRope& rope, T* x, int64_t n, int n_heads, int head_dim, int64_t pos0, bool inverse);

// Causal softmax attention with GQA on RoPE'd q [n, H*D], k, v [n, Hkv*D]; y [n, H*D].
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, int64_t n, int H, int Hkv, int D, T* y);
// Gradients dq, dk, dv (overwritten); the probabilities are recomputed row by row.
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* dy, int64_t n, int H, int Hkv, int D, T* dq,
                        T* dk, T* dv);

// Summed next-token cross-entropy (nats) of logits [n, V] against targets [n]; when dlogits is not
// null it receives weight * (softmax - onehot).
template <typename T>
double cross_entropy(const T* logits, const int32_t* targets, int64_t n, int64_t V, double weight, T* dlogits);

}  // namespace lizard
