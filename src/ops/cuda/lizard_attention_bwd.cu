// Lizard attention backward, parallel form, fp32 arithmetic on CUDA cores (LIZARD.md sections 2-4).
// Exact gradients, O(L^2 (2F + D)) per head: the reference-grade GPU backward (a check path); the
// chunked tensor-core backward further down (lizard_attention_backward_chunked) is the fast path.
//
// With Bc_i = sum_{l<=i} lg_l, K_it = (phi_q_i . phi_k_t) exp(Bc_i - Bc_t) for t <= i:
//   G_i = N_i / (den_i + eps), N_i = sum_t K_it v_t, den_i = sum_t K_it
//   dN_i = dy_i / (den_i + eps), dden_i = -(dy_i . G_i) / (den_i + eps), dK_it = dN_i . v_t + dden_i
//   dphi_q_i = sum_t dK_it e_it phi_k_t, dphi_k_t = sum_i dK_it e_it phi_q_i, dv_t += sum_i K_it dN_i
//   dBc_i = sum_t dK_it K_it - sum_i' dK_i'i K_i'i,  d lg_l = sum_{i>=l} dBc_i
// Window (p_it = exp(s_it - lse_i), lse over window and sinks): dA_i = alpha dy_i,
//   Delta_i = dA_i . A_i, ds_it = p_it (dA_i . v_t - Delta_i), dq_i = scale sum_t ds_it k_t,
//   dk_t = scale sum_i ds_it q_i, dv_t += sum_i p_it dA_i, dmu_j = -sum_i exp(mu_j - lse_i) Delta_i,
//   dalpha = sum_i dy_i . A_i.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/lizard_attention.h"
#include "ops/cuda/mma.cuh"

namespace lizard::cuda {

void check_common_args(const LizardAttnArgs& a);

namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
// Four consecutive elements (16-byte aligned fp32, 8-byte aligned bf16) in one vector load.
__device__ __forceinline__ float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 ld4(const __nv_bfloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

__device__ __forceinline__ float wsum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float wmax(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Serial dot of a (shared/global fp32) vector with a row of T.
template <typename T>
__device__ __forceinline__ float dot_row(const float* a, const T* row, int n) {
  float s = 0.f;
  for (int j = 0; j < n; ++j) s += a[j] * ld(row + j);
  return s;
}

struct Ws {  // fp32 workspace, all [BH, L, X]
  float *phq, *phk, *bc, *dn, *dden, *lse, *delta, *dphq, *dphk, *dbq, *dbk;
  float* dya;  // dy . A per row (alpha's gradient; under shared_normaliser divided by Q)
  float* gw;   // shared_normaliser only: each row's weight of dy in the gate passes, p d / Q
  // The chunked backward's dn ([BH, L, D] bf16, over dn's memory): its readers (the reverse state and output
  // passes) round it to bf16 for their products anyway, so storing it rounded changes no result and halves
  // its traffic (written once, read twice). The parallel backward keeps dn in fp32.
  __nv_bfloat16* dn16;
};

struct Dims {
  int B, L, Hq, Hkv, D, F, w, m, group;
  __host__ __device__ int64_t q_off(int b, int i, int h) const { return ((int64_t(b) * L + i) * Hq + h) * D; }
  __host__ __device__ int64_t k_off(int b, int i, int h) const { return ((int64_t(b) * L + i) * Hkv + h / group) * D; }
  __host__ __device__ int64_t bh(int b, int h) const { return int64_t(b) * Hq + h; }
};

// meta_weights_gate: p = sum_j exp(mu_j - lse), the sinks' share of a row's window softmax (lse over the window
// and the sinks), and the sinks' gradient through it: dmeta_j += softmax(mu)_j g for a gradient g on p (one
// atomic per sink). The gate passes and the shared_normaliser row pass use both.
__device__ __forceinline__ float sinks_share_of(const LizardAttnArgs& a, int h, float lse) {
  const float* mu = a.meta + (a.meta_per_head ? h * a.n_meta : 0);
  float p = 0.f;
  for (int j = 0; j < a.n_meta; ++j) p += expf(mu[j] - lse);
  return p;
}
__device__ __forceinline__ void add_sinks_share_grad(const LizardAttnArgs& a, int h, float* dmeta, float g) {
  const int moff = a.meta_per_head ? h * a.n_meta : 0;
  const float* mu = a.meta + moff;
  float mx = -INFINITY, den = 0.f;
  for (int j = 0; j < a.n_meta; ++j) mx = fmaxf(mx, mu[j]);
  for (int j = 0; j < a.n_meta; ++j) den += expf(mu[j] - mx);
  for (int j = 0; j < a.n_meta; ++j) atomicAdd(dmeta + moff + j, expf(mu[j] - mx) / den * g);
}

// Feature maps of q and k for every token: warp per (b, h, i).
template <typename T>
__global__ void feat_kernel(const LizardAttnArgs a, Dims d, Ws ws) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * kWarps + warp, bh = blockIdx.y, h = bh % d.Hq, b = bh / d.Hq;
  if (i >= d.L) return;
  const int F = d.F;
  for (int which = 0; which < 2; ++which) {
    const T* x = static_cast<const T*>(which ? a.k : a.q) + (which ? d.k_off(b, i, h) : d.q_off(b, i, h));
    const T* W = static_cast<const T*>(which ? a.wk : a.wq) + int64_t(h) * d.D * F;
    float* out = (which ? ws.phk : ws.phq) + (int64_t(bh) * d.L + i) * 2 * F;
    float u[4];
    float mx = -INFINITY, mn = INFINITY;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int f = lane + 32 * r;
      u[r] = 0.f;
      if (f < F) {
        for (int e = 0; e < d.D; ++e) u[r] += ld(x + e) * ld(W + int64_t(e) * F + f);
        mx = fmaxf(mx, u[r]), mn = fminf(mn, u[r]);
      }
    }
    if (a.act == FeatureAct::Exp) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int f = lane + 32 * r;
        if (f < F) out[f] = expf(u[r]), out[F + f] = expf(-u[r]);
      }
      continue;
    }
    mx = wmax(mx);
    mn = -wmax(-mn);
    float sp = 0.f, sm = 0.f;
#pragma unroll
    for (int r = 0; r < 4; ++r)
      if (lane + 32 * r < F) sp += expf(u[r] - mx), sm += expf(mn - u[r]);
    sp = 1.f / wsum(sp);
    sm = 1.f / wsum(sm);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int f = lane + 32 * r;
      if (f < F) out[f] = expf(u[r] - mx) * sp, out[F + f] = expf(mn - u[r]) * sm;
    }
  }
}

// Bc = cumulative sum of log gamma per (b, h): one warp per (b, h).
__global__ void cumsum_kernel(const LizardAttnArgs a, Dims d, Ws ws) {
  const int lane = threadIdx.x, bh = blockIdx.x, h = bh % d.Hq, b = bh / d.Hq;
  float carry = 0.f;
  for (int i0 = 0; i0 < d.L; i0 += 32) {
    const int i = i0 + lane;
    float v = 0.f;
    if (i < d.L) v = a.log_gamma[a.gate_per_head ? (int64_t(b) * d.L + i) * d.Hq + h : int64_t(b) * d.L + i];
    for (int o = 1; o < 32; o <<= 1) {
      float u = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += u;
    }
    if (i < d.L) ws.bc[int64_t(bh) * d.L + i] = carry + v;
    carry += __shfl_sync(0xffffffffu, v, 31);
  }
}

// shared_normaliser (y = (p N + alpha A) / Q, Q = p d + 1 - p, d = den + eps; after the stats stage):
// den_i = phq_i . zt_i with zt_i = gamma_i zt_{i-1} + phk_i (the decayed key sum, fp32 recurrence), then
// per row gw = p d / Q (the gate passes scale dy by it and divide by d: dN = p dy / Q), delta = alpha dya / Q
// (the gate forward output pass adds p g), dya /= Q (dalpha = sum dy . A / Q) and the window stage's dy
// copy dyw = dy / Q (its dO = alpha dyw). One CTA of P2 threads per (b, h); chunks of 64 rows, each
// chunk's phk / phq column and gammas loaded in one batch (not a load per row on the serial chain). This
// pass costs: stage 2 at 99,953 tokens/s against mwg's 113,371 (one H100, session 6, quality_runs.sh tput);
// branch sn-fused-bwd folds it into the gate forward output pass (not yet run on a GPU).
// gate_skips_window: sh = w (a multiple of 64) and ws.phq the shifted query features (skip_in_kernel); each
// row's den is then that of row i - sh (0 for i < sh), kept in dens. Rows i < sh have no gate row, whose
// epilogue (dden_rows) adds the sinks' share term through Q = p d + 1 - p; this pass adds it for them (with
// N = 0: -(p / Q)(d - 1) dy . y) to delta and, through dmeta (may be null), to the sinks.
template <typename T>
__global__ void shared_rows_kernel(const LizardAttnArgs a, Dims d, Ws ws, const T* dy, T* dyw, int sh, float* dens,
                                   float* dmeta) {
  constexpr int kR = 64;
  extern __shared__ float part[];  // [kR][P2 + 1], then iq [kR], gamma [kR]
  const int P2 = 2 * d.F, tid = threadIdx.x, bh = blockIdx.x, h = bh % d.Hq, b = bh / d.Hq, L = d.L;
  float* iqs = part + kR * (P2 + 1);
  float* gam = iqs + kR;
  const int64_t o = int64_t(bh) * L;
  const float alpha = a.alpha[a.alpha_per_head ? h : 0];
  float zt = 0.f;  // thread tid's entry of the decayed key sum
  for (int r0 = 0; r0 < L; r0 += kR) {
    const int nr = min(kR, L - r0);
    if (tid < nr) {
      const int64_t gi = a.gate_per_head ? (int64_t(b) * L + r0 + tid) * d.Hq + h : int64_t(b) * L + r0 + tid;
      gam[tid] = expf(a.log_gamma[gi]);
    }
    float kq[kR], qq[kR];
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      const int64_t i = o + r0 + min(r, nr - 1);
      kq[r] = ws.phk[i * P2 + tid], qq[r] = ws.phq[i * P2 + tid];
    }
    __syncthreads();  // gam
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      if (r < nr) {
        zt = gam[r] * zt + kq[r];
        part[r * (P2 + 1) + tid] = qq[r] * zt;
      }
    }
    __syncthreads();
    if (tid < nr) {
      const int64_t i = o + r0 + tid;
      float den = 0.f;
      for (int f = 0; f < P2; ++f) den += part[tid * (P2 + 1) + f];
      if (sh > 0) {  // row i - sh: this thread wrote it an earlier chunk ago
        dens[i] = den;
        den = r0 + tid >= sh ? dens[i - sh] : 0.f;
      }
      const float p = sinks_share_of(a, h, ws.lse[i]);
      const float dd = den + a.eps, iq = 1.f / (p * dd + (1.f - p));
      ws.gw[i] = p * dd * iq;
      ws.delta[i] = alpha * ws.dya[i] * iq;
      ws.dya[i] *= iq;
      iqs[tid] = iq;
      if (r0 + tid < sh) {  // no gate row (see above): dy . y = alpha dya
        const float gp = -p * iq * (dd - 1.f) * alpha * ws.dya[i];
        ws.delta[i] += gp;
        if (dmeta != nullptr) add_sinks_share_grad(a, h, dmeta, gp);
      }
    }
    __syncthreads();
    for (int e = tid; e < nr * d.D; e += P2) {
      const int r = e / d.D, c = e % d.D;
      const int64_t off = d.q_off(b, r0 + r, h) + c;
      dyw[off] = T(ld(dy + off) * iqs[r]);
    }
    __syncthreads();  // part and iqs are rewritten by the next chunk
  }
}

// gate_skips_window: the gated branch of row i covers keys t <= j = i - w, which is the ordinary gated branch
// at position j for the query phq_i exp(Bc_i - Bc_j) (the forward's form). The gate passes run unchanged in
// those shifted coordinates on the rows of Skip: skip_in_kernel fills row j from row i = j + w (rows j >= L - w
// empty: zero features and dy, no gate weight) -- first the query features (rows = false, before the
// shared_normaliser pass needs them), then dy and the per-row inputs; skip_out_kernel maps the query-side
// outputs back: dphq_i = exp(Bc_i - Bc_j) dphq'_j; dbq_i = dbq'_j (the factor's derivative moves dbq'_j from
// Bc_j to Bc_i); delta_i += delta'_j (meta_weights_gate's p g).
struct Skip {
  float *phq, *dphq;                       // [BH, L, 2F]
  float *lse, *gw, *dya, *delta, *dbq, *dens;  // [BH, L]; dens: the shared_normaliser pass's den by row
};

template <typename T>
__global__ void skip_in_kernel(const LizardAttnArgs a, Dims d, Ws ws, Skip sk, const T* dy, T* dys, bool rows) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int j = blockIdx.x * kWarps + warp, bh = blockIdx.y, h = bh % d.Hq, b = bh / d.Hq;
  if (j >= d.L) return;
  const int i = j + d.w;
  const bool ok = i < d.L;
  const int64_t oj = int64_t(bh) * d.L + j, oi = int64_t(bh) * d.L + (ok ? i : j);
  if (!rows) {
    const int F2 = 2 * d.F;
    const float sc = ok ? expf(ws.bc[oi] - ws.bc[oj]) : 0.f;
    for (int f = lane; f < F2; f += 32) sk.phq[oj * F2 + f] = ok ? ws.phq[oi * F2 + f] * sc : 0.f;
    return;
  }
  T* out = dys + d.q_off(b, j, h);
  const T* in = dy + d.q_off(b, ok ? i : j, h);
  for (int c = lane; c < d.D; c += 32) out[c] = ok ? in[c] : T(0.f);
  if (lane == 0) {
    sk.lse[oj] = ok ? ws.lse[oi] : INFINITY;  // p = 0
    sk.gw[oj] = ok && a.shared_normaliser ? ws.gw[oi] : 0.f;
    sk.dya[oj] = ok ? ws.dya[oi] : 0.f;
    sk.delta[oj] = 0.f;
  }
}

__global__ void skip_out_kernel(const LizardAttnArgs a, Dims d, Ws ws, Skip sk) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * kWarps + warp, bh = blockIdx.y;
  if (i >= d.L) return;
  const int j = i - d.w, F2 = 2 * d.F;
  const bool ok = j >= 0;
  const int64_t oi = int64_t(bh) * d.L + i, oj = int64_t(bh) * d.L + (ok ? j : i);
  const float sc = ok ? expf(ws.bc[oi] - ws.bc[oj]) : 0.f;
  // du_i (the first F columns of dphq_i; store_dphi's formula) from dphq_i = sc dphq'_j and phi_i
  const float* ph = ws.phq + oi * F2;
  const float* g = sk.dphq + oj * F2;
  float hp = 0.f, hm = 0.f;
  if (a.act == FeatureAct::Softmax && ok) {
    for (int f = lane; f < d.F; f += 32) hp += ph[f] * g[f] * sc, hm += ph[d.F + f] * g[d.F + f] * sc;
    hp = wsum(hp), hm = wsum(hm);
  }
  for (int f = lane; f < d.F; f += 32)
    ws.dphq[oi * F2 + f] = ok ? ph[f] * (g[f] * sc - hp) - ph[d.F + f] * (g[d.F + f] * sc - hm) : 0.f;
  if (lane == 0) {
    ws.dbq[oi] = ok ? sk.dbq[oj] : 0.f;
    if (a.meta_weights_gate && ok) ws.delta[oi] += sk.delta[oj];
  }
}

// Forward quantities per query (warp per (b, h, i)): dN, dden, lse, Delta, and dalpha.
template <typename T>
__global__ void stats_kernel(const LizardAttnArgs a, Dims d, Ws ws, const T* dy, float* dya_out, bool gate) {
  extern __shared__ float sm[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int F2 = 2 * d.F, D = d.D;
  float* sphq = sm + warp * (F2 + 2 * D);
  float* sq = sphq + F2;
  float* sdy = sq + D;
  const int i = blockIdx.x * kWarps + warp, bh = blockIdx.y, h = bh % d.Hq, b = bh / d.Hq;
  if (i >= d.L) return;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const float* bc = ws.bc + int64_t(bh) * d.L;
  const float* phk = ws.phk + int64_t(bh) * d.L * F2;
  for (int f = lane; f < F2; f += 32) sphq[f] = ws.phq[(int64_t(bh) * d.L + i) * F2 + f];
  for (int e = lane; e < D; e += 32) sq[e] = ld(q + d.q_off(b, i, h) + e), sdy[e] = ld(dy + d.q_off(b, i, h) + e);
  __syncwarp();
  constexpr int R = 8;  // D <= 256
  float N[R] = {}, A[R] = {};
  float den = 0.f;
  for (int t0 = 0; gate && t0 <= i; t0 += 32) {
    const int t = t0 + lane;
    float kt = 0.f;
    if (t <= i) kt = dot_row(sphq, phk + int64_t(t) * F2, F2) * expf(bc[i] - bc[t]);
    den += kt;
    const int nj = min(32, i - t0 + 1);
    for (int j = 0; j < nj; ++j) {
      const float c = __shfl_sync(0xffffffffu, kt, j);
      const T* vr = v + d.k_off(b, t0 + j, h);
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (lane + 32 * r < D) N[r] += c * ld(vr + lane + 32 * r);
    }
  }
  den = wsum(den);
  const float inv = 1.f / (den + a.eps);
  // Window: max over scores and sinks, then the softmax sums.
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const int tlo = max(0, i - d.w + 1);
  const float* mu = a.meta + (a.meta_per_head ? h * d.m : 0);
  float mx = -INFINITY;
  for (int t0 = tlo; t0 <= i; t0 += 32) {
    const int t = t0 + lane;
    if (t <= i) mx = fmaxf(mx, dot_row(sq, k + d.k_off(b, t, h), D) * scale);
  }
  for (int j = lane; j < d.m; j += 32) mx = fmaxf(mx, mu[j]);
  mx = wmax(mx);
  float sum = 0.f;
  for (int j = lane; j < d.m; j += 32) sum += expf(mu[j] - mx);
  for (int t0 = tlo; t0 <= i; t0 += 32) {
    const int t = t0 + lane;
    float p = 0.f;
    if (t <= i) p = expf(dot_row(sq, k + d.k_off(b, t, h), D) * scale - mx);
    sum += p;
    const int nj = min(32, i - t0 + 1);
    for (int j = 0; j < nj; ++j) {
      const float c = __shfl_sync(0xffffffffu, p, j);
      const T* vr = v + d.k_off(b, t0 + j, h);
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (lane + 32 * r < D) A[r] += c * ld(vr + lane + 32 * r);
    }
  }
  sum = wsum(sum);
  const float alpha = a.alpha[a.alpha_per_head ? h : 0];
  float dyg = 0.f, dya = 0.f;
  float* dn = ws.dn + (int64_t(bh) * d.L + i) * D;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int e = lane + 32 * r;
    if (e < D) {
      const float g = N[r] * inv, an = A[r] / sum;
      dyg += sdy[e] * g;
      dya += sdy[e] * an;
      if (gate) dn[e] = sdy[e] * inv;
    }
  }
  dyg = wsum(dyg);
  dya = wsum(dya);
  if (lane == 0) {
    const int64_t o = int64_t(bh) * d.L + i;
    if (gate) ws.dden[o] = -dyg * inv;
    ws.lse[o] = mx + logf(sum);
    ws.delta[o] = alpha * dya;
    dya_out[o] = dya;
  }
}

// Query-side gradients (warp per (b, h, i)): dphi_q, the window part of dq, dBc (query side), dmu.
template <typename T>
__global__ void qgrad_kernel(const LizardAttnArgs a, Dims d, Ws ws, const T* dy, float* dq, float* dmeta, bool gate) {
  extern __shared__ float sm[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int F2 = 2 * d.F, D = d.D;
  float* sphq = sm + warp * (F2 + 3 * D);
  float* sq = sphq + F2;
  float* sdn = sq + D;
  float* sda = sdn + D;
  const int i = blockIdx.x * kWarps + warp, bh = blockIdx.y, h = bh % d.Hq, b = bh / d.Hq;
  if (i >= d.L) return;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const float* bc = ws.bc + int64_t(bh) * d.L;
  const float* phk = ws.phk + int64_t(bh) * d.L * F2;
  const int64_t o = int64_t(bh) * d.L + i;
  const float alpha = a.alpha[a.alpha_per_head ? h : 0];
  for (int f = lane; f < F2; f += 32) sphq[f] = ws.phq[o * F2 + f];
  for (int e = lane; e < D; e += 32) {
    sq[e] = ld(q + d.q_off(b, i, h) + e);
    sdn[e] = ws.dn[o * D + e];
    sda[e] = alpha * ld(dy + d.q_off(b, i, h) + e);
  }
  __syncwarp();
  const float dden = ws.dden[o], lse = ws.lse[o], delta = ws.delta[o];
  constexpr int R = 8;
  float dph[R] = {}, dqa[R] = {};
  float dbq = 0.f;
  for (int t0 = 0; gate && t0 <= i; t0 += 32) {
    const int t = t0 + lane;
    float c = 0.f;
    if (t <= i) {
      const float e = expf(bc[i] - bc[t]);
      const float kk = dot_row(sphq, phk + int64_t(t) * F2, F2) * e;
      const float dk = dot_row(sdn, v + d.k_off(b, t, h), D) + dden;
      c = dk * e;
      dbq += dk * kk;
    }
    const int nj = min(32, i - t0 + 1);
    for (int j = 0; j < nj; ++j) {
      const float cj = __shfl_sync(0xffffffffu, c, j);
      const float* pr = phk + int64_t(t0 + j) * F2;
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (lane + 32 * r < F2) dph[r] += cj * pr[lane + 32 * r];
    }
  }
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const int tlo = max(0, i - d.w + 1);
  for (int t0 = tlo; t0 <= i; t0 += 32) {
    const int t = t0 + lane;
    float ds = 0.f;
    if (t <= i) {
      const float p = expf(dot_row(sq, k + d.k_off(b, t, h), D) * scale - lse);
      ds = p * (dot_row(sda, v + d.k_off(b, t, h), D) - delta);
    }
    const int nj = min(32, i - t0 + 1);
    for (int j = 0; j < nj; ++j) {
      const float cj = __shfl_sync(0xffffffffu, ds, j) * scale;
      const T* kr = k + d.k_off(b, t0 + j, h);
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (lane + 32 * r < D) dqa[r] += cj * ld(kr + lane + 32 * r);
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (gate && lane + 32 * r < F2) ws.dphq[o * F2 + lane + 32 * r] = dph[r];
    if (lane + 32 * r < D) dq[d.q_off(b, i, h) + lane + 32 * r] = dqa[r];
  }
  dbq = wsum(dbq);
  if (gate && lane == 0) ws.dbq[o] = dbq;
  if (dmeta != nullptr) {
    const float* mu = a.meta + (a.meta_per_head ? h * d.m : 0);
    for (int j = lane; j < d.m; j += 32)
      atomicAdd(dmeta + (a.meta_per_head ? h * d.m : 0) + j, -expf(mu[j] - lse) * delta);
  }
}

// Key-side gradients (warp per (b, h, t)): dphi_k, dk (window), dv, dBc (key side). dk, dv are
// accumulated with atomics (the query heads of a GQA group share them).
template <typename T>
__global__ void kgrad_kernel(const LizardAttnArgs a, Dims d, Ws ws, const T* dy, float* dk, float* dv, bool gate) {
  extern __shared__ float sm[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int F2 = 2 * d.F, D = d.D;
  float* sphk = sm + warp * (F2 + 2 * D);
  float* sk = sphk + F2;
  float* sv = sk + D;
  const int t = blockIdx.x * kWarps + warp, bh = blockIdx.y, h = bh % d.Hq, b = bh / d.Hq;
  if (t >= d.L) return;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const float* bc = ws.bc + int64_t(bh) * d.L;
  const float* phq = ws.phq + int64_t(bh) * d.L * F2;
  const float* dn = ws.dn + int64_t(bh) * d.L * D;
  const int64_t o = int64_t(bh) * d.L + t;
  const float alpha = a.alpha[a.alpha_per_head ? h : 0];
  for (int f = lane; f < F2; f += 32) sphk[f] = ws.phk[o * F2 + f];
  for (int e = lane; e < D; e += 32) sk[e] = ld(k + d.k_off(b, t, h) + e), sv[e] = ld(v + d.k_off(b, t, h) + e);
  __syncwarp();
  constexpr int R = 8;
  float dph[R] = {}, dka[R] = {}, dva[R] = {};
  float dbk = 0.f;
  for (int i0 = t; gate && i0 < d.L; i0 += 32) {
    const int i = i0 + lane;
    float kk = 0.f, c = 0.f;
    if (i < d.L) {
      const float e = expf(bc[i] - bc[t]);
      kk = dot_row(sphk, phq + int64_t(i) * F2, F2) * e;
      const float dkk = dot_row(sv, dn + int64_t(i) * D, D) + ws.dden[int64_t(bh) * d.L + i];
      c = dkk * e;
      dbk -= dkk * kk;
    }
    const int nj = min(32, d.L - i0);
    for (int j = 0; j < nj; ++j) {
      const float cj = __shfl_sync(0xffffffffu, c, j), kj = __shfl_sync(0xffffffffu, kk, j);
      const float* pr = phq + int64_t(i0 + j) * F2;
      const float* nr = dn + int64_t(i0 + j) * D;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (lane + 32 * r < F2) dph[r] += cj * pr[lane + 32 * r];
        if (lane + 32 * r < D) dva[r] += kj * nr[lane + 32 * r];
      }
    }
  }
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const int ihi = min(d.L - 1, t + d.w - 1);
  for (int i0 = t; i0 <= ihi; i0 += 32) {
    const int i = i0 + lane;
    float p = 0.f, ds = 0.f;
    if (i <= ihi) {
      const int64_t oi = int64_t(bh) * d.L + i;
      p = expf(dot_row(sk, q + d.q_off(b, i, h), D) * scale - ws.lse[oi]);
      ds = p * (alpha * dot_row(sv, dy + d.q_off(b, i, h), D) - ws.delta[oi]);
    }
    const int nj = min(32, ihi - i0 + 1);
    for (int j = 0; j < nj; ++j) {
      const float pj = __shfl_sync(0xffffffffu, p, j) * alpha, dsj = __shfl_sync(0xffffffffu, ds, j) * scale;
      const T* qr = q + d.q_off(b, i0 + j, h);
      const T* gr = dy + d.q_off(b, i0 + j, h);
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (lane + 32 * r < D) {
          dka[r] += dsj * ld(qr + lane + 32 * r);
          dva[r] += pj * ld(gr + lane + 32 * r);
        }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (gate && lane + 32 * r < F2) ws.dphk[o * F2 + lane + 32 * r] = dph[r];
    if (lane + 32 * r < D) {
      atomicAdd(dk + d.k_off(b, t, h) + lane + 32 * r, dka[r]);
      atomicAdd(dv + d.k_off(b, t, h) + lane + 32 * r, dva[r]);
    }
  }
  dbk = wsum(dbk);
  if (gate && lane == 0) ws.dbk[o] = dbk;
}

// Feature-map backward (warp per (b, h, i)): du from phi and dphi (stored over dphi), and the
// input gradients dq += du_q Wq^T, dk += du_k Wk^T.
template <typename T>
__global__ void featbwd_kernel(const LizardAttnArgs a, Dims d, Ws ws, float* dq, float* dk) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * kWarps + warp, bh = blockIdx.y, h = bh % d.Hq, b = bh / d.Hq;
  if (i >= d.L) return;
  const int F = d.F, F2 = 2 * F;
  for (int which = 0; which < 2; ++which) {
    const float* ph = (which ? ws.phk : ws.phq) + (int64_t(bh) * d.L + i) * F2;
    float* dph = (which ? ws.dphk : ws.dphq) + (int64_t(bh) * d.L + i) * F2;
    float du[4] = {};
    if (a.act == FeatureAct::Exp) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int f = lane + 32 * r;
        if (f < F) du[r] = dph[f] * ph[f] - dph[F + f] * ph[F + f];
      }
    } else {
      float sp = 0.f, sn = 0.f;
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int f = lane + 32 * r;
        if (f < F) sp += ph[f] * dph[f], sn += ph[F + f] * dph[F + f];
      }
      sp = wsum(sp);
      sn = wsum(sn);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int f = lane + 32 * r;
        if (f < F) du[r] = ph[f] * (dph[f] - sp) - ph[F + f] * (dph[F + f] - sn);
      }
    }
    __syncwarp();
#pragma unroll
    for (int r = 0; r < 4; ++r)
      if (lane + 32 * r < F) dph[lane + 32 * r] = du[r];  // du overwrites the first half
    __syncwarp();
    const T* W = static_cast<const T*>(which ? a.wk : a.wq) + int64_t(h) * d.D * F;
    for (int e = lane; e < d.D; e += 32) {
      float s = 0.f;
      for (int f = 0; f < F; ++f) s += dph[f] * ld(W + int64_t(e) * F + f);
      if (which)
        atomicAdd(dk + d.k_off(b, i, h) + e, s);
      else
        dq[d.q_off(b, i, h) + e] += s;
    }
  }
}

// dW[h][e][f] = sum over (b, i) of x[b,i,h][e] du[b,h,i][f]: block per (h, e), threads over f.
template <typename T>
__global__ void dw_kernel(const LizardAttnArgs a, Dims d, Ws ws, float* dwq, float* dwk) {
  const int h = blockIdx.x / d.D, e = blockIdx.x % d.D, F = d.F, F2 = 2 * F;
  for (int which = 0; which < 2; ++which) {
    float* out = which ? dwk : dwq;
    if (out == nullptr) continue;
    const T* x = static_cast<const T*>(which ? a.k : a.q);
    const float* du = which ? ws.dphk : ws.dphq;
    for (int f = threadIdx.x; f < F; f += blockDim.x) {
      float s = 0.f;
      for (int b = 0; b < d.B; ++b)
        for (int i = 0; i < d.L; ++i) {
          const float xv = ld(x + (which ? d.k_off(b, i, h) : d.q_off(b, i, h)) + e);
          s += xv * du[(d.bh(b, h) * d.L + i) * F2 + f];
        }
      out[(int64_t(h) * d.D + e) * F + f] = s;
    }
  }
}

// d lg_l = sum_{i >= l} (dbq_i + dbk_i): warp per (b, h), suffix scan; dalpha from dy . A.
__global__ void dlg_kernel(const LizardAttnArgs a, Dims d, Ws ws, const float* dya, float* dlg, float* dalpha) {
  const int lane = threadIdx.x, bh = blockIdx.x, h = bh % d.Hq, b = bh / d.Hq;
  float carry = 0.f, sa = 0.f;
  for (int i0 = d.L - 1; i0 >= 0; i0 -= 32) {
    const int i = i0 - lane;
    float v = 0.f;
    if (i >= 0) v = ws.dbq[int64_t(bh) * d.L + i] + ws.dbk[int64_t(bh) * d.L + i], sa += dya[int64_t(bh) * d.L + i];
    for (int o = 1; o < 32; o <<= 1) {
      float u = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += u;
    }
    if (i >= 0 && dlg != nullptr) {
      const float g = carry + v;
      if (a.gate_per_head)
        dlg[(int64_t(b) * d.L + i) * d.Hq + h] = g;
      else
        atomicAdd(dlg + int64_t(b) * d.L + i, g);
    }
    carry += __shfl_sync(0xffffffffu, v, 31);
  }
  sa = wsum(sa);
  if (lane == 0 && dalpha != nullptr) atomicAdd(dalpha + (a.alpha_per_head ? h : 0), sa);
}

// ---------------------------------------------------------------------------------------------
// Chunked gated branch of the backward on tensor cores (LIZARD.md section 5), C = 64, as state passes
// (gate_state_kernel: the chunks in order, every chunk's incoming state stored) and output passes
// (gate_fwd_out_kernel / gate_rev_out_kernel: one CTA of 4 warps per (b, query head, chunk), further down).
// With e_it = exp(Bc_i - Bc_t), K_it = (phq_i . phk_t) e_it, t <= i,
// V' = [v, 1] and dN'_i = [dn_i, dden_i], dK_it = dN'_i . V'_t:
//   forward, state S_n = sum_{t < chunk n} e(last of chunk n-1, t) phk_t V'_t^T ([2F x D] + z):
//     N_i (and den_i) as in the forward, then dn_i, dden_i, and
//     dphq_i = sum_{t <= i} dK_it e_it phk_t = W phk + exp(b_i) (S dn_i + z dden_i),  dbq_i = phq_i . dphq_i
//   reverse, state R_n = sum_{i after chunk n} e(i, last of chunk n) phq_i dN'_i^T (the dS):
//     dphk_t = W^T phq + exp(b_last - b_t) (R v_t + r),  dv_t += A^T dn + exp(b_last - b_t) R^T phk_t,
//     dbk_t = -phk_t . dphk_t
// where A = (phq phk^T) .* exp(b_i - b_t) .* causal and W = (dn V^T + dden) .* exp(b_i - b_t) .* causal
// inside the chunk (b = cumulative log gamma from the chunk start). The feature maps come from
// the fp32 workspace (feat_kernel), every exponent is <= 0; matrix products in bf16 with fp32
// accumulation, states fp32 in shared memory (a bf16 copy feeds the tensor cores).
namespace gate {

using namespace mma;
constexpr int kC = 64, kGW = 4, kGT = kGW * 32;

// Output passes: PQ, PK, V, DN (the reverse's dn), the bf16 state [P2][D + 8], then fp32 z (or r) and
// six per-row arrays. The chunk's incoming state arrives bf16 from the state pass (no fp32 copy here).
template <int D, int P2>
struct Smem {
  static constexpr int LDP = P2 + 8, LDD = D + 8;
  static constexpr size_t bf16_elems = size_t(2) * kC * LDP + size_t(2) * kC * LDD + size_t(P2) * LDD;
  static constexpr size_t bytes = bf16_elems * 2 + (size_t(P2) + 6 * kC) * 4;
};

struct ChunkInfo {
  int c0, nvalid;
  float blast;
};

// b (local cumulative log gamma), exp(b), exp(b_last - b) for the 64 rows of chunk n; padded rows
// take b_last (so every decay stays finite). Threads 0..63.
__device__ __forceinline__ ChunkInfo chunk_info(const float* bc, int L, int n) {
  ChunkInfo ci;
  ci.c0 = n * kC;
  ci.nvalid = min(kC, L - ci.c0);
  const float base = ci.c0 > 0 ? bc[ci.c0 - 1] : 0.f;
  ci.blast = bc[ci.c0 + ci.nvalid - 1] - base;
  return ci;
}

// The reverse output pass's key-row tiles (rows ra, rb are keys t with b_t = bta, btb; columns queries i):
// x_it (+ add_i under kAdd) times exp(b_i - b_t) where i >= t, 0 elsewhere.
template <bool kAdd>
__device__ __forceinline__ void rev_decay(float (&x)[8][4], const float* bs, const float* add, int ra, int rb,
                                          float bta, float btb) {
  const int t4 = threadIdx.x & 3;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int i = 8 * j + 2 * t4 + e;
      const float bi = bs[i], di = kAdd ? add[i] : 0.f;
      const float ea = i >= ra ? expf(bi - bta) : 0.f, ebv = i >= rb ? expf(bi - btb) : 0.f;
      x[j][e] = i >= ra ? (kAdd ? x[j][e] + di : x[j][e]) * ea : 0.f;
      x[j][2 + e] = i >= rb ? (kAdd ? x[j][2 + e] + di : x[j][2 + e]) * ebv : 0.f;
    }
  }
}

// Output passes: one CTA per (b, h, chunk) from the chunk's incoming state, which the state pass stored in
// gst as [BH, NC, kStateFloats<D, P2>]: bf16 [P2, D] then the fp32 normaliser [P2]; the chunk's outputs
// only, no state update.
template <int D, int P2>
constexpr int kStateFloats = P2 * D / 2 + P2;  // one chunk's stored state (bf16 S, fp32 z) in floats

// Row tid's b (local cumulative log gamma, base = b before the chunk), exp(b), exp(b_last - b);
// rows past the sequence end (ok false) take b_last.
__device__ __forceinline__ void row_factors(float* bs, float* eb, float* ebt, const float* bc, const ChunkInfo& ci,
                                            float base, bool ok, int tid) {
  const float bb = ok ? bc[ci.c0 + tid] - base : ci.blast;
  bs[tid] = bb, eb[tid] = expf(bb), ebt[tid] = expf(ci.blast - bb);
}

// meta_weights_gate (y = p_i y_gate_i + alpha A_i): p_i = sum_j exp(mu_j - lse_i), the sinks' share of
// the window softmax of row i (lse from the window statistics stage); 1 when the option is off, 0 for
// rows past the sequence end.
__device__ __forceinline__ float gate_weight(const LizardAttnArgs& a, int h, const float* lse, bool valid) {
  if (!valid) return 0.f;
  if (!a.meta_weights_gate) return 1.f;
  return sinks_share_of(a, h, *lse);
}

// The forward output passes' gated output of the warp's rows ra, rb (both variants): A = (phq phk^T) .*
// exp(b_i - b_t) .* causal, the normaliser den = rowsum(A) + exp(b_i) phq . z (zdot), N = A V + exp(b_i)
// phq S into nacc (ba, bb: the rows' b; eba, ebb: exp of them); returns 1 / (den + eps) of the two rows.
template <int D, int P2>
__device__ __forceinline__ float2 gate_out_n(float (&nacc)[D / 8][4], const bf16* PQ, const bf16* PK, const bf16* Vt,
                                             const bf16* Sb, const float* bs, const float* zdot, int r0, int ra, int rb,
                                             float ba, float bb, float eba, float ebb, float eps) {
  constexpr int LDP = P2 + 8, LDD = D + 8;
  const int t4 = threadIdx.x & 3;
  float sc[8][4];
  zero_acc(sc);
  mma_smem<P2 / 16, BLayout::NK>(sc, PQ, LDP, r0, PK, LDP);
  float rsa = 0.f, rsb = 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int t = 8 * j + 2 * t4 + e;
      const float bt = bs[t];
      sc[j][e] = t <= ra ? sc[j][e] * expf(ba - bt) : 0.f;
      sc[j][2 + e] = t <= rb ? sc[j][2 + e] * expf(bb - bt) : 0.f;
      rsa += sc[j][e], rsb += sc[j][2 + e];
    }
  }
  const float dena = quad_sum(rsa) + eba * zdot[ra], denb = quad_sum(rsb) + ebb * zdot[rb];
  acc_times_tile(nacc, sc, Vt, LDD);
  mma_smem<P2 / 16, BLayout::KN, true>(nacc, PQ, LDP, r0, Sb, LDD, eba, ebb);
  return make_float2(1.f / (dena + eps), 1.f / (denb + eps));
}

// The forward output passes' row epilogue (both variants): dden of rows ra, rb (o = bh L: the head's first
// row) from the quad-summed p dy . N (dga, dgb), into ws.dden and the ddn tile; under meta_weights_gate also
// delta_i += p_i g_i and dmeta_j += softmax(mu)_j sum_i p_i g_i (dmeta may be null).
__device__ __forceinline__ void dden_rows(const LizardAttnArgs& a, const Ws& ws, float* ddn, float* dmeta, int64_t o,
                                          int h, int ra, int rb, int ia, int ib, bool va, bool vb, float dga,
                                          float dgb, float inva, float invb) {
  const int lane = threadIdx.x & 31, t4 = lane & 3;
  float gpa = quad_sum(dga) * inva, gpb = quad_sum(dgb) * invb;  // p dy . y_gate (shared: p dy . N / Q)
  float ddna = -gpa * inva, ddnb = -gpb * invb;
  if (a.shared_normaliser) {
    // dy . y = gp + alpha dya / Q (ws.dya holds dy . A / Q), dden = -(p / Q) dy . y, and the sinks' share gets
    // p d pm = p (dy . N - (d - 1) dy . y) / Q = gp - (p / Q)(d - 1) dy . y (into gp); p / Q = gw / d.
    const float alpha = a.alpha[a.alpha_per_head ? h : 0];
    const float gya = gpa + (va ? alpha * ws.dya[o + ia] : 0.f), gyb = gpb + (vb ? alpha * ws.dya[o + ib] : 0.f);
    const float sa = va ? ws.gw[o + ia] * inva : 0.f, sb = vb ? ws.gw[o + ib] * invb : 0.f;
    ddna = -sa * gya, ddnb = -sb * gyb;
    gpa -= sa * (1.f / inva - 1.f) * gya, gpb -= sb * (1.f / invb - 1.f) * gyb;
  }
  if (t4 == 0) {
    ddn[ra] = va ? ddna : 0.f;
    ddn[rb] = vb ? ddnb : 0.f;
    if (va) ws.dden[o + ia] = ddna;
    if (vb) ws.dden[o + ib] = ddnb;
    if (a.meta_weights_gate) {  // one writer per row: the stats stage wrote delta, the window stage reads it
      if (va) ws.delta[o + ia] += gpa;
      if (vb) ws.delta[o + ib] += gpb;
    }
  }
  if (a.meta_weights_gate && dmeta != nullptr) {  // warp-uniform
    float gs = t4 == 0 ? gpa + gpb : 0.f;  // rows past the end have p = 0
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) gs += __shfl_xor_sync(0xffffffffu, gs, off);
    if (lane == 0) add_sinks_share_grad(a, h, dmeta, gs);
  }
}

// W = (dn V^T + dden) .* exp(b_i - b_t) .* causal for the warp's rows ra, rb (after the barrier that
// publishes ddn); returns the two rows' dden.
template <int D>
__device__ __forceinline__ float2 w_tile(float (&w)[8][4], const bf16* DN, const bf16* Vt, int ldd, int r0,
                                         const float* ddn, const float* bs, int ra, int rb, float ba, float bb) {
  const int t4 = threadIdx.x & 3;
  zero_acc(w);
  mma_smem<D / 16, BLayout::NK>(w, DN, ldd, r0, Vt, ldd);
  const float dda = ddn[ra], ddb = ddn[rb];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int t = 8 * j + 2 * t4 + e;
      const float bt = bs[t];
      w[j][e] = t <= ra ? (w[j][e] + dda) * expf(ba - bt) : 0.f;
      w[j][2 + e] = t <= rb ? (w[j][2 + e] + ddb) * expf(bb - bt) : 0.f;
    }
  }
  return make_float2(dda, ddb);
}

// State passes. Grid (BH, D / kSD), kGT threads: each CTA owns kSD value columns of
// one (b, h) and walks the chunks in order (Rev: from the last), its [P2 x kSD] slice of the fp32 state
// held in mma accumulators (warp w: rows w P2/4 .. + P2/4, the deleted sweeps' state-update layout). Before
// folding chunk n in, it writes the chunk's incoming state (bf16, its columns) to chunk n's slot of st
// ([BH, NC, kStateFloats]); CTA y == 0 also carries the fp32 normaliser (thread f < P2 holds z_f) and
// writes it after the bf16 block. Recurrences:
//   forward:  S <- exp(b_last) S + (phk .* exp(b_last - b_t))^T V,  z <- exp(b_last) z + sum_t phk_t exp(b_last - b_t)
//   reverse:  R <- exp(b_last) R + (phq .* exp(b_i))^T dn,          r <- exp(b_last) r + sum_i phq_i exp(b_i) dden_i
// (the reverse reads dn, dden: after the forward output pass). Two barriers per chunk (the row factors
// are double-buffered); the output passes read the stored bf16 state into their Sb / Rb tiles.
constexpr int kSD = 32;

template <typename T, int D, int P2, bool Rev>
__global__ void __launch_bounds__(kGT, 4) gate_state_kernel(const LizardAttnArgs a, Dims d, Ws ws, float* st) {
  constexpr int LDP = P2 + 8, LDS = kSD + 8, NJ = kSD / 8, MT = P2 / 64, P4 = P2 / 4;
  static_assert(D % kSD == 0 && P2 % 64 == 0, "state pass tiling");
  __shared__ __align__(16) bf16 XA[kC * LDP];  // decayed features [token][f]
  __shared__ __align__(16) bf16 XB[kC * LDS];  // this CTA's value (dn) columns [token][c]
  __shared__ float fac[2][kC], wz[2][kC];      // row decay factor; reverse: dden (normaliser weights)
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int bh = blockIdx.x, h = bh % d.Hq, b = bh / d.Hq, L = d.L, col0 = blockIdx.y * kSD;
  const bool zcta = blockIdx.y == 0;
  const int nch = (L + kC - 1) / kC;
  const float* bc = ws.bc + int64_t(bh) * L;
  const float* ph = (Rev ? ws.phq : ws.phk) + int64_t(bh) * L * P2;
  const bf16* dnw = ws.dn16 + int64_t(bh) * L * D;
  const T* v = static_cast<const T*>(a.v);
  float acc[MT][NJ][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) zero_acc(acc[mt]);
  float zr = 0.f;
  for (int k = 0; k < nch; ++k) {
    const int n = Rev ? nch - 1 - k : k, pb = k & 1;
    const ChunkInfo ci = chunk_info(bc, L, n);
    // chunk n's incoming state out
    float* slot = st + (int64_t(bh) * nch + n) * kStateFloats<D, P2>;
    bf16* Sg = reinterpret_cast<bf16*>(slot);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int f = warp * P4 + mt * 16 + g;
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        const int c = col0 + 8 * j + 2 * t4;
        *reinterpret_cast<uint32_t*>(Sg + f * D + c) = pack_bf16(acc[mt][j][0], acc[mt][j][1]);
        *reinterpret_cast<uint32_t*>(Sg + (f + 8) * D + c) = pack_bf16(acc[mt][j][2], acc[mt][j][3]);
      }
    }
    if (zcta && tid < P2) slot[P2 * D / 2 + tid] = zr;
    if (tid < kC) {
      const bool ok = tid < ci.nvalid;
      const float base = ci.c0 > 0 ? bc[ci.c0 - 1] : 0.f;
      const float bb = ok ? bc[ci.c0 + tid] - base : ci.blast;
      fac[pb][tid] = ok ? expf(Rev ? bb : ci.blast - bb) : 0.f;
      if (Rev) wz[pb][tid] = ok ? ws.dden[int64_t(bh) * L + ci.c0 + tid] : 0.f;
    }
    __syncthreads();  // fac visible; every warp is past the previous chunk's reads of XA, XB
#pragma unroll 8  // 8 float4 loads in flight (fully unrolled, P2 = 128 spilled at 128 registers)
    for (int it = 0; it < kC * P4 / kGT; ++it) {
      const int x = tid + it * kGT, r = x / P4, f = 4 * (x % P4);
      float4 u = make_float4(0.f, 0.f, 0.f, 0.f);
      if (r < ci.nvalid) u = *reinterpret_cast<const float4*>(ph + int64_t(ci.c0 + r) * P2 + f);
      const float sc = fac[pb][r];
      uint2 pk;
      pk.x = pack_bf16(u.x * sc, u.y * sc), pk.y = pack_bf16(u.z * sc, u.w * sc);
      *reinterpret_cast<uint2*>(XA + r * LDP + f) = pk;
    }
#pragma unroll
    for (int it = 0; it < kC * kSD / 2 / kGT; ++it) {
      const int x = tid + it * kGT, r = x / (kSD / 2), c = 2 * (x % (kSD / 2));
      float lo = 0.f, hi = 0.f;
      if (r < ci.nvalid) {
        if (Rev) {
          const float2 w2 = unpack_bf16(*reinterpret_cast<const uint32_t*>(dnw + int64_t(ci.c0 + r) * D + col0 + c));
          lo = w2.x, hi = w2.y;
        } else {
          const T* vr = v + d.k_off(b, ci.c0 + r, h) + col0 + c;
          lo = ld(vr), hi = ld(vr + 1);
        }
      }
      *reinterpret_cast<uint32_t*>(XB + r * LDS + c) = pack_bf16(lo, hi);
    }
    __syncthreads();  // tiles visible
    const float decay = expf(ci.blast);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int f0 = warp * P4 + mt * 16;
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][j][e] *= decay;
#pragma unroll
      for (int s = 0; s < kC / 16; ++s) {
        uint32_t ka[4];
        load_a_t(ka, XA, LDP, f0, s * 16);
#pragma unroll
        for (int np = 0; np < NJ / 2; ++np) {
          uint32_t bb[4];
          load_b_kn(bb, XB, LDS, np * 16, s * 16);
          mma16816(acc[mt][2 * np], ka, bb[0], bb[1]);
          mma16816(acc[mt][2 * np + 1], ka, bb[2], bb[3]);
        }
      }
    }
    if (zcta && tid < P2) {  // block-uniform CTA test; fp32 features
      float zz = zr * decay;
#pragma unroll 8
      for (int r = 0; r < ci.nvalid; ++r) {
        const float t = ph[int64_t(ci.c0 + r) * P2 + tid] * fac[pb][r];
        zz += Rev ? t * wz[pb][r] : t;
      }
      zr = zz;
    }
  }
}

}  // namespace gate

// ---------------------------------------------------------------------------------------------
// Stage variant 2 loaders. The variant-1 stages load their tiles element by element (a 2-byte global
// load, a conversion and a 2-byte shared store per element, 64-128 per thread per tile); ptxas keeps
// only a few of those loads in flight, so every tile costs tens of dependent global round trips and
// the stages ran latency-bound at a fraction of their tensor-core and memory floors. Variant 2 copies
// bf16 tiles with cp.async (16 bytes, every chunk of the tile in flight at once, rows past L
// zero-filled) and keeps the variant-1 loaders for fp32 inputs (the test path).
namespace v2 {

using namespace mma;

// NR rows x NC bf16 of a [.., stride] matrix (rows row0.., only rows < L) into a bf16 tile of row
// stride ld (elements; ld * 2 a multiple of 16, NC a multiple of 8). NT threads. Caller commits/waits.
template <int NR, int NC, int NT>
__device__ __forceinline__ void cp_tile(bf16* dst, int ld, const bf16* src, int64_t stride, int row0, int L) {
  constexpr int CPR = NC / 8, RS = NT / CPR;  // chunks per row, rows per step
  static_assert(NT % CPR == 0 && NR % RS == 0, "tile chunks must split evenly over the threads");
  const int rr = int(threadIdx.x) / CPR, c = (int(threadIdx.x) % CPR) * 8;
  const bf16* p = src + (int64_t(row0 + rr) * stride + c);
  const int64_t step = int64_t(RS) * stride;
  bf16* q = dst + rr * ld + c;
#pragma unroll
  for (int it = 0; it < NR / RS; ++it, p += step) {
    const bool ok = row0 + rr + it * RS < L;
    cp_async16(q + it * RS * ld, ok ? p : src, ok ? 16 : 0);
  }
}

__device__ __forceinline__ void cp_wait() {
  cp_async_commit();
  cp_async_wait_all();
}

template <typename T>
constexpr bool fast_load() {
  return sizeof(T) == 2;  // bf16 inputs
}

// Stage an [NR x D] fp32 result from mma fragments into shared memory (row stride D + 4 floats):
// rows r0 + g (acc[j][0..1]) and r0 + g + 8 (acc[j][2..3]), columns 8 j + 2 t4, times mul.
template <int D>
__device__ __forceinline__ void stage_frag(float* sm, const float (&acc)[D / 8][4], int r0, int g, int t4, float mul) {
  constexpr int LDS = D + 4;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    const int c = 8 * j + 2 * t4;
    *reinterpret_cast<float2*>(sm + (r0 + g) * LDS + c) = make_float2(acc[j][0] * mul, acc[j][1] * mul);
    *reinterpret_cast<float2*>(sm + (r0 + g + 8) * LDS + c) = make_float2(acc[j][2] * mul, acc[j][3] * mul);
  }
}

// dst rows (row0 + r, r < NR, only < L) += the staged [NR x D] fp32 block: coalesced float4, loads
// batched 8 per thread. kAtomic: atomicAdd per element instead (rows shared with other CTAs).
// dst(pos) is the row's first element. NT threads; sm visible (caller synced).
template <int NR, int D, int NT, bool kAtomic, typename RowPtr>
__device__ __forceinline__ void add_rows(const float* sm, RowPtr dst, int row0, int L) {
  constexpr int LDS = D + 4, CPR = D / 4, N = NR * CPR, B = 8;
  static_assert(N % (NT * B) == 0, "staged block must split evenly");
#pragma unroll 1
  for (int base = 0; base < N; base += NT * B) {
    float4 cur[B];
#pragma unroll
    for (int u = 0; u < B; ++u) {
      const int p = base + u * NT + int(threadIdx.x), r = p / CPR, c = (p % CPR) * 4;
      cur[u] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (!kAtomic && row0 + r < L) cur[u] = *reinterpret_cast<const float4*>(dst(row0 + r) + c);
    }
#pragma unroll
    for (int u = 0; u < B; ++u) {
      const int p = base + u * NT + int(threadIdx.x), r = p / CPR, c = (p % CPR) * 4;
      if (row0 + r >= L) continue;
      const float4 s = *reinterpret_cast<const float4*>(sm + r * LDS + c);
      float* o = dst(row0 + r) + c;
      if (kAtomic) {
        atomicAdd(o, s.x), atomicAdd(o + 1, s.y), atomicAdd(o + 2, s.z), atomicAdd(o + 3, s.w);
      } else {
        *reinterpret_cast<float4*>(o) = make_float4(cur[u].x + s.x, cur[u].y + s.y, cur[u].z + s.z, cur[u].w + s.w);
      }
    }
  }
}

}  // namespace v2

// ---------------------------------------------------------------------------------------------
// The gate's output passes. Their session-4 form loaded its tiles element by element and stored dn, dphi
// one float at a time, interleaved with global loads the compiler cannot move above those stores (they may
// alias): hundreds of dependent global round trips per CTA, 4.9 + 4.5 ms at B16 H32 D128 F64 L2048 on the
// H200 against a ~1 ms memory + tensor-core floor (1.2 + 1.2 ms now; deleted in session 5). Here the
// incoming state (and, bf16 inputs, V and the forward's dy) go by cp.async, issued first; the fp32 phi / dn
// rows come as float4 batches (8 per tile in flight) converted to bf16 8-byte stores, the forward's zdot =
// phq . z from those same fp32 values; dn leaves as float2 stores, the gate's dv as float2 atomics; dphi is
// staged through the dead PQ/PK tiles and stored as float4, its db = ph . dphi from batched float4 re-reads
// of ph. kAligned false (bf16 v or dy not 16-byte aligned) and fp32 inputs: scalar V / dy loads. (dv is
// always aligned here: lizard_attention_backward_chunked gives misaligned gradient buffers aligned temporaries.)
namespace gate {

// The chunk's bf16 incoming state by cp.async into Sb (rows [P2][D + 8]); with zs, its fp32 normaliser too.
template <int D, int P2>
__device__ __forceinline__ void state_cp(const float* src, bf16* Sb, float* zs) {
  constexpr int LDD = D + 8, V = D / 8, N = P2 * V / kGT;
  static_assert(P2 * V % kGT == 0 && P2 / 4 <= kGT, "state chunks must split evenly");
  const bf16* s = reinterpret_cast<const bf16*>(src);
  const int tid = threadIdx.x;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const int x = tid + k * kGT, f = x / V, c = x % V;
    cp_async16(Sb + f * LDD + 8 * c, s + 8 * x, 16);
  }
  if (zs != nullptr && tid < P2 / 4) cp_async16(zs + 4 * tid, src + P2 * D / 2 + 4 * tid, 16);
}

// kC rows of NTILE fp32 workspace matrices [.., NC] (src: the chunk's first row; rows >= nvalid read as
// zero) into bf16 tiles of row stride ld: float4 loads, KB per thread in flight (over the tiles), each
// converted (round to nearest, as __float2bfloat16) into one 8-byte shared store. A thread's column f is
// fixed (kGT % (NC / 4) == 0): each(tile, r, f, u) sees the fp32 values, called by every thread alike.
template <int NC, int NTILE, int KB, typename Each>
__device__ __forceinline__ void f32_rows_to_bf16(bf16* const (&dst)[NTILE], int ld, const float* const (&src)[NTILE],
                                                 int nvalid, Each&& each) {
  constexpr int C4 = NC / 4, RS = kGT / C4, N = kC / RS, B = N < KB / NTILE ? N : KB / NTILE;  // RS rows per step
  static_assert(kGT % C4 == 0 && N % B == 0, "tile float4s must split evenly");
  const int tid = threadIdx.x, f = 4 * (tid % C4), rr = tid / C4;
#pragma unroll 1
  for (int base = 0; base < N; base += B) {
    const int rb = rr + base * RS;
    float4 u[NTILE][B];
#pragma unroll
    for (int k = 0; k < B; ++k) {
#pragma unroll
      for (int t = 0; t < NTILE; ++t)
        u[t][k] = rb + k * RS < nvalid ? *reinterpret_cast<const float4*>(src[t] + int64_t(rb) * NC + f + k * RS * NC)
                                       : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int k = 0; k < B; ++k) {
      const int r = rb + k * RS;
#pragma unroll
      for (int t = 0; t < NTILE; ++t) {
        uint2 pk;
        pk.x = pack_bf16(u[t][k].x, u[t][k].y), pk.y = pack_bf16(u[t][k].z, u[t][k].w);
        *reinterpret_cast<uint2*>(dst[t] + r * ld + f) = pk;
        each(t, r, f, u[t][k]);
      }
    }
  }
}

// Sum of s over the NL lanes that share a row (NL = 16 or 32: aligned lane groups).
template <int NL>
__device__ __forceinline__ float row_sum(float s) {
#pragma unroll
  for (int o = NL / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

// dphi += ca|cb * zr[f] (the state's normaliser term), then the warp's rows ra, rb into the fp32 staging tile
// stg [kC][P2 + 8] (that stride: the float2 stores of a half warp hit distinct banks).
template <int P2>
__device__ __forceinline__ void stage_dphi(float* stg, float (&dph)[P2 / 8][4], float ca, float cb, const float* zr,
                                           int ra, int rb, int t4) {
  constexpr int LDS = P2 + 8;
#pragma unroll
  for (int j = 0; j < P2 / 8; ++j) {
    const int f = 8 * j + 2 * t4;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      dph[j][e] += ca * zr[f + e];
      dph[j][2 + e] += cb * zr[f + e];
    }
    *reinterpret_cast<float2*>(stg + ra * LDS + f) = make_float2(dph[j][0], dph[j][1]);
    *reinterpret_cast<float2*>(stg + rb * LDS + f) = make_float2(dph[j][2], dph[j][3]);
  }
}

// Its second half: db[r] = (kNeg ? -1 : 1) ph_r . dphi_r with ph (the chunk's first row) re-read as batched
// float4, and to out (the chunk's first row, [.., P2]) for rows < nvalid: with du_only, the feature maps'
// gradient at their input du_r (F values: the first half of the row; what the feature stages read), else
// the whole dphi_r (gate_skips_window's shifted query rows: skip_out_kernel makes du from them). du of
// phi = (softmax(u), softmax(-u)): phi+ (dphi+ - phi+ . dphi+) - phi- (dphi- - phi- . dphi-); of the exp
// maps the same without the dot products. Computed here, the feature stages read F values per row instead
// of 4F (phi and dphi) and nothing writes dphi's other half.
template <int P2, bool kNeg>
__device__ __forceinline__ void store_dphi(const float* stg, float* out, const float* ph, float* db, int nvalid,
                                           bool du_only, bool softmax) {
  constexpr int LDS = P2 + 8, P4 = P2 / 4, RS = kGT / P4, N = kC / RS, B = N < 8 ? N : 8;  // RS rows per step
  static_assert(kGT % P4 == 0 && N % B == 0 && (P4 == 16 || P4 == 32), "dphi float4s must split evenly");
  const int tid = threadIdx.x, f = 4 * (tid % P4), rr = tid / P4;
#pragma unroll 1
  for (int base = 0; base < N; base += B) {
    const int rb = rr + base * RS;
    float4 p[B];
#pragma unroll
    for (int k = 0; k < B; ++k)
      p[k] = rb + k * RS < nvalid ? *reinterpret_cast<const float4*>(ph + int64_t(rb) * P2 + f + k * RS * P2)
                                  : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int k = 0; k < B; ++k) {
      const int r = rb + k * RS;
      const float4 s = *reinterpret_cast<const float4*>(stg + r * LDS + f);
      const float dot = p[k].x * s.x + p[k].y * s.y + p[k].z * s.z + p[k].w * s.w;
      const float t = row_sum<P4>(dot);
      if (tid % P4 == 0 && r < nvalid) db[r] = kNeg ? -t : t;
      if (!du_only) {
        if (r < nvalid) *reinterpret_cast<float4*>(out + int64_t(r) * P2 + f) = s;
        continue;
      }
      // lanes tid % P4 < P4 / 2 hold phi+ (features f < F), the others phi- (feature f - F)
      const float h = softmax ? row_sum<P4 / 2>(dot) : 0.f;  // phi+ . dphi+ (or phi- . dphi-)
      const bool plus = tid % P4 < P4 / 2;
      const float sg = plus ? 1.f : -1.f;
      float4 u = make_float4(sg * p[k].x * (s.x - h), sg * p[k].y * (s.y - h), sg * p[k].z * (s.z - h),
                             sg * p[k].w * (s.w - h));
      u.x += __shfl_xor_sync(0xffffffffu, u.x, P4 / 2), u.y += __shfl_xor_sync(0xffffffffu, u.y, P4 / 2);
      u.z += __shfl_xor_sync(0xffffffffu, u.z, P4 / 2), u.w += __shfl_xor_sync(0xffffffffu, u.w, P4 / 2);
      if (plus && r < nvalid) *reinterpret_cast<float4*>(out + int64_t(r) * P2 + f) = u;
    }
  }
}

// CTAs per SM that the shared memory allows (up to 4; 227 KB and 1 KB reserved per CTA): the register
// cap for __launch_bounds__, so that ptxas's free use of registers does not cost occupancy.
template <int D, int P2>
constexpr int out_blocks() {
  const int n = int((227 * 1024) / (Smem<D, P2>::bytes + 1024));
  return n < 4 ? n : 4;
}
// float4 loads in flight per thread in the tile loaders: 16 where 255 registers are allowed; under the
// 168 / 128 register caps 16 spilled (ptxas 13.0), 8 does not.
template <int D, int P2>
constexpr int out_loads() {
  return out_blocks<D, P2>() <= 2 ? 16 : 8;
}

// The chunk's V rows into the bf16 tile Vt (row stride D + 8) element by element, rows past the sequence end
// zero: the output passes' load where cp.async cannot serve (fp32 inputs, misaligned v).
template <int D, typename T>
__device__ __forceinline__ void v_tile_scalar(bf16* Vt, const T* v, const Dims& d, int b, int h, const ChunkInfo& ci) {
  for (int x = threadIdx.x; x < kC * D; x += kGT) {
    const int r = x / D, e = x % D;
    Vt[r * (D + 8) + e] = __float2bfloat16(r < ci.nvalid ? ld(v + d.k_off(b, ci.c0 + r, h) + e) : 0.f);
  }
}

// Forward output pass: dn, dden, dphq, dbq; one CTA per (b, h, chunk), chunk-major
// within (b, h) as there (blockIdx.x = bh * nch + n).
template <typename T, int D, int P2, bool kAligned>
__global__ void __launch_bounds__(kGT, out_blocks<D, P2>())
    gate_fwd_out_kernel(const LizardAttnArgs a, Dims d, Ws ws, const T* dy, const float* gst, float* dmeta) {
  using SM = Smem<D, P2>;
  constexpr int LDP = SM::LDP, LDD = SM::LDD, ND = D / 8, NP = P2 / 8, P4 = P2 / 4;
  constexpr bool kCp = kAligned && v2::fast_load<T>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* PQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* PK = PQ + kC * LDP;
  bf16* Vt = PK + kC * LDP;
  bf16* DN = Vt + kC * LDD;  // bf16 inputs: dy first (cp.async), each element overwritten by its dn
  bf16* Sb = DN + kC * LDD;
  float* fsm = reinterpret_cast<float*>(Sb + P2 * LDD);
  float* z = fsm;
  float* bs = z + P2;
  float* eb = bs + kC;
  float* ebt = eb + kC;
  float* zdot = ebt + kC;
  float* ddn = zdot + kC;
  float* pw = ddn + kC;  // the rows' gate weights p (Smem's sixth row array)
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int L = d.L, nch = (L + kC - 1) / kC;
  const int bh = blockIdx.x / nch, n = blockIdx.x % nch, h = bh % d.Hq, b = bh / d.Hq;
  const float* bc = ws.bc + int64_t(bh) * L;
  const ChunkInfo ci = chunk_info(bc, L, n);
  const float* phq = ws.phq + (int64_t(bh) * L + ci.c0) * P2;  // the chunk's first row
  const float* phk = ws.phk + (int64_t(bh) * L + ci.c0) * P2;
  const T* v = static_cast<const T*>(a.v);
  const float* src = gst + int64_t(blockIdx.x) * kStateFloats<D, P2>;
  state_cp<D, P2>(src, Sb, nullptr);
  if constexpr (kCp) {
    v2::cp_tile<kC, D, kGT>(Vt, LDD, v + d.k_off(b, 0, h), int64_t(d.Hkv) * D, ci.c0, L);
    v2::cp_tile<kC, D, kGT>(DN, LDD, dy + d.q_off(b, 0, h), int64_t(d.Hq) * D, ci.c0, L);
  }
  cp_async_commit();
  const float4 zz = *reinterpret_cast<const float4*>(src + P2 * D / 2 + 4 * (tid % P4));  // this thread's z[f..f+3]
  if (tid < P4) *reinterpret_cast<float4*>(z + 4 * tid) = zz;
  if (tid < kC) {
    const bool ok = tid < ci.nvalid;
    row_factors(bs, eb, ebt, bc, ci, ci.c0 > 0 ? bc[ci.c0 - 1] : 0.f, ok, tid);
    pw[tid] = a.shared_normaliser ? (ok ? ws.gw[int64_t(bh) * L + ci.c0 + tid] : 0.f)
                                  : gate_weight(a, h, ws.lse + int64_t(bh) * L + ci.c0 + tid, ok);
  }
  // PQ, PK; zdot = phq . z (fp32, rows past the end 0) from the same loads
  auto zdot_row = [&](int t, int r, int, const float4& u) {
    if (t != 0) return;  // unrolled: compile-time
    const float s = row_sum<P4>(u.x * zz.x + u.y * zz.y + u.z * zz.z + u.w * zz.w);
    if (tid % P4 == 0) zdot[r] = s;
  };
  f32_rows_to_bf16<P2, 2, out_loads<D, P2>()>({PQ, PK}, LDP, {phq, phk}, ci.nvalid, zdot_row);
  if constexpr (!kCp) v_tile_scalar<D>(Vt, v, d, b, h, ci);
  cp_async_wait_all();
  __syncthreads();
  const int r0 = warp * 16, ra = r0 + g, rb = ra + 8;
  const float ba = bs[ra], bb_ = bs[rb], eba = eb[ra], ebb = eb[rb];
  float nacc[ND][4];
  const float2 inv = gate_out_n<D, P2>(nacc, PQ, PK, Vt, Sb, bs, zdot, r0, ra, rb, ba, bb_, eba, ebb, a.eps);
  const float inva = inv.x, invb = inv.y;
  // dn = dy / (den + eps), dden = -(dy . N) / (den + eps)^2 (dy times the gate weight p)
  const bool va = ra < ci.nvalid, vb = rb < ci.nvalid;
  const int ia = ci.c0 + ra, ib = ci.c0 + rb;
  const float pwa = pw[ra], pwb = pw[rb];
  bf16* dna_row = ws.dn16 + (int64_t(bh) * L + ia) * D;
  bf16* dnb_row = ws.dn16 + (int64_t(bh) * L + ib) * D;
  float dga = 0.f, dgb = 0.f;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int c = 8 * j + 2 * t4;
    float ya[2], yb[2];
    if constexpr (kCp) {  // this thread's dy elements, read before it overwrites them with dn
      const float2 fa = unpack_bf16(*reinterpret_cast<const uint32_t*>(DN + ra * LDD + c));
      const float2 fb = unpack_bf16(*reinterpret_cast<const uint32_t*>(DN + rb * LDD + c));
      ya[0] = va ? fa.x * pwa : 0.f, ya[1] = va ? fa.y * pwa : 0.f;
      yb[0] = vb ? fb.x * pwb : 0.f, yb[1] = vb ? fb.y * pwb : 0.f;
    } else {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        ya[e] = va ? ld(dy + d.q_off(b, ia, h) + c + e) * pwa : 0.f;
        yb[e] = vb ? ld(dy + d.q_off(b, ib, h) + c + e) * pwb : 0.f;
      }
    }
    float dna[2], dnb[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      dga += ya[e] * nacc[j][e], dgb += yb[e] * nacc[j][2 + e];
      dna[e] = ya[e] * inva, dnb[e] = yb[e] * invb;
    }
    const uint32_t pa = pack_bf16(dna[0], dna[1]), pb = pack_bf16(dnb[0], dnb[1]);
    *reinterpret_cast<uint32_t*>(DN + ra * LDD + c) = pa;
    *reinterpret_cast<uint32_t*>(DN + rb * LDD + c) = pb;
    if (va) *reinterpret_cast<uint32_t*>(dna_row + c) = pa;
    if (vb) *reinterpret_cast<uint32_t*>(dnb_row + c) = pb;
  }
  dden_rows(a, ws, ddn, dmeta, int64_t(bh) * L, h, ra, rb, ia, ib, va, vb, dga, dgb, inva, invb);
  __syncthreads();
  float w[8][4];
  const float2 dd = w_tile<D>(w, DN, Vt, LDD, r0, ddn, bs, ra, rb, ba, bb_);
  const float dda = dd.x, ddb = dd.y;
  // dphq = W phk + exp(b_i) (dn S^T + dden z)
  float dph[NP][4];
  acc_times_tile(dph, w, PK, LDP);
  mma_smem<D / 16, BLayout::NK, true>(dph, DN, LDD, r0, Sb, LDD, eba, ebb);
  __syncthreads();  // every warp past its reads of PQ, PK: they become the staging tile
  float* stg = reinterpret_cast<float*>(PQ);
  stage_dphi<P2>(stg, dph, eba * dda, ebb * ddb, z, ra, rb, t4);
  __syncthreads();
  // gate_skips_window: ws is the shifted rows' (Skip), whose dphi skip_out_kernel maps back and makes du of
  store_dphi<P2, false>(stg, ws.dphq + (int64_t(bh) * L + ci.c0) * P2, phq, ws.dbq + int64_t(bh) * L + ci.c0,
                        ci.nvalid, !a.gate_skips_window, a.act == FeatureAct::Softmax);
}

// Reverse output pass: dphk, dbk and the gate's dv.
template <typename T, int D, int P2, bool kAligned>
__global__ void __launch_bounds__(kGT, out_blocks<D, P2>())
    gate_rev_out_kernel(const LizardAttnArgs a, Dims d, Ws ws, float* dv, const float* gst) {
  using SM = Smem<D, P2>;
  constexpr int LDP = SM::LDP, LDD = SM::LDD, ND = D / 8, NP = P2 / 8;
  constexpr bool kCp = kAligned && v2::fast_load<T>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* PQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* PK = PQ + kC * LDP;
  bf16* Vt = PK + kC * LDP;
  bf16* DN = Vt + kC * LDD;
  bf16* Rb = DN + kC * LDD;
  float* fsm = reinterpret_cast<float*>(Rb + P2 * LDD);
  float* rv = fsm;
  float* bs = rv + P2;
  float* eb = bs + kC;
  float* ebt = eb + kC;
  float* ddn = ebt + kC;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int L = d.L, nch = (L + kC - 1) / kC;
  const int bh = blockIdx.x / nch, n = blockIdx.x % nch, h = bh % d.Hq, b = bh / d.Hq;
  const float* bc = ws.bc + int64_t(bh) * L;
  const ChunkInfo ci = chunk_info(bc, L, n);
  const float* phq = ws.phq + (int64_t(bh) * L + ci.c0) * P2;  // the chunk's first row
  const float* phk = ws.phk + (int64_t(bh) * L + ci.c0) * P2;
  const T* v = static_cast<const T*>(a.v);
  state_cp<D, P2>(gst + int64_t(blockIdx.x) * kStateFloats<D, P2>, Rb, rv);
  if constexpr (kCp) v2::cp_tile<kC, D, kGT>(Vt, LDD, v + d.k_off(b, 0, h), int64_t(d.Hkv) * D, ci.c0, L);
  v2::cp_tile<kC, D, kGT>(DN, LDD, ws.dn16 + int64_t(bh) * L * D, D, ci.c0, L);  // our workspace: aligned
  cp_async_commit();
  if (tid < kC) {
    const bool ok = tid < ci.nvalid;
    row_factors(bs, eb, ebt, bc, ci, ci.c0 > 0 ? bc[ci.c0 - 1] : 0.f, ok, tid);
    ddn[tid] = ok ? ws.dden[int64_t(bh) * L + ci.c0 + tid] : 0.f;
  }
  auto none = [](int, int, int, const float4&) {};
  f32_rows_to_bf16<P2, 2, out_loads<D, P2>()>({PQ, PK}, LDP, {phq, phk}, ci.nvalid, none);
  if constexpr (!kCp) v_tile_scalar<D>(Vt, v, d, b, h, ci);
  cp_async_wait_all();
  __syncthreads();
  const int r0 = warp * 16, ra = r0 + g, rb = ra + 8;
  const float bta = bs[ra], btb = bs[rb], eta = ebt[ra], etb = ebt[rb];
  const bool va = ra < ci.nvalid, vb = rb < ci.nvalid;
  const int ta = ci.c0 + ra, tb = ci.c0 + rb;
  // A^T (keys t as rows, queries i as columns), then W^T: variant 1's products and factors, the two score
  // tiles one after the other (fewer live registers; the decay factors are computed twice)
  // dv_t += A^T dn + exp(b_last - b_t) R^T phk_t (float2 atomics: the heads of a kv group share dv)
  {
    float at[8][4];
    zero_acc(at);
    mma_smem<P2 / 16, BLayout::NK>(at, PK, LDP, r0, PQ, LDP);
    rev_decay<false>(at, bs, nullptr, ra, rb, bta, btb);
    float acc[ND][4];
    acc_times_tile(acc, at, DN, LDD);
    mma_smem<P2 / 16, BLayout::KN, true>(acc, PK, LDP, r0, Rb, LDD, eta, etb);
    float* dva = dv + d.k_off(b, ta, h);
    float* dvb = dv + d.k_off(b, tb, h);
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      const int c = 8 * j + 2 * t4;
      if (va) atomicAdd(reinterpret_cast<float2*>(dva + c), make_float2(acc[j][0], acc[j][1]));
      if (vb) atomicAdd(reinterpret_cast<float2*>(dvb + c), make_float2(acc[j][2], acc[j][3]));
    }
  }
  // dphk_t = W^T phq + exp(b_last - b_t) (R v_t + r)
  float dph[NP][4];
  zero_acc(dph);
  {
    float wt[8][4];
    zero_acc(wt);
    mma_smem<D / 16, BLayout::NK>(wt, Vt, LDD, r0, DN, LDD);
    rev_decay<true>(wt, bs, ddn, ra, rb, bta, btb);
    uint32_t pa[4][4];
    acc_to_a(pa, wt);
    mma_frag<4, BLayout::KN>(dph, pa, PQ, LDP);
  }
  mma_smem<D / 16, BLayout::NK, true>(dph, Vt, LDD, r0, Rb, LDD, eta, etb);
  __syncthreads();  // every warp past its reads of PQ, PK: they become the staging tile
  float* stg = reinterpret_cast<float*>(PQ);
  stage_dphi<P2>(stg, dph, eta, etb, rv, ra, rb, t4);
  __syncthreads();
  store_dphi<P2, true>(stg, ws.dphk + (int64_t(bh) * L + ci.c0) * P2, phk, ws.dbk + int64_t(bh) * L + ci.c0,
                       ci.nvalid, /*du_only=*/true, a.act == FeatureAct::Softmax);
}

// ---------------------------------------------------------------------------------------------
// State variant 2 (set_backward_state_variant): gate_state_kernel's recurrences and bf16 operands, other
// data movement. Variant 1 issues chunk n's loads only after chunk n - 1's update (the row factors, then
// the tiles, converted to bf16 on the way in: two dependent round trips and two barriers per chunk, on the
// critical path of a sequential loop), and its D / 32 CTAs of one (b, h) run waves apart, each reading phi
// from HBM again. Here a CTA owns SD = 64 columns (the D / SD CTAs of one (b, h) adjacent in launch order,
// so they share phi through L2) and two shared-memory stages of raw rows: chunk n + 1's fp32 phi rows and
// V (dn) rows go into one by cp.async while chunk n's update reads the other, its row factors arrive as
// register loads issued a chunk early; one barrier per chunk. The fp32 values are scaled and rounded to
// bf16 as the fragments are built (the values variant 1 stores in XA, XB), so each state element sums the
// same bf16 products in the same order; z sums the same fp32 terms.
// Fragment layout: row g (g + 8) of the warp's m-tile at f0 is feature f0 + 2g (f0 + 2g + 1), so one float2
// shared load serves both; n-tiles 2q, 2q + 1 are columns 16q + 2n, 16q + 2n + 1 (n = the B fragment's
// column): one float2 load (fp32 V) or one 32-bit load (bf16 V, dn) per row again, and a thread's
// accumulators cover 4 adjacent columns 16q + 4 t4 .. + 3 (8-byte state stores).
// Row strides P2 + 4, SD + 4 floats (2 stride = 8 banks mod 32): the float2 loads of a half warp hit 32
// distinct banks; bf16 rows SD + 8 (36 words: the 32-bit loads of a warp hit 32 distinct banks).
template <typename T, int D, int P2, bool Rev>
struct State2 {
  static constexpr int SD = D < 64 ? D : 64, NY = D / SD;
  // The second operand's tile (V, or the reverse's dn) is bf16 for bf16 V and for dn (dn16), and its B
  // fragments come from 32-bit loads paired up by byte permutes, in the fp32 tile's fragment layout. (B
  // fragments by ldmatrix.trans in the ldmatrix layout were slower: at B16 H32 D128 L2048 on an H200 the
  // forward state pass took 0.612 ms that way against 0.470, the reverse 0.460 with the permutes; session 9.)
  static constexpr bool kVt = Rev || sizeof(T) == 2;
  static constexpr int LDR = P2 + 4, LDV = kVt ? SD + 8 : SD + 4, VB = kVt ? 2 : 4;  // VB: bytes per V element
  static constexpr size_t r_bytes = size_t(kC) * LDR * 4, stage_bytes = r_bytes + size_t(kC) * LDV * VB;
  static constexpr size_t bytes = 2 * stage_bytes;
};

// Row factors' inputs of chunk n, loaded a chunk ahead: b before the chunk, b at its last row, and (thread
// tid < nv) b and the reverse's dden at row tid.
struct RowPre {
  float base, last, bcv, ddv;
  int nv;
};

template <bool Rev>
__device__ __forceinline__ RowPre row_pre(const float* bc, const float* dden, int L, int n, int tid) {
  RowPre p;
  const int c0 = n * kC;
  p.nv = min(kC, L - c0);
  p.base = c0 > 0 ? bc[c0 - 1] : 0.f;
  p.last = bc[c0 + p.nv - 1];
  const bool ok = tid < p.nv;
  p.bcv = ok ? bc[c0 + tid] : 0.f;
  p.ddv = Rev && ok ? dden[c0 + tid] : 0.f;
  return p;
}

// gate_state_kernel's row factor (and reverse normaliser weight) from those inputs, same expressions.
template <bool Rev>
__device__ __forceinline__ void put_row_factors(const RowPre& p, float* fac, float* wz, int tid) {
  if (tid >= kC) return;
  const bool ok = tid < p.nv;
  const float blast = p.last - p.base, bb = ok ? p.bcv - p.base : blast;
  fac[tid] = ok ? expf(Rev ? bb : blast - bb) : 0.f;
  if (Rev) wz[tid] = p.ddv;
}

// Chunk n's raw rows into one stage (rows past the sequence end zero-filled), one commit group.
template <typename T, int D, int P2, bool Rev>
__device__ __forceinline__ void state2_issue(unsigned char* stage, const float* ph, const T* v, const bf16* dnw,
                                             const Dims& d, int b, int h, int col0, int n, int nv) {
  using S2 = State2<T, D, P2, Rev>;
  constexpr int P4 = P2 / 4, E = 16 / S2::VB, CPR = S2::SD / E;  // V: E elements per copy, CPR per row
  static_assert(kC * P4 % kGT == 0 && kC * CPR % kGT == 0, "stage copies must split evenly");
  const int tid = threadIdx.x, c0 = n * kC;
  float* R = reinterpret_cast<float*>(stage);
#pragma unroll
  for (int it = 0; it < kC * P4 / kGT; ++it) {
    const int x = tid + it * kGT, r = x / P4, c = 4 * (x % P4);
    const bool ok = r < nv;
    cp_async16(R + r * S2::LDR + c, ok ? ph + int64_t(c0 + r) * P2 + c : ph, ok ? 16 : 0);
  }
  unsigned char* V = stage + S2::r_bytes;
#pragma unroll
  for (int it = 0; it < kC * CPR / kGT; ++it) {
    const int x = tid + it * kGT, r = x / CPR, c = E * (x % CPR);
    const bool ok = r < nv;
    const void* src;
    if constexpr (Rev)
      src = ok ? dnw + int64_t(c0 + r) * D + col0 + c : dnw;
    else
      src = ok ? v + d.k_off(b, c0 + r, h) + col0 + c : v;
    cp_async16(V + (r * S2::LDV + c) * S2::VB, src, ok ? 16 : 0);
  }
  cp_async_commit();
}

// Grid BH * NY (blockIdx.x = bh * NY + y: column block y of (b, h)), kGT threads, State2::bytes dynamic
// shared memory. Writes what gate_state_kernel writes (st: [BH, NC, kStateFloats]).
template <typename T, int D, int P2, bool Rev>
__global__ void __launch_bounds__(kGT, 2) gate_state2_kernel(const LizardAttnArgs a, Dims d, Ws ws, float* st) {
  using S2 = State2<T, D, P2, Rev>;
  constexpr int SD = S2::SD, NY = S2::NY, LDR = S2::LDR, LDV = S2::LDV, NJ = SD / 8, MT = P2 / 64, P4 = P2 / 4;
  static_assert(P2 % 64 == 0 && SD % 16 == 0 && D % SD == 0, "state pass tiling");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ __align__(16) float fac[2][kC];
  __shared__ __align__(16) float wz[2][kC];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int bh = blockIdx.x / NY, y = blockIdx.x % NY, h = bh % d.Hq, b = bh / d.Hq, L = d.L, col0 = y * SD;
  const bool zcta = y == 0;
  const int nch = (L + kC - 1) / kC;
  const float* bc = ws.bc + int64_t(bh) * L;
  const float* dden = ws.dden + int64_t(bh) * L;
  const float* ph = (Rev ? ws.phq : ws.phk) + int64_t(bh) * L * P2;
  const bf16* dnw = ws.dn16 + int64_t(bh) * L * D;
  const T* v = static_cast<const T*>(a.v);
  float acc[MT][NJ][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) zero_acc(acc[mt]);
  float zr = 0.f;
  RowPre nxt = row_pre<Rev>(bc, dden, L, Rev ? nch - 1 : 0, tid);
  state2_issue<T, D, P2, Rev>(smem_raw, ph, v, dnw, d, b, h, col0, Rev ? nch - 1 : 0, nxt.nv);
  put_row_factors<Rev>(nxt, fac[0], wz[0], tid);
  for (int k = 0; k < nch; ++k) {
    const int n = Rev ? nch - 1 - k : k, s = k & 1, nn = Rev ? n - 1 : n + 1;
    const bool more = k + 1 < nch;
    const RowPre cur = nxt;
    // chunk n's incoming state out (the accumulators' layout, see above)
    float* slot = st + (int64_t(bh) * nch + n) * kStateFloats<D, P2>;
    bf16* Sg = reinterpret_cast<bf16*>(slot);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int f = warp * P4 + mt * 16 + 2 * g;
#pragma unroll
      for (int q = 0; q < NJ / 2; ++q) {
        const int c = col0 + 16 * q + 4 * t4;
        const float(&c0)[4] = acc[mt][2 * q];
        const float(&c1)[4] = acc[mt][2 * q + 1];
        *reinterpret_cast<uint2*>(Sg + f * D + c) = make_uint2(pack_bf16(c0[0], c1[0]), pack_bf16(c0[1], c1[1]));
        *reinterpret_cast<uint2*>(Sg + (f + 1) * D + c) = make_uint2(pack_bf16(c0[2], c1[2]), pack_bf16(c0[3], c1[3]));
      }
    }
    if (zcta && tid < P2) slot[P2 * D / 2 + tid] = zr;
    if (more) nxt = row_pre<Rev>(bc, dden, L, nn, tid);  // consumed after this chunk's update
    cp_async_wait_all();
    __syncthreads();  // chunk n's stage and row factors visible; every warp is past chunk n - 1's reads
    unsigned char* stage = smem_raw + s * S2::stage_bytes;
    if (more) state2_issue<T, D, P2, Rev>(smem_raw + (s ^ 1) * S2::stage_bytes, ph, v, dnw, d, b, h, col0, nn, nxt.nv);
    const float* R = reinterpret_cast<const float*>(stage);
    const float* fs = fac[s];
    const float decay = expf(cur.last - cur.base);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][j][e] *= decay;
#pragma unroll
    for (int ks = 0; ks < kC / 16; ++ks) {
      const int k0 = ks * 16 + 2 * t4;  // this thread's first token row
      uint32_t bq[NJ][2];
      if constexpr (S2::kVt) {  // bf16: rows k0, k0 + 1 (k0 + 8, k0 + 9) of columns c, c + 1 paired per column
        const bf16* Vh = reinterpret_cast<const bf16*>(stage + S2::r_bytes);
#pragma unroll
        for (int q = 0; q < NJ / 2; ++q) {
          const bf16* p = Vh + k0 * LDV + 16 * q + 2 * g;
          const uint32_t u0 = *reinterpret_cast<const uint32_t*>(p), u1 = *reinterpret_cast<const uint32_t*>(p + LDV);
          const uint32_t u2 = *reinterpret_cast<const uint32_t*>(p + 8 * LDV);
          const uint32_t u3 = *reinterpret_cast<const uint32_t*>(p + 9 * LDV);
          bq[2 * q][0] = __byte_perm(u0, u1, 0x5410), bq[2 * q][1] = __byte_perm(u2, u3, 0x5410);
          bq[2 * q + 1][0] = __byte_perm(u0, u1, 0x7632), bq[2 * q + 1][1] = __byte_perm(u2, u3, 0x7632);
        }
      } else {
        const float* Vf = reinterpret_cast<const float*>(stage + S2::r_bytes);
#pragma unroll
        for (int q = 0; q < NJ / 2; ++q) {
          const float* p = Vf + k0 * LDV + 16 * q + 2 * g;
          const float2 u0 = *reinterpret_cast<const float2*>(p), u1 = *reinterpret_cast<const float2*>(p + LDV);
          const float2 u2 = *reinterpret_cast<const float2*>(p + 8 * LDV);
          const float2 u3 = *reinterpret_cast<const float2*>(p + 9 * LDV);
          bq[2 * q][0] = pack_bf16(u0.x, u1.x), bq[2 * q][1] = pack_bf16(u2.x, u3.x);
          bq[2 * q + 1][0] = pack_bf16(u0.y, u1.y), bq[2 * q + 1][1] = pack_bf16(u2.y, u3.y);
        }
      }
      const float2 fa = *reinterpret_cast<const float2*>(fs + k0), fb = *reinterpret_cast<const float2*>(fs + k0 + 8);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const float* p = R + k0 * LDR + warp * P4 + mt * 16 + 2 * g;
        const float2 u0 = *reinterpret_cast<const float2*>(p), u1 = *reinterpret_cast<const float2*>(p + LDR);
        const float2 u2 = *reinterpret_cast<const float2*>(p + 8 * LDR);
        const float2 u3 = *reinterpret_cast<const float2*>(p + 9 * LDR);
        uint32_t ka[4];
        ka[0] = pack_bf16(u0.x * fa.x, u1.x * fa.y);  // row g: feature f0 + 2g
        ka[1] = pack_bf16(u0.y * fa.x, u1.y * fa.y);  // row g + 8: feature f0 + 2g + 1
        ka[2] = pack_bf16(u2.x * fb.x, u3.x * fb.y);
        ka[3] = pack_bf16(u2.y * fb.x, u3.y * fb.y);
#pragma unroll
        for (int j = 0; j < NJ; ++j) mma16816(acc[mt][j], ka, bq[j][0], bq[j][1]);
      }
    }
    if (zcta && tid < P2) {  // block-uniform CTA test; fp32 features
      float zz = zr * decay;
#pragma unroll 8
      for (int r = 0; r < cur.nv; ++r) {
        const float t = R[r * LDR + tid] * fs[r];
        zz += Rev ? t * wz[s][r] : t;
      }
      zr = zz;
    }
    if (more) put_row_factors<Rev>(nxt, fac[s ^ 1], wz[s ^ 1], tid);  // that buffer's readers are past the barrier
  }
}

// The gate branch: state pass, output pass (one CTA per (b, h, chunk)), forward then reverse, one state
// buffer [BH, NC, kStateFloats] reused by both directions. `mark` names the passes for the profile.
// aligned: dv (and, bf16 inputs, v and dy) 16-byte aligned, for the output passes' vector loads and dv
// atomics; state2: the variant-2 state passes (the caller checks their alignment needs).
template <typename T, int D, int P2, typename Mark>
void launch_gate2(const LizardAttnArgs& a, Dims d, Ws ws, const T* dy, float* dv, float* dmeta, cudaStream_t st,
                  Mark&& mark, bool aligned, bool state2) {
  const int BH = d.B * d.Hq, nch = (d.L + kC - 1) / kC;
  float* sbuf = nullptr;
  LZ_CUDA_OK(cudaMallocAsync(&sbuf, sizeof(float) * size_t(BH) * nch * kStateFloats<D, P2>, st));
  const size_t gsmem = Smem<D, P2>::bytes;
  auto kfo = aligned ? gate_fwd_out_kernel<T, D, P2, true> : gate_fwd_out_kernel<T, D, P2, false>;
  auto kro = aligned ? gate_rev_out_kernel<T, D, P2, true> : gate_rev_out_kernel<T, D, P2, false>;
  // out_blocks CTAs per SM need the largest shared-memory carveout
  LZ_CUDA_OK(cudaFuncSetAttribute(kfo, cudaFuncAttributeMaxDynamicSharedMemorySize, int(gsmem)));
  LZ_CUDA_OK(cudaFuncSetAttribute(kro, cudaFuncAttributeMaxDynamicSharedMemorySize, int(gsmem)));
  LZ_CUDA_OK(cudaFuncSetAttribute(kfo, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  LZ_CUDA_OK(cudaFuncSetAttribute(kro, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  const dim3 sgrid(BH, D / kSD);
  using S2f = State2<T, D, P2, false>;
  using S2r = State2<T, D, P2, true>;
  auto kfs2 = gate_state2_kernel<T, D, P2, false>;
  auto krs2 = gate_state2_kernel<T, D, P2, true>;
  if (state2) {  // two CTAs per SM need more than the default shared-memory carveout
    LZ_CUDA_OK(cudaFuncSetAttribute(kfs2, cudaFuncAttributeMaxDynamicSharedMemorySize, int(S2f::bytes)));
    LZ_CUDA_OK(cudaFuncSetAttribute(krs2, cudaFuncAttributeMaxDynamicSharedMemorySize, int(S2r::bytes)));
    LZ_CUDA_OK(cudaFuncSetAttribute(kfs2, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
    LZ_CUDA_OK(cudaFuncSetAttribute(krs2, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
    kfs2<<<BH * S2f::NY, kGT, S2f::bytes, st>>>(a, d, ws, sbuf);
  } else {
    gate_state_kernel<T, D, P2, false><<<sgrid, kGT, 0, st>>>(a, d, ws, sbuf);
  }
  LZ_CUDA_OK(cudaGetLastError());
  mark(state2 ? "gate2-fstate-v2" : "gate2-fstate");
  kfo<<<BH * nch, kGT, gsmem, st>>>(a, d, ws, dy, sbuf, dmeta);
  LZ_CUDA_OK(cudaGetLastError());
  mark("gate2-fout");
  if (state2)  // dn, dden from the forward output pass
    krs2<<<BH * S2r::NY, kGT, S2r::bytes, st>>>(a, d, ws, sbuf);
  else
    gate_state_kernel<T, D, P2, true><<<sgrid, kGT, 0, st>>>(a, d, ws, sbuf);
  LZ_CUDA_OK(cudaGetLastError());
  mark(state2 ? "gate2-rstate-v2" : "gate2-rstate");
  kro<<<BH * nch, kGT, gsmem, st>>>(a, d, ws, dv, sbuf);
  LZ_CUDA_OK(cudaGetLastError());
  mark("gate2-rout");
  LZ_CUDA_OK(cudaFreeAsync(sbuf, st));
}

// dmeta (may be null): the meta_weights_gate part of the sinks' gradient (the window stage adds the rest).
template <typename T, typename Mark>
void run_gate2(const LizardAttnArgs& a, Dims d, Ws ws, const T* dy, float* dv, float* dmeta, cudaStream_t st,
               Mark&& mark, bool aligned, bool state2) {
  if (a.D == 64 && a.F == 32) return launch_gate2<T, 64, 64>(a, d, ws, dy, dv, dmeta, st, mark, aligned, state2);
  if (a.D == 64 && a.F == 64) return launch_gate2<T, 64, 128>(a, d, ws, dy, dv, dmeta, st, mark, aligned, state2);
  if (a.D == 128 && a.F == 32) return launch_gate2<T, 128, 64>(a, d, ws, dy, dv, dmeta, st, mark, aligned, state2);
  if (a.D == 128 && a.F == 64) return launch_gate2<T, 128, 128>(a, d, ws, dy, dv, dmeta, st, mark, aligned, state2);
  fail_cat("lizard attention chunked backward (cuda): needs D in {64, 128} and F in {32, 64}, got D=", a.D, " F=", a.F);
}

}  // namespace gate

// ---------------------------------------------------------------------------------------------
// Window branch of the backward on tensor cores: the flash backward (flash_attention_bwd.cu) with a
// band mask t in [i - w + 1, i], the window lse (meta sinks included) and delta = alpha dy . A from
// stats_kernel, dO = alpha dy, fp32 outputs: dq assigned (featbwd adds the feature part later), dk
// and dv added with atomics (the gate passes and featbwd add to them too). dmeta from lse and delta.
namespace win {

using namespace mma;
constexpr int kB = 64, kWT = 128;

// 64 rows (row0..) of a [.., stride] T matrix into a bf16 tile (row stride D + 8), times mul.
template <typename T, int D>
__device__ __forceinline__ void load_cvt(bf16* dst, const T* src, int64_t stride, int row0, int L, float mul) {
  for (int p = threadIdx.x; p < kB * D; p += kWT) {
    const int r = p / D, c = p % D, pos = row0 + r;
    dst[r * (D + 8) + c] = __float2bfloat16(pos < L ? ld(src + int64_t(pos) * stride + c) * mul : 0.f);
  }
}

// The dq kernels' epilogue: the warp's rows ia, ib of dq (times scale) and the meta tokens' gradient,
// -sum_i exp(mu - lse_i) delta_i over the valid rows (one atomic per warp and token).
template <int ND>
__device__ __forceinline__ void store_dq_dmeta(const LizardAttnArgs& a, const Dims& d, const float (&acc)[ND][4],
                                               float* dq, float* dmeta, int b, int h, int ia, int ib, bool va, bool vb,
                                               float lsa, float lsb, float da, float db, float scale) {
  const int lane = threadIdx.x & 31, t4 = lane & 3;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int c = 8 * j + 2 * t4;
    if (va) *reinterpret_cast<float2*>(dq + d.q_off(b, ia, h) + c) = make_float2(acc[j][0] * scale, acc[j][1] * scale);
    if (vb) *reinterpret_cast<float2*>(dq + d.q_off(b, ib, h) + c) = make_float2(acc[j][2] * scale, acc[j][3] * scale);
  }
  if (dmeta != nullptr && d.m > 0) {
    const int moff = a.meta_per_head ? h * d.m : 0;
    for (int j = 0; j < d.m; ++j) {
      const float mu = a.meta[moff + j];
      float x = 0.f;
      if (t4 == 0) {
        if (va) x -= expf(mu - lsa) * da;
        if (vb) x -= expf(mu - lsb) * db;
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
      if (lane == 0) atomicAdd(dmeta + moff + j, x);
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kWT) wdq_kernel(const LizardAttnArgs a, Dims d, Ws ws, const T* dy, float* dq,
                                                  float* dmeta) {
  constexpr int LD = D + 8, ND = D / 8, NK = kB / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* dOs = Qs + kB * LD;
  bf16* Ks = dOs + kB * LD;
  bf16* Vs = Ks + kB * LD;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int L = d.L, w = d.w, nqb = (L + kB - 1) / kB, qb = nqb - 1 - blockIdx.x;
  const int bh = blockIdx.y, h = bh % d.Hq, b = bh / d.Hq;
  const int64_t qs = int64_t(d.Hq) * D, ks = int64_t(d.Hkv) * D;
  const T* q = static_cast<const T*>(a.q) + d.q_off(b, 0, h);
  const T* gy = dy + d.q_off(b, 0, h);
  const T* k = static_cast<const T*>(a.k) + d.k_off(b, 0, h);
  const T* v = static_cast<const T*>(a.v) + d.k_off(b, 0, h);
  const float alpha = a.alpha[a.alpha_per_head ? h : 0];
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const float scale2 = scale * kLog2e;
  load_cvt<T, D>(Qs, q, qs, qb * kB, L, 1.f);
  load_cvt<T, D>(dOs, gy, qs, qb * kB, L, alpha);
  const int r0 = warp * 16, ia = qb * kB + r0 + g, ib = ia + 8;
  const bool va = ia < L, vb = ib < L;
  const int64_t o = int64_t(bh) * L;
  const float lsa = va ? ws.lse[o + ia] : 0.f, lsb = vb ? ws.lse[o + ib] : 0.f;
  const float la = lsa * kLog2e, lb = lsb * kLog2e;
  const float da = va ? ws.delta[o + ia] : 0.f, db = vb ? ws.delta[o + ib] : 0.f;
  float acc[ND][4];
  zero_acc(acc);
  const int kb_lo = max(0, qb * kB - w + 1) / kB;
  for (int kb = kb_lo; kb <= qb; ++kb) {
    __syncthreads();  // previous K, V tiles fully read
    load_cvt<T, D>(Ks, k, ks, kb * kB, L, 1.f);
    load_cvt<T, D>(Vs, v, ks, kb * kB, L, 1.f);
    __syncthreads();
    float sc[NK][4], dp[NK][4];
    zero_acc(sc);
    zero_acc(dp);
    mma_smem_pair<D / 16>(sc, dp, Qs, dOs, LD, r0, Ks, Vs, LD);
#pragma unroll
    for (int j = 0; j < NK; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tt = kb * kB + 8 * j + 2 * t4 + e;
        const bool oka = tt <= ia && tt > ia - w && tt < L, okb = tt <= ib && tt > ib - w && tt < L;
        const float p0 = oka ? exp2f(sc[j][e] * scale2 - la) : 0.f;
        const float p1 = okb ? exp2f(sc[j][2 + e] * scale2 - lb) : 0.f;
        dp[j][e] = p0 * (dp[j][e] - da);
        dp[j][2 + e] = p1 * (dp[j][2 + e] - db);
      }
    }
    uint32_t pa[NK / 2][4];
    acc_to_a(pa, dp);
    mma_frag<NK / 2, BLayout::KN>(acc, pa, Ks, LD);
  }
  store_dq_dmeta(a, d, acc, dq, dmeta, b, h, ia, ib, va, vb, lsa, lsb, da, db, scale);
}

// V2 (stage variant 2, fp32 inputs; bf16 inputs take win2_kernel): dk, dv added without atomics (see
// wdkdv2_body).
template <typename T, int D, bool V2 = false>
__global__ void __launch_bounds__(kWT) wdkdv_kernel(const LizardAttnArgs a, Dims d, Ws ws, const T* dy, float* dk,
                                                    float* dv) {
  constexpr int LD = D + 8, ND = D / 8, NQ = kB / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + kB * LD;
  bf16* Qs = Vs + kB * LD;
  bf16* dOs = Qs + kB * LD;
  float* l2s = reinterpret_cast<float*>(dOs + kB * LD);
  float* dls = l2s + kB;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int L = d.L, w = d.w, nqb = (L + kB - 1) / kB, kb = blockIdx.x;
  const int hkv = blockIdx.y % d.Hkv, b = blockIdx.y / d.Hkv, G = d.group, h0 = hkv * G;
  const int64_t qs = int64_t(d.Hq) * D, ks = int64_t(d.Hkv) * D;
  const T* k = static_cast<const T*>(a.k) + d.k_off(b, 0, h0);
  const T* v = static_cast<const T*>(a.v) + d.k_off(b, 0, h0);
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const float scale2 = scale * kLog2e;
  load_cvt<T, D>(Ks, k, ks, kb * kB, L, 1.f);
  load_cvt<T, D>(Vs, v, ks, kb * kB, L, 1.f);
  const int r0 = warp * 16, kr0 = kb * kB + r0 + g, kr1 = kr0 + 8;
  float dka[ND][4], dva[ND][4];
  zero_acc(dka);
  zero_acc(dva);
  const int qb_hi = min(nqb - 1, (kb * kB + kB - 1 + w - 1) / kB);
  for (int jh = 0; jh < G; ++jh) {
    const int h = h0 + jh;
    const float alpha = a.alpha[a.alpha_per_head ? h : 0];
    const T* q = static_cast<const T*>(a.q) + d.q_off(b, 0, h);
    const T* gy = dy + d.q_off(b, 0, h);
    const int64_t o = (int64_t(b) * d.Hq + h) * L;
    for (int qb = kb; qb <= qb_hi; ++qb) {
      __syncthreads();  // previous Q, dO, lse, delta fully read
      load_cvt<T, D>(Qs, q, qs, qb * kB, L, 1.f);
      load_cvt<T, D>(dOs, gy, qs, qb * kB, L, alpha);
      if (tid < kB) {
        const int i = qb * kB + tid;
        l2s[tid] = i < L ? ws.lse[o + i] * kLog2e : 0.f;
        dls[tid] = i < L ? ws.delta[o + i] : 0.f;
      }
      __syncthreads();
      float sc[NQ][4], dp[NQ][4];
      zero_acc(sc);
      zero_acc(dp);
      mma_smem_pair<D / 16>(sc, dp, Ks, Vs, LD, r0, Qs, dOs, LD);
#pragma unroll
      for (int j = 0; j < NQ; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = 8 * j + 2 * t4 + e, qi = qb * kB + col;
          const float lq = l2s[col], dl = dls[col];
          const bool ok0 = qi >= kr0 && qi - kr0 < w && qi < L, ok1 = qi >= kr1 && qi - kr1 < w && qi < L;
          const float p0 = ok0 ? exp2f(sc[j][e] * scale2 - lq) : 0.f;
          const float p1 = ok1 ? exp2f(sc[j][2 + e] * scale2 - lq) : 0.f;
          sc[j][e] = p0, sc[j][2 + e] = p1;
          dp[j][e] = p0 * (dp[j][e] - dl);
          dp[j][2 + e] = p1 * (dp[j][2 + e] - dl);
        }
      }
      uint32_t pa[NQ / 2][4], sa[NQ / 2][4];
#pragma unroll
      for (int s = 0; s < NQ / 2; ++s) acc_to_a(pa[s], sc[2 * s], sc[2 * s + 1]), acc_to_a(sa[s], dp[2 * s], dp[2 * s + 1]);
      mma_frag_pair(dva, dka, pa, sa, dOs, Qs, LD);
    }
  }
  if constexpr (V2) {
    __syncthreads();  // every tile read: the tiles' space takes the staged sums (2 x 64 x (D + 4) fp32)
    float* sk = reinterpret_cast<float*>(smem_raw);
    float* sv = sk + kB * (D + 4);
    v2::stage_frag<D>(sk, dka, r0, g, t4, scale);
    v2::stage_frag<D>(sv, dva, r0, g, t4, 1.f);
    __syncthreads();
    v2::add_rows<kB, D, kWT, false>(sk, [&](int pos) { return dk + d.k_off(b, pos, h0); }, kb * kB, L);
    v2::add_rows<kB, D, kWT, false>(sv, [&](int pos) { return dv + d.k_off(b, pos, h0); }, kb * kB, L);
  } else {
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      const int c = 8 * j + 2 * t4;
      if (kr0 < L) {
        float* pk = dk + d.k_off(b, kr0, h0) + c;
        float* pv = dv + d.k_off(b, kr0, h0) + c;
        atomicAdd(pk, dka[j][0] * scale), atomicAdd(pk + 1, dka[j][1] * scale);
        atomicAdd(pv, dva[j][0]), atomicAdd(pv + 1, dva[j][1]);
      }
      if (kr1 < L) {
        float* pk = dk + d.k_off(b, kr1, h0) + c;
        float* pv = dv + d.k_off(b, kr1, h0) + c;
        atomicAdd(pk, dka[j][2] * scale), atomicAdd(pk + 1, dka[j][3] * scale);
        atomicAdd(pv, dva[j][2]), atomicAdd(pv + 1, dva[j][3]);
      }
    }
  }
}

// Stage variant 2 window kernels for bf16 inputs: the same band-masked flash backward as wdq_kernel /
// wdkdv_kernel, with the tiles copied by cp.async and double-buffered (the next K, V block, or the next
// Q, dO block with its lse and delta, is in flight while the current one is multiplied: 6 tiles, 104 KB
// at D128; both kernels are register-bound to 2 CTAs per SM anyway, so the second buffer costs no
// occupancy), dO = dy with alpha applied to the fp32 dP (and, for dV, to P before its bf16 rounding),
// and dk, dv without atomics: a dkdv CTA is the only writer of its 64 rows of (b, hkv) (it sums the
// group's query heads itself) and no other stage runs concurrently (stream order), so its fp32 sums are
// staged in shared memory and written by coalesced float4 stores (dk) and read-modify-writes (dv).
// The two bodies take the block coordinates (bx, by) as arguments: win2_kernel runs both.
template <int D>
__device__ __forceinline__ void wdq2_body(const LizardAttnArgs& a, const Dims& d, const Ws& ws, const bf16* dy,
                                          float* dq, float* dmeta, int bx, int by) {
  constexpr int LD = D + 8, ND = D / 8, NK = kB / 8, TS = kB * LD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* dOs = Qs + TS;
  bf16* KV = dOs + TS;  // buffer u: K at KV + 2 u TS, V at KV + (2 u + 1) TS
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int L = d.L, w = d.w, nqb = (L + kB - 1) / kB, qb = nqb - 1 - bx;
  const int bh = by, h = bh % d.Hq, b = bh / d.Hq;
  const int64_t qs = int64_t(d.Hq) * D, ks = int64_t(d.Hkv) * D;
  const bf16* q = static_cast<const bf16*>(a.q) + d.q_off(b, 0, h);
  const bf16* gy = dy + d.q_off(b, 0, h);
  const bf16* k = static_cast<const bf16*>(a.k) + d.k_off(b, 0, h);
  const bf16* v = static_cast<const bf16*>(a.v) + d.k_off(b, 0, h);
  const float alpha = a.alpha[a.alpha_per_head ? h : 0];
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const float scale2 = scale * kLog2e;
  const int kb_lo = max(0, qb * kB - w + 1) / kB, nkb = qb - kb_lo + 1;
  v2::cp_tile<kB, D, kWT>(Qs, LD, q, qs, qb * kB, L);
  v2::cp_tile<kB, D, kWT>(dOs, LD, gy, qs, qb * kB, L);
  v2::cp_tile<kB, D, kWT>(KV, LD, k, ks, kb_lo * kB, L);
  v2::cp_tile<kB, D, kWT>(KV + TS, LD, v, ks, kb_lo * kB, L);
  cp_async_commit();
  const int r0 = warp * 16, ia = qb * kB + r0 + g, ib = ia + 8;
  const bool va = ia < L, vb = ib < L;
  const int64_t o = int64_t(bh) * L;
  const float lsa = va ? ws.lse[o + ia] : 0.f, lsb = vb ? ws.lse[o + ib] : 0.f;
  const float la = lsa * kLog2e, lb = lsb * kLog2e;
  const float da = va ? ws.delta[o + ia] : 0.f, db = vb ? ws.delta[o + ib] : 0.f;
  float acc[ND][4];
  zero_acc(acc);
  for (int it = 0; it < nkb; ++it) {
    const int kb = kb_lo + it, u = it & 1;
    const bf16* Ks = KV + 2 * u * TS;
    const bf16* Vs = Ks + TS;
    cp_async_wait_all();  // this block's K, V (the first time also Q, dO)
    __syncthreads();      // visible to all; every warp is done with block it - 1 (the other buffer)
    if (it + 1 < nkb) {
      v2::cp_tile<kB, D, kWT>(KV + 2 * (u ^ 1) * TS, LD, k, ks, (kb + 1) * kB, L);
      v2::cp_tile<kB, D, kWT>(KV + (2 * (u ^ 1) + 1) * TS, LD, v, ks, (kb + 1) * kB, L);
      cp_async_commit();
    }
    float sc[NK][4], dp[NK][4];
    zero_acc(sc);
    zero_acc(dp);
    mma_smem_pair<D / 16>(sc, dp, Qs, dOs, LD, r0, Ks, Vs, LD);
#pragma unroll
    for (int j = 0; j < NK; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tt = kb * kB + 8 * j + 2 * t4 + e;
        const bool oka = tt <= ia && tt > ia - w && tt < L, okb = tt <= ib && tt > ib - w && tt < L;
        const float p0 = oka ? exp2f(sc[j][e] * scale2 - la) : 0.f;
        const float p1 = okb ? exp2f(sc[j][2 + e] * scale2 - lb) : 0.f;
        dp[j][e] = p0 * (alpha * dp[j][e] - da);
        dp[j][2 + e] = p1 * (alpha * dp[j][2 + e] - db);
      }
    }
    uint32_t pa[NK / 2][4];
    acc_to_a(pa, dp);
    mma_frag<NK / 2, BLayout::KN>(acc, pa, Ks, LD);
  }
  store_dq_dmeta(a, d, acc, dq, dmeta, b, h, ia, ib, va, vb, lsa, lsb, da, db, scale);
}

// win2_kernel's dkdv role. dk is stored, not added (the window stage is its first writer, so run_bwd skips
// dk's memset on this path; the gate passes add to dv only, featbwd adds to dk later); the old dv rows are loaded in
// one batch (the accumulators are dead by then) before dk's stores are issued.
template <int D>
__device__ __forceinline__ void wdkdv2_body(const LizardAttnArgs& a, const Dims& d, const Ws& ws, const bf16* dy,
                                            float* dk, float* dv, int bx, int by) {
  constexpr int LD = D + 8, ND = D / 8, NQ = kB / 8, TS = kB * LD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + TS;
  bf16* QO = Vs + TS;  // buffer u: Q at QO + 2 u TS, dO at QO + (2 u + 1) TS
  float* l2b = reinterpret_cast<float*>(QO + 4 * TS);  // [2][kB] lse (log2 units), then [2][kB] delta
  float* dlb = l2b + 2 * kB;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int L = d.L, w = d.w, nqb = (L + kB - 1) / kB, kb = bx;
  const int hkv = by % d.Hkv, b = by / d.Hkv, G = d.group, h0 = hkv * G;
  const int64_t qs = int64_t(d.Hq) * D, ks = int64_t(d.Hkv) * D;
  const bf16* k = static_cast<const bf16*>(a.k) + d.k_off(b, 0, h0);
  const bf16* v = static_cast<const bf16*>(a.v) + d.k_off(b, 0, h0);
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const float scale2 = scale * kLog2e;
  v2::cp_tile<kB, D, kWT>(Ks, LD, k, ks, kb * kB, L);
  v2::cp_tile<kB, D, kWT>(Vs, LD, v, ks, kb * kB, L);
  const int r0 = warp * 16, kr0 = kb * kB + r0 + g, kr1 = kr0 + 8;
  float dka[ND][4], dva[ND][4];
  zero_acc(dka);
  zero_acc(dva);
  // (query head, query block) pairs in order: head h0 + idx / nq, block kb + idx % nq.
  const int qb_hi = min(nqb - 1, (kb * kB + kB - 1 + w - 1) / kB), nq = qb_hi - kb + 1, npair = G * nq;
  float nl = 0.f, nd = 0.f;  // the next pair's lse (log2 units) and delta for query row tid (tid < kB)
  auto issue = [&](int idx) {
    const int h = h0 + idx / nq, qb = kb + idx % nq, u = idx & 1;
    v2::cp_tile<kB, D, kWT>(QO + 2 * u * TS, LD, static_cast<const bf16*>(a.q) + d.q_off(b, 0, h), qs, qb * kB, L);
    v2::cp_tile<kB, D, kWT>(QO + (2 * u + 1) * TS, LD, dy + d.q_off(b, 0, h), qs, qb * kB, L);
    cp_async_commit();
    if (tid < kB) {
      const int i = qb * kB + tid;
      const int64_t o = (int64_t(b) * d.Hq + h) * L;
      nl = i < L ? ws.lse[o + i] * kLog2e : 0.f;
      nd = i < L ? ws.delta[o + i] : 0.f;
    }
  };
  issue(0);  // (K, V ride in the same group)
  for (int idx = 0; idx < npair; ++idx) {
    const int h = h0 + idx / nq, qb = kb + idx % nq, u = idx & 1;
    const float alpha = a.alpha[a.alpha_per_head ? h : 0];
    const bf16* Qs = QO + 2 * u * TS;
    const bf16* dOs = Qs + TS;
    const float* l2s = l2b + u * kB;
    const float* dls = dlb + u * kB;
    // Buffer u was last read by pair idx - 2, which every warp finished before the last barrier.
    if (tid < kB) l2b[u * kB + tid] = nl, dlb[u * kB + tid] = nd;
    cp_async_wait_all();  // this pair's Q, dO
    __syncthreads();      // visible to all; every warp is done with pair idx - 1 (the other buffer)
    if (idx + 1 < npair) issue(idx + 1);
    float sc[NQ][4], dp[NQ][4];
    zero_acc(sc);
    zero_acc(dp);
    mma_smem_pair<D / 16>(sc, dp, Ks, Vs, LD, r0, Qs, dOs, LD);
#pragma unroll
    for (int j = 0; j < NQ; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = 8 * j + 2 * t4 + e, qi = qb * kB + col;
        const float lq = l2s[col], dl = dls[col];
        const bool ok0 = qi >= kr0 && qi - kr0 < w && qi < L, ok1 = qi >= kr1 && qi - kr1 < w && qi < L;
        const float p0 = ok0 ? exp2f(sc[j][e] * scale2 - lq) : 0.f;
        const float p1 = ok1 ? exp2f(sc[j][2 + e] * scale2 - lq) : 0.f;
        sc[j][e] = alpha * p0, sc[j][2 + e] = alpha * p1;  // dV = P^T dO = (alpha P)^T dy
        dp[j][e] = p0 * (alpha * dp[j][e] - dl);
        dp[j][2 + e] = p1 * (alpha * dp[j][2 + e] - dl);
      }
    }
    uint32_t pa[NQ / 2][4], sa[NQ / 2][4];
#pragma unroll
    for (int s = 0; s < NQ / 2; ++s) acc_to_a(pa[s], sc[2 * s], sc[2 * s + 1]), acc_to_a(sa[s], dp[2 * s], dp[2 * s + 1]);
    mma_frag_pair(dva, dka, pa, sa, dOs, Qs, LD);
  }
  __syncthreads();  // every tile read: their space takes the staged sums (2 x 64 x (D + 4) fp32)
  float* sk = reinterpret_cast<float*>(smem_raw);
  float* sv = sk + kB * (D + 4);
  v2::stage_frag<D>(sk, dka, r0, g, t4, scale);
  v2::stage_frag<D>(sv, dva, r0, g, t4, 1.f);
  __syncthreads();
  {
    constexpr int LDS = D + 4, CPR = D / 4, NB = kB * CPR / kWT;  // float4 per thread: all in one batch
    static_assert(kB * CPR % kWT == 0, "staged block must split evenly");
    const int row0 = kb * kB;
    float4 old[NB];
#pragma unroll
    for (int u = 0; u < NB; ++u) {  // the old dv rows, every load in flight
      const int p = u * kWT + tid, r = p / CPR, c = (p % CPR) * 4;
      old[u] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (row0 + r < L) old[u] = *reinterpret_cast<const float4*>(dv + d.k_off(b, row0 + r, h0) + c);
    }
#pragma unroll
    for (int u = 0; u < NB; ++u) {  // dk stored while they come
      const int p = u * kWT + tid, r = p / CPR, c = (p % CPR) * 4;
      if (row0 + r < L)
        *reinterpret_cast<float4*>(dk + d.k_off(b, row0 + r, h0) + c) = *reinterpret_cast<const float4*>(sk + r * LDS + c);
    }
#pragma unroll
    for (int u = 0; u < NB; ++u) {
      const int p = u * kWT + tid, r = p / CPR, c = (p % CPR) * 4;
      if (row0 + r >= L) continue;
      const float4 s = *reinterpret_cast<const float4*>(sv + r * LDS + c);
      *reinterpret_cast<float4*>(dv + d.k_off(b, row0 + r, h0) + c) =
          make_float4(old[u].x + s.x, old[u].y + s.y, old[u].z + s.z, old[u].w + s.w);
    }
  }
}

// The window stage for bf16 inputs under stage variant 2: the dq and dkdv roles in ONE grid, interleaved
// block by block. As two kernels (measured and deleted in session 5: 2.14 ms against this grid's 1.80 at
// B16 H32 D128 L2048 w128 on the H200), the dq kernel ran its 2 CTAs per SM on tensor cores and shared
// memory while HBM idled, then the dkdv kernel ended on its dk / dv read-modify-writes; mixed, a dq CTA
// computes beside a dkdv CTA's loads and epilogue, and the block pair of one index (same blockIdx.x, y:
// for G = 1 the same head) reads the same K, V, Q, dy rows from L2. Registers and shared memory are the
// dkdv role's (2 CTAs per SM at D128, 3 at D64). Block i < 2 nK: role i & 1 (0 dq, 1 dkdv), index i / 2;
// later blocks dq (nQ >= nK).
template <int D>
__global__ void __launch_bounds__(kWT) win2_kernel(const LizardAttnArgs a, Dims d, Ws ws, const bf16* dy, float* dq,
                                                   float* dk, float* dv, float* dmeta, int nb, int nK) {
  const int i = int(blockIdx.x);
  if (i < 2 * nK && (i & 1)) {
    const int s = i >> 1;
    wdkdv2_body<D>(a, d, ws, dy, dk, dv, s % nb, s / nb);
  } else {
    const int s = i < 2 * nK ? i >> 1 : i - nK;
    wdq2_body<D>(a, d, ws, dy, dq, dmeta, s % nb, s / nb);
  }
}

template <int D>
void launch_win2(const LizardAttnArgs& a, Dims d, Ws ws, const bf16* dy, float* dq, float* dk, float* dv, float* dmeta,
                 cudaStream_t st) {
  const size_t smem = size_t(6) * kB * (D + 8) * sizeof(bf16) + 4 * kB * 4;
  const int nb = (d.L + kB - 1) / kB, nQ = nb * d.B * d.Hq, nK = nb * d.B * d.Hkv;
  auto kw = win2_kernel<D>;
  LZ_CUDA_OK(cudaFuncSetAttribute(kw, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kw<<<nQ + nK, kWT, smem, st>>>(a, d, ws, dy, dq, dk, dv, dmeta, nb, nK);
  LZ_CUDA_OK(cudaGetLastError());
}

// V2: bf16 inputs take launch_win2; fp32 inputs the variant-1 kernels with wdkdv's atomics replaced (V2).
template <typename T, int D, bool V2>
void launch_win(const LizardAttnArgs& a, Dims d, Ws ws, const T* dy, float* dq, float* dk, float* dv, float* dmeta,
                cudaStream_t st) {
  if constexpr (V2 && v2::fast_load<T>()) {
    return launch_win2<D>(a, d, ws, dy, dq, dk, dv, dmeta, st);
  } else {
  const size_t tiles = size_t(4) * kB * (D + 8) * sizeof(bf16);
  static_assert(size_t(2) * kB * (D + 4) * 4 <= size_t(4) * kB * (D + 8) * sizeof(bf16), "v2 staging fits the tiles");
  const int nb = (d.L + kB - 1) / kB;
  auto kq = wdq_kernel<T, D>;
  auto kk = wdkdv_kernel<T, D, V2>;
  LZ_CUDA_OK(cudaFuncSetAttribute(kq, cudaFuncAttributeMaxDynamicSharedMemorySize, int(tiles)));
  LZ_CUDA_OK(cudaFuncSetAttribute(kk, cudaFuncAttributeMaxDynamicSharedMemorySize, int(tiles + 2 * kB * 4)));
  kq<<<dim3(nb, d.B * d.Hq), kWT, tiles, st>>>(a, d, ws, dy, dq, dmeta);
  LZ_CUDA_OK(cudaGetLastError());
  kk<<<dim3(nb, d.B * d.Hkv), kWT, tiles + 2 * kB * 4, st>>>(a, d, ws, dy, dk, dv);
  LZ_CUDA_OK(cudaGetLastError());
  }
}

template <typename T>
void run_win(const LizardAttnArgs& a, Dims d, Ws ws, const T* dy, float* dq, float* dk, float* dv, float* dmeta,
             cudaStream_t st, bool fast = false) {
  if (a.D == 64) return fast ? launch_win<T, 64, true>(a, d, ws, dy, dq, dk, dv, dmeta, st)
                           : launch_win<T, 64, false>(a, d, ws, dy, dq, dk, dv, dmeta, st);
  if (a.D == 128) return fast ? launch_win<T, 128, true>(a, d, ws, dy, dq, dk, dv, dmeta, st)
                            : launch_win<T, 128, false>(a, d, ws, dy, dq, dk, dv, dmeta, st);
  fail_cat("lizard attention chunked backward (cuda): window stage needs D in {64, 128}, got ", a.D);
}

}  // namespace win

// ---------------------------------------------------------------------------------------------
// dW[h] = X_h^T dU_h (X = q or k rows of head h over all (b, i), dU = the feature-map backward's du,
// in the first F columns of dphq / dphk: the gate output passes' store_dphi) on tensor cores, split over token
// ranges of kDwTokens with fp32 atomicAdd into the zeroed dW. Grid (splits, Hq, 2: q then k).
namespace dwtc {

using namespace mma;
constexpr int kT = 64, kThr = 128, kDwTokens = 4096;

// Both dW kernels' product over one 64-token tile: acc += X^T dU, X = Xs [kT][D + 8], dU = Us [kT][F + 8];
// warp w owns dW rows w D/4 .. + D/4 (MT = D/64 m-tiles).
template <int D, int F>
__device__ __forceinline__ void mma_xt_u(float (&acc)[D / 64][F / 8][4], const bf16* Xs, const bf16* Us, int warp) {
  constexpr int LDX = D + 8, LDU = F + 8, MT = D / 64, NF = F / 8;
#pragma unroll
  for (int s = 0; s < kT / 16; ++s) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      uint32_t xa[4];
      load_a_t(xa, Xs, LDX, warp * (D / 4) + mt * 16, s * 16);
#pragma unroll
      for (int np = 0; np < NF / 2; ++np) {
        uint32_t bb[4];
        load_b_kn(bb, Us, LDU, np * 16, s * 16);
        mma16816(acc[mt][2 * np], xa, bb[0], bb[1]);
        mma16816(acc[mt][2 * np + 1], xa, bb[2], bb[3]);
      }
    }
  }
}

// The CTA's partial [D x F] dW of head h added to the zeroed output by atomics.
template <int D, int F>
__device__ __forceinline__ void add_partial(const float (&acc)[D / 64][F / 8][4], float* out, int h, int warp, int g,
                                            int t4) {
  constexpr int MT = D / 64, NF = F / 8;
  float* o = out + int64_t(h) * D * F;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int e0 = warp * (D / 4) + mt * 16 + g;
#pragma unroll
    for (int j = 0; j < NF; ++j) {
      const int f = 8 * j + 2 * t4;
      atomicAdd(o + int64_t(e0) * F + f, acc[mt][j][0]);
      atomicAdd(o + int64_t(e0) * F + f + 1, acc[mt][j][1]);
      atomicAdd(o + int64_t(e0 + 8) * F + f, acc[mt][j][2]);
      atomicAdd(o + int64_t(e0 + 8) * F + f + 1, acc[mt][j][3]);
    }
  }
}

template <typename T, int D, int F>
__global__ void __launch_bounds__(kThr) dw_tc_kernel(const LizardAttnArgs a, Dims d, Ws ws, float* dwq, float* dwk) {
  constexpr int LDX = D + 8, LDU = F + 8, MT = D / 64, NF = F / 8;
  __shared__ __align__(16) bf16 Xs[kT * LDX];
  __shared__ __align__(16) bf16 Us[kT * LDU];
  const int which = blockIdx.z, h = blockIdx.y;
  float* out = which ? dwk : dwq;
  if (out == nullptr) return;
  const T* x = static_cast<const T*>(which ? a.k : a.q);
  const float* du = which ? ws.dphk : ws.dphq;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t ntok = int64_t(d.B) * d.L;
  const int64_t n0 = int64_t(blockIdx.x) * kDwTokens, n1 = min(ntok, n0 + kDwTokens);
  float acc[MT][NF][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) zero_acc(acc[mt]);
  for (int64_t c0 = n0; c0 < n1; c0 += kT) {
    __syncthreads();
    for (int p = tid; p < kT * D; p += kThr) {
      const int r = p / D, e = p % D;
      const int64_t n = c0 + r;
      float val = 0.f;
      if (n < n1) {
        const int b = int(n / d.L), i = int(n % d.L);
        val = ld(x + (which ? d.k_off(b, i, h) : d.q_off(b, i, h)) + e);
      }
      Xs[r * LDX + e] = __float2bfloat16(val);
    }
    for (int p = tid; p < kT * F; p += kThr) {
      const int r = p / F, f = p % F;
      const int64_t n = c0 + r;
      float val = 0.f;
      if (n < n1) {
        const int b = int(n / d.L), i = int(n % d.L);
        val = du[(d.bh(b, h) * d.L + i) * 2 * F + f];
      }
      Us[r * LDU + f] = __float2bfloat16(val);
    }
    __syncthreads();
    mma_xt_u<D, F>(acc, Xs, Us, warp);
  }
  add_partial<D, F>(acc, out, h, warp, g, t4);
}

// Stage variant 2: the same GEMM with its K dimension (the B L tokens of the head) cut into 64-token
// tiles that never straddle a batch row (tile t: b = t / tpb, rows (t % tpb) 64.., padded with zeros
// past L), kDw2Tiles consecutive tiles per CTA. Variant 1 decodes (b, i) per element with 64-bit
// division and loads element by element (two dependent global round trips' worth of latency per few
// elements); here X comes by cp.async (bf16) or float4 loads (fp32), du by float4 loads all issued
// before their conversion, and each CTA's [D x F] partial goes to the zeroed dW by atomicAdd
// (B L / (64 kDw2Tiles) partials per head: 32 at B16 L2048).
constexpr int kDw2Tiles = 16;

template <typename T, int D, int F>
__global__ void __launch_bounds__(kThr) dw2_kernel(const LizardAttnArgs a, Dims d, Ws ws, float* dwq, float* dwk) {
  constexpr int LDX = D + 8, LDU = F + 8, MT = D / 64, NF = F / 8;
  constexpr int NXC = kT * D / 4 / kThr, NUC = kT * F / 4 / kThr;  // float4 chunks per thread
  static_assert(NXC * 4 * kThr == kT * D && NUC * 4 * kThr == kT * F, "tiles split evenly");
  __shared__ __align__(16) bf16 Xs[kT * LDX];
  __shared__ __align__(16) bf16 Us[kT * LDU];
  const int which = blockIdx.z, h = blockIdx.y;
  float* out = which ? dwk : dwq;
  if (out == nullptr) return;
  const T* x = static_cast<const T*>(which ? a.k : a.q);
  const int64_t xstride = int64_t(which ? d.Hkv : d.Hq) * D;
  const float* du = which ? ws.dphk : ws.dphq;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int tpb = (d.L + kT - 1) / kT, ntile = d.B * tpb;
  const int t_begin = blockIdx.x * kDw2Tiles, t_end = min(ntile, t_begin + kDw2Tiles);
  float acc[MT][NF][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) zero_acc(acc[mt]);
  for (int t = t_begin; t < t_end; ++t) {
    const int b = t / tpb, i0 = (t - b * tpb) * kT;
    const T* xb = x + (which ? d.k_off(b, 0, h) : d.q_off(b, 0, h));
    const float* ub = du + d.bh(b, h) * d.L * 2 * F;
    __syncthreads();  // previous tiles fully read
    if constexpr (v2::fast_load<T>()) {
      v2::cp_tile<kT, D, kThr>(Xs, LDX, reinterpret_cast<const bf16*>(xb), xstride, i0, d.L);
    } else {
      float4 xv[NXC];
#pragma unroll
      for (int u = 0; u < NXC; ++u) {
        const int p = u * kThr + tid, r = p / (D / 4), c = (p % (D / 4)) * 4;
        xv[u] = i0 + r < d.L ? *reinterpret_cast<const float4*>(reinterpret_cast<const float*>(xb) + int64_t(i0 + r) * xstride + c)
                             : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < NXC; ++u) {
        const int p = u * kThr + tid, r = p / (D / 4), c = (p % (D / 4)) * 4;
        *reinterpret_cast<uint2*>(Xs + r * LDX + c) = make_uint2(pack_bf16(xv[u].x, xv[u].y), pack_bf16(xv[u].z, xv[u].w));
      }
    }
    float4 uv[NUC];
#pragma unroll
    for (int u = 0; u < NUC; ++u) {
      const int p = u * kThr + tid, r = p / (F / 4), c = (p % (F / 4)) * 4;
      uv[u] = i0 + r < d.L ? *reinterpret_cast<const float4*>(ub + int64_t(i0 + r) * 2 * F + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < NUC; ++u) {
      const int p = u * kThr + tid, r = p / (F / 4), c = (p % (F / 4)) * 4;
      *reinterpret_cast<uint2*>(Us + r * LDU + c) = make_uint2(pack_bf16(uv[u].x, uv[u].y), pack_bf16(uv[u].z, uv[u].w));
    }
    if constexpr (v2::fast_load<T>()) v2::cp_wait();
    __syncthreads();
    mma_xt_u<D, F>(acc, Xs, Us, warp);
  }
  add_partial<D, F>(acc, out, h, warp, g, t4);
}

template <typename T, int D, int F>
void launch_dw2(const LizardAttnArgs& a, Dims d, Ws ws, float* dwq, float* dwk, cudaStream_t st) {
  const int ntile = d.B * ((d.L + kT - 1) / kT);
  const dim3 grid(unsigned((ntile + kDw2Tiles - 1) / kDw2Tiles), d.Hq, 2);
  dw2_kernel<T, D, F><<<grid, kThr, 0, st>>>(a, d, ws, dwq, dwk);
  LZ_CUDA_OK(cudaGetLastError());
}

template <typename T, int D, int F>
void launch_dw(const LizardAttnArgs& a, Dims d, Ws ws, float* dwq, float* dwk, cudaStream_t st) {
  const int64_t ntok = int64_t(d.B) * d.L;
  const dim3 grid(unsigned((ntok + kDwTokens - 1) / kDwTokens), d.Hq, 2);
  dw_tc_kernel<T, D, F><<<grid, kThr, 0, st>>>(a, d, ws, dwq, dwk);
  LZ_CUDA_OK(cudaGetLastError());
}

template <typename T>
void run_dw(const LizardAttnArgs& a, Dims d, Ws ws, float* dwq, float* dwk, cudaStream_t st, bool fast = false) {
  if (dwq) LZ_CUDA_OK(cudaMemsetAsync(dwq, 0, size_t(a.Hq) * a.D * a.F * 4, st));
  if (dwk) LZ_CUDA_OK(cudaMemsetAsync(dwk, 0, size_t(a.Hq) * a.D * a.F * 4, st));
  if (fast) {
    if (a.D == 64 && a.F == 32) return launch_dw2<T, 64, 32>(a, d, ws, dwq, dwk, st);
    if (a.D == 64 && a.F == 64) return launch_dw2<T, 64, 64>(a, d, ws, dwq, dwk, st);
    if (a.D == 128 && a.F == 32) return launch_dw2<T, 128, 32>(a, d, ws, dwq, dwk, st);
    if (a.D == 128 && a.F == 64) return launch_dw2<T, 128, 64>(a, d, ws, dwq, dwk, st);
  }
  if (a.D == 64 && a.F == 32) return launch_dw<T, 64, 32>(a, d, ws, dwq, dwk, st);
  if (a.D == 64 && a.F == 64) return launch_dw<T, 64, 64>(a, d, ws, dwq, dwk, st);
  if (a.D == 128 && a.F == 32) return launch_dw<T, 128, 32>(a, d, ws, dwq, dwk, st);
  if (a.D == 128 && a.F == 64) return launch_dw<T, 128, 64>(a, d, ws, dwq, dwk, st);
  fail_cat("lizard attention chunked backward (cuda): dW stage needs D in {64, 128}, F in {32, 64}");
}

}  // namespace dwtc

// ---------------------------------------------------------------------------------------------
// Window statistics on tensor cores (replaces stats_kernel's window part in the chunked path): the
// flash forward with a band mask t in [i - w + 1, i], the meta sinks folded into the running max and
// sum, giving lse (sinks included), dya = dy . A and delta = alpha dya. CTA of 4 warps x 16 queries.
// The later stages (dmeta, dalpha, the window gradients) need these close to fp32, so every fp32
// operand is split into bf16 hi + lo parts and each product takes hi*hi + hi*lo + lo*hi (relative
// error ~2^-17 per product instead of bf16's 2^-9). bf16 inputs have lo = 0: only P is split.
namespace wstats {

using namespace mma;
constexpr int kB = 64, kT = 128;

// 64 rows (row0..) of a [.., stride] T matrix into bf16 tiles hi (and lo = x - hi), row stride D + 8.
template <typename T, int D, bool kLo>
__device__ __forceinline__ void load_split(bf16* hi, bf16* lo, const T* src, int64_t stride, int row0, int L) {
  for (int p = threadIdx.x; p < kB * D; p += kT) {
    const int r = p / D, c = p % D, pos = row0 + r;
    const float x = pos < L ? ld(src + int64_t(pos) * stride + c) : 0.f;
    const bf16 xh = __float2bfloat16(x);
    hi[r * (D + 8) + c] = xh;
    if (kLo) lo[r * (D + 8) + c] = __float2bfloat16(x - __bfloat162float(xh));
  }
}

__device__ __forceinline__ void split_pack(uint32_t& hi, uint32_t& lo, float x0, float x1) {
  hi = pack_bf16(x0, x1);
  const float2 h = unpack_bf16(hi);
  lo = pack_bf16(x0 - h.x, x1 - h.y);
}

template <typename T>
constexpr bool is_f32() {
  return sizeof(T) == 4;
}

template <typename T, int D>
constexpr size_t stats_smem() {
  return size_t(is_f32<T>() ? 6 : 3) * kB * (D + 8) * sizeof(bf16);
}

// V2 (stage variant 2): bf16 tiles by cp.async (bf16 inputs have no lo part, so the math is unchanged).
template <typename T, int D, bool V2 = false>
__global__ void __launch_bounds__(kT) stats_tc_kernel(const LizardAttnArgs a, Dims d, Ws ws, const T* dy, float* dya_out) {
  constexpr bool kLo = is_f32<T>();
  constexpr bool kFast = V2 && v2::fast_load<T>();
  constexpr int LD = D + 8, ND = D / 8, NK = kB / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qh = reinterpret_cast<bf16*>(smem_raw);
  bf16* Kh = Qh + kB * LD;
  bf16* Vh = Kh + kB * LD;
  bf16* Ql = Vh + kB * LD;  // lo tiles exist only for fp32 inputs
  bf16* Kl = Ql + kB * LD;
  bf16* Vl = Kl + kB * LD;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int L = d.L, w = d.w, qb = blockIdx.x, bh = blockIdx.y, h = bh % d.Hq, b = bh / d.Hq;
  const int64_t qs = int64_t(d.Hq) * D, ks = int64_t(d.Hkv) * D;
  const T* k = static_cast<const T*>(a.k) + d.k_off(b, 0, h);
  const T* v = static_cast<const T*>(a.v) + d.k_off(b, 0, h);
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const float scale2 = scale * kLog2e;
  if constexpr (kFast)
    v2::cp_tile<kB, D, kT>(Qh, LD, reinterpret_cast<const bf16*>(a.q) + d.q_off(b, 0, h), qs, qb * kB, L);
  else
    load_split<T, D, kLo>(Qh, Ql, static_cast<const T*>(a.q) + d.q_off(b, 0, h), qs, qb * kB, L);
  const int r0 = warp * 16, ia = qb * kB + r0 + g, ib = ia + 8;
  // Sinks first: running max (log2 units) and sum start from them.
  const float* mu = a.meta + (a.meta_per_head ? h * d.m : 0);
  float ma = -INFINITY;
  for (int j = 0; j < d.m; ++j) ma = fmaxf(ma, mu[j] * kLog2e);
  float la = 0.f;
  for (int j = 0; j < d.m; ++j) la += exp2f(mu[j] * kLog2e - ma);
  float mb = ma, lb = la;
  float acc[ND][4];
  zero_acc(acc);
  const int kb_lo = max(0, qb * kB - w + 1) / kB;
  for (int kb = kb_lo; kb <= qb; ++kb) {
    __syncthreads();  // previous K, V tiles fully read (and Q written, first time)
    if constexpr (kFast) {
      v2::cp_tile<kB, D, kT>(Kh, LD, reinterpret_cast<const bf16*>(k), ks, kb * kB, L);
      v2::cp_tile<kB, D, kT>(Vh, LD, reinterpret_cast<const bf16*>(v), ks, kb * kB, L);
      v2::cp_wait();  // (the first time also Q)
    } else {
      load_split<T, D, kLo>(Kh, Kl, k, ks, kb * kB, L);
      load_split<T, D, kLo>(Vh, Vl, v, ks, kb * kB, L);
    }
    __syncthreads();
    float sc[NK][4];
#pragma unroll
    for (int j = 0; j < NK; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
    for (int s = 0; s < D / 16; ++s) {
      uint32_t qa[4], ql[4];
      load_a(qa, Qh, LD, r0, s * 16);
      if (kLo) load_a(ql, Ql, LD, r0, s * 16);
#pragma unroll
      for (int np = 0; np < NK / 2; ++np) {
        uint32_t bb[4];
        load_b_nk(bb, Kh, LD, np * 16, s * 16);
        mma16816(sc[2 * np], qa, bb[0], bb[1]);
        mma16816(sc[2 * np + 1], qa, bb[2], bb[3]);
        if (kLo) {
          mma16816(sc[2 * np], ql, bb[0], bb[1]);
          mma16816(sc[2 * np + 1], ql, bb[2], bb[3]);
          load_b_nk(bb, Kl, LD, np * 16, s * 16);
          mma16816(sc[2 * np], qa, bb[0], bb[1]);
          mma16816(sc[2 * np + 1], qa, bb[2], bb[3]);
        }
      }
    }
    // Band mask, scores in log2 units, new running max.
    float xa = -INFINITY, xb = -INFINITY;
#pragma unroll
    for (int j = 0; j < NK; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tt = kb * kB + 8 * j + 2 * t4 + e;
        const bool oka = tt <= ia && tt > ia - w && tt < L, okb = tt <= ib && tt > ib - w && tt < L;
        sc[j][e] = oka ? sc[j][e] * scale2 : -INFINITY;
        sc[j][2 + e] = okb ? sc[j][2 + e] * scale2 : -INFINITY;
        xa = fmaxf(xa, sc[j][e]), xb = fmaxf(xb, sc[j][2 + e]);
      }
    }
    const float na = fmaxf(ma, quad_max(xa)), nb = fmaxf(mb, quad_max(xb));
    // Rows with nothing seen yet keep max -inf: their correction is irrelevant (sum and acc are 0).
    const float ca = na == -INFINITY ? 1.f : exp2f(ma - na), cb = nb == -INFINITY ? 1.f : exp2f(mb - nb);
    ma = na, mb = nb;
    float sa = 0.f, sb = 0.f;
#pragma unroll
    for (int j = 0; j < NK; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        sc[j][e] = sc[j][e] == -INFINITY ? 0.f : exp2f(sc[j][e] - na);
        sc[j][2 + e] = sc[j][2 + e] == -INFINITY ? 0.f : exp2f(sc[j][2 + e] - nb);
        sa += sc[j][e], sb += sc[j][2 + e];
      }
    }
    la = la * ca + quad_sum(sa);
    lb = lb * cb + quad_sum(sb);
#pragma unroll
    for (int j = 0; j < ND; ++j) acc[j][0] *= ca, acc[j][1] *= ca, acc[j][2] *= cb, acc[j][3] *= cb;
    // A += P V with P split into bf16 hi + lo (and V too for fp32 inputs).
    uint32_t ph[NK / 2][4], pl[NK / 2][4];
#pragma unroll
    for (int s = 0; s < NK / 2; ++s) {
      split_pack(ph[s][0], pl[s][0], sc[2 * s][0], sc[2 * s][1]);
      split_pack(ph[s][1], pl[s][1], sc[2 * s][2], sc[2 * s][3]);
      split_pack(ph[s][2], pl[s][2], sc[2 * s + 1][0], sc[2 * s + 1][1]);
      split_pack(ph[s][3], pl[s][3], sc[2 * s + 1][2], sc[2 * s + 1][3]);
    }
#pragma unroll
    for (int s = 0; s < NK / 2; ++s) {
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bb[4];
        load_b_kn(bb, Vh, LD, np * 16, s * 16);
        mma16816(acc[2 * np], ph[s], bb[0], bb[1]);
        mma16816(acc[2 * np + 1], ph[s], bb[2], bb[3]);
        mma16816(acc[2 * np], pl[s], bb[0], bb[1]);
        mma16816(acc[2 * np + 1], pl[s], bb[2], bb[3]);
        if (kLo) {
          load_b_kn(bb, Vl, LD, np * 16, s * 16);
          mma16816(acc[2 * np], ph[s], bb[0], bb[1]);
          mma16816(acc[2 * np + 1], ph[s], bb[2], bb[3]);
        }
      }
    }
  }
  // Every valid row has its own key (t = i), so la, lb > 0 there.
  const bool va = ia < L, vb = ib < L;
  const float inva = va ? 1.f / la : 0.f, invb = vb ? 1.f / lb : 0.f;
  float ya = 0.f, yb = 0.f;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = 8 * j + 2 * t4 + e;
      if (va) ya += ld(dy + d.q_off(b, ia, h) + c) * acc[j][e];
      if (vb) yb += ld(dy + d.q_off(b, ib, h) + c) * acc[j][2 + e];
    }
  }
  ya = quad_sum(ya) * inva;
  yb = quad_sum(yb) * invb;
  const float alpha = a.alpha[a.alpha_per_head ? h : 0];
  const int64_t o = int64_t(bh) * L;
  if (t4 == 0) {
    if (va) ws.lse[o + ia] = ma / kLog2e + logf(la), ws.delta[o + ia] = alpha * ya, dya_out[o + ia] = ya;
    if (vb) ws.lse[o + ib] = mb / kLog2e + logf(lb), ws.delta[o + ib] = alpha * yb, dya_out[o + ib] = yb;
  }
}

template <typename T, int D, bool V2>
void launch_stats(const LizardAttnArgs& a, Dims d, Ws ws, const T* dy, float* dya, cudaStream_t st) {
  constexpr size_t smem = stats_smem<T, D>();
  auto kern = stats_tc_kernel<T, D, V2>;
  LZ_CUDA_OK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kern<<<dim3((d.L + kB - 1) / kB, d.B * d.Hq), kT, smem, st>>>(a, d, ws, dy, dya);
  LZ_CUDA_OK(cudaGetLastError());
}

template <typename T>
void run_stats(const LizardAttnArgs& a, Dims d, Ws ws, const T* dy, float* dya, cudaStream_t st, bool fast = false) {
  if (a.D == 64) return fast ? launch_stats<T, 64, true>(a, d, ws, dy, dya, st) : launch_stats<T, 64, false>(a, d, ws, dy, dya, st);
  if (a.D == 128)
    return fast ? launch_stats<T, 128, true>(a, d, ws, dy, dya, st) : launch_stats<T, 128, false>(a, d, ws, dy, dya, st);
  fail_cat("lizard attention chunked backward (cuda): window statistics need D in {64, 128}, got ", a.D);
}

}  // namespace wstats

// ---------------------------------------------------------------------------------------------
// Feature maps and their backward on tensor cores, CTA of 4 warps per (kTok tokens, b, h), the head's
// Wq, Wk in shared memory once per CTA. Same split as wstats (fp32 operands as bf16 hi + lo, three
// products) so phi and du stay close to fp32:
//   forward:  u = x W ([64 x D] [D x F]), phi = [softmax(u), softmax(-u)] (or exp), rows of the fp32
//             workspace phq / phk as feat_kernel wrote them;
//   backward: du from phi and dphi (stored over the first F columns of dphi, as featbwd_kernel did,
//             for the dW stage), then dq += du Wq^T (plain add: each (token, head) has one owner),
//             dk += du Wk^T (atomics: the group's query heads share dk).
namespace feattc {

using namespace mma;
using wstats::is_f32;
constexpr int kB = 64, kT = 128, kTok = 256;

// W tiles per matrix: hi and lo, except under V2 with bf16 inputs (lo = 0, never read): hi only.
template <typename T, bool V2>
constexpr int w_tiles() {
  return V2 && v2::fast_load<T>() ? 1 : 2;
}

template <typename T, int D, int F, bool V2 = false>
constexpr size_t smem_bytes() {
  // W hi/lo [D][F + 8] for q and k (bf16 W: lo unused but laid out the same), X or U hi/lo tile.
  return (size_t(2 * w_tiles<T, V2>()) * D * (F + 8) + size_t(2) * kB * (D + 8)) * sizeof(bf16);
}

// The head's W [D][F] (T) into hi/lo bf16 tiles, row stride F + 8.
template <typename T, int D, int F>
__device__ __forceinline__ void load_w(bf16* hi, bf16* lo, const T* W) {
  for (int p = threadIdx.x; p < D * F; p += kT) {
    const int e = p / F, f = p % F;
    const float x = ld(W + p);
    const bf16 xh = __float2bfloat16(x);
    hi[e * (F + 8) + f] = xh;
    lo[e * (F + 8) + f] = __float2bfloat16(x - __bfloat162float(xh));
  }
}

// V2 (stage variant 2) with bf16 inputs: W (hi only) and the X tiles by cp.async.
template <typename T, int D, int F, bool V2 = false>
__global__ void __launch_bounds__(kT) feat_tc_kernel(const LizardAttnArgs a, Dims d, Ws ws) {
  constexpr bool kLo = is_f32<T>();
  constexpr bool kFast = V2 && v2::fast_load<T>();
  constexpr int LDW = F + 8, LDX = D + 8, NF = F / 8, WT = w_tiles<T, V2>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* W0 = reinterpret_cast<bf16*>(smem_raw);  // Wq hi, Wq lo, Wk hi, Wk lo (kFast: Wq hi, Wk hi)
  bf16* Xh = W0 + 2 * WT * D * LDW;
  bf16* Xl = Xh + kB * LDX;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int L = d.L, bh = blockIdx.y, h = bh % d.Hq, b = bh / d.Hq;
  if constexpr (kFast) {
    v2::cp_tile<D, F, kT>(W0, LDW, reinterpret_cast<const bf16*>(a.wq) + int64_t(h) * D * F, F, 0, D);
    v2::cp_tile<D, F, kT>(W0 + D * LDW, LDW, reinterpret_cast<const bf16*>(a.wk) + int64_t(h) * D * F, F, 0, D);
  } else {
    load_w<T, D, F>(W0, W0 + D * LDW, static_cast<const T*>(a.wq) + int64_t(h) * D * F);
    load_w<T, D, F>(W0 + 2 * D * LDW, W0 + 3 * D * LDW, static_cast<const T*>(a.wk) + int64_t(h) * D * F);
  }
  const int r0 = warp * 16;
  for (int tb = blockIdx.x * kTok; tb < min(L, (blockIdx.x + 1) * kTok); tb += kB) {
    for (int which = 0; which < 2; ++which) {
      const bf16* Wh = W0 + which * WT * D * LDW;
      const bf16* Wl = Wh + D * LDW;
      const T* x = static_cast<const T*>(which ? a.k : a.q) + (which ? d.k_off(b, 0, h) : d.q_off(b, 0, h));
      __syncthreads();  // W loaded; previous X tile fully read
      if constexpr (kFast) {
        v2::cp_tile<kB, D, kT>(Xh, LDX, reinterpret_cast<const bf16*>(x), int64_t(which ? d.Hkv : d.Hq) * D, tb, L);
        v2::cp_wait();  // (the first time also W)
      } else {
        wstats::load_split<T, D, kLo>(Xh, Xl, x, int64_t(which ? d.Hkv : d.Hq) * D, tb, L);
      }
      __syncthreads();
      float u[NF][4];
#pragma unroll
      for (int j = 0; j < NF; ++j) u[j][0] = u[j][1] = u[j][2] = u[j][3] = 0.f;
#pragma unroll
      for (int s = 0; s < D / 16; ++s) {
        uint32_t xa[4], xl[4];
        load_a(xa, Xh, LDX, r0, s * 16);
        if (kLo) load_a(xl, Xl, LDX, r0, s * 16);
#pragma unroll
        for (int np = 0; np < NF / 2; ++np) {
          uint32_t bb[4];
          load_b_kn(bb, Wh, LDW, np * 16, s * 16);
          mma16816(u[2 * np], xa, bb[0], bb[1]);
          mma16816(u[2 * np + 1], xa, bb[2], bb[3]);
          if (kLo) {
            mma16816(u[2 * np], xl, bb[0], bb[1]);
            mma16816(u[2 * np + 1], xl, bb[2], bb[3]);
            load_b_kn(bb, Wl, LDW, np * 16, s * 16);
            mma16816(u[2 * np], xa, bb[0], bb[1]);
            mma16816(u[2 * np + 1], xa, bb[2], bb[3]);
          }
        }
      }
      // Rows ia (u[.][0..1]) and ib (u[.][2..3]); the 4 lanes of a quad hold a row's F columns.
      const int ia = tb + r0 + g, ib = ia + 8;
      float* out = (which ? ws.phk : ws.phq) + int64_t(bh) * L * 2 * F;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int i = half ? ib : ia;
        float mx = -INFINITY, mn = INFINITY;
#pragma unroll
        for (int j = 0; j < NF; ++j) {
          mx = fmaxf(mx, fmaxf(u[j][2 * half], u[j][2 * half + 1]));
          mn = fminf(mn, fminf(u[j][2 * half], u[j][2 * half + 1]));
        }
        mx = quad_max(mx), mn = quad_min(mn);
        float sp = 0.f, sm = 0.f;
        if (a.act == FeatureAct::Softmax) {
#pragma unroll
          for (int j = 0; j < NF; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) sp += expf(u[j][2 * half + e] - mx), sm += expf(mn - u[j][2 * half + e]);
          sp = 1.f / quad_sum(sp), sm = 1.f / quad_sum(sm);
        }
        if (i >= L) continue;
        float* row = out + int64_t(i) * 2 * F;
#pragma unroll
        for (int j = 0; j < NF; ++j) {
          const int f = 8 * j + 2 * t4;
          const float u0 = u[j][2 * half], u1 = u[j][2 * half + 1];
          float2 pp, pn;
          if (a.act == FeatureAct::Exp)
            pp = make_float2(expf(u0), expf(u1)), pn = make_float2(expf(-u0), expf(-u1));
          else
            pp = make_float2(expf(u0 - mx) * sp, expf(u1 - mx) * sp),
            pn = make_float2(expf(mn - u0) * sm, expf(mn - u1) * sm);
          *reinterpret_cast<float2*>(row + f) = pp;
          *reinterpret_cast<float2*>(row + F + f) = pn;
        }
      }
    }
  }
}

// dx = du W^T, du as the gate's output passes left it (store_dphi: the first F columns of each dphq / dphk
// row). V2 (stage variant 2): W by cp.async (bf16 inputs: hi only); du with each lane on a float2 column
// pair and 8 tokens' loads in flight per warp (variant 1 has one token's loads in flight); dx staged in
// shared memory, then added to dq (and, without GQA, dk) by
// coalesced float4 read-modify-writes (each (token, head) row has one owner), to dk by atomics under GQA.
template <typename T, int D, int F, bool V2 = false>
__global__ void __launch_bounds__(kT) featbwd_tc_kernel(const LizardAttnArgs a, Dims d, Ws ws, float* dq, float* dk) {
  constexpr bool kFast = V2 && v2::fast_load<T>();
  constexpr int LDW = F + 8, LDU = F + 8, ND = D / 8, WT = w_tiles<T, V2>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* W0 = reinterpret_cast<bf16*>(smem_raw);  // Wq hi, Wq lo, Wk hi, Wk lo (kFast: Wq hi, Wk hi)
  bf16* Uh = W0 + 2 * WT * D * LDW;
  bf16* Ul = Uh + kB * LDU;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int L = d.L, bh = blockIdx.y, h = bh % d.Hq, b = bh / d.Hq;
  if constexpr (kFast) {
    v2::cp_tile<D, F, kT>(W0, LDW, reinterpret_cast<const bf16*>(a.wq) + int64_t(h) * D * F, F, 0, D);
    v2::cp_tile<D, F, kT>(W0 + D * LDW, LDW, reinterpret_cast<const bf16*>(a.wk) + int64_t(h) * D * F, F, 0, D);
    v2::cp_wait();
  } else {
    load_w<T, D, F>(W0, W0 + D * LDW, static_cast<const T*>(a.wq) + int64_t(h) * D * F);
    load_w<T, D, F>(W0 + 2 * D * LDW, W0 + 3 * D * LDW, static_cast<const T*>(a.wk) + int64_t(h) * D * F);
  }
  const int r0 = warp * 16;
  for (int tb = blockIdx.x * kTok; tb < min(L, (blockIdx.x + 1) * kTok); tb += kB) {
    for (int which = 0; which < 2; ++which) {
      const bf16* Wh = W0 + which * WT * D * LDW;
      const bf16* Wl = Wh + D * LDW;
      __syncthreads();  // W loaded; previous U tile (V2: staged dx) fully read
      // du for the tile's 64 tokens (the gate's output passes wrote it: the first F columns of dphq / dphk),
      // warp per token, lanes over f (F <= 64: two columns per lane).
      const float* dph = (which ? ws.dphk : ws.dphq) + int64_t(bh) * L * 2 * F;
      if constexpr (V2) {
        constexpr int NB = 8;  // tokens per batch (one float2 load each, all issued before any use)
        const int f = 2 * lane;
        const bool fok = f < F;
#pragma unroll 1
        for (int rb = warp; rb < kB; rb += 4 * NB) {  // tokens rb + 4 u, u < NB: this warp's 16 in 2 batches
          float2 du[NB];
#pragma unroll
          for (int u = 0; u < NB; ++u) {
            const int i = tb + rb + 4 * u;
            du[u] = i < L && fok ? *reinterpret_cast<const float2*>(dph + int64_t(i) * 2 * F + f) : make_float2(0.f, 0.f);
          }
#pragma unroll
          for (int u = 0; u < NB; ++u) {
            const int r = rb + 4 * u;  // rows past L: du = 0 (the tile's padding)
            if (fok) {
              uint32_t hi, lo;
              wstats::split_pack(hi, lo, du[u].x, du[u].y);
              *reinterpret_cast<uint32_t*>(Uh + r * LDU + f) = hi;
              *reinterpret_cast<uint32_t*>(Ul + r * LDU + f) = lo;
            }
          }
        }
      } else
      for (int r = warp; r < kB; r += kT / 32) {
        const int i = tb + r;
        float du[2] = {0.f, 0.f};
        if (i < L) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int f = lane + 32 * c;
            if (f < F) du[c] = dph[int64_t(i) * 2 * F + f];
          }
        }
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int f = lane + 32 * c;
          if (f < F) {
            const bf16 hh = __float2bfloat16(du[c]);
            Uh[r * LDU + f] = hh;
            Ul[r * LDU + f] = __float2bfloat16(du[c] - __bfloat162float(hh));
          }
        }
      }
      __syncthreads();
      // dx = du W^T: A = U [64 x F], B from W stored [e][f] = [n][k].
      float acc[ND][4];
      zero_acc(acc);
#pragma unroll
      for (int s = 0; s < F / 16; ++s) {
        uint32_t ua[4], ul[4];
        load_a(ua, Uh, LDU, r0, s * 16);
        load_a(ul, Ul, LDU, r0, s * 16);
#pragma unroll
        for (int np = 0; np < ND / 2; ++np) {
          uint32_t bb[4];
          load_b_nk(bb, Wh, LDW, np * 16, s * 16);
          mma16816(acc[2 * np], ua, bb[0], bb[1]);
          mma16816(acc[2 * np + 1], ua, bb[2], bb[3]);
          mma16816(acc[2 * np], ul, bb[0], bb[1]);
          mma16816(acc[2 * np + 1], ul, bb[2], bb[3]);
          if (is_f32<T>()) {
            load_b_nk(bb, Wl, LDW, np * 16, s * 16);
            mma16816(acc[2 * np], ua, bb[0], bb[1]);
            mma16816(acc[2 * np + 1], ua, bb[2], bb[3]);
          }
        }
      }
      if constexpr (V2) {
        __syncthreads();  // U fully read: its space takes the staged dx (64 x (D + 4) fp32)
        float* sx = reinterpret_cast<float*>(Uh);
        v2::stage_frag<D>(sx, acc, r0, g, t4, 1.f);
        __syncthreads();
        if (which == 0)
          v2::add_rows<kB, D, kT, false>(sx, [&](int pos) { return dq + d.q_off(b, pos, h); }, tb, L);
        else if (d.group == 1)
          v2::add_rows<kB, D, kT, false>(sx, [&](int pos) { return dk + d.k_off(b, pos, h); }, tb, L);
        else
          v2::add_rows<kB, D, kT, true>(sx, [&](int pos) { return dk + d.k_off(b, pos, h); }, tb, L);
        continue;
      }
      const int ia = tb + r0 + g, ib = ia + 8;
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        const int c = 8 * j + 2 * t4;
        if (which == 0) {
          if (ia < L) {
            float2* p = reinterpret_cast<float2*>(dq + d.q_off(b, ia, h) + c);
            const float2 o = *p;
            *p = make_float2(o.x + acc[j][0], o.y + acc[j][1]);
          }
          if (ib < L) {
            float2* p = reinterpret_cast<float2*>(dq + d.q_off(b, ib, h) + c);
            const float2 o = *p;
            *p = make_float2(o.x + acc[j][2], o.y + acc[j][3]);
          }
        } else {
          if (ia < L) {
            float* p = dk + d.k_off(b, ia, h) + c;
            atomicAdd(p, acc[j][0]), atomicAdd(p + 1, acc[j][1]);
          }
          if (ib < L) {
            float* p = dk + d.k_off(b, ib, h) + c;
            atomicAdd(p, acc[j][2]), atomicAdd(p + 1, acc[j][3]);
          }
        }
      }
    }
  }
}

template <typename T, int D, int F, bool V2 = false>
void launch_feat(const LizardAttnArgs& a, Dims d, Ws ws, float* dq, float* dk, bool backward, cudaStream_t st) {
  constexpr size_t smem = smem_bytes<T, D, F, V2>();
  static_assert(size_t(kB) * (D + 4) * 4 <= size_t(2) * kB * (D + 8) * sizeof(bf16), "v2 staging fits the U tiles");
  const dim3 grid((d.L + kTok - 1) / kTok, d.B * d.Hq);
  if (backward) {
    auto kern = featbwd_tc_kernel<T, D, F, V2>;
    LZ_CUDA_OK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kern<<<grid, kT, smem, st>>>(a, d, ws, dq, dk);
  } else {
    auto kern = feat_tc_kernel<T, D, F, V2>;
    LZ_CUDA_OK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kern<<<grid, kT, smem, st>>>(a, d, ws);
  }
  LZ_CUDA_OK(cudaGetLastError());
}

// backward = false: phq, phk; true: dq, dk += du W^T (du: the gate output passes', over dphq / dphk).
template <typename T, bool V2>
void run_feat_v(const LizardAttnArgs& a, Dims d, Ws ws, float* dq, float* dk, bool backward, cudaStream_t st) {
  if (a.D == 64 && a.F == 32) return launch_feat<T, 64, 32, V2>(a, d, ws, dq, dk, backward, st);
  if (a.D == 64 && a.F == 64) return launch_feat<T, 64, 64, V2>(a, d, ws, dq, dk, backward, st);
  if (a.D == 128 && a.F == 32) return launch_feat<T, 128, 32, V2>(a, d, ws, dq, dk, backward, st);
  if (a.D == 128 && a.F == 64) return launch_feat<T, 128, 64, V2>(a, d, ws, dq, dk, backward, st);
  fail_cat("lizard attention chunked backward (cuda): feature stage needs D in {64, 128}, F in {32, 64}");
}

template <typename T>
void run_feat(const LizardAttnArgs& a, Dims d, Ws ws, float* dq, float* dk, bool backward, cudaStream_t st,
              bool fast = false) {
  if (fast) return run_feat_v<T, true>(a, d, ws, dq, dk, backward, st);
  run_feat_v<T, false>(a, d, ws, dq, dk, backward, st);
}

}  // namespace feattc

// Which kernels run (run_bwd):
//   parallel backward (lizard_attention_backward_parallel): the fp32 CUDA-core kernels, O(L^2): feat_kernel,
//     stats_kernel (window and gate statistics), qgrad_kernel, kgrad_kernel, featbwd_kernel, dw_kernel.
//   chunked backward (lizard_attention_backward_chunked), bf16 or fp32 inputs: tensor-core stages
//     (feattc, wstats, win, dwtc) around the gate branch's state + output passes (gate::run_gate2).
//     Stage variant 2 (the default) runs their V2 forms (cp.async loaders, double-buffered window kernels
//     without dk/dv atomics, dW over batch-aligned token tiles; for fp32 inputs the V2 forms keep the
//     variant-1 loaders, see each launcher) when q, k, v, dy, wq, wk, dq, dk, dv are all 16-byte aligned;
//     otherwise, and under stage variant 1, the variant-1 forms (V2 = false) run.
//     The gate's output passes: gate_fwd_out_kernel, gate_rev_out_kernel (their kAligned forms where v and dy
//     are 16-byte aligned). dq, dk, dv are 16-byte aligned on the chunked path (lizard_attention_backward_chunked
//     gives misaligned ones aligned temporaries).
//     The gate's state passes: under state variant 2 where v is 16-byte aligned, gate_state2_kernel;
//     otherwise, and under state variant 1, gate_state_kernel.
// 16-byte aligned: what the cp.async / float4 paths need of a base pointer (rows are multiples of 32 floats).
bool al16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }
int g_stage_variant = kBackwardStageDefault;  // 2 or 1 (set_backward_stage_variant)
int g_state_variant = kBackwardStateDefault;  // 2 or 1 (set_backward_state_variant)

// The statistics stage from the forward's window statistics (LizardAttnArgs::win_lse, win_out): per row (one warp)
// lse copied, dya = dy . A, delta = alpha dya, as wstats::stats_tc_kernel leaves them.
template <typename T>
__global__ void saved_stats_kernel(const LizardAttnArgs a, Dims d, Ws ws, const T* dy, float* dya_out) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);  // (b, i, h) order
  const int lane = threadIdx.x & 31;
  if (row >= int64_t(d.B) * d.L * d.Hq) return;
  const int h = int(row % d.Hq), i = int((row / d.Hq) % d.L), b = int(row / (int64_t(d.Hq) * d.L));
  const T* g = dy + row * d.D;
  const __nv_bfloat16* A = static_cast<const __nv_bfloat16*>(a.win_out) + row * d.D;
  float s = 0.f;
  for (int e = 4 * lane; e < d.D; e += 128) {  // four elements per vector load
    const float4 x = ld4(g + e), y = ld4(A + e);
    s += x.x * y.x + x.y * y.y + x.z * y.z + x.w * y.w;
  }
  s = wsum(s);
  if (lane == 0) {
    const int64_t o = d.bh(b, h) * d.L + i;
    ws.lse[o] = a.win_lse[o];
    ws.delta[o] = a.alpha[a.alpha_per_head ? h : 0] * s;
    dya_out[o] = s;
  }
}

template <typename T>
void run_bwd(const LizardAttnArgs& a, const void* dy_, const LizardAttnGrads& g, cudaStream_t st, bool chunked) {
  const T* dy = static_cast<const T*>(dy_);
  Dims d{a.B, a.L, a.Hq, a.Hkv, a.D, a.F, a.window, a.n_meta, a.Hq / a.Hkv};
  const int64_t BHL = int64_t(a.B) * a.Hq * a.L, F2 = 2 * a.F;
  const int64_t total = BHL * (4 * F2 + a.D + 8) + 2 * BHL;  // + dy.A scratch, gw
  float* buf = nullptr;
  keep_pool_memory();
  LZ_CUDA_OK(cudaMallocAsync(&buf, total * sizeof(float), st));
  Ws ws;
  float* p = buf;
  ws.phq = p, p += BHL * F2;
  ws.phk = p, p += BHL * F2;
  ws.dphq = p, p += BHL * F2;
  ws.dphk = p, p += BHL * F2;
  ws.dn = p, p += BHL * a.D;
  ws.dn16 = reinterpret_cast<__nv_bfloat16*>(ws.dn);
  ws.bc = p, p += BHL;
  ws.dden = p, p += BHL;
  ws.lse = p, p += BHL;
  ws.delta = p, p += BHL;
  ws.dbq = p, p += BHL;
  ws.dbk = p, p += BHL;
  float* dya = p;
  p += BHL;
  ws.dya = dya;
  ws.gw = p, p += BHL;
  T* dyw = nullptr;  // shared_normaliser: the window stage's dy / Q
  if (a.shared_normaliser) LZ_CUDA_OK(cudaMallocAsync(&dyw, size_t(BHL) * a.D * sizeof(T), st));
  // gate_skips_window (chunked only): the gate passes' shifted rows (Skip) and dy
  const bool skip = a.gate_skips_window;
  Skip sk{};
  float* skbuf = nullptr;
  T* dys = nullptr;
  if (skip) {
    LZ_CUDA_OK(cudaMallocAsync(&skbuf, size_t(BHL) * (2 * F2 + 6) * sizeof(float), st));
    LZ_CUDA_OK(cudaMallocAsync(&dys, size_t(BHL) * a.D * sizeof(T), st));
    float* q = skbuf;
    for (float** r : {&sk.phq, &sk.dphq}) *r = q, q += BHL * F2;
    for (float** r : {&sk.lse, &sk.gw, &sk.dya, &sk.delta, &sk.dbq, &sk.dens}) *r = q, q += BHL;
  }
  const size_t nk = size_t(a.B) * a.L * a.Hkv * a.D;
  LZ_CUDA_OK(cudaMemsetAsync(g.dv, 0, nk * 4, st));
  if (g.dlog_gamma && !a.gate_per_head) LZ_CUDA_OK(cudaMemsetAsync(g.dlog_gamma, 0, size_t(a.B) * a.L * 4, st));
  if (g.dmeta && a.n_meta > 0)
    LZ_CUDA_OK(cudaMemsetAsync(g.dmeta, 0, size_t(a.meta_per_head ? a.Hq : 1) * a.n_meta * 4, st));
  if (g.dalpha) LZ_CUDA_OK(cudaMemsetAsync(g.dalpha, 0, size_t(a.alpha_per_head ? a.Hq : 1) * 4, st));
  const dim3 grid((a.L + kWarps - 1) / kWarps, a.B * a.Hq), block(32 * kWarps);
  // LIZARD_CUDA_BWD_PROFILE set: time each stage with events and print one line to stderr.
  const bool prof = std::getenv("LIZARD_CUDA_BWD_PROFILE") != nullptr;
  const char* names[16];
  cudaEvent_t evs[16];
  int nev = 0;
  auto mark = [&](const char* n) {
    if (!prof || nev >= 16) return;
    LZ_CUDA_OK(cudaEventCreate(&evs[nev]));
    LZ_CUDA_OK(cudaEventRecord(evs[nev], st));
    names[nev++] = n;
  };
  mark("start");
  // Variant 2's cp.async / float4 accesses need 16-byte aligned rows: D, F are multiples of 32, so that
  // holds when the base pointers are 16-byte aligned (else the variant-1 kernels run).
  // separate_feature_qk: the feature stages (maps, their backward, dW) read qf, kf and write dqf, dkf
  LizardAttnArgs af = a;
  float *dqf = g.dq, *dkf = g.dk;
  if (a.separate_feature_qk) {
    af.q = a.qf, af.k = a.kf;
    dqf = g.dqf, dkf = g.dkf;
    LZ_CUDA_OK(cudaMemsetAsync(dqf, 0, size_t(BHL) * a.D * 4, st));  // the feature backward adds into them
    LZ_CUDA_OK(cudaMemsetAsync(dkf, 0, nk * 4, st));
  }
  const bool stages2 = chunked && g_stage_variant == 2 && al16(a.q) && al16(a.k) && al16(a.v) && al16(dy) &&
                       al16(a.wq) && al16(a.wk) && al16(af.q) && al16(af.k);
  // dk's first writer: win2_kernel stores every row (bf16 under stage variant 2); the other window kernels add.
  if (!(stages2 && sizeof(T) == 2)) LZ_CUDA_OK(cudaMemsetAsync(g.dk, 0, nk * 4, st));
  if (chunked)
    feattc::run_feat<T>(af, d, ws, nullptr, nullptr, false, st, stages2);
  else
    feat_kernel<T><<<grid, block, 0, st>>>(a, d, ws);
  cumsum_kernel<<<a.B * a.Hq, 32, 0, st>>>(a, d, ws);
  mark(stages2 ? "feat2+cumsum" : chunked ? "feat-tc+cumsum" : "feat+cumsum");
  // the forward kept the window statistics (and dy takes saved_stats_kernel's vector loads)
  const bool saved = a.win_out != nullptr && a.win_lse != nullptr && al16(a.win_out) && al16(dy);
  if (chunked && saved)
    saved_stats_kernel<T><<<unsigned((int64_t(a.B) * a.L * a.Hq + 7) / 8), 256, 0, st>>>(a, d, ws, dy, dya);
  else if (chunked)
    wstats::run_stats<T>(a, d, ws, dy, dya, st, stages2);  // window only: the gate passes do the gate's
  else
    stats_kernel<T><<<grid, block, kWarps * (F2 + 2 * a.D) * 4, st>>>(a, d, ws, dy, dya, /*gate=*/true);
  mark(chunked && saved ? "stats-saved" : stages2 ? "stats2" : chunked ? "stats-tc" : "stats");
  Ws wg = ws;  // the gate passes' workspace (gate_skips_window: the shifted rows)
  const T* dyg = dy;
  if (skip) {
    skip_in_kernel<T><<<grid, block, 0, st>>>(a, d, ws, sk, dy, dys, /*rows=*/false);
    wg.phq = sk.phq;
  }
  if (a.shared_normaliser) {
    shared_rows_kernel<T><<<a.B * a.Hq, 2 * a.F, (64 * (2 * a.F + 1) + 128) * sizeof(float), st>>>(
        a, d, wg, dy, dyw, skip ? a.window : 0, sk.dens, a.n_meta > 0 ? g.dmeta : nullptr);
    mark("shared-rows");
  }
  if (skip) {
    skip_in_kernel<T><<<grid, block, 0, st>>>(a, d, ws, sk, dy, dys, /*rows=*/true);
    wg.lse = sk.lse, wg.gw = sk.gw, wg.dya = sk.dya, wg.delta = sk.delta, wg.dphq = sk.dphq, wg.dbq = sk.dbq;
    dyg = dys;
    mark("skip-in");
  }
  if (chunked) {
    // gate branch: dn, dden, dphq, dbq; dv (gate), dphk, dbk (one mark per pass: gate2-fstate .. gate2-rout)
    const bool aligned = sizeof(T) == 4 || (al16(a.v) && al16(dyg));
    const bool state2 = g_state_variant == 2 && al16(a.v);  // cp.async of V rows (dn, phi: the workspace)
    gate::run_gate2<T>(a, d, wg, dyg, g.dv, a.n_meta > 0 ? g.dmeta : nullptr, st, mark, aligned, state2);
    if (skip) skip_out_kernel<<<grid, block, 0, st>>>(a, d, ws, sk);
    win::run_win<T>(a, d, ws, dyw ? dyw : dy, g.dq, g.dk, g.dv, a.n_meta > 0 ? g.dmeta : nullptr, st, stages2);
    mark(stages2 ? "window2" : "window-tc");
  } else {
    qgrad_kernel<T><<<grid, block, kWarps * (F2 + 3 * a.D) * 4, st>>>(a, d, ws, dy, g.dq,
                                                                      a.n_meta > 0 ? g.dmeta : nullptr, /*gate=*/true);
    mark("qgrad");
    kgrad_kernel<T><<<grid, block, kWarps * (F2 + 2 * a.D) * 4, st>>>(a, d, ws, dy, g.dk, g.dv, /*gate=*/true);
    mark("kgrad");
  }
  if (chunked)
    feattc::run_feat<T>(af, d, ws, dqf, dkf, true, st, stages2);
  else
    featbwd_kernel<T><<<grid, block, 0, st>>>(a, d, ws, g.dq, g.dk);
  mark(stages2 ? "featbwd2" : chunked ? "featbwd-tc" : "featbwd");
  if ((g.dwq || g.dwk) && chunked)
    dwtc::run_dw<T>(af, d, ws, g.dwq, g.dwk, st, stages2);  // tensor cores, split over tokens
  else if (g.dwq || g.dwk)
    dw_kernel<T><<<a.Hq * a.D, 128, 0, st>>>(a, d, ws, g.dwq, g.dwk);
  mark(stages2 ? "dW2" : "dW");
  dlg_kernel<<<a.B * a.Hq, 32, 0, st>>>(a, d, ws, dya, g.dlog_gamma, g.dalpha);
  mark("dlg");
  LZ_CUDA_OK(cudaGetLastError());
  if (prof && nev > 1) {
    LZ_CUDA_OK(cudaEventSynchronize(evs[nev - 1]));
    std::fprintf(stderr, "[lizard-bwd-profile] %s B%d L%d Hq%d D%d F%d w%d:", chunked ? "chunked" : "parallel", a.B,
                 a.L, a.Hq, a.D, a.F, a.window);
    float total = 0.f;
    for (int i = 1; i < nev; ++i) {
      float ms = 0.f;
      LZ_CUDA_OK(cudaEventElapsedTime(&ms, evs[i - 1], evs[i]));
      total += ms;
      std::fprintf(stderr, " %s %.3f", names[i], ms);
    }
    std::fprintf(stderr, " | total %.3f ms\n", total);
    for (int i = 0; i < nev; ++i) cudaEventDestroy(evs[i]);
  }
  LZ_CUDA_OK(cudaFreeAsync(buf, st));
  if (dyw) LZ_CUDA_OK(cudaFreeAsync(dyw, st));
  if (skbuf) LZ_CUDA_OK(cudaFreeAsync(skbuf, st));
  if (dys) LZ_CUDA_OK(cudaFreeAsync(dys, st));
}

}  // namespace

void lizard_attention_backward_parallel(const LizardAttnArgs& a, bool fp32, const void* dy, const LizardAttnGrads& g,
                                        cudaStream_t stream) {
  check_common_args(a);
  LZ_CUDA_CHECK(g.dq && g.dk && g.dv && dy, "lizard attention backward (cuda): dy, dq, dk, dv are required");
  LZ_CUDA_CHECK(!a.meta_weights_gate,
                "lizard attention backward (cuda): meta_weights_gate (and shared_normaliser) need the chunked "
                "backward (lizard_attention_backward_chunked), the parallel form does not implement them");
  LZ_CUDA_CHECK(!a.gate_skips_window, "lizard attention backward (cuda): gate_skips_window needs the chunked "
                "backward (lizard_attention_backward_chunked)");
  LZ_CUDA_CHECK(!a.separate_feature_qk, "lizard attention backward (cuda): feature_on_rope != window_rope needs "
                "the chunked backward (lizard_attention_backward_chunked)");
  LZ_CUDA_CHECK(a.D <= 256 && a.F <= 128, "lizard attention backward (cuda): needs D <= 256 and F <= 128, got D=",
                a.D, " F=", a.F);
  if (fp32)
    run_bwd<float>(a, dy, g, stream, false);
  else
    run_bwd<__nv_bfloat16>(a, dy, g, stream, false);
}

// Unknown values are refused, as set_forward_variant does (a silent remap would run, and time, another variant).
void set_backward_stage_variant(int v) {
  LZ_CUDA_CHECK(v == 1 || v == 2, "lizard attention backward (cuda): no stage variant ", v, " (1 or 2)");
  g_stage_variant = v;
}

void set_backward_state_variant(int v) {
  LZ_CUDA_CHECK(v == 1 || v == 2, "lizard attention backward (cuda): no state variant ", v, " (1 or 2)");
  g_state_variant = v;
}

void lizard_attention_backward_chunked(const LizardAttnArgs& a, bool fp32, const void* dy, const LizardAttnGrads& g,
                                       cudaStream_t stream) {
  check_common_args(a);
  LZ_CUDA_CHECK(g.dq && g.dk && g.dv && dy, "lizard attention backward (cuda): dy, dq, dk, dv are required");
  LZ_CUDA_CHECK((a.D == 64 || a.D == 128) && (a.F == 32 || a.F == 64),
                "lizard attention chunked backward (cuda): needs D in {64, 128} and F in {32, 64}, got D=", a.D,
                " F=", a.F, " (lizard_attention_backward_parallel takes any D <= 256, F <= 128)");
  LZ_CUDA_CHECK(!a.separate_feature_qk || (g.dqf && g.dkf && al16(g.dqf) && al16(g.dkf)),
                "lizard attention chunked backward (cuda): feature_on_rope != window_rope needs 16-byte aligned dqf, "
                "dkf (the feature maps' q, k gradients)");
  auto run = [&](const LizardAttnGrads& gr) {
    if (fp32)
      run_bwd<float>(a, dy, gr, stream, true);
    else
      run_bwd<__nv_bfloat16>(a, dy, gr, stream, true);
  };
  // The stage kernels store dq, dk, dv rows with 8- and 16-byte accesses: buffers off a 16-byte boundary (a
  // caller's sub-tensor) get aligned temporaries, copied out at the end (the gradients are overwritten anyway).
  if (al16(g.dq) && al16(g.dk) && al16(g.dv)) return run(g);
  const size_t nq = size_t(a.B) * a.L * a.Hq * a.D, nk = size_t(a.B) * a.L * a.Hkv * a.D;
  float* tmp = nullptr;
  LZ_CUDA_OK(cudaMallocAsync(&tmp, (nq + 2 * nk) * sizeof(float), stream));  // D | 64: every part 256-aligned
  LizardAttnGrads t = g;
  t.dq = tmp, t.dk = tmp + nq, t.dv = tmp + nq + nk;
  run(t);
  LZ_CUDA_OK(cudaMemcpyAsync(g.dq, t.dq, nq * sizeof(float), cudaMemcpyDeviceToDevice, stream));
  LZ_CUDA_OK(cudaMemcpyAsync(g.dk, t.dk, nk * sizeof(float), cudaMemcpyDeviceToDevice, stream));
  LZ_CUDA_OK(cudaMemcpyAsync(g.dv, t.dv, nk * sizeof(float), cudaMemcpyDeviceToDevice, stream));
  LZ_CUDA_OK(cudaFreeAsync(tmp, stream));
}

}  // namespace lizard::cuda
