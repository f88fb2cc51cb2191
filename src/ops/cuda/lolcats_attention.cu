// LoLCATs attention forward and backward on CUDA cores in fp32 (see lolcats_attention.h for the math).
//
// Everything runs on fp32 copies in head-major layout ([B, H, L, ...]) so that the kernels have one
// element type. Chunks of C = 64 rows:
//   forward, query chunk n (rows 64n ..): S_n = sum_{t <= 64n - w} phi_k(k_t)^T [v_t | 1]; a query i of
//     the chunk adds the linear keys t in [64n - w + 1, i - w] one by one and the window keys exactly.
//     S_n is an inclusive prefix sum of key blocks K_m = keys [64m - w - 63, 64m - w].
//   backward, key chunk n: R_n = sum_{i >= 64(n+1) + w} phi_q(q_i)^T dOut_i, an exclusive suffix sum of
//     query blocks Q_m = queries [64m + w, 64m + w + 63]; a key t of the chunk adds the linear queries
//     i in [t + w, 64n + w + 63] one by one and its window queries [t, t + w - 1] exactly.
// Row kernels give one warp to one row; vectors of a row are spread over the lanes (element c at lane
// c % 32, slot c / 32).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/lolcats_attention.h"

namespace lizard::cuda {

namespace {

constexpr int kChunk = 64;
constexpr int kMaxD = 128, kMaxF = 64, kMaxF2 = 2 * kMaxF, kMaxDv = kMaxD + 1;
constexpr int kSlotD = kMaxD / 32, kSlotDv = (kMaxDv + 31) / 32, kSlotF = kMaxF / 32, kSlotF2 = kMaxF2 / 32;
constexpr int kWarps = 4;  // row kernels: 4 rows (warps) per block
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFull, x, o));
  return x;
}
__device__ __forceinline__ float warp_min(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fminf(x, __shfl_xor_sync(kFull, x, o));
  return x;
}

// Lane-spread row vectors of n <= 32 S elements.
template <int S>
__device__ __forceinline__ void lanes_load(float (&a)[S], const float* row, int n, int lane) {
#pragma unroll
  for (int j = 0; j < S; ++j) {
    const int c = lane + 32 * j;
    a[j] = c < n ? row[c] : 0.f;
  }
}
template <int S>
__device__ __forceinline__ void lanes_zero(float (&a)[S]) {
#pragma unroll
  for (int j = 0; j < S; ++j) a[j] = 0.f;
}
template <int S>
__device__ __forceinline__ void lanes_store(const float (&a)[S], float* row, int n, int lane) {
#pragma unroll
  for (int j = 0; j < S; ++j) {
    const int c = lane + 32 * j;
    if (c < n) row[c] = a[j];
  }
}
// a += s * row[0 .. n)
template <int S>
__device__ __forceinline__ void lanes_axpy(float (&a)[S], float s, const float* row, int n, int lane) {
#pragma unroll
  for (int j = 0; j < S; ++j) {
    const int c = lane + 32 * j;
    if (c < n) a[j] += s * row[c];
  }
}
// a . row[0 .. n), summed over the warp (every lane gets it).
template <int S>
__device__ __forceinline__ float lanes_dot(const float (&a)[S], const float* row, int n, int lane) {
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < S; ++j) {
    const int c = lane + 32 * j;
    if (c < n) s += a[j] * row[c];
  }
  return warp_sum(s);
}
// Element idx of a lane-spread vector, on every lane.
template <int S>
__device__ __forceinline__ float lanes_pick(const float (&a)[S], int idx) {
  float v = 0.f;
#pragma unroll
  for (int j = 0; j < S; ++j)
    if (j == (idx >> 5)) v = a[j];
  return __shfl_sync(kFull, v, idx & 31);
}
// Adds x to element idx (x is the same on every lane).
template <int S>
__device__ __forceinline__ void lanes_add_at(float (&a)[S], int idx, float x, int lane) {
#pragma unroll
  for (int j = 0; j < S; ++j)
    if (j == (idx >> 5) && lane == (idx & 31)) a[j] += x;
}

__device__ __forceinline__ float sigmoidf_stable(float a) {
  return a >= 0.f ? 1.f / (1.f + expf(-a)) : expf(a) / (1.f + expf(a));
}

// ---- layout conversion ------------------------------------------------------------------------------

// src [B, L, H, D] (T) -> dst [B, H, L, Dout] fp32; Dout = D or D + 1 (the extra column is 1: [v | 1]).
template <typename T>
__global__ void to_head_major_kernel(const T* __restrict__ src, float* __restrict__ dst, int B, int L, int H, int D,
                                     int Dout) {
  const int64_t total = int64_t(B) * H * L * Dout;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int c = int(e % Dout);
    const int64_t r = e / Dout;  // (b, h, t)
    const int t = int(r % L);
    const int64_t bh = r / L;
    const int h = int(bh % H), b = int(bh / H);
    dst[e] = c < D ? to_f(src[((int64_t(b) * L + t) * H + h) * D + c]) : 1.f;
  }
}

template <typename T>
__global__ void to_f32_kernel(const T* __restrict__ src, float* __restrict__ dst, int64_t n) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    dst[e] = to_f(src[e]);
}

// ---- feature maps -----------------------------------------------------------------------------------

// phi [B, Hq, L, 2F] of query head h from x (q: [B, Hq, L, D]; k: [B, Hkv, L, D], kv head h / grp).
// grid (ceil(L / kWarps), B * Hq, 2): z = 0 queries, 1 keys.
__global__ void features_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ wq,
                                const float* __restrict__ wk, float* __restrict__ phq, float* __restrict__ phk, int L,
                                int Hq, int Hkv, int D, int F, int act) {
  __shared__ float xs[kWarps][kMaxD];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * kWarps + warp;
  if (i >= L) return;
  const int bh = blockIdx.y, h = bh % Hq, b = bh / Hq, grp = Hq / Hkv;
  const bool key = blockIdx.z == 1;
  const float* x = key ? k + ((int64_t(b) * Hkv + h / grp) * L + i) * D : q + (int64_t(bh) * L + i) * D;
  const float* W = (key ? wk : wq) + int64_t(h) * D * F;
  float* phi = (key ? phk : phq) + (int64_t(bh) * L + i) * 2 * F;
  for (int d = lane; d < D; d += 32) xs[warp][d] = x[d];
  __syncwarp();
  float u[kSlotF];
  lanes_zero(u);
  for (int d = 0; d < D; ++d) lanes_axpy(u, xs[warp][d], W + int64_t(d) * F, F, lane);
  float p1[kSlotF], p2[kSlotF];
  if (act == int(FeatureAct::Exp)) {
#pragma unroll
    for (int j = 0; j < kSlotF; ++j) p1[j] = expf(u[j]), p2[j] = expf(-u[j]);
  } else {
    float mx = -INFINITY, mn = INFINITY;
#pragma unroll
    for (int j = 0; j < kSlotF; ++j)
      if (lane + 32 * j < F) mx = fmaxf(mx, u[j]), mn = fminf(mn, u[j]);
    mx = warp_max(mx);
    mn = warp_min(mn);
    float s1 = 0.f, s2 = 0.f;
#pragma unroll
    for (int j = 0; j < kSlotF; ++j) {
      const bool in = lane + 32 * j < F;
      p1[j] = in ? expf(u[j] - mx) : 0.f;
      p2[j] = in ? expf(mn - u[j]) : 0.f;
      s1 += p1[j];
      s2 += p2[j];
    }
    const float i1 = 1.f / warp_sum(s1), i2 = 1.f / warp_sum(s2);
#pragma unroll
    for (int j = 0; j < kSlotF; ++j) p1[j] *= i1, p2[j] *= i2;
  }
  lanes_store(p1, phi, F, lane);
  lanes_store(p2, phi + F, F, lane);
}

// ---- chunk states -----------------------------------------------------------------------------------

// out[bh, m] = sum over rows t in [64m + off, 64m + off + 64) and [0, L) of A[bh, t]^T Bm[bh', t]
// ([F2, Dv]; bh' = b * (Hq / grp) + h / grp). grid (N, B * Hq), 256 threads.
constexpr int kOuterRows = 32;
__global__ void block_outer_kernel(const float* __restrict__ A, int F2, const float* __restrict__ Bm, int Dv, int Hq,
                                   int grp, int L, int N, int off, float* __restrict__ out) {
  __shared__ float As[kOuterRows][kMaxF2];
  __shared__ float Bs[kOuterRows][kMaxDv];
  const int m = blockIdx.x, bh = blockIdx.y, h = bh % Hq, b = bh / Hq;
  const int base = kChunk * m + off;
  const int lo = max(base, 0), hi = min(base + kChunk, L);
  const int total = F2 * Dv;
  float* o = out + (int64_t(bh) * N + m) * total;
  if (lo >= hi) {
    for (int e = threadIdx.x; e < total; e += blockDim.x) o[e] = 0.f;
    return;
  }
  const float* a = A + int64_t(bh) * L * F2;
  const float* bb = Bm + (int64_t(b) * (Hq / grp) + h / grp) * L * Dv;
  for (int t0 = lo; t0 < hi; t0 += kOuterRows) {
    const int n = min(kOuterRows, hi - t0);
    __syncthreads();
    for (int e = threadIdx.x; e < n * F2; e += blockDim.x) As[e / F2][e % F2] = a[int64_t(t0 + e / F2) * F2 + e % F2];
    for (int e = threadIdx.x; e < n * Dv; e += blockDim.x) Bs[e / Dv][e % Dv] = bb[int64_t(t0 + e / Dv) * Dv + e % Dv];
    __syncthreads();
    for (int e = threadIdx.x; e < total; e += blockDim.x) {
      const int f = e / Dv, c = e % Dv;
      float s = 0.f;
      for (int r = 0; r < n; ++r) s += As[r][f] * Bs[r][c];
      o[e] = t0 == lo ? s : o[e] + s;  // each element belongs to one thread
    }
  }
}

// Per (bh, element): inclusive prefix sum over the N blocks (suffix = false) or exclusive suffix sum
// (suffix = true), in place.
__global__ void scan_blocks_kernel(float* __restrict__ x, int64_t BH, int N, int total, bool suffix) {
  for (int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; id < BH * total;
       id += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bh = id / total, e = id % total;
    float* p = x + bh * N * total + e;
    float run = 0.f;
    if (!suffix) {
      for (int n = 0; n < N; ++n) {
        run += p[int64_t(n) * total];
        p[int64_t(n) * total] = run;
      }
    } else {
      for (int n = N - 1; n >= 0; --n) {
        const float t = p[int64_t(n) * total];
        p[int64_t(n) * total] = run;
        run += t;
      }
    }
  }
}

// ---- forward ----------------------------------------------------------------------------------------

struct Dims {
  int B, L, Hq, Hkv, D, F, F2, Dv, N, w;
  float scale, eps;
};

// One warp per query row. y [B, L, Hq, D] (T; null: not written). Optional saves for the backward (head-major fp32):
// Wn, Ln [B, Hq, L, D] and stats [B, Hq, L, 4] = (M, Wd, Ld, den).
template <typename T>
__global__ void forward_rows_kernel(Dims z, const float* __restrict__ q, const float* __restrict__ k,
                                    const float* __restrict__ vh, const float* __restrict__ phq,
                                    const float* __restrict__ phk, const float* __restrict__ S,
                                    const float* __restrict__ lol_f, T* __restrict__ y, float* __restrict__ Wn_out,
                                    float* __restrict__ Ln_out, float* __restrict__ stats) {
  __shared__ float phs[kWarps][kMaxF2];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * kWarps + warp;
  if (i >= z.L) return;
  const int bh = blockIdx.y, h = bh % z.Hq, b = bh / z.Hq, g = h / (z.Hq / z.Hkv);
  const int64_t row = int64_t(bh) * z.L + i;
  const int64_t kvb = (int64_t(b) * z.Hkv + g) * z.L;  // kv rows of this head
  const float sg = sigmoidf_stable(lol_f[h]);
  const int n = i / kChunk;
  float ph[kSlotF2];
  lanes_load(ph, phq + row * z.F2, z.F2, lane);
  lanes_store(ph, phs[warp], z.F2, lane);
  __syncwarp();
  // linear part: the state, then the chunk's own linear keys
  float lin[kSlotDv];
  lanes_zero(lin);
  const float* Sn = S + (int64_t(bh) * z.N + n) * z.F2 * z.Dv;
  for (int f = 0; f < z.F2; ++f) lanes_axpy(lin, phs[warp][f], Sn + int64_t(f) * z.Dv, z.Dv, lane);
  const float* phk_h = phk + int64_t(bh) * z.L * z.F2;
  for (int t = max(0, n * kChunk - z.w + 1); t <= i - z.w; ++t) {
    const float p = lanes_dot(ph, phk_h + int64_t(t) * z.F2, z.F2, lane);
    lanes_axpy(lin, p, vh + (kvb + t) * z.Dv, z.Dv, lane);
  }
  // window: online max seeded with 0 (M = max(0, max s))
  float qr[kSlotD];
  lanes_load(qr, q + row * z.D, z.D, lane);
  float wn[kSlotD];
  lanes_zero(wn);
  float M = 0.f, wd = 0.f;
  for (int t = max(0, i - z.w + 1); t <= i; ++t) {
    const float s = z.scale * lanes_dot(qr, k + (kvb + t) * z.D, z.D, lane);
    if (s > M) {
      const float corr = expf(M - s);
      wd *= corr;
#pragma unroll
      for (int j = 0; j < kSlotD; ++j) wn[j] *= corr;
      M = s;
    }
    const float p = expf(s - M);
    wd += p;
    lanes_axpy(wn, p, vh + (kvb + t) * z.Dv, z.D, lane);
  }
  const float e = expf(-M), ld = lanes_pick(lin, z.D);
  const float den = sg * wd + (1.f - sg) * e * ld + z.eps * e;
  if (y) {
    T* yr = y + ((int64_t(b) * z.L + i) * z.Hq + h) * z.D;
#pragma unroll
    for (int j = 0; j < kSlotD; ++j) {
      const int c = lane + 32 * j;
      if (c < z.D) yr[c] = from_f<T>((sg * wn[j] + (1.f - sg) * e * lin[j]) / den);
    }
  }
  if (Wn_out) {
    lanes_store(wn, Wn_out + row * z.D, z.D, lane);
    lanes_store(lin, Ln_out + row * z.D, z.D, lane);
    if (lane == 0) {
      float* st = stats + row * 4;
      st[0] = M, st[1] = wd, st[2] = ld, st[3] = den;
    }
  }
}

// ---- backward ---------------------------------------------------------------------------------------

// Per query row: rs [B, Hq, L, 4] = (M, coef = sg/den, yy = dy.y, dsg_i) and dOut [B, Hq, L, Dv] =
// cl * [dy, -yy] with cl = (1-sg) e^{-M} / den (gradient of the linear sums [Ln | Ld]).
__global__ void backward_prep_kernel(Dims z, const float* __restrict__ dy, const float* __restrict__ Wn,
                                     const float* __restrict__ Ln, const float* __restrict__ stats,
                                     const float* __restrict__ lol_f, float* __restrict__ rs,
                                     float* __restrict__ dOut) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * kWarps + warp;
  if (i >= z.L) return;
  const int bh = blockIdx.y, h = bh % z.Hq;
  const int64_t row = int64_t(bh) * z.L + i;
  const float sg = sigmoidf_stable(lol_f[h]);
  const float* st = stats + row * 4;
  const float M = st[0], wd = st[1], ld = st[2], den = st[3], e = expf(-M);
  float d[kSlotD], wn[kSlotD], ln[kSlotD];
  lanes_load(d, dy + row * z.D, z.D, lane);
  lanes_load(wn, Wn + row * z.D, z.D, lane);
  lanes_load(ln, Ln + row * z.D, z.D, lane);
  float dwn = 0.f, dln = 0.f, yy = 0.f;
#pragma unroll
  for (int j = 0; j < kSlotD; ++j) {
    dwn += d[j] * wn[j];
    dln += d[j] * ln[j];
    yy += d[j] * (sg * wn[j] + (1.f - sg) * e * ln[j]) / den;
  }
  dwn = warp_sum(dwn);
  dln = warp_sum(dln);
  yy = warp_sum(yy);
  const float cl = (1.f - sg) * e / den;
  float* o = dOut + row * z.Dv;
#pragma unroll
  for (int j = 0; j < kSlotD; ++j) {
    const int c = lane + 32 * j;
    if (c < z.D) o[c] = cl * d[j];
  }
  if (lane == 0) {
    o[z.D] = -cl * yy;
    float* r = rs + row * 4;
    // dsg = dy . (W - e Ln - y (Wd - e Ld)) / den, rewritten with y = (sg W + (1-sg) e Ln) / den so
    // that nothing cancels: with no linear keys (L <= w) it is eps-sized, and the direct form left
    // only the fp32 rounding of dy . W there.
    r[0] = M, r[1] = sg / den, r[2] = yy, r[3] = e * (ld * dwn - wd * dln + z.eps * (dwn - e * dln)) / den / den;
  }
}

// Query side, one warp per query row: dphq [B, Hq, L, 2F] and the window part of dq, dqh [B, Hq, L, D].
__global__ void backward_query_kernel(Dims z, const float* __restrict__ q, const float* __restrict__ k,
                                      const float* __restrict__ vh, const float* __restrict__ dy,
                                      const float* __restrict__ phk, const float* __restrict__ S,
                                      const float* __restrict__ rs, const float* __restrict__ dOut,
                                      float* __restrict__ dphq, float* __restrict__ dqh) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * kWarps + warp;
  if (i >= z.L) return;
  const int bh = blockIdx.y, h = bh % z.Hq, b = bh / z.Hq, g = h / (z.Hq / z.Hkv);
  const int64_t row = int64_t(bh) * z.L + i;
  const int64_t kvb = (int64_t(b) * z.Hkv + g) * z.L;
  const int n = i / kChunk;
  float dO[kSlotDv];
  lanes_load(dO, dOut + row * z.Dv, z.Dv, lane);
  float dph[kSlotF2];
  lanes_zero(dph);
  // d phi_q = S_n dOut_i + sum over the chunk's linear keys of (dOut_i . [v_t|1]) phi_k(k_t)
  const float* Sn = S + (int64_t(bh) * z.N + n) * z.F2 * z.Dv;
  for (int f = 0; f < z.F2; ++f) lanes_add_at(dph, f, lanes_dot(dO, Sn + int64_t(f) * z.Dv, z.Dv, lane), lane);
  const float* phk_h = phk + int64_t(bh) * z.L * z.F2;
  for (int t = max(0, n * kChunk - z.w + 1); t <= i - z.w; ++t) {
    const float dP = lanes_dot(dO, vh + (kvb + t) * z.Dv, z.Dv, lane);
    lanes_axpy(dph, dP, phk_h + int64_t(t) * z.F2, z.F2, lane);
  }
  lanes_store(dph, dphq + row * z.F2, z.F2, lane);
  // window: ds_it = coef_i e^{s_it - M_i} (dy_i . v_t - yy_i) scale
  const float M = rs[row * 4], coef = rs[row * 4 + 1], yy = rs[row * 4 + 2];
  float qr[kSlotD], d[kSlotD], dq[kSlotD];
  lanes_load(qr, q + row * z.D, z.D, lane);
  lanes_load(d, dy + row * z.D, z.D, lane);
  lanes_zero(dq);
  for (int t = max(0, i - z.w + 1); t <= i; ++t) {
    const float* kt = k + (kvb + t) * z.D;
    const float s = z.scale * lanes_dot(qr, kt, z.D, lane);
    const float p = coef * expf(s - M);
    const float dP = lanes_dot(d, vh + (kvb + t) * z.Dv, z.D, lane);
    lanes_axpy(dq, p * (dP - yy) * z.scale, kt, z.D, lane);
  }
  lanes_store(dq, dqh + row * z.D, z.D, lane);
}

// Key side, one warp per (b, query head h, key t): dphk [B, Hq, L, 2F], and this head's share of dk
// (window part) and dv, dkh and dvh [B, Hq, L, D]. R is the suffix state of the key chunks.
__global__ void backward_key_kernel(Dims z, const float* __restrict__ q, const float* __restrict__ k,
                                    const float* __restrict__ vh, const float* __restrict__ dy,
                                    const float* __restrict__ phq, const float* __restrict__ phk,
                                    const float* __restrict__ R, const float* __restrict__ rs,
                                    const float* __restrict__ dOut, float* __restrict__ dphk, float* __restrict__ dkh,
                                    float* __restrict__ dvh) {
  __shared__ float phs[kWarps][kMaxF2];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int t = blockIdx.x * kWarps + warp;
  if (t >= z.L) return;
  const int bh = blockIdx.y, h = bh % z.Hq, b = bh / z.Hq, g = h / (z.Hq / z.Hkv);
  const int64_t row = int64_t(bh) * z.L + t, qb = int64_t(bh) * z.L;
  const int64_t kvrow = (int64_t(b) * z.Hkv + g) * z.L + t;
  const int n = t / kChunk;
  float pk[kSlotF2], vt[kSlotDv];
  lanes_load(pk, phk + row * z.F2, z.F2, lane);
  lanes_store(pk, phs[warp], z.F2, lane);
  lanes_load(vt, vh + kvrow * z.Dv, z.Dv, lane);
  __syncwarp();
  // state: d phi_k = R_n [v_t|1], d[v_t|1] = phi_k R_n
  float dpk[kSlotF2], dv[kSlotDv];
  lanes_zero(dpk);
  lanes_zero(dv);
  const float* Rn = R + (int64_t(bh) * z.N + n) * z.F2 * z.Dv;
  for (int f = 0; f < z.F2; ++f) {
    const float* Rf = Rn + int64_t(f) * z.Dv;
    lanes_add_at(dpk, f, lanes_dot(vt, Rf, z.Dv, lane), lane);
    lanes_axpy(dv, phs[warp][f], Rf, z.Dv, lane);
  }
  // linear queries of the chunk: i in [t + w, 64n + w + 63]
  const int i_hi = min(z.L - 1, n * kChunk + z.w + kChunk - 1);
  for (int i = t + z.w; i <= i_hi; ++i) {
    const float* dOi = dOut + (qb + i) * z.Dv;
    const float* pqi = phq + (qb + i) * z.F2;
    const float p = lanes_dot(pk, pqi, z.F2, lane);
    const float dP = lanes_dot(vt, dOi, z.Dv, lane);
    lanes_axpy(dpk, dP, pqi, z.F2, lane);
    lanes_axpy(dv, p, dOi, z.D, lane);
  }
  lanes_store(dpk, dphk + row * z.F2, z.F2, lane);
  // window queries i in [t, t + w - 1]
  float kr[kSlotD], dk[kSlotD];
  lanes_load(kr, k + kvrow * z.D, z.D, lane);
  lanes_zero(dk);
  const int w_hi = min(z.L - 1, t + z.w - 1);
  for (int i = t; i <= w_hi; ++i) {
    const float* qi = q + (qb + i) * z.D;
    const float* dyi = dy + (qb + i) * z.D;
    const float* ri = rs + (qb + i) * 4;
    const float s = z.scale * lanes_dot(kr, qi, z.D, lane);
    const float p = ri[1] * expf(s - ri[0]);
    const float dP = lanes_dot(vt, dyi, z.D, lane);
    lanes_axpy(dk, p * (dP - ri[2]) * z.scale, qi, z.D, lane);
    lanes_axpy(dv, p, dyi, z.D, lane);
  }
  lanes_store(dk, dkh + row * z.D, z.D, lane);
  lanes_store(dv, dvh + row * z.D, z.D, lane);
}

// Feature-map backward, one warp per row: du [B, Hq, L, F] from phi, dphi; dx += du W^T added into the
// head's input gradient gx [B, Hq, L, D]. grid (ceil(L / kWarps), B * Hq, 2): z = 0 queries, 1 keys.
__global__ void features_backward_kernel(Dims z, const float* __restrict__ phq, const float* __restrict__ phk,
                                         const float* __restrict__ dphq, const float* __restrict__ dphk,
                                         const float* __restrict__ wq, const float* __restrict__ wk, int act,
                                         float* __restrict__ duq, float* __restrict__ duk, float* __restrict__ gq,
                                         float* __restrict__ gk) {
  __shared__ float dus[kWarps][kMaxF];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * kWarps + warp;
  if (i >= z.L) return;
  const int bh = blockIdx.y, h = bh % z.Hq;
  const bool key = blockIdx.z == 1;
  const int64_t row = int64_t(bh) * z.L + i;
  const int F = z.F;
  const float* phi = (key ? phk : phq) + row * z.F2;
  const float* dphi = (key ? dphk : dphq) + row * z.F2;
  float p1[kSlotF], p2[kSlotF], d1[kSlotF], d2[kSlotF], du[kSlotF];
  lanes_load(p1, phi, F, lane);
  lanes_load(p2, phi + F, F, lane);
  lanes_load(d1, dphi, F, lane);
  lanes_load(d2, dphi + F, F, lane);
  if (act == int(FeatureAct::Exp)) {
#pragma unroll
    for (int j = 0; j < kSlotF; ++j) du[j] = d1[j] * p1[j] - d2[j] * p2[j];
  } else {
    float s1 = 0.f, s2 = 0.f;
#pragma unroll
    for (int j = 0; j < kSlotF; ++j) s1 += d1[j] * p1[j], s2 += d2[j] * p2[j];
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
#pragma unroll
    for (int j = 0; j < kSlotF; ++j) du[j] = p1[j] * (d1[j] - s1) - p2[j] * (d2[j] - s2);
  }
  lanes_store(du, (key ? duk : duq) + row * F, F, lane);
  lanes_store(du, dus[warp], F, lane);
  __syncwarp();
  const float* W = (key ? wk : wq) + int64_t(h) * z.D * F;
  float* gx = (key ? gk : gq) + row * z.D;
  for (int d = lane; d < z.D; d += 32) {
    float s = 0.f;
    for (int f = 0; f < F; ++f) s += dus[warp][f] * W[int64_t(d) * F + f];
    gx[d] += s;
  }
}

// dW partials: part[seg, h, D*F] = sum over rows r = (b, i) of segment seg of x[b, hx, i, :]^T du[b, h, i, :]
// (hx = h / grp). grid (nseg, Hq), 256 threads; segments take 32-row tiles round robin.
constexpr int kWRows = 32, kWThreads = 256, kWSlots = kMaxD * kMaxF / kWThreads;
__global__ void weight_grad_partial_kernel(Dims z, const float* __restrict__ x, int Hx, const float* __restrict__ du,
                                           float* __restrict__ part) {
  __shared__ float xs[kWRows][kMaxD];
  __shared__ float us[kWRows][kMaxF];
  const int seg = blockIdx.x, nseg = gridDim.x, h = blockIdx.y, hx = h / (z.Hq / Hx);
  const int F = z.F, D = z.D, DF = D * F;
  const int64_t rows = int64_t(z.B) * z.L;
  float acc[kWSlots];
#pragma unroll
  for (int j = 0; j < kWSlots; ++j) acc[j] = 0.f;
  for (int64_t r0 = int64_t(seg) * kWRows; r0 < rows; r0 += int64_t(nseg) * kWRows) {
    const int n = rows - r0 < kWRows ? int(rows - r0) : kWRows;
    __syncthreads();
    for (int e = threadIdx.x; e < n * D; e += blockDim.x) {
      const int64_t r = r0 + e / D;
      const int b = int(r / z.L), i = int(r % z.L);
      xs[e / D][e % D] = x[((int64_t(b) * Hx + hx) * z.L + i) * D + e % D];
    }
    for (int e = threadIdx.x; e < n * F; e += blockDim.x) {
      const int64_t r = r0 + e / F;
      const int b = int(r / z.L), i = int(r % z.L);
      us[e / F][e % F] = du[((int64_t(b) * z.Hq + h) * z.L + i) * F + e % F];
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kWSlots; ++j) {
      const int e = threadIdx.x + kWThreads * j;
      if (e < DF) {
        const int d = e / F, f = e % F;
        float s = 0.f;
        for (int r = 0; r < n; ++r) s += xs[r][d] * us[r][f];
        acc[j] += s;
      }
    }
  }
  float* o = part + (int64_t(seg) * z.Hq + h) * DF;
#pragma unroll
  for (int j = 0; j < kWSlots; ++j) {
    const int e = threadIdx.x + kWThreads * j;
    if (e < DF) o[e] = acc[j];
  }
}

__global__ void sum_segments_kernel(const float* __restrict__ part, int nseg, int64_t n, float* __restrict__ out) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int j = 0; j < nseg; ++j) s += part[int64_t(j) * n + e];
    out[e] = s;
  }
}

// dq [B, L, Hq, D] from the head-major gq; dk, dv [B, L, Hkv, D] summed over the heads of each group.
__global__ void finish_inputs_kernel(Dims z, const float* __restrict__ gq, const float* __restrict__ gk,
                                     const float* __restrict__ gv, float* __restrict__ dq, float* __restrict__ dk,
                                     float* __restrict__ dv) {
  const int64_t nq = int64_t(z.B) * z.L * z.Hq * z.D, nk = int64_t(z.B) * z.L * z.Hkv * z.D;
  const int grp = z.Hq / z.Hkv;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < nq + nk;
       e += int64_t(gridDim.x) * blockDim.x) {
    if (e < nq) {
      if (!dq) continue;
      const int c = int(e % z.D);
      int64_t r = e / z.D;
      const int h = int(r % z.Hq);
      r /= z.Hq;
      const int i = int(r % z.L), b = int(r / z.L);
      dq[e] = gq[((int64_t(b) * z.Hq + h) * z.L + i) * z.D + c];
    } else {
      const int64_t e2 = e - nq;
      const int c = int(e2 % z.D);
      int64_t r = e2 / z.D;
      const int g = int(r % z.Hkv);
      r /= z.Hkv;
      const int t = int(r % z.L), b = int(r / z.L);
      float sk = 0.f, sv = 0.f;
      for (int h = g * grp; h < (g + 1) * grp; ++h) {
        const int64_t src = ((int64_t(b) * z.Hq + h) * z.L + t) * z.D + c;
        sk += gk[src];
        sv += gv[src];
      }
      if (dk) dk[e2] = sk;
      if (dv) dv[e2] = sv;
    }
  }
}

// df[h] = sg (1 - sg) sum_{b, i} dsg_{b,h,i}; one block of 256 threads per head.
__global__ void window_weight_grad_kernel(Dims z, const float* __restrict__ rs, const float* __restrict__ lol_f,
                                          float* __restrict__ df) {
  __shared__ float red[256];
  const int h = blockIdx.x;
  float s = 0.f;
  for (int64_t r = threadIdx.x; r < int64_t(z.B) * z.L; r += blockDim.x) {
    const int b = int(r / z.L), i = int(r % z.L);
    s += rs[((int64_t(b) * z.Hq + h) * z.L + i) * 4 + 3];
  }
  red[threadIdx.x] = s;
  __syncthreads();
  for (int o = 128; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) red[threadIdx.x] += red[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const float sg = sigmoidf_stable(lol_f[h]);
    df[h] = red[0] * sg * (1.f - sg);
  }
}

// ---- host side --------------------------------------------------------------------------------------

void check_last(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail_cat("lolcats attention (cuda): ", what, ": ", cudaGetErrorString(e));
}

int grid_1d(int64_t n, int threads = 256) { return int(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 65535))); }

Dims make_dims(const LolcatsAttnArgs& a) {
  LZ_CUDA_CHECK(a.B >= 1 && a.L >= 0 && a.Hq >= 1 && a.Hkv >= 1 && a.Hq % a.Hkv == 0,
                "lolcats attention (cuda): bad sizes B ", a.B, " L ", a.L, " Hq ", a.Hq, " Hkv ", a.Hkv);
  LZ_CUDA_CHECK(a.D >= 1 && a.D <= kMaxD, "lolcats attention (cuda): head dim ", a.D, " not in [1, ", kMaxD, "]");
  LZ_CUDA_CHECK(a.F >= 1 && a.F <= kMaxF, "lolcats attention (cuda): feature dim ", a.F, " not in [1, ", kMaxF, "]");
  LZ_CUDA_CHECK(a.window >= 1, "lolcats attention (cuda): window ", a.window, " < 1");
  LZ_CUDA_CHECK(int64_t(a.B) * a.Hq <= 65535, "lolcats attention (cuda): B * Hq ", int64_t(a.B) * a.Hq,
                " over the grid limit 65535");
  LZ_CUDA_CHECK(a.L == 0 || (a.q && a.k && a.v && a.wq && a.wk && a.lolcats_f),
                "lolcats attention (cuda): missing q, k, v, wq, wk or lolcats_f");
  Dims z;
  z.B = a.B, z.L = a.L, z.Hq = a.Hq, z.Hkv = a.Hkv, z.D = a.D, z.F = a.F, z.F2 = 2 * a.F, z.Dv = a.D + 1;
  z.N = (a.L + kChunk - 1) / kChunk;
  z.w = a.window;
  z.scale = a.scale > 0.f ? a.scale : 1.f / std::sqrt(float(a.D));
  z.eps = a.eps;
  return z;
}

// One cudaMallocAsync carved into fp32 tensors.
class Workspace {
 public:
  explicit Workspace(cudaStream_t s) : s_(s) {}
  ~Workspace() {
    if (base_) cudaFreeAsync(base_, s_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  float** add(float** slot, int64_t n) {
    slots_[count_] = slot;
    sizes_[count_++] = (n + 63) / 64 * 64;  // 256-byte aligned pieces
    return slot;
  }
  void allocate() {
    int64_t total = 0;
    for (int j = 0; j < count_; ++j) total += sizes_[j];
    LZ_CUDA_OK(cudaMallocAsync(reinterpret_cast<void**>(&base_), size_t(std::max<int64_t>(total, 1)) * sizeof(float), s_));
    int64_t off = 0;
    for (int j = 0; j < count_; ++j) *slots_[j] = base_ + off, off += sizes_[j];
  }

 private:
  cudaStream_t s_;
  float* base_ = nullptr;
  float** slots_[32] = {};
  int64_t sizes_[32] = {};
  int count_ = 0;
};

// fp32 head-major inputs and the forward's state.
struct Prepared {
  float *q = nullptr, *k = nullptr, *vh = nullptr, *wq = nullptr, *wk = nullptr, *phq = nullptr, *phk = nullptr,
        *S = nullptr;
  void reserve(Workspace& ws, const Dims& z) {
    const int64_t rq = int64_t(z.B) * z.Hq * z.L, rk = int64_t(z.B) * z.Hkv * z.L;
    ws.add(&q, rq * z.D);
    ws.add(&k, rk * z.D);
    ws.add(&vh, rk * z.Dv);
    ws.add(&wq, int64_t(z.Hq) * z.D * z.F);
    ws.add(&wk, int64_t(z.Hq) * z.D * z.F);
    ws.add(&phq, rq * z.F2);
    ws.add(&phk, rq * z.F2);
    ws.add(&S, int64_t(z.B) * z.Hq * z.N * z.F2 * z.Dv);
  }
};

template <typename T>
void prepare(const LolcatsAttnArgs& a, const Dims& z, const Prepared& p, cudaStream_t st) {
  const int64_t nq = int64_t(z.B) * z.Hq * z.L * z.D, nk = int64_t(z.B) * z.Hkv * z.L;
  const int64_t nw = int64_t(z.Hq) * z.D * z.F;
  to_head_major_kernel<T><<<grid_1d(nq), 256, 0, st>>>(static_cast<const T*>(a.q), p.q, z.B, z.L, z.Hq, z.D, z.D);
  to_head_major_kernel<T><<<grid_1d(nk * z.D), 256, 0, st>>>(static_cast<const T*>(a.k), p.k, z.B, z.L, z.Hkv, z.D,
                                                              z.D);
  to_head_major_kernel<T><<<grid_1d(nk * z.Dv), 256, 0, st>>>(static_cast<const T*>(a.v), p.vh, z.B, z.L, z.Hkv, z.D,
                                                               z.Dv);
  to_f32_kernel<T><<<grid_1d(nw), 256, 0, st>>>(static_cast<const T*>(a.wq), p.wq, nw);
  to_f32_kernel<T><<<grid_1d(nw), 256, 0, st>>>(static_cast<const T*>(a.wk), p.wk, nw);
  check_last("layout conversion");
  const dim3 rows((z.L + kWarps - 1) / kWarps, z.B * z.Hq, 2);
  features_kernel<<<rows, 32 * kWarps, 0, st>>>(p.q, p.k, p.wq, p.wk, p.phq, p.phk, z.L, z.Hq, z.Hkv, z.D, z.F,
                                                int(a.act));
  check_last("feature maps");
  // S_n: prefix sums of the key blocks [64m - w - 63, 64m - w]
  block_outer_kernel<<<dim3(z.N, z.B * z.Hq), 256, 0, st>>>(p.phk, z.F2, p.vh, z.Dv, z.Hq, z.Hq / z.Hkv, z.L, z.N,
                                                            -z.w - (kChunk - 1), p.S);
  check_last("key block sums");
  const int64_t cells = int64_t(z.B) * z.Hq * z.F2 * z.Dv;
  scan_blocks_kernel<<<grid_1d(cells), 256, 0, st>>>(p.S, int64_t(z.B) * z.Hq, z.N, z.F2 * z.Dv, false);
  check_last("state prefix sums");
}

template <typename T>
void run_forward(const LolcatsAttnArgs& a, const Dims& z, const Prepared& p, float* Wn, float* Ln, float* stats,
                 T* y, cudaStream_t st) {
  const dim3 rows((z.L + kWarps - 1) / kWarps, z.B * z.Hq);
  forward_rows_kernel<T><<<rows, 32 * kWarps, 0, st>>>(z, p.q, p.k, p.vh, p.phq, p.phk, p.S, a.lolcats_f, y, Wn, Ln,
                                                       stats);
  check_last("forward rows");
}

template <typename T>
void forward_impl(const LolcatsAttnArgs& a, cudaStream_t st) {
  const Dims z = make_dims(a);
  if (z.L == 0) return;
  LZ_CUDA_CHECK(a.y, "lolcats attention (cuda): missing y");
  Workspace ws(st);
  Prepared p;
  p.reserve(ws, z);
  ws.allocate();
  prepare<T>(a, z, p, st);
  run_forward<T>(a, z, p, nullptr, nullptr, nullptr, static_cast<T*>(a.y), st);
}

template <typename T>
void backward_impl(const LolcatsAttnArgs& a, const void* dy_in, const LolcatsAttnGrads& g, cudaStream_t st) {
  const Dims z = make_dims(a);
  if (z.L == 0) {  // nothing flows; the overwritten outputs are zeros
    if (g.dwq) LZ_CUDA_OK(cudaMemsetAsync(g.dwq, 0, size_t(z.Hq) * z.D * z.F * sizeof(float), st));
    if (g.dwk) LZ_CUDA_OK(cudaMemsetAsync(g.dwk, 0, size_t(z.Hq) * z.D * z.F * sizeof(float), st));
    if (g.dlolcats_f) LZ_CUDA_OK(cudaMemsetAsync(g.dlolcats_f, 0, size_t(z.Hq) * sizeof(float), st));
    return;
  }
  LZ_CUDA_CHECK(dy_in, "lolcats attention (cuda): missing dy");
  const int64_t rq = int64_t(z.B) * z.Hq * z.L;
  const int64_t rows_bl = int64_t(z.B) * z.L;
  const int nseg = int(std::min<int64_t>((rows_bl + kWRows - 1) / kWRows, 128));
  const int64_t nW = int64_t(z.Hq) * z.D * z.F;
  Workspace ws(st);
  Prepared p;
  p.reserve(ws, z);
  float *Wn, *Ln, *stats, *dy, *rs, *dOut, *R, *dphq, *dphk, *gq, *gk, *gv, *duq, *duk, *part;
  ws.add(&Wn, rq * z.D);
  ws.add(&Ln, rq * z.D);
  ws.add(&stats, rq * 4);
  ws.add(&dy, rq * z.D);
  ws.add(&rs, rq * 4);
  ws.add(&dOut, rq * z.Dv);
  ws.add(&R, int64_t(z.B) * z.Hq * z.N * z.F2 * z.Dv);
  ws.add(&dphq, rq * z.F2);
  ws.add(&dphk, rq * z.F2);
  ws.add(&gq, rq * z.D);
  ws.add(&gk, rq * z.D);
  ws.add(&gv, rq * z.D);
  ws.add(&duq, rq * z.F);
  ws.add(&duk, rq * z.F);
  ws.add(&part, int64_t(nseg) * nW);
  ws.allocate();
  prepare<T>(a, z, p, st);
  run_forward<float>(a, z, p, Wn, Ln, stats, nullptr, st);
  to_head_major_kernel<T><<<grid_1d(rq * z.D), 256, 0, st>>>(static_cast<const T*>(dy_in), dy, z.B, z.L, z.Hq, z.D,
                                                              z.D);
  check_last("dy conversion");
  const dim3 rows((z.L + kWarps - 1) / kWarps, z.B * z.Hq);
  const int threads = 32 * kWarps;
  backward_prep_kernel<<<rows, threads, 0, st>>>(z, dy, Wn, Ln, stats, a.lolcats_f, rs, dOut);
  check_last("backward prep");
  // R_n: exclusive suffix sums of the query blocks [64m + w, 64m + w + 63]
  block_outer_kernel<<<dim3(z.N, z.B * z.Hq), 256, 0, st>>>(p.phq, z.F2, dOut, z.Dv, z.Hq, 1, z.L, z.N, z.w, R);
  check_last("query block sums");
  scan_blocks_kernel<<<grid_1d(int64_t(z.B) * z.Hq * z.F2 * z.Dv), 256, 0, st>>>(R, int64_t(z.B) * z.Hq, z.N,
                                                                                  z.F2 * z.Dv, true);
  check_last("state suffix sums");
  backward_query_kernel<<<rows, threads, 0, st>>>(z, p.q, p.k, p.vh, dy, p.phk, p.S, rs, dOut, dphq, gq);
  check_last("backward queries");
  backward_key_kernel<<<rows, threads, 0, st>>>(z, p.q, p.k, p.vh, dy, p.phq, p.phk, R, rs, dOut, dphk, gk, gv);
  check_last("backward keys");
  features_backward_kernel<<<dim3(rows.x, rows.y, 2), threads, 0, st>>>(z, p.phq, p.phk, dphq, dphk, p.wq, p.wk,
                                                                        int(a.act), duq, duk, gq, gk);
  check_last("feature-map backward");
  if (g.dwq) {
    weight_grad_partial_kernel<<<dim3(nseg, z.Hq), kWThreads, 0, st>>>(z, p.q, z.Hq, duq, part);
    sum_segments_kernel<<<grid_1d(nW), 256, 0, st>>>(part, nseg, nW, g.dwq);
    check_last("dwq");
  }
  if (g.dwk) {
    weight_grad_partial_kernel<<<dim3(nseg, z.Hq), kWThreads, 0, st>>>(z, p.k, z.Hkv, duk, part);
    sum_segments_kernel<<<grid_1d(nW), 256, 0, st>>>(part, nseg, nW, g.dwk);
    check_last("dwk");
  }
  if (g.dq || g.dk || g.dv) {
    const int64_t n = rq * z.D + int64_t(z.B) * z.L * z.Hkv * z.D;
    finish_inputs_kernel<<<grid_1d(n), 256, 0, st>>>(z, gq, gk, gv, g.dq, g.dk, g.dv);
    check_last("input gradients");
  }
  if (g.dlolcats_f) {
    window_weight_grad_kernel<<<z.Hq, 256, 0, st>>>(z, rs, a.lolcats_f, g.dlolcats_f);
    check_last("window weight gradient");
  }
}

}  // namespace

void lolcats_attention_forward(const LolcatsAttnArgs& a, cudaStream_t stream) {
  if (a.fp32)
    forward_impl<float>(a, stream);
  else
    forward_impl<__nv_bfloat16>(a, stream);
}

void lolcats_attention_backward(const LolcatsAttnArgs& a, const void* dy, const LolcatsAttnGrads& g,
                                cudaStream_t stream) {
  if (a.fp32)
    backward_impl<float>(a, dy, g, stream);
  else
    backward_impl<__nv_bfloat16>(a, dy, g, stream);
}

}  // namespace lizard::cuda
