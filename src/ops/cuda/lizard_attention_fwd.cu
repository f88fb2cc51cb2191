// Chunked Lizard attention forward on tensor cores (LIZARD.md section 5), C = 64. Two kernels here:
// v3 (the default, lizard_fwd3_kernel: the same schedule on Hopper wgmma, with phi_K on the gate
// warps; see its comment) and v0 (below, mma.sync), its fallback where v3's shared memory does not fit.
//
// v0: one CTA of 8 warps per (batch, query head) walks the chunks in order; the state S (2F x D, fp32)
// lives in registers, 16 feature rows per warp, with a bf16 copy in shared memory for the products.
// Warps 0-3 ("gate") compute phi_Q for 16 query rows each, the intra-chunk decayed scores, the
// gated output and its normaliser. Warps 4-7 ("window") compute phi_K (into shared memory, with the
// normaliser's key sums) and the sliding-window softmax with meta sinks for the same 16 rows,
// reading keys/values of the current chunk and the ceil((w-1)/C) before it from a ring of chunk
// tiles in shared memory. The window result goes through shared memory (bf16) to the gate warp of
// the same rows, which adds it and stores y with 16-byte writes.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>

#include "ops/cuda/lizard_attention.h"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/wgmma.cuh"
#include "ops/cuda/lizard_fwd_common.cuh"
#include "ops/cuda/cuda_check.h"

namespace lizard::cuda {
namespace {

using namespace mma;
constexpr int kThreads = 256;

// meta_weights_gate: the sinks' share of a row's window softmax (log2 domain: the sinks' sum meta_l at max
// meta_m, the row's running max m and full sum l).
__device__ __forceinline__ float sinks_share(float meta_l, float meta_m, float m, float l) {
  return meta_l * fast_exp2(meta_m - m) / l;
}

// The window statistics for the backward (LizardAttnArgs::win_out, win_lse) of rows ia, ib = ia + 8 (when < L):
// the window output normalised by its softmax sum (og: the unnormalised C fragments of value columns
// voff + 8 j + 2 t4, +1) and the log-sum-exp in natural units from the running max (log2 units, sinks included)
// and sum, as the backward's statistics stage forms them. Variants 0 and 3 hold og in the same fragment layout.
template <int ND>
__device__ __forceinline__ void window_stats_out(const LizardAttnArgs& a, int b, int hq, int L, int D, int voff, int ia,
                                                 int t4, const float (&og)[ND][4], float m0, float m1, float l0,
                                                 float l1) {
  const int ib = ia + 8;
  const float w0 = 1.f / l0, w1 = 1.f / l1;
  bf16* wo = static_cast<bf16*>(a.win_out) + (int64_t(b) * L * a.Hq + hq) * D + voff;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int c = 8 * j + 2 * t4;
    if (ia < L) *reinterpret_cast<uint32_t*>(wo + int64_t(ia) * a.Hq * D + c) = pack_bf16(og[j][0] * w0, og[j][1] * w0);
    if (ib < L) *reinterpret_cast<uint32_t*>(wo + int64_t(ib) * a.Hq * D + c) = pack_bf16(og[j][2] * w1, og[j][3] * w1);
  }
  if (t4 == 0) {
    float* wl = a.win_lse + (int64_t(b) * a.Hq + hq) * L;
    if (ia < L) wl[ia] = m0 / kLog2e + logf(l0);
    if (ib < L) wl[ib] = m1 / kLog2e + logf(l1);
  }
}

// shared_normaliser: y = (p N + alpha A) / (p d + 1 - p) with d = den + eps. The gate rows hold
// G = N / d, so G is scaled by p d / Q (into p) and the window's alpha A by 1 / Q (into w), Q = p d + 1 - p.
__device__ __forceinline__ void combine_shared(float& p0, float& p1, float& w0, float& w1, float d0, float d1) {
  const float q0 = 1.f / (p0 * d0 + (1.f - p0)), q1 = 1.f / (p1 * d1 + (1.f - p1));
  p0 *= d0 * q0, p1 *= d1 * q1;
  w0 = q0, w1 = q1;
}

// DV: value/output columns handled by one CTA (D, or D/2 when the value dimension is split over
// two CTAs to put more CTAs on the chip for small batch x heads).
template <int D, int F, int DV>
struct FwdSmem {
  static constexpr int F2 = 2 * F;
  static constexpr int LDD = D + 8;   // q/k rows
  static constexpr int LDV = DV + 8;  // v/S16 rows
  static constexpr int LDF = F2 + 8;  // phi_K rows
  static constexpr int LDW = F + 8;   // W rows
  static size_t bytes(int ring, bool sep) {
    size_t h = size_t(kC) * LDD                 // Q (then the window output)
               + (sep ? size_t(2) * kC * LDD : 0)  // separate_feature_qk: the feature maps' Q, K tiles
               + size_t(ring) * kC * LDD        // K ring
               + size_t(ring) * kC * LDV        // V ring
               + size_t(kC) * LDF               // phi_K
               + size_t(F2) * LDV               // S (bf16)
               + size_t(2) * D * LDW;           // Wq, Wk
    size_t f = size_t(ring) * kC + F2 + 4 * F2 + kC;  // b (a ring, as K and V), z, z partial sums, p_meta
    return h * 2 + f * 4;
  }
};

// Variant 0: the general kernel (any window whose tiles fit, value columns optionally split).
template <int D, int F, int DV>
__global__ void __launch_bounds__(kThreads, 1) lizard_fwd_kernel(const LizardAttnArgs a, int ring, int nb) {
  using S = FwdSmem<D, F, DV>;
  constexpr int F2 = S::F2, LDD = S::LDD, LDV = S::LDV, LDF = S::LDF, LDW = S::LDW;
  constexpr int ND = DV / 8;   // n-tiles over this CTA's value columns
  constexpr int NSPLIT = D / DV;
  constexpr int NK = kC / 8;   // n-tiles over a chunk's keys
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + kC * LDD;
  bf16* Vs = Ks + ring * kC * LDD;
  bf16* Pk = Vs + ring * kC * LDV;
  bf16* S16 = Pk + kC * LDF;
  bf16* Wq = S16 + F2 * LDV;
  bf16* Wk = Wq + D * LDW;
  const bool sep = a.separate_feature_qk;
  bf16* QFs = Wk + D * LDW;                    // separate_feature_qk: chunk n's feature q rows,
  bf16* KFs = QFs + (sep ? kC * LDD : 0);      // chunk m's feature k rows
  float* bring = reinterpret_cast<float*>(KFs + (sep ? kC * LDD : 0));  // b of the ring's chunks, [ring][kC]
  float* zs = bring + ring * kC;
  float* zpart = zs + F2;
  float* pmeta = zpart + 4 * F2;  // meta_weights_gate: each row's sinks' share, window warps -> gate warps

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int sp = blockIdx.x % NSPLIT, bhq = blockIdx.x / NSPLIT;
  const int hq = bhq % a.Hq, b = bhq / a.Hq, voff = sp * DV;
  const int hkv = hq / (a.Hq / a.Hkv);
  const int L = a.L, w = a.window;
  const bf16* q = static_cast<const bf16*>(a.q);
  const bf16* k = static_cast<const bf16*>(a.k);
  const bf16* v = static_cast<const bf16*>(a.v);
  bf16* y = static_cast<bf16*>(a.y);
  const int64_t qstride = int64_t(a.Hq) * D, kstride = int64_t(a.Hkv) * D;
  const bf16* qb = q + int64_t(b) * L * qstride + int64_t(hq) * D;
  const bf16* kb = k + int64_t(b) * L * kstride + int64_t(hkv) * D;
  const bf16* vb = v + int64_t(b) * L * kstride + int64_t(hkv) * D + voff;
  bf16* yb = y + int64_t(b) * L * qstride + int64_t(hq) * D + voff;
  const bf16* qfb = sep ? static_cast<const bf16*>(a.qf) + int64_t(b) * L * qstride + int64_t(hq) * D : nullptr;
  const bf16* kfb = sep ? static_cast<const bf16*>(a.kf) + int64_t(b) * L * kstride + int64_t(hkv) * D : nullptr;
  const int gts = a.gate_per_head ? a.Hq : 1;
  const float* lgb = a.log_gamma + int64_t(b) * L * gts + (a.gate_per_head ? hq : 0);
  const float alpha = a.alpha[a.alpha_per_head ? hq : 0];
  const float scale2 = (a.scale > 0 ? a.scale : rsqrtf(float(D))) * kLog2e;
  // gate_skips_window (w a multiple of 64): the gated branch of query i covers keys t <= i - w. With
  // j = i - w that is the ordinary gated branch at position j for the query phi_q(q_i) exp(B_i - B_j)
  // (B the cumulative log gamma): the gate warps work on key chunk m = n - lag (its state, keys, values
  // and b) with the query rows of chunk n scaled by that factor, and the state update lags by lag chunks.
  const int lag = a.gate_skips_window ? w / kC : 0;

  // Meta sinks in the log2 domain: running max starts at max mu, sum at sum exp(mu - max).
  float meta_m = -INFINITY, meta_l = 0.f;
  if (a.n_meta > 0) {
    const float* mu = a.meta + (a.meta_per_head ? hq * a.n_meta : 0);
    for (int j = 0; j < a.n_meta; ++j) meta_m = fmaxf(meta_m, mu[j] * kLog2e);
    for (int j = 0; j < a.n_meta; ++j) meta_l += fast_exp2(mu[j] * kLog2e - meta_m);
  }

  // Feature weights, once.
  {
    const bf16* wq = static_cast<const bf16*>(a.wq) + int64_t(hq) * D * F;
    const bf16* wk = static_cast<const bf16*>(a.wk) + int64_t(hq) * D * F;
    for (int p = tid; p < D * F / 8; p += kThreads) {
      int r = p / (F / 8), c = (p % (F / 8)) * 8;
      cp_async16(Wq + r * LDW + c, wq + r * F + c, 16);
      cp_async16(Wk + r * LDW + c, wk + r * F + c, 16);
    }
    cp_async_commit();
  }
  for (int i = tid; i < F2 * LDV; i += kThreads) S16[i] = __float2bfloat16(0.f);
  for (int i = tid; i < F2; i += kThreads) zs[i] = 0.f;

  float sreg[ND][4];
#pragma unroll
  for (int j = 0; j < ND; ++j) sreg[j][0] = sreg[j][1] = sreg[j][2] = sreg[j][3] = 0.f;
  const bool owns_s = warp < F2 / 16;
  const int f0 = warp * 16;

  const int nchunks = (L + kC - 1) / kC;
  for (int n = 0; n < nchunks; ++n) {
    __syncthreads();  // (A) previous chunk fully consumed
    const int slot = n % ring;
    bf16* Kc = Ks + slot * kC * LDD;
    bf16* Vc = Vs + slot * kC * LDV;
    for (int p = tid; p < kC * D / 8; p += kThreads) {
      int r = p / (D / 8), c = (p % (D / 8)) * 8;
      int pos = n * kC + r;
      bool ok = pos < L;
      int pc = ok ? pos : 0;
      cp_async16(Qs + r * LDD + c, qb + pc * qstride + c, ok ? 16 : 0);
      cp_async16(Kc + r * LDD + c, kb + pc * kstride + c, ok ? 16 : 0);
    }
    for (int p = tid; p < kC * DV / 8; p += kThreads) {
      int r = p / (DV / 8), c = (p % (DV / 8)) * 8;
      int pos = n * kC + r;
      bool ok = pos < L;
      cp_async16(Vc + r * LDV + c, vb + (ok ? pos : 0) * kstride + c, ok ? 16 : 0);
    }
    if (sep) {  // the feature maps' rows: q of chunk n, k of the gate's key chunk n - lag (none before it)
      const int mk = n - lag;
      for (int p = tid; p < kC * D / 8; p += kThreads) {
        int r = p / (D / 8), c = (p % (D / 8)) * 8;
        int pos = n * kC + r, kpos = mk * kC + r;
        bool ok = pos < L, kok = mk >= 0 && kpos < L;
        cp_async16(QFs + r * LDD + c, qfb + (ok ? pos : 0) * qstride + c, ok ? 16 : 0);
        cp_async16(KFs + r * LDD + c, kfb + (kok ? kpos : 0) * kstride + c, kok ? 16 : 0);
      }
    }
    cp_async_commit();
    float* bsum_n = bring + slot * kC;
    if (warp == 0) {  // b_i: inclusive prefix sums of log gamma inside the chunk
      int p0 = n * kC + 2 * lane;
      float v0 = p0 < L ? lgb[int64_t(p0) * gts] : 0.f;
      float v1 = p0 + 1 < L ? lgb[int64_t(p0 + 1) * gts] : 0.f;
      float s = v0 + v1, inc = s;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        float u = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += u;
      }
      bsum_n[2 * lane] = inc - s + v0;
      bsum_n[2 * lane + 1] = inc;
    }
    cp_async_wait_all();
    __syncthreads();  // (B) chunk tiles and b ready
    // The gated branch's key chunk m (n unless gate_skips_window) and its tiles in the rings.
    const int m = n - lag, mslot = m >= 0 ? m % ring : slot;
    const bool gate_on = m >= 0;  // false: no key is old enough yet (gate_skips_window)
    const float* bsum = bring + mslot * kC;
    const bf16* Kg = Ks + mslot * kC * LDD;
    const bf16* Vg = Vs + mslot * kC * LDV;
    const float bC = bsum[kC - 1];

    const int r0 = (warp & 3) * 16;  // the 16 rows this warp works on
    uint32_t phq[F2 / 16][4];        // gate warps: phi_Q as A fragments
    float qz0 = 0.f, qz1 = 0.f;      // gate warps: phi_Q . z (previous state)
    if (warp < 4) {
      float ap[F / 8][4], am[F / 8][4];
      rows_times_w<D, F>(ap, sep ? QFs : Qs, Wq, r0);
      feature_map<F>(ap, am, a.act);
      if (lag > 0 && gate_on) {  // rows r0 + g, r0 + g + 8 times exp(B_i - B_{i - w})
        float tot = 0.f;         // log gamma summed over chunks m .. n - 1
        for (int c = m; c < n; ++c) tot += bring[(c % ring) * kC + kC - 1];
        const int i0 = r0 + g, i1 = i0 + 8;
        const float s0 = fast_exp(bsum_n[i0] - bsum[i0] + tot), s1 = fast_exp(bsum_n[i1] - bsum[i1] + tot);
#pragma unroll
        for (int j = 0; j < F / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            ap[j][e] = round_bf16(ap[j][e] * s0), am[j][e] = round_bf16(am[j][e] * s0);
            ap[j][2 + e] = round_bf16(ap[j][2 + e] * s1), am[j][2 + e] = round_bf16(am[j][2 + e] * s1);
          }
        }
      }
      const float2 qz = phi_q_frags<F>(phq, ap, am, zs, t4);
      qz0 = qz.x, qz1 = qz.y;
    } else if (gate_on) {
      float ap[F / 8][4], am[F / 8][4];
      rows_times_w<D, F>(ap, sep ? KFs : Kg, Wk, r0);
      feature_map<F>(ap, am, a.act);
      const bool v0 = m * kC + r0 + g < L, v1 = m * kC + r0 + g + 8 < L;
      const float d0 = v0 ? fast_exp(bC - bsum[r0 + g]) : 0.f, d1 = v1 ? fast_exp(bC - bsum[r0 + g + 8]) : 0.f;
#pragma unroll
      for (int j = 0; j < F / 8; ++j) {
        int c = 8 * j + 2 * t4;
        float p00 = v0 ? ap[j][0] : 0.f, p01 = v0 ? ap[j][1] : 0.f;
        float p10 = v1 ? ap[j][2] : 0.f, p11 = v1 ? ap[j][3] : 0.f;
        float m00 = v0 ? am[j][0] : 0.f, m01 = v0 ? am[j][1] : 0.f;
        float m10 = v1 ? am[j][2] : 0.f, m11 = v1 ? am[j][3] : 0.f;
        *reinterpret_cast<uint32_t*>(Pk + (r0 + g) * LDF + c) = pack_bf16(p00, p01);
        *reinterpret_cast<uint32_t*>(Pk + (r0 + g + 8) * LDF + c) = pack_bf16(p10, p11);
        *reinterpret_cast<uint32_t*>(Pk + (r0 + g) * LDF + F + c) = pack_bf16(m00, m01);
        *reinterpret_cast<uint32_t*>(Pk + (r0 + g + 8) * LDF + F + c) = pack_bf16(m10, m11);
        // key sums for z: sum over the warp's 16 rows of decayed phi_K
        float zp0 = p00 * d0 + p10 * d1, zp1 = p01 * d0 + p11 * d1;
        float zm0 = m00 * d0 + m10 * d1, zm1 = m01 * d0 + m11 * d1;
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) {
          zp0 += __shfl_xor_sync(0xffffffffu, zp0, o);
          zp1 += __shfl_xor_sync(0xffffffffu, zp1, o);
          zm0 += __shfl_xor_sync(0xffffffffu, zm0, o);
          zm1 += __shfl_xor_sync(0xffffffffu, zm1, o);
        }
        if (g == 0) {
          float* zp = zpart + (warp - 4) * F2;
          zp[c] = zp0, zp[c + 1] = zp1, zp[F + c] = zm0, zp[F + c + 1] = zm1;
        }
      }
    }
    __syncthreads();  // (C) phi_K ready

    float og[ND][4];  // gate warps: gated output; window warps: window output
    float l0 = 0.f, l1 = 0.f;
    if (warp < 4 && !gate_on) {
      zero_acc(og);  // an empty gated branch: N = 0, den = 0
    } else if (warp < 4) {
      // Intra-chunk scores phi_Q phi_K^T, decayed and causal.
      float sc[NK][4];
      zero_acc(sc);
      mma_frag<F2 / 16, BLayout::NK>(sc, phq, Pk, LDF);
      const int i0 = r0 + g, i1 = r0 + g + 8;
      const float bi0 = bsum[i0], bi1 = bsum[i1];
      uint32_t pa[NK / 2][4];
#pragma unroll
      for (int j = 0; j < NK; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          int tt = 8 * j + 2 * t4 + e;
          float bt = bsum[tt];
          float x0 = tt <= i0 ? sc[j][e] * fast_exp(bi0 - bt) : 0.f;
          float x1 = tt <= i1 ? sc[j][2 + e] * fast_exp(bi1 - bt) : 0.f;
          sc[j][e] = round_bf16(x0), sc[j][2 + e] = round_bf16(x1);
          l0 += sc[j][e], l1 += sc[j][2 + e];
        }
      }
#pragma unroll
      for (int s = 0; s < NK / 2; ++s) {
        pa[s][0] = pack_bf16(sc[2 * s][0], sc[2 * s][1]);
        pa[s][1] = pack_bf16(sc[2 * s][2], sc[2 * s][3]);
        pa[s][2] = pack_bf16(sc[2 * s + 1][0], sc[2 * s + 1][1]);
        pa[s][3] = pack_bf16(sc[2 * s + 1][2], sc[2 * s + 1][3]);
      }
      // Inter-chunk: exp(b_i) phi_Q S_n, then add the intra part A V.
#pragma unroll
      for (int j = 0; j < ND; ++j) og[j][0] = og[j][1] = og[j][2] = og[j][3] = 0.f;
#pragma unroll
      for (int s = 0; s < F2 / 16; ++s) {
#pragma unroll
        for (int np = 0; np < ND / 2; ++np) {
          uint32_t bb[4];
          load_b_kn(bb, S16, LDV, np * 16, s * 16);
          mma16816(og[2 * np], phq[s], bb[0], bb[1]);
          mma16816(og[2 * np + 1], phq[s], bb[2], bb[3]);
        }
      }
      const float e0 = fast_exp(bi0), e1 = fast_exp(bi1);
#pragma unroll
      for (int j = 0; j < ND; ++j) og[j][0] *= e0, og[j][1] *= e0, og[j][2] *= e1, og[j][3] *= e1;
#pragma unroll
      for (int s = 0; s < NK / 2; ++s) {
#pragma unroll
        for (int np = 0; np < ND / 2; ++np) {
          uint32_t bb[4];
          load_b_kn(bb, Vg, LDV, np * 16, s * 16);
          mma16816(og[2 * np], pa[s], bb[0], bb[1]);
          mma16816(og[2 * np + 1], pa[s], bb[2], bb[3]);
        }
      }
      l0 = quad_sum(l0) + e0 * quad_sum(qz0);
      l1 = quad_sum(l1) + e1 * quad_sum(qz1);
      const float inv0 = 1.f / (l0 + a.eps), inv1 = 1.f / (l1 + a.eps);
#pragma unroll
      for (int j = 0; j < ND; ++j) og[j][0] *= inv0, og[j][1] *= inv0, og[j][2] *= inv1, og[j][3] *= inv1;
    } else {
      // Sliding window with meta sinks, online softmax over key blocks (log2 domain).
      const int ia = n * kC + r0 + g, ib = ia + 8;  // global query positions of this thread's rows
      float m0 = meta_m, m1 = meta_m;
      l0 = t4 == 0 ? meta_l : 0.f, l1 = l0;
      zero_acc(og);
      const int wmin = n * kC + r0, wmax = wmin + 15;  // the warp's query positions
      for (int jb = nb; jb >= 0; --jb) {
        const int cn = n - jb;
        if (cn < 0) continue;
        const int t0 = cn * kC;
        if (t0 + kC - 1 < wmin - w + 1 || t0 > wmax) continue;  // no key of this block in any window
        const bf16* Kb = Ks + (cn % ring) * kC * LDD;
        const bf16* Vb = Vs + (cn % ring) * kC * LDV;
        float sc[NK][4];
        zero_acc(sc);
        mma_smem<D / 16, BLayout::NK>(sc, Qs, LDD, r0, Kb, LDD);
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < NK; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            int tt = t0 + 8 * j + 2 * t4 + e;
            sc[j][e] = (tt <= ia && tt > ia - w) ? sc[j][e] * scale2 : -INFINITY;
            sc[j][2 + e] = (tt <= ib && tt > ib - w) ? sc[j][2 + e] * scale2 : -INFINITY;
            mx0 = fmaxf(mx0, sc[j][e]), mx1 = fmaxf(mx1, sc[j][2 + e]);
          }
        }
        const float mn0 = fmaxf(m0, quad_max(mx0)), mn1 = fmaxf(m1, quad_max(mx1));
        const float u0 = mn0 == -INFINITY ? 0.f : mn0, u1 = mn1 == -INFINITY ? 0.f : mn1;
        const float c0 = fast_exp2(m0 - u0), c1 = fast_exp2(m1 - u1);
        m0 = mn0, m1 = mn1;
        l0 *= c0, l1 *= c1;
#pragma unroll
        for (int j = 0; j < ND; ++j) og[j][0] *= c0, og[j][1] *= c0, og[j][2] *= c1, og[j][3] *= c1;
        uint32_t pa[NK / 2][4];
#pragma unroll
        for (int j = 0; j < NK; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            sc[j][e] = round_bf16(fast_exp2(sc[j][e] - u0));
            sc[j][2 + e] = round_bf16(fast_exp2(sc[j][2 + e] - u1));
            l0 += sc[j][e], l1 += sc[j][2 + e];
          }
        }
        acc_to_a(pa, sc);
        mma_frag<NK / 2, BLayout::KN>(og, pa, Vb, LDV);
      }
      l0 = quad_sum(l0), l1 = quad_sum(l1);
      const float inv0 = alpha / l0, inv1 = alpha / l1;
      if (a.meta_weights_gate && t4 == 0)
        pmeta[r0 + g] = sinks_share(meta_l, meta_m, m0, l0), pmeta[r0 + g + 8] = sinks_share(meta_l, meta_m, m1, l1);
      if (a.win_out != nullptr) window_stats_out(a, b, hq, L, D, voff, ia, t4, og, m0, m1, l0, l1);
      __syncwarp();  // all lanes done reading this warp's Q rows
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        int c = 8 * j + 2 * t4;
        *reinterpret_cast<uint32_t*>(Qs + (r0 + g) * LDD + c) = pack_bf16(og[j][0] * inv0, og[j][1] * inv0);
        *reinterpret_cast<uint32_t*>(Qs + (r0 + g + 8) * LDD + c) = pack_bf16(og[j][2] * inv1, og[j][3] * inv1);
      }
    }

    // State update S = exp(b_C) S + (phi_K * exp(b_C - b_t))^T V for this warp's 16 feature rows.
    if (owns_s && gate_on) {
      const float eC = fast_exp(bC);
#pragma unroll
      for (int j = 0; j < ND; ++j) sreg[j][0] *= eC, sreg[j][1] *= eC, sreg[j][2] *= eC, sreg[j][3] *= eC;
#pragma unroll
      for (int s = 0; s < NK / 2; ++s) {
        uint32_t pa[4];
        load_a_t(pa, Pk, LDF, f0, s * 16);
        const int tt = s * 16 + 2 * t4;
        const float dk0 = fast_exp(bC - bsum[tt]), dk1 = fast_exp(bC - bsum[tt + 1]);
        const float dk2 = fast_exp(bC - bsum[tt + 8]), dk3 = fast_exp(bC - bsum[tt + 9]);
        pa[0] = scale_bf16x2(pa[0], dk0, dk1);
        pa[1] = scale_bf16x2(pa[1], dk0, dk1);
        pa[2] = scale_bf16x2(pa[2], dk2, dk3);
        pa[3] = scale_bf16x2(pa[3], dk2, dk3);
#pragma unroll
        for (int np = 0; np < ND / 2; ++np) {
          uint32_t bb[4];
          load_b_kn(bb, Vg, LDV, np * 16, s * 16);
          mma16816(sreg[2 * np], pa, bb[0], bb[1]);
          mma16816(sreg[2 * np + 1], pa, bb[2], bb[3]);
        }
      }
    }
    __syncthreads();  // (D) S16, z and the window output may now be touched

    if (owns_s) {
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        int c = 8 * j + 2 * t4;
        *reinterpret_cast<uint32_t*>(S16 + (f0 + g) * LDV + c) = pack_bf16(sreg[j][0], sreg[j][1]);
        *reinterpret_cast<uint32_t*>(S16 + (f0 + g + 8) * LDV + c) = pack_bf16(sreg[j][2], sreg[j][3]);
      }
    }
    if (tid < F2 && gate_on) {
      const float eC = fast_exp(bC);
      zs[tid] = eC * zs[tid] + zpart[tid] + zpart[F2 + tid] + zpart[2 * F2 + tid] + zpart[3 * F2 + tid];
    }
    if (warp < 4) {
      float wa = 1.f, wb = 1.f;  // the window part's factor (shared_normaliser)
      if (a.meta_weights_gate) {
        float p0 = pmeta[r0 + g], p1 = pmeta[r0 + g + 8];
        if (a.shared_normaliser) combine_shared(p0, p1, wa, wb, l0 + a.eps, l1 + a.eps);
#pragma unroll
        for (int j = 0; j < ND; ++j) og[j][0] *= p0, og[j][1] *= p0, og[j][2] *= p1, og[j][3] *= p1;
      }
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        int c = 8 * j + 2 * t4;
        uint32_t* p0 = reinterpret_cast<uint32_t*>(Qs + (r0 + g) * LDD + c);
        uint32_t* p1 = reinterpret_cast<uint32_t*>(Qs + (r0 + g + 8) * LDD + c);
        float2 w0 = unpack_bf16(*p0), w1 = unpack_bf16(*p1);
        *p0 = pack_bf16(og[j][0] + w0.x * wa, og[j][1] + w0.y * wa);
        *p1 = pack_bf16(og[j][2] + w1.x * wb, og[j][3] + w1.y * wb);
      }
      __syncwarp();
      for (int p = lane; p < 16 * DV / 8; p += 32) {
        int r = p / (DV / 8), c = (p % (DV / 8)) * 8;
        int pos = n * kC + r0 + r;
        if (pos < L)
          *reinterpret_cast<uint4*>(yb + int64_t(pos) * qstride + c) =
              *reinterpret_cast<const uint4*>(Qs + (r0 + r) * LDD + c);
      }
    }
  }

  if (a.state_s != nullptr) {
    __syncthreads();
    float* sb = a.state_s + (int64_t(b) * a.Hq + hq) * F2 * D + voff;
    if (owns_s) {
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        int c = 8 * j + 2 * t4;
        sb[(f0 + g) * D + c] = sreg[j][0], sb[(f0 + g) * D + c + 1] = sreg[j][1];
        sb[(f0 + g + 8) * D + c] = sreg[j][2], sb[(f0 + g + 8) * D + c + 1] = sreg[j][3];
      }
    }
    if (a.state_z != nullptr && sp == 0 && tid < F2) a.state_z[(int64_t(b) * a.Hq + hq) * F2 + tid] = zs[tid];
  }
}

template <int D, int F, int DV>
void launch_fwd0(const LizardAttnArgs& a, cudaStream_t stream) {
  const int nb = a.window > 1 ? (a.window - 1 + kC - 1) / kC : 0;
  const int ring = nb + 1;
  const size_t smem = FwdSmem<D, F, DV>::bytes(ring, a.separate_feature_qk);
  int dev = 0, optin = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  LZ_CUDA_CHECK(smem <= size_t(optin), "lizard attention (cuda): window ", a.window, " needs ", smem, " bytes of shared memory at D=", D, " F=", F, ", the device has ", optin);
  auto kern = lizard_fwd_kernel<D, F, DV>;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  kern<<<a.B * a.Hq * (D / DV), kThreads, smem, stream>>>(a, ring, nb);
  launched("lizard attention (cuda)");
}

// ---------------------------------------------------------------------------------------------
// Variant 3 (the default): v0's math with the chunk loads off the critical path, the work
// rebalanced between the warp groups, and the big chunk products on Hopper warpgroup MMA (wgmma,
// sm_90a; helpers and the SW128 smem layout in wgmma.cuh, as in the flash forward).
// - Schedule: Q of chunk n+1 is fetched with cp.async into a second Q tile as soon as chunk n starts;
//   K/V of chunk n+1 go into the ring slot of chunk n+1-ring, issued by the window warps right after
//   they finish that (oldest) block of their window (the ring is at least 2, the prefetch slot, also
//   for w <= 1); log gamma of the next chunk is fetched by warp 0. The gate warps compute phi_K as
//   well as phi_Q; the window warps start their window at once and wait for phi_K (named barrier)
//   only before the state update.
// - Warps 0-3 are warpgroup 0 (gate), warps 4-7 warpgroup 1 (window); warp 4 * wg + i owns rows
//   16 i .. 16 i + 15 of the chunk in both, so the accumulator layout d[4j + e] is the mma.sync
//   fragment layout of v0 (og[j][e]).
// - Q (double-buffered), the K and V rings and the bf16 state copy S16 are SW128 tiles (no padding)
//   written by cp.async / ordinary stores, made visible to wgmma by fence.proxy.async before the
//   chunk-start barrier.
// - Window: per key block S = Q K^T by D/16 wgmma m64n64k16 (A = Q, B = K, both K-major in smem),
//   online softmax on the accumulator (v0's masks, log2 domain), O += P V by 4 wgmma m64nDk16 (P from
//   registers, V MN-major via trans-b). Key blocks no row of a warpgroup sees are skipped.
// - Gate: phi_Q S by F2/16 wgmma m64nDk16 (A = phi_Q from registers, B = S16 MN-major), issued before
//   the barrier on phi_K, then the intra-chunk scores phi_Q phi_K^T by F2/16 wgmma m64n64k16 (B =
//   phi_K, an SW128 tile of 64 keys x F2, K-major), then (A .* decay) V by 4 wgmma m64nDk16 (A from
//   registers, B = V MN-major).
// - State update S = exp(b_C) S + (phi_K .* decay)^T V: 4 wgmma m64nDk16 per warpgroup owning 64
//   feature rows (F = 64: both, F = 32: warpgroup 0), A = decayed phi_K^T from registers (load_a_t
//   fragments by ldmatrix.trans from the swizzled phi_K tile), B = V MN-major; S stays fp32 in the
//   accumulator registers (v0's row ownership), its bf16 copy goes to S16 at the chunk end.
// - Feature maps X W at F = 64: D/16 wgmma m64n64k16 per map (A = the warp's Q / K rows by ldmatrix
//   from the SW128 tile, B = W as an SW128 tile, MN-major); F = 32 keeps mma.sync with padded W.
// Covers every (D, F) of v0; v0 runs where its shared memory does not fit (D = 128: w > 129 at F = 64,
// w > 193 at F = 32) or the device is not sm_90. (The deleted v2, this schedule on mma.sync, needed
// more shared memory than v3 at every (D, F, w), so it never ran where v3 could not.)

// Named barriers (id 0 is __syncthreads).
constexpr int kBarPk = 1;      // gate warps arrive when phi_K is in shared memory, window warps wait
constexpr int kBarGate = 2;    // the 4 gate warps
constexpr int kBarWindow = 3;  // the 4 window warps
constexpr int kBarQ = 4;       // the Q tile's last reader arrives, the warpgroup that writes an output into it waits
constexpr int kBarS16 = 5;     // gate warps arrive when their phi_Q S_n has read S16, window owners wait to rewrite it
constexpr int kBarOut = 6;     // F = 64: gate warps arrive when their output is in the Q tile, window warps wait

template <int D, int F>
struct Fwd3Smem {
  static constexpr int F2 = 2 * F, LDW = F + 8;
  // F = 64: the feature maps X W on wgmma, Wq / Wk as SW128 tiles of D rows x 64 columns (128-byte
  // rows); F = 32 (64-byte rows) keeps padded W tiles (v0's) and mma.sync.
  static constexpr bool kWgFeat = F == 64;
  static constexpr uint32_t kTile = kC * D * 2;  // one SW128 chunk tile (64 rows x D bf16)
  static constexpr uint32_t kWBytes = kWgFeat ? uint32_t(D) * 128 : uint32_t(D) * LDW * 2;  // one W tile
  static constexpr size_t bytes(int ring) {
    return size_t(2 + 2 * ring) * kTile                             // Q x 2, K and V rings
           + size_t(F2) * D * 2                                     // S16 (SW128, F2 rows)
           + size_t(kC) * F2 * 2                                    // phi_K (SW128, 64 rows x F2)
           + size_t(2) * kWBytes                                    // Wq, Wk
           + size_t(4 * kC + F2) * 4                                // b x 2, next log gamma, z, p_meta
           + 1024;                                                  // aligning the swizzle atoms
  }
};
static_assert(Fwd3Smem<128, 64>::bytes(3) <= 227 * 1024, "v3 must fit the sm_90 opt-in limit at w = 128");

// v3's window: masks a key block's raw scores (C fragments, rows ia, ib = ia + 8, keys t0 + 8 j + 2 t4 + e) and
// takes the rows' maxima. kCausal: keys after a row's query exist in the block (the diagonal block); kOld: keys
// older than a row's window exist (the oldest block). Each block tests only the bound it can cross.
template <bool kCausal, bool kOld>
__device__ __forceinline__ void mask_block_max(float (&sc)[kC / 2], int t0, int t4, int ia, int w, float& mx0, float& mx1) {
  const int ib = ia + 8;
#pragma unroll
  for (int j = 0; j < kC / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int tt = t0 + 8 * j + 2 * t4 + e;
      if constexpr (kCausal || kOld) {
        const bool v0 = (!kCausal || tt <= ia) && (!kOld || tt > ia - w);
        const bool v1 = (!kCausal || tt <= ib) && (!kOld || tt > ib - w);
        sc[4 * j + e] = v0 ? sc[4 * j + e] : -INFINITY;
        sc[4 * j + 2 + e] = v1 ? sc[4 * j + 2 + e] : -INFINITY;
      }
      mx0 = fmaxf(mx0, sc[4 * j + e]), mx1 = fmaxf(mx1, sc[4 * j + 2 + e]);
    }
  }
}

// v3's window rescales lazily: a row's reference max moves only when a key block's max exceeds it by more
// than this (log2 units), so P = 2^(s - m) stays below 2^8 (exact in fp32, within bf16's range) and most
// blocks skip the 64 rescaling multiplies per thread; l, the output and the statistics share the reference.
constexpr float kLazyRescale = 8.f;

// mma.cuh's load_a_t (A fragment of a matrix stored transposed, [k][m]) from an SW128 chunk tile of
// 64 k-rows.
__device__ __forceinline__ void load_a_t_sw(uint32_t (&a)[4], uint32_t base, int m0, int k0) {
  const int l = threadIdx.x & 31, mi = l >> 3, rr = l & 7;
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(base + wg::sw128_offset(kC, k0 + (mi >> 1) * 8 + rr, (m0 >> 3) + (mi & 1))));
}

template <int D, int F>
__global__ void __launch_bounds__(kThreads, 1) lizard_fwd3_kernel(const LizardAttnArgs a, int ring, int nb) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if (threadIdx.x == 0 && blockIdx.x == 0) printf("lizard attention fwd v3 needs an sm_90a build\n");
#else
  using S = Fwd3Smem<D, F>;
  constexpr int F2 = S::F2, LDW = S::LDW;
  constexpr uint32_t kTile = S::kTile;
  constexpr int NK = kC / 8;  // n-tiles over a chunk's keys
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw), pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* base = smem_raw + pad;  // 1024-aligned: every SW128 tile below starts on a swizzle atom
  const uint32_t sbase = raw + pad;
  const uint32_t oK = 2 * kTile, oV = oK + ring * kTile, oS = oV + ring * kTile;
  unsigned char* S16 = base + oS;
  const uint32_t sS16 = sbase + oS;
  const uint32_t oPk = oS + F2 * D * 2;  // phi_K, SW128 (64 keys x F2 features)
  const uint32_t sPk = sbase + oPk;
  const uint32_t oW = oPk + kC * F2 * 2;  // Wq, Wk (SW128 when S::kWgFeat: 1024-aligned here)
  bf16* Wq = reinterpret_cast<bf16*>(base + oW);
  bf16* Wk = reinterpret_cast<bf16*>(base + oW + S::kWBytes);
  const uint32_t sWq = sbase + oW, sWk = sbase + oW + S::kWBytes;
  // b (the chunk's inclusive log-gamma sums) double-buffered: chunk n reads bsum + (n & 1) kC while warp 0
  // scans chunk n + 1's into the other buffer (no chunk-end barrier orders them)
  float* bsum = reinterpret_cast<float*>(base + oW + 2 * S::kWBytes);
  float* lgn = bsum + 2 * kC;
  float* zs = lgn + kC;
  float* pmeta = zs + F2;  // meta_weights_gate: as in v0

  // warp via a shuffle from lane 0: provably warp-uniform (uniform-datapath descriptors and addresses)
  const int tid = threadIdx.x, warp = __shfl_sync(0xffffffffu, tid >> 5, 0), lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int hq = blockIdx.x % a.Hq, b = blockIdx.x / a.Hq;
  const int hkv = hq / (a.Hq / a.Hkv);
  const int L = a.L, w = a.window;
  const int qstride = a.Hq * D, kstride = a.Hkv * D;
  const bf16* qb = static_cast<const bf16*>(a.q) + int64_t(b) * L * qstride + int64_t(hq) * D;
  const bf16* kb = static_cast<const bf16*>(a.k) + int64_t(b) * L * kstride + int64_t(hkv) * D;
  const bf16* vb = static_cast<const bf16*>(a.v) + int64_t(b) * L * kstride + int64_t(hkv) * D;
  bf16* yb = static_cast<bf16*>(a.y) + int64_t(b) * L * qstride + int64_t(hq) * D;
  const int gts = a.gate_per_head ? a.Hq : 1;
  const float* lgb = a.log_gamma + int64_t(b) * L * gts + (a.gate_per_head ? hq : 0);
  const float alpha = a.alpha[a.alpha_per_head ? hq : 0];
  const float scale2 = (a.scale > 0 ? a.scale : rsqrtf(float(D))) * kLog2e;

  float meta_m = -INFINITY, meta_l = 0.f;
  if (a.n_meta > 0) {
    const float* mu = a.meta + (a.meta_per_head ? hq * a.n_meta : 0);
    for (int j = 0; j < a.n_meta; ++j) meta_m = fmaxf(meta_m, mu[j] * kLog2e);
    for (int j = 0; j < a.n_meta; ++j) meta_l += fast_exp2(mu[j] * kLog2e - meta_m);
  }

  const int nchunks = (L + kC - 1) / kC;
  {
    const bf16* wq = static_cast<const bf16*>(a.wq) + int64_t(hq) * D * F;
    const bf16* wk = static_cast<const bf16*>(a.wk) + int64_t(hq) * D * F;
    for (int p = tid; p < D * F / 8; p += kThreads) {
      int r = p / (F / 8), c = (p % (F / 8)) * 8;
      if constexpr (S::kWgFeat) {
        cp_async16(reinterpret_cast<unsigned char*>(Wq) + wg::sw128_offset(D, r, c / 8), wq + r * F + c, 16);
        cp_async16(reinterpret_cast<unsigned char*>(Wk) + wg::sw128_offset(D, r, c / 8), wk + r * F + c, 16);
      } else {
        cp_async16(Wq + r * LDW + c, wq + r * F + c, 16);
        cp_async16(Wk + r * LDW + c, wk + r * F + c, 16);
      }
    }
    tile_async_sw<D, kThreads>(base, qb, qstride, 0, L, tid);
    tile_async_sw<D, kThreads>(base + oK, kb, kstride, 0, L, tid);
    tile_async_sw<D, kThreads>(base + oV, vb, kstride, 0, L, tid);
    cp_async_commit();
  }
  for (int i = tid; i < F2 * D / 8; i += kThreads) reinterpret_cast<uint4*>(S16)[i] = make_uint4(0, 0, 0, 0);
  for (int i = tid; i < F2; i += kThreads) zs[i] = 0.f;
  if (warp == 0) {
    log_gamma_async(lgn, lgb, gts, 0, L, lane);
    cp_async_wait_all();
    scan_log_gamma(bsum, lgn, lane);
    __syncwarp();
    if (nchunks > 1) log_gamma_async(lgn, lgb, gts, 1, L, lane);
    cp_async_commit();
  }

  constexpr int ND = D / 8;
  float sreg[D / 2];  // this warp's 16 rows of S (fp32), wgmma accumulator layout: sreg[4j + e] = v0's sreg[j][e]
#pragma unroll
  for (int j = 0; j < D / 2; ++j) sreg[j] = 0.f;
  const bool owns_s = warp < F2 / 16;
  constexpr bool kWindowOwnsS = F2 / 16 > 4;  // F = 64: the window warps own S rows 64 .. 127
  const int f0 = warp * 16;
  // wgmma descriptors of the fixed tiles; each k-step's slice is desc_advance from them
  const uint64_t dS16 = wg::desc_sw128(sS16, F2 * 128, 1024), dPk = wg::desc_sw128(sPk, 16, 1024);

  for (int n = 0; n < nchunks; ++n) {
    cp_async_wait_all();
    wg::fence_proxy_async();  // this thread's cp.async and ordinary smem writes -> visible to wgmma
    __syncthreads();          // (A) chunk n's tiles, b, z and S16 ready; chunk n-1 fully consumed
    unsigned char* Qs = base + (n & 1) * kTile;
    const uint32_t sQ = sbase + (n & 1) * kTile;
    const uint32_t sKc = sbase + oK + (n % ring) * kTile, sVc = sbase + oV + (n % ring) * kTile;
    const uint64_t dVc = wg::desc_sw128(sVc, kC * 128, 1024);  // V of chunk n, MN-major
    if (n + 1 < nchunks) tile_async_sw<D, kThreads>(base + ((n + 1) & 1) * kTile, qb, qstride, n + 1, L, tid);
    cp_async_commit();
    const float* bs = bsum + (n & 1) * kC;
    const float bC = bs[kC - 1];
    const int r0 = (warp & 3) * 16;  // the 16 rows this warp works on

    float og[D / 2];  // accumulator layout: og[4j + e] = v0's og[j][e]
    float l0 = 0.f, l1 = 0.f;
    float sc0 = 1.f, sc1 = 1.f, mp0 = 1.f, mp1 = 1.f;  // F = 64, window warps: W's row scales, the sinks' share
    if (warp < 4) {
      {  // phi_K of rows r0.. into shared memory (the state owners sum the normaliser's part from it)
        float ap[F / 8][4], am[F / 8][4];
        if constexpr (S::kWgFeat)
          rows_times_w_wg<D>(ap, sKc, sWk, r0);
        else
          rows_times_w_sw<D, F>(ap, sKc, Wk, r0);
        feature_map<F>(ap, am, a.act);
        const bool v0 = n * kC + r0 + g < L, v1 = n * kC + r0 + g + 8 < L;
        // rows past L stored as zeros; columns: the plus half in chunks 0 .. F/8 - 1, the minus half after
        auto top = [&](const float(&x)[4]) { return pack_bf16(v0 ? x[0] : 0.f, v0 ? x[1] : 0.f); };
        auto bot = [&](const float(&x)[4]) { return pack_bf16(v1 ? x[2] : 0.f, v1 ? x[3] : 0.f); };
#pragma unroll
        for (int j = 0; j < F / 8; j += 2) {
          stsm4_at(frag_rows_sw<kC>(sPk, r0, j), top(ap[j]), bot(ap[j]), top(ap[j + 1]), bot(ap[j + 1]));
          stsm4_at(frag_rows_sw<kC>(sPk, r0, F / 8 + j), top(am[j]), bot(am[j]), top(am[j + 1]), bot(am[j + 1]));
        }
      }
      wg::fence_proxy_async();       // phi_K stores -> visible to the intra-score wgmma (after kBarGate)
      bar_arrive(kBarPk, kThreads);  // phi_K written: the window warps' state update may use it
      uint32_t phq[F2 / 16][4];
      float qz0 = 0.f, qz1 = 0.f;
      {
        float ap[F / 8][4], am[F / 8][4];
        if constexpr (S::kWgFeat)
          rows_times_w_wg<D>(ap, sQ, sWq, r0);
        else
          rows_times_w_sw<D, F>(ap, sQ, Wq, r0);
        feature_map<F>(ap, am, a.act);
        const float2 qz = phi_q_frags<F>(phq, ap, am, zs, t4);
        qz0 = qz.x, qz1 = qz.y;
      }
      if constexpr (!kWindowOwnsS) bar_arrive(kBarQ, kThreads);  // Q read: the window warps may write their output
      // Inter-chunk phi_Q S_n (A = phi_Q from registers, B = S16 MN-major, F2 rows), issued before the
      // barrier on phi_K, then the intra-chunk scores phi_Q phi_K^T (B = phi_K K-major), both on wgmma.
      // (Scores first, decayed while phi_Q S runs, was the deleted v4: slower on the H200.)
#pragma unroll
      for (int j = 0; j < D / 2; ++j) og[j] = 0.f;
      wg::wgmma_fence();
#pragma unroll
      for (int s = 0; s < F2 / 16; ++s)
        wg::wgmma_rs_tb<D>(og, phq[s], wg::desc_advance(dS16, s * (16 * 128)));
      wg::commit();
      bar_sync(kBarGate, 128);  // every gate warp's phi_K rows visible
      float sc[kC / 2];         // sc[4j + e] = v0's sc[j][e]
#pragma unroll
      for (int j = 0; j < kC / 2; ++j) sc[j] = 0.f;
      wg::wgmma_fence();
#pragma unroll
      for (int s = 0; s < F2 / 16; ++s)
        wg::wgmma_rs_kb<64>(sc, phq[s], wg::desc_advance(dPk, (s >> 2) * (kC * 128) + (s & 3) * 32));
      wg::commit();
      wg::wait<0>();
      wg::fence_regs(sc);
      if constexpr (kWindowOwnsS) bar_arrive(kBarS16, kThreads);  // S16 read: the window owners may rewrite it
      const int i0 = r0 + g, i1 = r0 + g + 8;
      const float bi0 = bs[i0], bi1 = bs[i1];
      uint32_t pa[NK / 2][4];
#pragma unroll
      for (int j = 0; j < NK; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          int tt = 8 * j + 2 * t4 + e;
          float bt = bs[tt];
          float x0 = tt <= i0 ? sc[4 * j + e] * fast_exp(bi0 - bt) : 0.f;
          float x1 = tt <= i1 ? sc[4 * j + 2 + e] * fast_exp(bi1 - bt) : 0.f;
          sc[4 * j + e] = x0, sc[4 * j + 2 + e] = x1;  // packed to bf16 for the product; fp32 for the sums
          l0 += x0, l1 += x1;
        }
      }
      acc_to_a(pa, sc);
      wg::wait<0>();
      wg::fence_regs(og);
      const float e0 = fast_exp(bi0), e1 = fast_exp(bi1);
#pragma unroll
      for (int j = 0; j < D / 8; ++j) og[4 * j] *= e0, og[4 * j + 1] *= e0, og[4 * j + 2] *= e1, og[4 * j + 3] *= e1;
      // Intra part (A .* decay) V on wgmma (V MN-major).
      wg::fence_regs(og);
      wg::wgmma_fence();
#pragma unroll
      for (int s = 0; s < NK / 2; ++s)
        wg::wgmma_rs_tb<D>(og, pa[s], wg::desc_advance(dVc, s * (16 * 128)));
      wg::commit();
      wg::wait<0>();
      wg::fence_regs(og);
      l0 = quad_sum(l0) + e0 * quad_sum(qz0);
      l1 = quad_sum(l1) + e1 * quad_sum(qz1);
      const float inv0 = 1.f / (l0 + a.eps), inv1 = 1.f / (l1 + a.eps);
#pragma unroll
      for (int j = 0; j < D / 8; ++j) og[4 * j] *= inv0, og[4 * j + 1] *= inv0, og[4 * j + 2] *= inv1, og[4 * j + 3] *= inv1;
      if constexpr (kWindowOwnsS) {  // hand G (and d = den + eps per row) to the window warps, which combine
        bar_sync(kBarQ, kThreads);   // the window warps' S = Q K^T are done: the Q tile is free
#pragma unroll
        for (int j = 0; j < D / 8; j += 2)
          stsm4_at(frag_rows_sw<kC>(sQ, r0, j), pack_bf16(og[4 * j], og[4 * j + 1]), pack_bf16(og[4 * j + 2], og[4 * j + 3]),
                   pack_bf16(og[4 * j + 4], og[4 * j + 5]), pack_bf16(og[4 * j + 6], og[4 * j + 7]));
        if (t4 == 0) pmeta[r0 + g] = l0 + a.eps, pmeta[r0 + g + 8] = l1 + a.eps;
        bar_arrive(kBarOut, kThreads);
      }
    } else {
      // Sliding window with meta sinks on wgmma, online softmax over key blocks (log2 domain).
      const int wt = tid - 128;
      const int ia = n * kC + r0 + g;  // this thread's first row (the second: ia + 8)
      float m0 = meta_m, m1 = meta_m;
      l0 = t4 == 0 ? meta_l : 0.f, l1 = l0;
#pragma unroll
      for (int j = 0; j < D / 2; ++j) og[j] = 0.f;
      const int wmin = n * kC, wmax = wmin + kC - 1;  // the warpgroup's query positions (uniform)
      const uint64_t dq = wg::desc_sw128(sQ, 16, 1024);  // Q of chunk n, K-major
      bool fresh = true;                                  // no key block processed yet (og still zero)
      const bool more = n + 1 < nchunks;
      const int pslot = (n + 1) % ring;
      if (ring > nb + 1 && more) {
        tile_async_sw<D, 128>(base + oK + pslot * kTile, kb, kstride, n + 1, L, wt);
        tile_async_sw<D, 128>(base + oV + pslot * kTile, vb, kstride, n + 1, L, wt);
      }
      for (int jb = nb; jb >= 0; --jb) {
        const int cn = n - jb, t0 = cn * kC;
        if (cn >= 0 && t0 + kC - 1 >= wmin - w + 1 && t0 <= wmax) {  // warpgroup-uniform
          const uint32_t slot = (cn % ring) * kTile;
          const uint64_t dk = wg::desc_sw128(sbase + oK + slot, 16, 1024), dv = wg::desc_sw128(sbase + oV + slot, kC * 128, 1024);
          float sc[kC / 2];
          wg::wgmma_fence();
#pragma unroll
          for (int s = 0; s < D / 16; ++s) {
            const uint32_t ks = (s >> 2) * (kC * 128) + (s & 3) * 32;  // k-step s of a K-major chunk tile
            wg::wgmma_ss<kC>(sc, wg::desc_advance(dq, ks), wg::desc_advance(dk, ks), s > 0 ? 1 : 0);
          }
          wg::commit();
          wg::wait<0>();
          wg::fence_regs(sc);
          float mx0 = -INFINITY, mx1 = -INFINITY;
          // Raw scores stay unscaled: the max of the raw scores times scale2 is the max of the scaled ones
          // (scale2 > 0), and each exp takes its scaling in an FFMA. Masks by block kind (warpgroup-uniform):
          // the diagonal block needs the causal bound (and the window's where w < 64), the oldest the window's, a block
          // every query sees whole (the middle one at w 128) none.
          const bool causal = t0 + kC - 1 > wmin, old = t0 <= wmax - w;
          if (causal && old)
            mask_block_max<true, true>(sc, t0, t4, ia, w, mx0, mx1);
          else if (causal)
            mask_block_max<true, false>(sc, t0, t4, ia, w, mx0, mx1);
          else if (old)
            mask_block_max<false, true>(sc, t0, t4, ia, w, mx0, mx1);
          else
            mask_block_max<false, false>(sc, t0, t4, ia, w, mx0, mx1);
          const float bm0 = quad_max(mx0) * scale2, bm1 = quad_max(mx1) * scale2;
          const bool up0 = bm0 > m0 + kLazyRescale, up1 = bm1 > m1 + kLazyRescale;
          if (__any_sync(0xffffffffu, up0 || up1)) {  // warp-uniform: some row's reference max moves
            const float c0 = up0 ? fast_exp2(m0 - bm0) : 1.f, c1 = up1 ? fast_exp2(m1 - bm1) : 1.f;
            m0 = up0 ? bm0 : m0, m1 = up1 ? bm1 : m1;
            l0 *= c0, l1 *= c1;
            if (!fresh) {  // the output is still zero before the first block
#pragma unroll
              for (int j = 0; j < D / 8; ++j) og[4 * j] *= c0, og[4 * j + 1] *= c0, og[4 * j + 2] *= c1, og[4 * j + 3] *= c1;
            }
          }
          fresh = false;
          const float u0 = m0 == -INFINITY ? 0.f : m0, u1 = m1 == -INFINITY ? 0.f : m1;
          // P in fp32 for the sums; the product takes it packed to bf16 (acc_to_a, round to nearest)
#pragma unroll
          for (int j = 0; j < NK; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              sc[4 * j + e] = fast_exp2(fmaf(sc[4 * j + e], scale2, -u0));
              sc[4 * j + 2 + e] = fast_exp2(fmaf(sc[4 * j + 2 + e], scale2, -u1));
              l0 += sc[4 * j + e], l1 += sc[4 * j + 2 + e];
            }
          }
          uint32_t pa[NK / 2][4];
          acc_to_a(pa, sc);
          wg::fence_regs(og);
          wg::wgmma_fence();
#pragma unroll
          for (int s = 0; s < NK / 2; ++s)
            wg::wgmma_rs_tb<D>(og, pa[s], wg::desc_advance(dv, s * (16 * 128)));
          wg::commit();
          wg::wait<0>();
          wg::fence_regs(og);
        }
        if (jb == nb && ring == nb + 1 && more) {  // the oldest slot is done: fetch chunk n+1 into it
          bar_sync(kBarWindow, 128);
          tile_async_sw<D, 128>(base + oK + pslot * kTile, kb, kstride, n + 1, L, wt);
          tile_async_sw<D, 128>(base + oV + pslot * kTile, vb, kstride, n + 1, L, wt);
        }
      }
      if constexpr (kWindowOwnsS) bar_arrive(kBarQ, kThreads);  // the Q tile read (every S = Q K^T waited)
      cp_async_commit();
      l0 = quad_sum(l0), l1 = quad_sum(l1);
      const float inv0 = alpha / l0, inv1 = alpha / l1;
      if constexpr (kWindowOwnsS) {  // kept for the combine: W = og inv, the sinks' share p
        sc0 = inv0, sc1 = inv1;
        if (a.meta_weights_gate) mp0 = sinks_share(meta_l, meta_m, m0, l0), mp1 = sinks_share(meta_l, meta_m, m1, l1);
      } else if (a.meta_weights_gate && t4 == 0) {
        pmeta[r0 + g] = sinks_share(meta_l, meta_m, m0, l0), pmeta[r0 + g + 8] = sinks_share(meta_l, meta_m, m1, l1);
      }
      if (a.win_out != nullptr)  // og[4 j + e] is v0's og[j][e]
        window_stats_out(a, b, hq, L, D, 0, ia, t4, reinterpret_cast<const float(&)[D / 8][4]>(og), m0, m1, l0, l1);
      if constexpr (!kWindowOwnsS) {  // F = 32: W into the Q tile for the gate warps' combine
        bar_sync(kBarQ, kThreads);  // the gate warps are done reading Q
#pragma unroll
        for (int j = 0; j < D / 8; j += 2)
          stsm4_at(frag_rows_sw<kC>(sQ, r0, j), pack_bf16(og[4 * j] * inv0, og[4 * j + 1] * inv0),
                   pack_bf16(og[4 * j + 2] * inv1, og[4 * j + 3] * inv1), pack_bf16(og[4 * j + 4] * inv0, og[4 * j + 5] * inv0),
                   pack_bf16(og[4 * j + 6] * inv1, og[4 * j + 7] * inv1));
      }
      bar_sync(kBarPk, kThreads);  // phi_K ready (for the state update; at F = 32 it also orders the W stores)
    }

    // State update S = exp(b_C) S + (phi_K * exp(b_C - b_t))^T V on wgmma: warpgroup i owns feature
    // rows 64 i .. 64 i + 63 (warp w: rows 16 w .., as in v0), A = decayed phi_K^T from registers
    // (load_a_t fragments by ldmatrix.trans), B = V MN-major. F = 32: warpgroup 0 alone (uniform branch).
    float zc[4];  // owners: the chunk's z of features f0 + g (zc[0]) and f0 + g + 8 (zc[2])
    if (owns_s) {
      const float eC = fast_exp(bC);
#pragma unroll
      for (int j = 0; j < D / 2; ++j) sreg[j] *= eC;
      uint32_t pk[NK / 2][4];
#pragma unroll
      for (int s = 0; s < NK / 2; ++s) {
        load_a_t_sw(pk[s], sPk, f0, s * 16);
        const int tt = s * 16 + 2 * t4;
        const float dk0 = fast_exp(bC - bs[tt]), dk1 = fast_exp(bC - bs[tt + 1]);
        const float dk2 = fast_exp(bC - bs[tt + 8]), dk3 = fast_exp(bC - bs[tt + 9]);
        pk[s][0] = scale_bf16x2(pk[s][0], dk0, dk1);
        pk[s][1] = scale_bf16x2(pk[s][1], dk0, dk1);
        pk[s][2] = scale_bf16x2(pk[s][2], dk2, dk3);
        pk[s][3] = scale_bf16x2(pk[s][3], dk2, dk3);
      }
      wg::fence_regs(sreg);
      wg::wgmma_fence();
#pragma unroll
      for (int s = 0; s < NK / 2; ++s)
        wg::wgmma_rs_tb<D>(sreg, pk[s], wg::desc_advance(dVc, s * (16 * 128)));
      wg::commit();
      wg::wait<0>();
      wg::fence_regs(sreg);
      // The normaliser's part of the chunk, z_f = sum_t phi_K[t][f] exp(b_C - b_t), for this warp's 16 features
      // from the same bf16 decayed values the state sums: mma.sync against an all-ones B (every column the row
      // sum; lanes t4 == 0 keep column 0: rows g, g + 8). Replaces 96 shuffles per gate thread per chunk.
#pragma unroll
      for (int e = 0; e < 4; ++e) zc[e] = 0.f;
      constexpr uint32_t kOnes = 0x3F803F80u;  // bf16 1.0, 1.0
#pragma unroll
      for (int s = 0; s < NK / 2; ++s) mma16816(zc, pk[s], kOnes, kOnes);
    }
    // F = 64, no chunk-end barrier: each warpgroup rewrites its own S16 rows and z once every reader of S16
    // (the gate's phi_Q S_n) is done (z too: the gate's phi_Q dots come before kBarS16), and the window warps
    // combine once the gate output is in place. (A) of the next chunk orders the rest. F = 32: the window warps
    // own no state, so one barrier (D) and the gate warps combine (racecheck flagged the session-10 window ->
    // gate hand-over through a named barrier at <64, 32> only; not resolved).
    if constexpr (!kWindowOwnsS) __syncthreads();  // (D)
    if (owns_s) {
      if constexpr (kWindowOwnsS) {  // (F = 32: (D) above already ordered every reader)
        if (warp < 4)
          bar_sync(kBarGate, 128);  // every gate warp's phi_Q S_n done
        else
          bar_sync(kBarS16, kThreads);
      }
#pragma unroll
      for (int j = 0; j < ND; j += 2)
        stsm4_at(frag_rows_sw<F2>(sS16, f0, j), pack_bf16(sreg[4 * j], sreg[4 * j + 1]), pack_bf16(sreg[4 * j + 2], sreg[4 * j + 3]),
                 pack_bf16(sreg[4 * j + 4], sreg[4 * j + 5]), pack_bf16(sreg[4 * j + 6], sreg[4 * j + 7]));
    }
    if (owns_s && t4 == 0) {  // z: read by the gate's phi_Q dots only, done before kBarGate / kBarS16
      const float eC = fast_exp(bC);
      zs[f0 + g] = eC * zs[f0 + g] + zc[0];
      zs[f0 + g + 8] = eC * zs[f0 + g + 8] + zc[2];
    }
    // y = p G + wa W (G the gated branch's normalised output, W the window's alpha-weighted one; p the sinks' share
    // with meta_weights_gate, wa from shared_normaliser), stored as 16-byte rows through the Q tile. F = 64: by
    // the window warps (W in registers, G from the gate warps through the Q tile: the combine and y stores moved
    // off the gate warps, the longer chain); F = 32: by the gate warps (G in registers, W through the Q tile).
    if (kWindowOwnsS ? warp >= 4 : warp < 4) {
      float p0 = 1.f, p1 = 1.f, wa = 1.f, wb = 1.f, rs0, rs1, ss0, ss1;  // y = og rs + (Q tile) ss
      if constexpr (kWindowOwnsS) {
        bar_sync(kBarOut, kThreads);  // G and d in place
        if (a.meta_weights_gate) {
          p0 = mp0, p1 = mp1;
          if (a.shared_normaliser) combine_shared(p0, p1, wa, wb, pmeta[r0 + g], pmeta[r0 + g + 8]);
        }
        rs0 = sc0 * wa, rs1 = sc1 * wb, ss0 = p0, ss1 = p1;
      } else {
        if (a.meta_weights_gate) {
          p0 = pmeta[r0 + g], p1 = pmeta[r0 + g + 8];
          if (a.shared_normaliser) combine_shared(p0, p1, wa, wb, l0 + a.eps, l1 + a.eps);
        }
        rs0 = p0, rs1 = p1, ss0 = wa, ss1 = wb;
      }
#pragma unroll
      for (int j = 0; j < D / 8; j += 2) {  // ldmatrix / stmatrix in the fragment layout: the tile's rows in, y out
        const uint32_t ad = frag_rows_sw<kC>(sQ, r0, j);
        uint32_t w4[4];
        ldsm4_at(w4, ad);
        const float2 u0 = unpack_bf16(w4[0]), u1 = unpack_bf16(w4[1]), u2 = unpack_bf16(w4[2]), u3 = unpack_bf16(w4[3]);
        stsm4_at(ad, pack_bf16(og[4 * j] * rs0 + u0.x * ss0, og[4 * j + 1] * rs0 + u0.y * ss0),
                 pack_bf16(og[4 * j + 2] * rs1 + u1.x * ss1, og[4 * j + 3] * rs1 + u1.y * ss1),
                 pack_bf16(og[4 * j + 4] * rs0 + u2.x * ss0, og[4 * j + 5] * rs0 + u2.y * ss0),
                 pack_bf16(og[4 * j + 6] * rs1 + u3.x * ss1, og[4 * j + 7] * rs1 + u3.y * ss1));
      }
      __syncwarp();
      for (int p = lane; p < 16 * D / 8; p += 32) {
        int r = p / (D / 8), c = p % (D / 8);
        int pos = n * kC + r0 + r;
        if (pos < L)
          *reinterpret_cast<uint4*>(yb + int64_t(pos) * qstride + c * 8) =
              *reinterpret_cast<const uint4*>(Qs + wg::sw128_offset(kC, r0 + r, c));
      }
    }
    if (warp == 0 && n + 1 < nchunks) {  // b of the next chunk, into the other buffer
      cp_async_wait_all();
      scan_log_gamma(bsum + ((n + 1) & 1) * kC, lgn, lane);
      __syncwarp();
      if (n + 2 < nchunks) log_gamma_async(lgn, lgb, gts, n + 2, L, lane);
      cp_async_commit();
    }
    // Not needed for ordering ((A) already separates this chunk's Q-tile reads from chunk n + 2's Q prefetch into
    // the same tile), but without it compute-sanitizer racecheck reported that pair as WAR hazards in 2 of 5 runs
    // at <128, 64> (0 of 6 with it; H200, session 11). Cost: forward 0.821 -> 0.826 ms at B16 H32 D128 L2048.
    __syncthreads();
  }

  if (a.state_s != nullptr) {
    __syncthreads();
    float* sb = a.state_s + (int64_t(b) * a.Hq + hq) * F2 * D;
    if (owns_s) {
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        int c = 8 * j + 2 * t4;
        sb[(f0 + g) * D + c] = sreg[4 * j], sb[(f0 + g) * D + c + 1] = sreg[4 * j + 1];
        sb[(f0 + g + 8) * D + c] = sreg[4 * j + 2], sb[(f0 + g + 8) * D + c + 1] = sreg[4 * j + 3];
      }
    }
    if (a.state_z != nullptr && tid < F2) a.state_z[(int64_t(b) * a.Hq + hq) * F2 + tid] = zs[tid];
  }
#endif
}

// False (nothing launched) when v3 cannot run here (shared memory, not sm_90); the caller runs v0.
template <int D, int F>
bool launch_fwd3(const LizardAttnArgs& a, cudaStream_t stream) {
  const int nb = a.window > 1 ? (a.window - 1 + kC - 1) / kC : 0;
  const int ring = nb + 1 < 2 ? 2 : nb + 1;
  const size_t smem = Fwd3Smem<D, F>::bytes(ring);
  int dev = 0, optin = 0, major = 0, minor = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (smem > size_t(optin) || major != 9 || minor != 0) return false;
  auto kern = lizard_fwd3_kernel<D, F>;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  kern<<<a.B * a.Hq, kThreads, smem, stream>>>(a, ring, nb);
  launched("lizard attention (cuda)");
  return true;
}

int g_fwd_variant = kForwardVariantDefault;  // 0 or 3 (set_forward_variant)
int g_split_mode = 0;   // 0: auto, 1: never split the value columns, 2: always

// Variant 3: v3 where its shared memory fits on sm_90, else v0. Variant 0: v0 always.
template <int D, int F>
void launch_fwd(const LizardAttnArgs& a, cudaStream_t stream) {
  // gate_skips_window, separate_feature_qk: v0 only (v3's schedule keeps no lagged state, one q/k pair)
  if (g_fwd_variant == 3 && !a.gate_skips_window && !a.separate_feature_qk && launch_fwd3<D, F>(a, stream))
    return;  // else v0
  bool split = g_split_mode == 2;
  if (g_split_mode == 0) {
    // Two CTAs per (b, h) (half the value columns each; feature maps and scores computed by both)
    // only when both fit in one wave: the kernel runs one CTA per SM (registers), and at B8 H9
    // (144 CTAs on 132 SMs) the split ran 0.53 ms against 0.29 ms unsplit on an H200.
    int dev = 0, sms = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    split = 2 * a.B * a.Hq <= sms;
  }
  if (split)
    launch_fwd0<D, F, D / 2>(a, stream);
  else
    launch_fwd0<D, F, D>(a, stream);
}

}  // namespace

void check_common_args(const LizardAttnArgs& a);

void set_forward_variant(int variant) {
  LZ_CUDA_CHECK(variant == 0 || variant == 3, "lizard attention (cuda): no forward variant ", variant, " (0 or 3)");
  g_fwd_variant = variant;
}
void set_forward_split(int mode) { g_split_mode = mode; }

void lizard_attention_forward_bf16(const LizardAttnArgs& a, cudaStream_t stream) {
  check_common_args(a);
  LZ_CUDA_CHECK(!a.gate_skips_window || a.state_s == nullptr,
                "lizard attention (cuda): gate_skips_window cannot hand its state on to decoding on the GPU "
                "(use --device cpu to generate)");
  if (a.D == 128 && a.F == 64) return launch_fwd<128, 64>(a, stream);
  if (a.D == 64 && a.F == 64) return launch_fwd<64, 64>(a, stream);
  if (a.D == 128 && a.F == 32) return launch_fwd<128, 32>(a, stream);
  if (a.D == 64 && a.F == 32) return launch_fwd<64, 32>(a, stream);
  fail_cat("lizard attention (cuda): the chunked kernel supports D of 64 or 128 and F of 32 or 64, got D=", a.D, " F=", a.F);
}

}  // namespace lizard::cuda
