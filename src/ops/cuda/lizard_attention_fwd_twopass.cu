// Chunked Lizard attention forward, variant 5 (set_forward_variant(5)): two passes, C = 64.
//
// Variants 0/3 run one CTA per (batch, query head) that walks every chunk in order, carrying the state
// S (2F x D fp32) in registers: B x Hq CTAs, one per SM, and each chunk's loads, feature maps, window
// and state update sit on one sequential path. Variant 5 splits the work the way chunked linear
// attention kernels usually do:
//
// Pass 1, chunk states (lizard_fwd5_state_kernel): one CTA of 4 warps per (b, h, 64 value columns)
// walks the chunks and does only the cheap recurrence
//     S_{n+1} = exp(b_C) S_n + (phi_K .* exp(b_C - b_t))^T V,   z_{n+1} = exp(b_C) z_n + sum_t phi_K exp(b_C - b_t)
// (fp32 accumulators in registers, mma.sync m16n8k16), writing the state at the START of every chunk,
// S_n as bf16 [B, Hq, NC, 2F, D] (the tensor-core operand: variant 3 also multiplies by a bf16 copy of
// S) and z_n as fp32 [B, Hq, NC, 2F], plus the final state (fp32) when the caller asks for it. K/V of the
// next chunk and its log gamma are prefetched with cp.async while the current chunk computes
// (double-buffered tiles, ~90 KB of shared memory: two CTAs per SM).
//
// Pass 2, outputs (lizard_fwd5_out_kernel): one CTA of 8 warps per (b, h, chunk), all independent
// (16,384 CTAs at B16 H32 L2048). It loads the chunk's Q, the current and ceil((w-1)/64) previous
// chunks' K/V (straight from global / L2, no ring carried), Wq/Wk, S_n and z_n by cp.async in two
// groups (the feature maps' inputs first; the older K blocks, V and S_n keep arriving while phi_Q and
// phi_K compute), then runs variant 0's chunk body without the state update: warps 0-3 compute phi_Q,
// the intra-chunk decayed scores, exp(b_i) phi_Q S_n + (A .* decay) V and the normaliser
// exp(b_i) phi_Q . z_n + sum A; warps 4-7 compute phi_K (for the intra scores) and the sliding-window
// softmax with meta sinks; y = y_gate + alpha * y_anchor is combined through shared memory as in v0.
// Padded (not swizzled) tiles and mma.sync throughout: 211 KB of shared memory at D128 F64 w128, so
// one CTA per SM; 16,384 short CTAs keep the SMs busy instead of one long dependent chain per (b, h).
//
// phi_K is recomputed in both passes instead of stored: storing it would be B H L 2F bf16 (268 MB at
// the paper shape) written once and read once (~0.11 ms of HBM traffic), while recomputing is one
// 64 x D x F product per chunk on tensor cores, and pass 2 reads the K tile anyway for the window.
//
// Numerics follow variants 0/3 exactly: phi rounded to bf16, decays applied in fp32 and rounded to
// bf16 before the products, S used as bf16, z and every accumulation in fp32.
//
// Coverage: every (D, F) of v0/v3 (D in {64, 128}, F in {32, 64}), both feature activations, scalar and
// per-head gates, meta/alpha per head or per layer, any n_meta, w >= 1, optional final state. Falls back
// to variant 3 (and from there to v0) where pass 2's shared memory does not fit: D = 128, F = 64: w > 129;
// D = 128, F = 32: w > 193; D = 64: w > 513 (F 64) / w > 577 (F 32) (Out5Smem::bytes against the 227 KB
// opt-in limit). Pass 1 needs 94 KB at D128 F64 (two CTAs per SM).
// Only mma.sync and cp.async, so it runs on any sm_80+ device.
//
// Variant 6 (set_forward_variant(6)) is the same pass 1 with the output pass on wgmma
// (lizard_fwd6_out_kernel below, sm_90a: v3's chunk body on SW128 tiles minus the state update); off
// sm_90 it runs v5's output pass. Variant 7 (set_forward_variant(7)) is variant 6 with 4 consecutive
// chunks per output CTA (lizard_fwd7_out_kernel): Wq/Wk once per CTA and the window's K/V blocks kept in a
// ring, so a chunk loads ~80 KB instead of ~176 KB (D128 F64 w128), at a quarter of the CTAs.
// LIZARD_CUDA_FWD5_PROFILE (env) prints both passes' times to stderr.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/lizard_attention.h"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/wgmma.cuh"
#include "ops/cuda/lizard_fwd_common.cuh"

namespace lizard::cuda {
namespace {

using namespace mma;
constexpr int kDVS = 64;             // pass 1: value columns per CTA
constexpr int kStateThreads = 128;   // pass 1: 4 warps
constexpr int kOutThreads = 256;     // pass 2: 8 warps

// rows [64][ncols] of a row-major global matrix (row stride `stride` elements, chunk n) into padded smem
// [64][ld], rows past L zero-filled; threads t of nt.
template <int NCOLS>
__device__ __forceinline__ void rows_async(bf16* dst, int ld, const bf16* src, int64_t stride, int n, int L, int t,
                                           int nt) {
  for (int p = t; p < kC * NCOLS / 8; p += nt) {
    const int r = p / (NCOLS / 8), c = (p % (NCOLS / 8)) * 8, pos = n * kC + r;
    const bool ok = pos < L;
    cp_async16(dst + r * ld + c, src + int64_t(ok ? pos : 0) * stride + c, ok ? 16 : 0);
  }
}

// W [D][F] (global, row-major) into padded smem [D][F + 8].
template <int D, int F>
__device__ __forceinline__ void w_async(bf16* dst, const bf16* src, int t, int nt) {
  for (int p = t; p < D * F / 8; p += nt) {
    const int r = p / (F / 8), c = (p % (F / 8)) * 8;
    cp_async16(dst + r * (F + 8) + c, src + r * F + c, 16);
  }
}

// ------------------------------------------------------------------------------------------------
// Pass 1: chunk states.
template <int D, int F>
struct State5Smem {
  static constexpr int F2 = 2 * F, LDD = D + 8, LDV = kDVS + 8, LDF = F2 + 8, LDW = F + 8;
  static constexpr size_t bytes() {
    return (size_t(2) * kC * LDD + size_t(2) * kC * LDV + size_t(kC) * LDF + size_t(D) * LDW) * 2  // K x2, V x2, phi_K, Wk
           + size_t(2 * kC + 2 * kC + F2 + 4 * F2) * 4;  // lg x2, b x2, z, z partials
  }
};

template <int D, int F>
__global__ void __launch_bounds__(kStateThreads) lizard_fwd5_state_kernel(const LizardAttnArgs a, bf16* __restrict__ st16,
                                                                         float* __restrict__ stz) {
  using S = State5Smem<D, F>;
  constexpr int F2 = S::F2, LDD = S::LDD, LDV = S::LDV, LDF = S::LDF;
  constexpr int NSPLIT = D / kDVS;
  constexpr int MT = F2 / 64;       // 16-row feature tiles per warp (4 warps cover F2 rows)
  constexpr int NV = kDVS / 8;      // n-tiles over this CTA's value columns
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Kb = reinterpret_cast<bf16*>(smem_raw);   // [2][64][LDD]
  bf16* Vb = Kb + 2 * kC * LDD;                   // [2][64][LDV]
  bf16* Pk = Vb + 2 * kC * LDV;                   // [64][LDF]
  bf16* Wk = Pk + kC * LDF;                       // [D][LDW]
  float* lgs = reinterpret_cast<float*>(Wk + D * S::LDW);  // [2][64]
  float* bsum = lgs + 2 * kC;                              // [2][64]
  float* zs = bsum + 2 * kC;                               // [F2]
  float* zpart = zs + F2;                                  // [4][F2]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int sp = blockIdx.x % NSPLIT, bhq = blockIdx.x / NSPLIT;
  const int hq = bhq % a.Hq, b = bhq / a.Hq, voff = sp * kDVS;
  const int hkv = hq / (a.Hq / a.Hkv);
  const int L = a.L, nchunks = (L + kC - 1) / kC;
  const int64_t kstride = int64_t(a.Hkv) * D;
  const bf16* kb = static_cast<const bf16*>(a.k) + int64_t(b) * L * kstride + int64_t(hkv) * D;
  const bf16* vb = static_cast<const bf16*>(a.v) + int64_t(b) * L * kstride + int64_t(hkv) * D + voff;
  const int gts = a.gate_per_head ? a.Hq : 1;
  const float* lgb = a.log_gamma + int64_t(b) * L * gts + (a.gate_per_head ? hq : 0);
  bf16* sto = st16 + int64_t(bhq) * nchunks * F2 * D + voff;
  float* zo = stz + int64_t(bhq) * nchunks * F2;

  w_async<D, F>(Wk, static_cast<const bf16*>(a.wk) + int64_t(hq) * D * F, tid, kStateThreads);
  rows_async<D>(Kb, LDD, kb, kstride, 0, L, tid, kStateThreads);
  rows_async<kDVS>(Vb, LDV, vb, kstride, 0, L, tid, kStateThreads);
  if (warp == 0) log_gamma_async(lgs, lgb, gts, 0, L, lane);
  cp_async_commit();
  for (int i = tid; i < F2; i += kStateThreads) zs[i] = 0.f;
  if (warp == 0) {
    cp_async_wait_all();
    __syncwarp();
    scan_log_gamma(bsum, lgs, lane);
  }

  float sreg[MT][NV][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < NV; ++j) sreg[m][j][0] = sreg[m][j][1] = sreg[m][j][2] = sreg[m][j][3] = 0.f;
  const int f0 = warp * (F2 / 4);  // this warp's first feature row
  const int r0 = warp * 16;        // this warp's 16 key rows for phi_K

  for (int n = 0; n < nchunks; ++n) {
    cp_async_wait_all();
    __syncthreads();  // (A) chunk n's K/V/b ready; chunk n-1 fully consumed (its buffers and zpart free)
    const int cur = n & 1, nxt = cur ^ 1;
    if (n + 1 < nchunks) {
      rows_async<D>(Kb + nxt * kC * LDD, LDD, kb, kstride, n + 1, L, tid, kStateThreads);
      rows_async<kDVS>(Vb + nxt * kC * LDV, LDV, vb, kstride, n + 1, L, tid, kStateThreads);
      if (warp == 0) log_gamma_async(lgs + nxt * kC, lgb, gts, n + 1, L, lane);
    }
    cp_async_commit();
    const bf16* Kc = Kb + cur * kC * LDD;
    const bf16* Vc = Vb + cur * kC * LDV;
    const float* bs = bsum + cur * kC;
    const float bC = bs[kC - 1];

    // S_n (the state before chunk n) as bf16, z_n as fp32.
    bf16* so = sto + int64_t(n) * F2 * D;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        const int c = 8 * j + 2 * t4, r = f0 + 16 * m + g;
        *reinterpret_cast<uint32_t*>(so + int64_t(r) * D + c) = pack_bf16(sreg[m][j][0], sreg[m][j][1]);
        *reinterpret_cast<uint32_t*>(so + int64_t(r + 8) * D + c) = pack_bf16(sreg[m][j][2], sreg[m][j][3]);
      }
    if (sp == 0 && tid < F2) zo[int64_t(n) * F2 + tid] = zs[tid];

    {  // phi_K of rows r0.. (bf16, zero past L) and the warp's decayed key sums for z
      float ap[F / 8][4], am[F / 8][4];
      rows_times_w<D, F>(ap, Kc, Wk, r0);
      feature_map<F>(ap, am, a.act);
      const bool v0 = n * kC + r0 + g < L, v1 = n * kC + r0 + g + 8 < L;
      const float d0 = v0 ? __expf(bC - bs[r0 + g]) : 0.f, d1 = v1 ? __expf(bC - bs[r0 + g + 8]) : 0.f;
#pragma unroll
      for (int j = 0; j < F / 8; ++j) {
        const int c = 8 * j + 2 * t4;
        const float p00 = v0 ? ap[j][0] : 0.f, p01 = v0 ? ap[j][1] : 0.f;
        const float p10 = v1 ? ap[j][2] : 0.f, p11 = v1 ? ap[j][3] : 0.f;
        const float m00 = v0 ? am[j][0] : 0.f, m01 = v0 ? am[j][1] : 0.f;
        const float m10 = v1 ? am[j][2] : 0.f, m11 = v1 ? am[j][3] : 0.f;
        *reinterpret_cast<uint32_t*>(Pk + (r0 + g) * LDF + c) = pack_bf16(p00, p01);
        *reinterpret_cast<uint32_t*>(Pk + (r0 + g + 8) * LDF + c) = pack_bf16(p10, p11);
        *reinterpret_cast<uint32_t*>(Pk + (r0 + g) * LDF + F + c) = pack_bf16(m00, m01);
        *reinterpret_cast<uint32_t*>(Pk + (r0 + g + 8) * LDF + F + c) = pack_bf16(m10, m11);
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
          float* zp = zpart + warp * F2;
          zp[c] = zp0, zp[c + 1] = zp1, zp[F + c] = zm0, zp[F + c + 1] = zm1;
        }
      }
    }
    __syncthreads();  // (B) phi_K and the z partial sums ready

    // S = exp(b_C) S + (phi_K .* exp(b_C - b_t))^T V for this warp's feature rows f0 .. f0 + F2/4 - 1.
    const float eC = __expf(bC);
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < NV; ++j) sreg[m][j][0] *= eC, sreg[m][j][1] *= eC, sreg[m][j][2] *= eC, sreg[m][j][3] *= eC;
#pragma unroll
    for (int s = 0; s < kC / 16; ++s) {
      const int tt = s * 16 + 2 * t4;
      const float dk0 = __expf(bC - bs[tt]), dk1 = __expf(bC - bs[tt + 1]);
      const float dk2 = __expf(bC - bs[tt + 8]), dk3 = __expf(bC - bs[tt + 9]);
      uint32_t vv[NV / 2][4];
#pragma unroll
      for (int np = 0; np < NV / 2; ++np) load_b_kn(vv[np], Vc, LDV, np * 16, s * 16);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        uint32_t pa[4];
        load_a_t(pa, Pk, LDF, f0 + 16 * m, s * 16);
        pa[0] = scale_bf16x2(pa[0], dk0, dk1);
        pa[1] = scale_bf16x2(pa[1], dk0, dk1);
        pa[2] = scale_bf16x2(pa[2], dk2, dk3);
        pa[3] = scale_bf16x2(pa[3], dk2, dk3);
#pragma unroll
        for (int np = 0; np < NV / 2; ++np) {
          mma16816(sreg[m][2 * np], pa, vv[np][0], vv[np][1]);
          mma16816(sreg[m][2 * np + 1], pa, vv[np][2], vv[np][3]);
        }
      }
    }
    if (tid < F2) zs[tid] = eC * zs[tid] + zpart[tid] + zpart[F2 + tid] + zpart[2 * F2 + tid] + zpart[3 * F2 + tid];
    if (warp == 0 && n + 1 < nchunks) {  // b of chunk n+1 (its buffer was last read in chunk n-1)
      cp_async_wait_all();
      __syncwarp();
      scan_log_gamma(bsum + nxt * kC, lgs + nxt * kC, lane);
    }
  }

  if (a.state_s != nullptr) {
    float* sb = a.state_s + int64_t(bhq) * F2 * D + voff;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        const int c = 8 * j + 2 * t4, r = f0 + 16 * m + g;
        *reinterpret_cast<float2*>(sb + int64_t(r) * D + c) = make_float2(sreg[m][j][0], sreg[m][j][1]);
        *reinterpret_cast<float2*>(sb + int64_t(r + 8) * D + c) = make_float2(sreg[m][j][2], sreg[m][j][3]);
      }
    // zs[tid] was last written by this same thread.
    if (a.state_z != nullptr && sp == 0 && tid < F2) a.state_z[int64_t(bhq) * F2 + tid] = zs[tid];
  }
}

// ------------------------------------------------------------------------------------------------
// Pass 2: outputs, one CTA per (b, h, chunk).
template <int D, int F>
struct Out5Smem {
  static constexpr int F2 = 2 * F, LDD = D + 8, LDV = D + 8, LDF = F2 + 8, LDW = F + 8;
  static constexpr size_t bytes(int nblk) {  // nblk = window key blocks (the current chunk and nb before it)
    return (size_t(kC) * LDD                      // Q (then the window output)
            + size_t(nblk) * kC * (LDD + LDV)     // K, V blocks
            + size_t(kC) * LDF                    // phi_K
            + size_t(F2) * LDV                    // S_n (bf16)
            + size_t(2) * D * LDW) * 2            // Wq, Wk
           + size_t(kC + F2) * 4;                 // b, z_n
  }
};

template <int D, int F>
__global__ void __launch_bounds__(kOutThreads, 1) lizard_fwd5_out_kernel(const LizardAttnArgs a, const bf16* __restrict__ st16,
                                                                        const float* __restrict__ stz, int nb) {
  using S = Out5Smem<D, F>;
  constexpr int F2 = S::F2, LDD = S::LDD, LDV = S::LDV, LDF = S::LDF, LDW = S::LDW;
  constexpr int ND = D / 8;   // n-tiles over the value columns
  constexpr int NK = kC / 8;  // n-tiles over a chunk's keys
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int nblk = nb + 1;
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + kC * LDD;          // block j holds chunk n - nb + j
  bf16* Vs = Ks + nblk * kC * LDD;
  bf16* Pk = Vs + nblk * kC * LDV;
  bf16* S16 = Pk + kC * LDF;
  bf16* Wq = S16 + F2 * LDV;
  bf16* Wk = Wq + D * LDW;
  float* bsum = reinterpret_cast<float*>(Wk + D * LDW);
  float* zs = bsum + kC;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int n = blockIdx.x, bhq = blockIdx.y;
  const int hq = bhq % a.Hq, b = bhq / a.Hq;
  const int hkv = hq / (a.Hq / a.Hkv);
  const int L = a.L, w = a.window, nchunks = (L + kC - 1) / kC;
  const int64_t qstride = int64_t(a.Hq) * D, kstride = int64_t(a.Hkv) * D;
  const bf16* qb = static_cast<const bf16*>(a.q) + int64_t(b) * L * qstride + int64_t(hq) * D;
  const bf16* kb = static_cast<const bf16*>(a.k) + int64_t(b) * L * kstride + int64_t(hkv) * D;
  const bf16* vb = static_cast<const bf16*>(a.v) + int64_t(b) * L * kstride + int64_t(hkv) * D;
  bf16* yb = static_cast<bf16*>(a.y) + int64_t(b) * L * qstride + int64_t(hq) * D;
  const int gts = a.gate_per_head ? a.Hq : 1;
  const float* lgb = a.log_gamma + int64_t(b) * L * gts + (a.gate_per_head ? hq : 0);
  const float alpha = a.alpha[a.alpha_per_head ? hq : 0];
  const float scale2 = (a.scale > 0 ? a.scale : rsqrtf(float(D))) * kLog2e;

  // Everything this chunk reads, by cp.async in two groups: first what the feature maps need (Q, the
  // chunk's K, Wq, Wk, z_n, log gamma), then what only the second phase reads (the window's older K
  // blocks, every V block, S_n), which keeps arriving while the feature maps compute.
  rows_async<D>(Qs, LDD, qb, qstride, n, L, tid, kOutThreads);
  rows_async<D>(Ks + nb * kC * LDD, LDD, kb, kstride, n, L, tid, kOutThreads);
  w_async<D, F>(Wq, static_cast<const bf16*>(a.wq) + int64_t(hq) * D * F, tid, kOutThreads);
  w_async<D, F>(Wk, static_cast<const bf16*>(a.wk) + int64_t(hq) * D * F, tid, kOutThreads);
  {
    const float* zn = stz + (int64_t(bhq) * nchunks + n) * F2;
    for (int p = tid; p < F2 / 4; p += kOutThreads) cp_async16(zs + 4 * p, zn + 4 * p, 16);
  }
  if (warp == 0) log_gamma_async(bsum, lgb, gts, n, L, lane);
  cp_async_commit();
  for (int j = 0; j < nblk; ++j) {
    const int cn = n - nb + j;
    if (cn < 0) continue;  // block never read (the window loop skips it)
    if (j < nb) rows_async<D>(Ks + j * kC * LDD, LDD, kb, kstride, cn, L, tid, kOutThreads);
    rows_async<D>(Vs + j * kC * LDV, LDV, vb, kstride, cn, L, tid, kOutThreads);
  }
  {
    const bf16* sn = st16 + (int64_t(bhq) * nchunks + n) * F2 * D;
    for (int p = tid; p < F2 * D / 8; p += kOutThreads) {
      const int r = p / (D / 8), c = (p % (D / 8)) * 8;
      cp_async16(S16 + r * LDV + c, sn + int64_t(r) * D + c, 16);
    }
  }
  cp_async_commit();

  // Meta sinks in the log2 domain: running max starts at max mu, sum at sum exp(mu - max).
  float meta_m = -INFINITY, meta_l = 0.f;
  if (warp >= 4 && a.n_meta > 0) {
    const float* mu = a.meta + (a.meta_per_head ? hq * a.n_meta : 0);
    for (int j = 0; j < a.n_meta; ++j) meta_m = fmaxf(meta_m, mu[j] * kLog2e);
    for (int j = 0; j < a.n_meta; ++j) meta_l += exp2f(mu[j] * kLog2e - meta_m);
  }
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");  // this thread's first group landed
  if (warp == 0) {  // b_i in place (each lane reads its own two log gammas first)
    __syncwarp();
    scan_log_gamma(bsum, bsum, lane);
  }
  __syncthreads();  // (A) Q, the chunk's K, Wq, Wk, z_n, b ready

  const int r0 = (warp & 3) * 16;  // the 16 rows this warp works on
  uint32_t phq[F2 / 16][4];        // gate warps: phi_Q as A fragments
  float qz0 = 0.f, qz1 = 0.f;      // gate warps: phi_Q . z_n
  const bf16* Kc = Ks + nb * kC * LDD;
  const bf16* Vc = Vs + nb * kC * LDV;
  if (warp < 4) {
    float ap[F / 8][4], am[F / 8][4];
    rows_times_w<D, F>(ap, Qs, Wq, r0);
    feature_map<F>(ap, am, a.act);
#pragma unroll
    for (int j = 0; j < F / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = 8 * j + 2 * t4 + e;
        qz0 += ap[j][e] * zs[c] + am[j][e] * zs[F + c];
        qz1 += ap[j][2 + e] * zs[c] + am[j][2 + e] * zs[F + c];
      }
    }
#pragma unroll
    for (int s = 0; s < F / 16; ++s) {
      phq[s][0] = pack_bf16(ap[2 * s][0], ap[2 * s][1]);
      phq[s][1] = pack_bf16(ap[2 * s][2], ap[2 * s][3]);
      phq[s][2] = pack_bf16(ap[2 * s + 1][0], ap[2 * s + 1][1]);
      phq[s][3] = pack_bf16(ap[2 * s + 1][2], ap[2 * s + 1][3]);
      phq[F / 16 + s][0] = pack_bf16(am[2 * s][0], am[2 * s][1]);
      phq[F / 16 + s][1] = pack_bf16(am[2 * s][2], am[2 * s][3]);
      phq[F / 16 + s][2] = pack_bf16(am[2 * s + 1][0], am[2 * s + 1][1]);
      phq[F / 16 + s][3] = pack_bf16(am[2 * s + 1][2], am[2 * s + 1][3]);
    }
  } else {
    float ap[F / 8][4], am[F / 8][4];
    rows_times_w<D, F>(ap, Kc, Wk, r0);
    feature_map<F>(ap, am, a.act);
    const bool v0 = n * kC + r0 + g < L, v1 = n * kC + r0 + g + 8 < L;
#pragma unroll
    for (int j = 0; j < F / 8; ++j) {
      const int c = 8 * j + 2 * t4;
      *reinterpret_cast<uint32_t*>(Pk + (r0 + g) * LDF + c) = pack_bf16(v0 ? ap[j][0] : 0.f, v0 ? ap[j][1] : 0.f);
      *reinterpret_cast<uint32_t*>(Pk + (r0 + g + 8) * LDF + c) = pack_bf16(v1 ? ap[j][2] : 0.f, v1 ? ap[j][3] : 0.f);
      *reinterpret_cast<uint32_t*>(Pk + (r0 + g) * LDF + F + c) = pack_bf16(v0 ? am[j][0] : 0.f, v0 ? am[j][1] : 0.f);
      *reinterpret_cast<uint32_t*>(Pk + (r0 + g + 8) * LDF + F + c) = pack_bf16(v1 ? am[j][2] : 0.f, v1 ? am[j][3] : 0.f);
    }
  }
  cp_async_wait_all();  // this thread's second group (older K blocks, V, S_n) landed
  __syncthreads();      // (B) phi_K, every K/V block and S_n ready

  float og[ND][4];  // gate warps: gated output; window warps: window output
  float l0 = 0.f, l1 = 0.f;
  if (warp < 4) {
    // Intra-chunk scores phi_Q phi_K^T, decayed and causal.
    float sc[NK][4];
#pragma unroll
    for (int j = 0; j < NK; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
    for (int s = 0; s < F2 / 16; ++s) {
#pragma unroll
      for (int np = 0; np < NK / 2; ++np) {
        uint32_t bb[4];
        load_b_nk(bb, Pk, LDF, np * 16, s * 16);
        mma16816(sc[2 * np], phq[s], bb[0], bb[1]);
        mma16816(sc[2 * np + 1], phq[s], bb[2], bb[3]);
      }
    }
    const int i0 = r0 + g, i1 = r0 + g + 8;
    const float bi0 = bsum[i0], bi1 = bsum[i1];
    uint32_t pa[NK / 2][4];
#pragma unroll
    for (int j = 0; j < NK; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tt = 8 * j + 2 * t4 + e;
        const float bt = bsum[tt];
        const float x0 = tt <= i0 ? sc[j][e] * __expf(bi0 - bt) : 0.f;
        const float x1 = tt <= i1 ? sc[j][2 + e] * __expf(bi1 - bt) : 0.f;
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
    // Inter-chunk: exp(b_i) phi_Q S_n, then the intra part A V.
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
    const float e0 = __expf(bi0), e1 = __expf(bi1);
#pragma unroll
    for (int j = 0; j < ND; ++j) og[j][0] *= e0, og[j][1] *= e0, og[j][2] *= e1, og[j][3] *= e1;
#pragma unroll
    for (int s = 0; s < NK / 2; ++s) {
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bb[4];
        load_b_kn(bb, Vc, LDV, np * 16, s * 16);
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
#pragma unroll
    for (int j = 0; j < ND; ++j) og[j][0] = og[j][1] = og[j][2] = og[j][3] = 0.f;
    const int wmin = n * kC + r0, wmax = wmin + 15;  // the warp's query positions
    for (int j = 0; j < nblk; ++j) {
      const int cn = n - nb + j;
      if (cn < 0) continue;
      const int t0 = cn * kC;
      if (t0 + kC - 1 < wmin - w + 1 || t0 > wmax) continue;  // no key of this block in any window
      const bf16* Kb = Ks + j * kC * LDD;
      const bf16* Vb = Vs + j * kC * LDV;
      float sc[NK][4];
#pragma unroll
      for (int q = 0; q < NK; ++q) sc[q][0] = sc[q][1] = sc[q][2] = sc[q][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t qa[4];
        load_a(qa, Qs, LDD, r0, ks * 16);
#pragma unroll
        for (int np = 0; np < NK / 2; ++np) {
          uint32_t bb[4];
          load_b_nk(bb, Kb, LDD, np * 16, ks * 16);
          mma16816(sc[2 * np], qa, bb[0], bb[1]);
          mma16816(sc[2 * np + 1], qa, bb[2], bb[3]);
        }
      }
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int q = 0; q < NK; ++q) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int tt = t0 + 8 * q + 2 * t4 + e;
          sc[q][e] = (tt <= ia && tt > ia - w) ? sc[q][e] * scale2 : -INFINITY;
          sc[q][2 + e] = (tt <= ib && tt > ib - w) ? sc[q][2 + e] * scale2 : -INFINITY;
          mx0 = fmaxf(mx0, sc[q][e]), mx1 = fmaxf(mx1, sc[q][2 + e]);
        }
      }
      const float mn0 = fmaxf(m0, quad_max(mx0)), mn1 = fmaxf(m1, quad_max(mx1));
      const float u0 = mn0 == -INFINITY ? 0.f : mn0, u1 = mn1 == -INFINITY ? 0.f : mn1;
      const float c0 = exp2f(m0 - u0), c1 = exp2f(m1 - u1);
      m0 = mn0, m1 = mn1;
      l0 *= c0, l1 *= c1;
#pragma unroll
      for (int q = 0; q < ND; ++q) og[q][0] *= c0, og[q][1] *= c0, og[q][2] *= c1, og[q][3] *= c1;
      uint32_t pa[NK / 2][4];
#pragma unroll
      for (int q = 0; q < NK; ++q) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          sc[q][e] = round_bf16(exp2f(sc[q][e] - u0));
          sc[q][2 + e] = round_bf16(exp2f(sc[q][2 + e] - u1));
          l0 += sc[q][e], l1 += sc[q][2 + e];
        }
      }
#pragma unroll
      for (int s = 0; s < NK / 2; ++s) {
        pa[s][0] = pack_bf16(sc[2 * s][0], sc[2 * s][1]);
        pa[s][1] = pack_bf16(sc[2 * s][2], sc[2 * s][3]);
        pa[s][2] = pack_bf16(sc[2 * s + 1][0], sc[2 * s + 1][1]);
        pa[s][3] = pack_bf16(sc[2 * s + 1][2], sc[2 * s + 1][3]);
      }
#pragma unroll
      for (int s = 0; s < NK / 2; ++s) {
#pragma unroll
        for (int np = 0; np < ND / 2; ++np) {
          uint32_t bb[4];
          load_b_kn(bb, Vb, LDV, np * 16, s * 16);
          mma16816(og[2 * np], pa[s], bb[0], bb[1]);
          mma16816(og[2 * np + 1], pa[s], bb[2], bb[3]);
        }
      }
    }
    l0 = quad_sum(l0), l1 = quad_sum(l1);
    const float inv0 = alpha / l0, inv1 = alpha / l1;
    __syncwarp();  // all lanes done reading this warp's Q rows (the gate warps finished theirs before (B))
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      const int c = 8 * j + 2 * t4;
      *reinterpret_cast<uint32_t*>(Qs + (r0 + g) * LDD + c) = pack_bf16(og[j][0] * inv0, og[j][1] * inv0);
      *reinterpret_cast<uint32_t*>(Qs + (r0 + g + 8) * LDD + c) = pack_bf16(og[j][2] * inv1, og[j][3] * inv1);
    }
  }
  __syncthreads();  // (C) the window output is in Qs

  if (warp < 4) {
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      const int c = 8 * j + 2 * t4;
      uint32_t* p0 = reinterpret_cast<uint32_t*>(Qs + (r0 + g) * LDD + c);
      uint32_t* p1 = reinterpret_cast<uint32_t*>(Qs + (r0 + g + 8) * LDD + c);
      const float2 w0 = unpack_bf16(*p0), w1 = unpack_bf16(*p1);
      *p0 = pack_bf16(og[j][0] + w0.x, og[j][1] + w0.y);
      *p1 = pack_bf16(og[j][2] + w1.x, og[j][3] + w1.y);
    }
    __syncwarp();
    for (int p = lane; p < 16 * D / 8; p += 32) {
      const int r = p / (D / 8), c = (p % (D / 8)) * 8;
      const int pos = n * kC + r0 + r;
      if (pos < L)
        *reinterpret_cast<uint4*>(yb + int64_t(pos) * qstride + c) = *reinterpret_cast<const uint4*>(Qs + (r0 + r) * LDD + c);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Pass 2 on wgmma (variant 6 = variant 5 with this output kernel; sm_90a): variant 3's chunk body
// without the state update, on SW128 tiles (wgmma.cuh's layout contract).
// - Warpgroup 0 (gate, warps 0-3) computes phi_K (into an SW128 tile, 64 keys x F2) and phi_Q of its
//   16 rows per warp (F = 64: X W on wgmma, B = W MN-major; F = 32: mma.sync with padded W), then
//   phi_Q S_n (wgmma m64nDk16, A = phi_Q from registers, B = S_n MN-major), the intra scores
//   phi_Q phi_K^T (m64n64k16, B = phi_K K-major) and (A .* decay) V (B = V MN-major).
// - Warpgroup 1 (window, warps 4-7) runs the window over the current chunk first (its K/V arrive with
//   the first cp.async group) and then over the older blocks (second group, waited by the window
//   warps alone): S = Q K^T (m64n64k16, both K-major), online softmax with meta sinks (log2 domain),
//   O += P V (m64nDk16, P from registers, V MN-major); alpha * y_anchor goes to its own SW128 tile.
// - Load groups: group 1 (all threads) = Q, the chunk's K and V, Wq, Wk, z_n, log gamma; group 2 =
//   S_n (issued by the gate threads) and the older K/V blocks (issued by the window threads), so each
//   warpgroup waits only for what it issued, then a 128-thread named barrier.
constexpr int kBarGate6 = 1;    // the 4 gate warps: phi_K rows and S_n visible to wgmma
constexpr int kBarWindow6 = 2;  // the 4 window warps: the older K/V blocks visible to wgmma

template <int D, int F>
struct Out6Smem {
  static constexpr int F2 = 2 * F, LDW = F + 8;
  static constexpr bool kWgFeat = F == 64;     // F = 64: W as SW128 tiles and wgmma feature maps
  static constexpr uint32_t kTile = kC * D * 2;  // one SW128 chunk tile (64 rows x D bf16)
  static constexpr uint32_t kWBytes = kWgFeat ? uint32_t(D) * 128 : uint32_t(D) * LDW * 2;
  static constexpr size_t bytes(int nblk) {
    return size_t(2 + 2 * nblk) * kTile      // Q, window output, K and V blocks
           + size_t(F2) * D * 2              // S_n (SW128, F2 rows)
           + size_t(kC) * F2 * 2             // phi_K (SW128, 64 rows x F2)
           + size_t(2) * kWBytes             // Wq, Wk
           + size_t(kC + F2) * 4             // b, z_n
           + 1024;                           // aligning the swizzle atoms
  }
};

template <int D, int F>
__global__ void __launch_bounds__(kOutThreads, 1) lizard_fwd6_out_kernel(const LizardAttnArgs a, const bf16* __restrict__ st16,
                                                                        const float* __restrict__ stz, int nb) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) printf("lizard attention fwd v6 needs an sm_90a build\n");
#else
  using S = Out6Smem<D, F>;
  constexpr int F2 = S::F2, LDW = S::LDW;
  constexpr uint32_t kTile = S::kTile;
  constexpr int NK = kC / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw), pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* base = smem_raw + pad;
  const uint32_t sbase = raw + pad;
  const int nblk = nb + 1;
  const uint32_t oQ = 0, oO = kTile, oK = 2 * kTile, oV = oK + nblk * kTile, oS = oV + nblk * kTile;
  const uint32_t oPk = oS + F2 * D * 2, oW = oPk + kC * F2 * 2;
  unsigned char* Os = base + oO;
  unsigned char* Pk = base + oPk;
  bf16* Wq = reinterpret_cast<bf16*>(base + oW);
  bf16* Wk = reinterpret_cast<bf16*>(base + oW + S::kWBytes);
  const uint32_t sQ = sbase + oQ, sS16 = sbase + oS, sPk = sbase + oPk, sWq = sbase + oW, sWk = sbase + oW + S::kWBytes;
  float* bsum = reinterpret_cast<float*>(base + oW + 2 * S::kWBytes);
  float* zs = bsum + kC;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int n = blockIdx.x, bhq = blockIdx.y;
  const int hq = bhq % a.Hq, b = bhq / a.Hq;
  const int hkv = hq / (a.Hq / a.Hkv);
  const int L = a.L, w = a.window, nchunks = (L + kC - 1) / kC;
  const int64_t qstride = int64_t(a.Hq) * D, kstride = int64_t(a.Hkv) * D;
  const bf16* qb = static_cast<const bf16*>(a.q) + int64_t(b) * L * qstride + int64_t(hq) * D;
  const bf16* kb = static_cast<const bf16*>(a.k) + int64_t(b) * L * kstride + int64_t(hkv) * D;
  const bf16* vb = static_cast<const bf16*>(a.v) + int64_t(b) * L * kstride + int64_t(hkv) * D;
  bf16* yb = static_cast<bf16*>(a.y) + int64_t(b) * L * qstride + int64_t(hq) * D;
  const int gts = a.gate_per_head ? a.Hq : 1;
  const float* lgb = a.log_gamma + int64_t(b) * L * gts + (a.gate_per_head ? hq : 0);
  const float alpha = a.alpha[a.alpha_per_head ? hq : 0];
  const float scale2 = (a.scale > 0 ? a.scale : rsqrtf(float(D))) * kLog2e;

  // Group 1 (all threads): Q, the chunk's K and V, Wq, Wk, z_n, log gamma.
  tile_async_sw<D>(base + oQ, qb, qstride, n, L, tid, kOutThreads);
  tile_async_sw<D>(base + oK + nb * kTile, kb, kstride, n, L, tid, kOutThreads);
  tile_async_sw<D>(base + oV + nb * kTile, vb, kstride, n, L, tid, kOutThreads);
  {
    const bf16* wq = static_cast<const bf16*>(a.wq) + int64_t(hq) * D * F;
    const bf16* wk = static_cast<const bf16*>(a.wk) + int64_t(hq) * D * F;
    for (int p = tid; p < D * F / 8; p += kOutThreads) {
      const int r = p / (F / 8), c = (p % (F / 8)) * 8;
      if constexpr (S::kWgFeat) {
        cp_async16(reinterpret_cast<unsigned char*>(Wq) + wg::sw128_offset(D, r, c / 8), wq + r * F + c, 16);
        cp_async16(reinterpret_cast<unsigned char*>(Wk) + wg::sw128_offset(D, r, c / 8), wk + r * F + c, 16);
      } else {
        cp_async16(Wq + r * LDW + c, wq + r * F + c, 16);
        cp_async16(Wk + r * LDW + c, wk + r * F + c, 16);
      }
    }
    const float* zn = stz + (int64_t(bhq) * nchunks + n) * F2;
    for (int p = tid; p < F2 / 4; p += kOutThreads) cp_async16(zs + 4 * p, zn + 4 * p, 16);
  }
  if (warp == 0) log_gamma_async(bsum, lgb, gts, n, L, lane);
  cp_async_commit();
  // Group 2: S_n by the gate threads, the older K/V blocks by the window threads.
  if (warp < 4) {
    const bf16* sn = st16 + (int64_t(bhq) * nchunks + n) * F2 * D;
    for (int p = tid; p < F2 * D / 8; p += 128) {
      const int r = p / (D / 8), c = p % (D / 8);
      cp_async16(base + oS + wg::sw128_offset(F2, r, c), sn + int64_t(r) * D + c * 8, 16);
    }
  } else {
    for (int j = 0; j < nb; ++j) {
      const int cn = n - nb + j;
      if (cn < 0) continue;  // never read (the window skips it)
      tile_async_sw<D>(base + oK + j * kTile, kb, kstride, cn, L, tid - 128, 128);
      tile_async_sw<D>(base + oV + j * kTile, vb, kstride, cn, L, tid - 128, 128);
    }
  }
  cp_async_commit();

  float meta_m = -INFINITY, meta_l = 0.f;
  if (warp >= 4 && a.n_meta > 0) {
    const float* mu = a.meta + (a.meta_per_head ? hq * a.n_meta : 0);
    for (int j = 0; j < a.n_meta; ++j) meta_m = fmaxf(meta_m, mu[j] * kLog2e);
    for (int j = 0; j < a.n_meta; ++j) meta_l += exp2f(mu[j] * kLog2e - meta_m);
  }
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");  // this thread's group 1 landed
  wg::fence_proxy_async();                                  // ... and is visible to wgmma after the barrier
  if (warp == 0) {
    __syncwarp();
    scan_log_gamma(bsum, bsum, lane);
  }
  __syncthreads();  // (A) group 1 and b ready

  const int r0 = (warp & 3) * 16;
  const uint32_t sKc = sbase + oK + nb * kTile, sVc = sbase + oV + nb * kTile;
  float og[D / 2];  // accumulator layout: og[4j + e] = v0's og[j][e]
  if (warp < 4) {
    {  // phi_K of rows r0.. into the SW128 phi_K tile (zero past L)
      float ap[F / 8][4], am[F / 8][4];
      if constexpr (S::kWgFeat)
        rows_times_w_wg<D>(ap, sKc, sWk, r0);
      else
        rows_times_w_sw<D, F>(ap, sKc, Wk, r0);
      feature_map<F>(ap, am, a.act);
      const bool v0 = n * kC + r0 + g < L, v1 = n * kC + r0 + g + 8 < L;
#pragma unroll
      for (int j = 0; j < F / 8; ++j) {
        *reinterpret_cast<uint32_t*>(Pk + wg::sw128_offset(kC, r0 + g, j) + 4 * t4) =
            pack_bf16(v0 ? ap[j][0] : 0.f, v0 ? ap[j][1] : 0.f);
        *reinterpret_cast<uint32_t*>(Pk + wg::sw128_offset(kC, r0 + g + 8, j) + 4 * t4) =
            pack_bf16(v1 ? ap[j][2] : 0.f, v1 ? ap[j][3] : 0.f);
        *reinterpret_cast<uint32_t*>(Pk + wg::sw128_offset(kC, r0 + g, F / 8 + j) + 4 * t4) =
            pack_bf16(v0 ? am[j][0] : 0.f, v0 ? am[j][1] : 0.f);
        *reinterpret_cast<uint32_t*>(Pk + wg::sw128_offset(kC, r0 + g + 8, F / 8 + j) + 4 * t4) =
            pack_bf16(v1 ? am[j][2] : 0.f, v1 ? am[j][3] : 0.f);
      }
    }
    uint32_t phq[F2 / 16][4];
    float qz0 = 0.f, qz1 = 0.f;
    {
      float ap[F / 8][4], am[F / 8][4];
      if constexpr (S::kWgFeat)
        rows_times_w_wg<D>(ap, sQ, sWq, r0);
      else
        rows_times_w_sw<D, F>(ap, sQ, Wq, r0);
      feature_map<F>(ap, am, a.act);
#pragma unroll
      for (int j = 0; j < F / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = 8 * j + 2 * t4 + e;
          qz0 += ap[j][e] * zs[c] + am[j][e] * zs[F + c];
          qz1 += ap[j][2 + e] * zs[c] + am[j][2 + e] * zs[F + c];
        }
      }
#pragma unroll
      for (int s = 0; s < F / 16; ++s) {
        phq[s][0] = pack_bf16(ap[2 * s][0], ap[2 * s][1]);
        phq[s][1] = pack_bf16(ap[2 * s][2], ap[2 * s][3]);
        phq[s][2] = pack_bf16(ap[2 * s + 1][0], ap[2 * s + 1][1]);
        phq[s][3] = pack_bf16(ap[2 * s + 1][2], ap[2 * s + 1][3]);
        phq[F / 16 + s][0] = pack_bf16(am[2 * s][0], am[2 * s][1]);
        phq[F / 16 + s][1] = pack_bf16(am[2 * s][2], am[2 * s][3]);
        phq[F / 16 + s][2] = pack_bf16(am[2 * s + 1][0], am[2 * s + 1][1]);
        phq[F / 16 + s][3] = pack_bf16(am[2 * s + 1][2], am[2 * s + 1][3]);
      }
    }
    cp_async_wait_all();       // this thread's S_n copies landed
    wg::fence_proxy_async();   // S_n copies and phi_K stores -> visible to wgmma after the barrier
    bar_sync(kBarGate6, 128);
    // phi_Q S_n and the intra scores phi_Q phi_K^T on wgmma.
#pragma unroll
    for (int j = 0; j < D / 2; ++j) og[j] = 0.f;
    wg::wgmma_fence();
#pragma unroll
    for (int s = 0; s < F2 / 16; ++s)
      wg::wgmma_rs_tb<D>(og, phq[s], wg::desc_sw128(sS16 + s * (16 * 128), F2 * 128, 1024));
    wg::commit();
    float sc[kC / 2];
#pragma unroll
    for (int j = 0; j < kC / 2; ++j) sc[j] = 0.f;
    wg::wgmma_fence();
#pragma unroll
    for (int s = 0; s < F2 / 16; ++s)
      wg::wgmma_rs_kb<64>(sc, phq[s], wg::desc_sw128(sPk + (s >> 2) * (kC * 128) + (s & 3) * 32, 16, 1024));
    wg::commit();
    wg::wait<0>();
    wg::fence_regs(sc);
    wg::fence_regs(og);
    const int i0 = r0 + g, i1 = r0 + g + 8;
    const float bi0 = bsum[i0], bi1 = bsum[i1];
    float l0 = 0.f, l1 = 0.f;
    uint32_t pa[NK / 2][4];
#pragma unroll
    for (int j = 0; j < NK; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tt = 8 * j + 2 * t4 + e;
        const float bt = bsum[tt];
        const float x0 = tt <= i0 ? sc[4 * j + e] * __expf(bi0 - bt) : 0.f;
        const float x1 = tt <= i1 ? sc[4 * j + 2 + e] * __expf(bi1 - bt) : 0.f;
        sc[4 * j + e] = round_bf16(x0), sc[4 * j + 2 + e] = round_bf16(x1);
        l0 += sc[4 * j + e], l1 += sc[4 * j + 2 + e];
      }
    }
#pragma unroll
    for (int s = 0; s < NK / 2; ++s) {
      pa[s][0] = pack_bf16(sc[8 * s], sc[8 * s + 1]);
      pa[s][1] = pack_bf16(sc[8 * s + 2], sc[8 * s + 3]);
      pa[s][2] = pack_bf16(sc[8 * s + 4], sc[8 * s + 5]);
      pa[s][3] = pack_bf16(sc[8 * s + 6], sc[8 * s + 7]);
    }
    const float e0 = __expf(bi0), e1 = __expf(bi1);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) og[4 * j] *= e0, og[4 * j + 1] *= e0, og[4 * j + 2] *= e1, og[4 * j + 3] *= e1;
    wg::fence_regs(og);
    wg::wgmma_fence();
#pragma unroll
    for (int s = 0; s < NK / 2; ++s) wg::wgmma_rs_tb<D>(og, pa[s], wg::desc_sw128(sVc + s * (16 * 128), kC * 128, 1024));
    wg::commit();
    wg::wait<0>();
    wg::fence_regs(og);
    l0 = quad_sum(l0) + e0 * quad_sum(qz0);
    l1 = quad_sum(l1) + e1 * quad_sum(qz1);
    const float inv0 = 1.f / (l0 + a.eps), inv1 = 1.f / (l1 + a.eps);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) og[4 * j] *= inv0, og[4 * j + 1] *= inv0, og[4 * j + 2] *= inv1, og[4 * j + 3] *= inv1;
  } else {
    // Window with meta sinks: the current chunk's block first, then the older ones.
    const int ia = n * kC + r0 + g, ib = ia + 8;
    float m0 = meta_m, m1 = meta_m;
    float l0 = t4 == 0 ? meta_l : 0.f, l1 = l0;
#pragma unroll
    for (int j = 0; j < D / 2; ++j) og[j] = 0.f;
    const int wmin = n * kC, wmax = wmin + kC - 1;  // the warpgroup's query positions (uniform)
    for (int it = 0; it <= nb; ++it) {
      if (it == 1) {  // the older blocks (group 2 of the window threads)
        cp_async_wait_all();
        wg::fence_proxy_async();
        bar_sync(kBarWindow6, 128);
      }
      const int j = it == 0 ? nb : it - 1;
      const int cn = n - nb + j, t0 = cn * kC;
      if (cn < 0 || t0 + kC - 1 < wmin - w + 1 || t0 > wmax) continue;  // warpgroup-uniform
      const uint32_t kbase = sbase + oK + j * kTile, vbase = sbase + oV + j * kTile;
      float sc[kC / 2];
      wg::wgmma_fence();
#pragma unroll
      for (int s = 0; s < D / 16; ++s) {
        const uint64_t da = wg::desc_sw128(sQ + (s >> 2) * (kC * 128) + (s & 3) * 32, 16, 1024);
        const uint64_t db = wg::desc_sw128(kbase + (s >> 2) * (kC * 128) + (s & 3) * 32, 16, 1024);
        wg::wgmma_ss<kC>(sc, da, db, s > 0 ? 1 : 0);
      }
      wg::commit();
      wg::wait<0>();
      wg::fence_regs(sc);
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int q = 0; q < NK; ++q) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int tt = t0 + 8 * q + 2 * t4 + e;
          sc[4 * q + e] = (tt <= ia && tt > ia - w) ? sc[4 * q + e] * scale2 : -INFINITY;
          sc[4 * q + 2 + e] = (tt <= ib && tt > ib - w) ? sc[4 * q + 2 + e] * scale2 : -INFINITY;
          mx0 = fmaxf(mx0, sc[4 * q + e]), mx1 = fmaxf(mx1, sc[4 * q + 2 + e]);
        }
      }
      const float mn0 = fmaxf(m0, quad_max(mx0)), mn1 = fmaxf(m1, quad_max(mx1));
      const float u0 = mn0 == -INFINITY ? 0.f : mn0, u1 = mn1 == -INFINITY ? 0.f : mn1;
      const float c0 = exp2f(m0 - u0), c1 = exp2f(m1 - u1);
      m0 = mn0, m1 = mn1;
      l0 *= c0, l1 *= c1;
#pragma unroll
      for (int q = 0; q < D / 8; ++q) og[4 * q] *= c0, og[4 * q + 1] *= c0, og[4 * q + 2] *= c1, og[4 * q + 3] *= c1;
#pragma unroll
      for (int q = 0; q < NK; ++q) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          sc[4 * q + e] = round_bf16(exp2f(sc[4 * q + e] - u0));
          sc[4 * q + 2 + e] = round_bf16(exp2f(sc[4 * q + 2 + e] - u1));
          l0 += sc[4 * q + e], l1 += sc[4 * q + 2 + e];
        }
      }
      uint32_t pa[NK / 2][4];
#pragma unroll
      for (int s = 0; s < NK / 2; ++s) {
        pa[s][0] = pack_bf16(sc[8 * s], sc[8 * s + 1]);
        pa[s][1] = pack_bf16(sc[8 * s + 2], sc[8 * s + 3]);
        pa[s][2] = pack_bf16(sc[8 * s + 4], sc[8 * s + 5]);
        pa[s][3] = pack_bf16(sc[8 * s + 6], sc[8 * s + 7]);
      }
      wg::fence_regs(og);
      wg::wgmma_fence();
#pragma unroll
      for (int s = 0; s < NK / 2; ++s) wg::wgmma_rs_tb<D>(og, pa[s], wg::desc_sw128(vbase + s * (16 * 128), kC * 128, 1024));
      wg::commit();
      wg::wait<0>();
      wg::fence_regs(og);
    }
    l0 = quad_sum(l0), l1 = quad_sum(l1);
    const float inv0 = alpha / l0, inv1 = alpha / l1;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<uint32_t*>(Os + wg::sw128_offset(kC, r0 + g, j) + 4 * t4) = pack_bf16(og[4 * j] * inv0, og[4 * j + 1] * inv0);
      *reinterpret_cast<uint32_t*>(Os + wg::sw128_offset(kC, r0 + g + 8, j) + 4 * t4) =
          pack_bf16(og[4 * j + 2] * inv1, og[4 * j + 3] * inv1);
    }
  }
  __syncthreads();  // (B) the window output is in Os

  if (warp < 4) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      uint32_t* p0 = reinterpret_cast<uint32_t*>(Os + wg::sw128_offset(kC, r0 + g, j) + 4 * t4);
      uint32_t* p1 = reinterpret_cast<uint32_t*>(Os + wg::sw128_offset(kC, r0 + g + 8, j) + 4 * t4);
      const float2 w0 = unpack_bf16(*p0), w1 = unpack_bf16(*p1);
      *p0 = pack_bf16(og[4 * j] + w0.x, og[4 * j + 1] + w0.y);
      *p1 = pack_bf16(og[4 * j + 2] + w1.x, og[4 * j + 3] + w1.y);
    }
    __syncwarp();
    for (int p = lane; p < 16 * D / 8; p += 32) {
      const int r = p / (D / 8), c = p % (D / 8);
      const int pos = n * kC + r0 + r;
      if (pos < L)
        *reinterpret_cast<uint4*>(yb + int64_t(pos) * qstride + c * 8) =
            *reinterpret_cast<const uint4*>(Os + wg::sw128_offset(kC, r0 + r, c));
    }
  }
#endif
}

// Variant 7: the same output pass with CPG consecutive chunks per CTA: Wq/Wk loaded once, each chunk's
// K/V block loaded once into a ring of ceil((w-1)/64) + 1 slots (chunk cn in slot cn % ring) and reused by
// the next chunks' windows; per chunk only Q, K/V of the chunk, S_n, z_n and log gamma are loaded.
template <int D, int F, int CPG>
__global__ void __launch_bounds__(kOutThreads, 1) lizard_fwd7_out_kernel(const LizardAttnArgs a, const bf16* __restrict__ st16,
                                                                        const float* __restrict__ stz, int nb) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) printf("lizard attention fwd v7 needs an sm_90a build\n");
#else
  using S = Out6Smem<D, F>;
  constexpr int F2 = S::F2, LDW = S::LDW;
  constexpr uint32_t kTile = S::kTile;
  constexpr int NK = kC / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw), pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* base = smem_raw + pad;
  const uint32_t sbase = raw + pad;
  const int nblk = nb + 1;
  const uint32_t oQ = 0, oO = kTile, oK = 2 * kTile, oV = oK + nblk * kTile, oS = oV + nblk * kTile;
  const uint32_t oPk = oS + F2 * D * 2, oW = oPk + kC * F2 * 2;
  unsigned char* Os = base + oO;
  unsigned char* Pk = base + oPk;
  bf16* Wq = reinterpret_cast<bf16*>(base + oW);
  bf16* Wk = reinterpret_cast<bf16*>(base + oW + S::kWBytes);
  const uint32_t sQ = sbase + oQ, sS16 = sbase + oS, sPk = sbase + oPk, sWq = sbase + oW, sWk = sbase + oW + S::kWBytes;
  float* bsum = reinterpret_cast<float*>(base + oW + 2 * S::kWBytes);
  float* zs = bsum + kC;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int bhq = blockIdx.y;
  const int hq = bhq % a.Hq, b = bhq / a.Hq;
  const int hkv = hq / (a.Hq / a.Hkv);
  const int L = a.L, w = a.window, nchunks = (L + kC - 1) / kC;
  const int n0 = blockIdx.x * CPG, n1 = min(n0 + CPG, nchunks);
  const int ring = nblk;
  // K/V slot of chunk cn (while any chunk runs): a ring, cn % ring.
  auto slot_of = [&](int cn, int) { return cn % ring; };
  const int64_t qstride = int64_t(a.Hq) * D, kstride = int64_t(a.Hkv) * D;
  const bf16* qb = static_cast<const bf16*>(a.q) + int64_t(b) * L * qstride + int64_t(hq) * D;
  const bf16* kb = static_cast<const bf16*>(a.k) + int64_t(b) * L * kstride + int64_t(hkv) * D;
  const bf16* vb = static_cast<const bf16*>(a.v) + int64_t(b) * L * kstride + int64_t(hkv) * D;
  bf16* yb = static_cast<bf16*>(a.y) + int64_t(b) * L * qstride + int64_t(hq) * D;
  const int gts = a.gate_per_head ? a.Hq : 1;
  const float* lgb = a.log_gamma + int64_t(b) * L * gts + (a.gate_per_head ? hq : 0);
  const float alpha = a.alpha[a.alpha_per_head ? hq : 0];
  const float scale2 = (a.scale > 0 ? a.scale : rsqrtf(float(D))) * kLog2e;

  float meta_m = -INFINITY, meta_l = 0.f;  // window warps: meta sinks in the log2 domain
  if (warp >= 4 && a.n_meta > 0) {
    const float* mu = a.meta + (a.meta_per_head ? hq * a.n_meta : 0);
    for (int j = 0; j < a.n_meta; ++j) meta_m = fmaxf(meta_m, mu[j] * kLog2e);
    for (int j = 0; j < a.n_meta; ++j) meta_l += exp2f(mu[j] * kLog2e - meta_m);
  }

  for (int n = n0; n < n1; ++n) {
  const bool first = n == n0;
  if (!first) __syncthreads();  // (E) chunk n-1 fully consumed: Q, Os, phi_K, S_n, b, z and slot n % ring free
  const int slot = slot_of(n, n);
  // The thread index re-read per chunk (asm volatile): keeps the compiler from hoisting every load's
  // per-thread addresses out of the chunk loop into registers (spills at D128 F64 otherwise).
  int ltid;
  asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(ltid));
  // Group 1 (all threads): Q, the chunk's K and V, (first chunk: Wq, Wk), z_n, log gamma.
  tile_async_sw<D>(base + oQ, qb, qstride, n, L, ltid, kOutThreads);
  tile_async_sw<D>(base + oK + slot * kTile, kb, kstride, n, L, ltid, kOutThreads);
  tile_async_sw<D>(base + oV + slot * kTile, vb, kstride, n, L, ltid, kOutThreads);
  if (first) {
    const bf16* wq = static_cast<const bf16*>(a.wq) + int64_t(hq) * D * F;
    const bf16* wk = static_cast<const bf16*>(a.wk) + int64_t(hq) * D * F;
    for (int p = ltid; p < D * F / 8; p += kOutThreads) {
      const int r = p / (F / 8), c = (p % (F / 8)) * 8;
      if constexpr (S::kWgFeat) {
        cp_async16(reinterpret_cast<unsigned char*>(Wq) + wg::sw128_offset(D, r, c / 8), wq + r * F + c, 16);
        cp_async16(reinterpret_cast<unsigned char*>(Wk) + wg::sw128_offset(D, r, c / 8), wk + r * F + c, 16);
      } else {
        cp_async16(Wq + r * LDW + c, wq + r * F + c, 16);
        cp_async16(Wk + r * LDW + c, wk + r * F + c, 16);
      }
    }
  }
  {
    const float* zn = stz + (int64_t(bhq) * nchunks + n) * F2;
    for (int p = ltid; p < F2 / 4; p += kOutThreads) cp_async16(zs + 4 * p, zn + 4 * p, 16);
  }
  if (warp == 0) log_gamma_async(bsum, lgb, gts, n, L, lane);
  cp_async_commit();
  // Group 2: S_n by the gate threads; on the CTA's first chunk the older K/V blocks by the window threads
  // (later chunks find them in the ring: a chunk's own block stays until chunk + ring overwrites it).
  if (warp < 4) {
    const bf16* sn = st16 + (int64_t(bhq) * nchunks + n) * F2 * D;
    for (int p = ltid; p < F2 * D / 8; p += 128) {
      const int r = p / (D / 8), c = p % (D / 8);
      cp_async16(base + oS + wg::sw128_offset(F2, r, c), sn + int64_t(r) * D + c * 8, 16);
    }
  } else if (first) {
    for (int j = 0; j < nb; ++j) {
      const int cn = n - nb + j;
      if (cn < 0) continue;  // never read (the window skips it)
      tile_async_sw<D>(base + oK + slot_of(cn, n) * kTile, kb, kstride, cn, L, ltid - 128, 128);
      tile_async_sw<D>(base + oV + slot_of(cn, n) * kTile, vb, kstride, cn, L, ltid - 128, 128);
    }
  }
  cp_async_commit();

  asm volatile("cp.async.wait_group 1;\n" ::: "memory");  // this thread's group 1 landed
  wg::fence_proxy_async();                                  // ... and is visible to wgmma after the barrier
  if (warp == 0) {
    __syncwarp();
    scan_log_gamma(bsum, bsum, lane);
  }
  __syncthreads();  // (A) group 1 and b ready

  const int r0 = (warp & 3) * 16;
  const uint32_t sKc = sbase + oK + slot * kTile, sVc = sbase + oV + slot * kTile;
  float og[D / 2];  // accumulator layout: og[4j + e] = v0's og[j][e]
  if (warp < 4) {
    {  // phi_K of rows r0.. into the SW128 phi_K tile (zero past L)
      float ap[F / 8][4], am[F / 8][4];
      if constexpr (S::kWgFeat)
        rows_times_w_wg<D>(ap, sKc, sWk, r0);
      else
        rows_times_w_sw<D, F>(ap, sKc, Wk, r0);
      feature_map<F>(ap, am, a.act);
      const bool v0 = n * kC + r0 + g < L, v1 = n * kC + r0 + g + 8 < L;
#pragma unroll
      for (int j = 0; j < F / 8; ++j) {
        *reinterpret_cast<uint32_t*>(Pk + wg::sw128_offset(kC, r0 + g, j) + 4 * t4) =
            pack_bf16(v0 ? ap[j][0] : 0.f, v0 ? ap[j][1] : 0.f);
        *reinterpret_cast<uint32_t*>(Pk + wg::sw128_offset(kC, r0 + g + 8, j) + 4 * t4) =
            pack_bf16(v1 ? ap[j][2] : 0.f, v1 ? ap[j][3] : 0.f);
        *reinterpret_cast<uint32_t*>(Pk + wg::sw128_offset(kC, r0 + g, F / 8 + j) + 4 * t4) =
            pack_bf16(v0 ? am[j][0] : 0.f, v0 ? am[j][1] : 0.f);
        *reinterpret_cast<uint32_t*>(Pk + wg::sw128_offset(kC, r0 + g + 8, F / 8 + j) + 4 * t4) =
            pack_bf16(v1 ? am[j][2] : 0.f, v1 ? am[j][3] : 0.f);
      }
    }
    uint32_t phq[F2 / 16][4];
    float qz0 = 0.f, qz1 = 0.f;
    {
      float ap[F / 8][4], am[F / 8][4];
      if constexpr (S::kWgFeat)
        rows_times_w_wg<D>(ap, sQ, sWq, r0);
      else
        rows_times_w_sw<D, F>(ap, sQ, Wq, r0);
      feature_map<F>(ap, am, a.act);
#pragma unroll
      for (int j = 0; j < F / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = 8 * j + 2 * t4 + e;
          qz0 += ap[j][e] * zs[c] + am[j][e] * zs[F + c];
          qz1 += ap[j][2 + e] * zs[c] + am[j][2 + e] * zs[F + c];
        }
      }
#pragma unroll
      for (int s = 0; s < F / 16; ++s) {
        phq[s][0] = pack_bf16(ap[2 * s][0], ap[2 * s][1]);
        phq[s][1] = pack_bf16(ap[2 * s][2], ap[2 * s][3]);
        phq[s][2] = pack_bf16(ap[2 * s + 1][0], ap[2 * s + 1][1]);
        phq[s][3] = pack_bf16(ap[2 * s + 1][2], ap[2 * s + 1][3]);
        phq[F / 16 + s][0] = pack_bf16(am[2 * s][0], am[2 * s][1]);
        phq[F / 16 + s][1] = pack_bf16(am[2 * s][2], am[2 * s][3]);
        phq[F / 16 + s][2] = pack_bf16(am[2 * s + 1][0], am[2 * s + 1][1]);
        phq[F / 16 + s][3] = pack_bf16(am[2 * s + 1][2], am[2 * s + 1][3]);
      }
    }
    cp_async_wait_all();       // this thread's S_n copies landed
    wg::fence_proxy_async();   // S_n copies and phi_K stores -> visible to wgmma after the barrier
    bar_sync(kBarGate6, 128);
    // phi_Q S_n and the intra scores phi_Q phi_K^T on wgmma.
#pragma unroll
    for (int j = 0; j < D / 2; ++j) og[j] = 0.f;
    wg::wgmma_fence();
#pragma unroll
    for (int s = 0; s < F2 / 16; ++s)
      wg::wgmma_rs_tb<D>(og, phq[s], wg::desc_sw128(sS16 + s * (16 * 128), F2 * 128, 1024));
    wg::commit();
    float sc[kC / 2];
#pragma unroll
    for (int j = 0; j < kC / 2; ++j) sc[j] = 0.f;
    wg::wgmma_fence();
#pragma unroll
    for (int s = 0; s < F2 / 16; ++s)
      wg::wgmma_rs_kb<64>(sc, phq[s], wg::desc_sw128(sPk + (s >> 2) * (kC * 128) + (s & 3) * 32, 16, 1024));
    wg::commit();
    wg::wait<0>();
    wg::fence_regs(sc);
    wg::fence_regs(og);
    const int i0 = r0 + g, i1 = r0 + g + 8;
    const float bi0 = bsum[i0], bi1 = bsum[i1];
    float l0 = 0.f, l1 = 0.f;
    uint32_t pa[NK / 2][4];
#pragma unroll
    for (int j = 0; j < NK; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tt = 8 * j + 2 * t4 + e;
        const float bt = bsum[tt];
        const float x0 = tt <= i0 ? sc[4 * j + e] * __expf(bi0 - bt) : 0.f;
        const float x1 = tt <= i1 ? sc[4 * j + 2 + e] * __expf(bi1 - bt) : 0.f;
        sc[4 * j + e] = round_bf16(x0), sc[4 * j + 2 + e] = round_bf16(x1);
        l0 += sc[4 * j + e], l1 += sc[4 * j + 2 + e];
      }
    }
#pragma unroll
    for (int s = 0; s < NK / 2; ++s) {
      pa[s][0] = pack_bf16(sc[8 * s], sc[8 * s + 1]);
      pa[s][1] = pack_bf16(sc[8 * s + 2], sc[8 * s + 3]);
      pa[s][2] = pack_bf16(sc[8 * s + 4], sc[8 * s + 5]);
      pa[s][3] = pack_bf16(sc[8 * s + 6], sc[8 * s + 7]);
    }
    const float e0 = __expf(bi0), e1 = __expf(bi1);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) og[4 * j] *= e0, og[4 * j + 1] *= e0, og[4 * j + 2] *= e1, og[4 * j + 3] *= e1;
    wg::fence_regs(og);
    wg::wgmma_fence();
#pragma unroll
    for (int s = 0; s < NK / 2; ++s) wg::wgmma_rs_tb<D>(og, pa[s], wg::desc_sw128(sVc + s * (16 * 128), kC * 128, 1024));
    wg::commit();
    wg::wait<0>();
    wg::fence_regs(og);
    l0 = quad_sum(l0) + e0 * quad_sum(qz0);
    l1 = quad_sum(l1) + e1 * quad_sum(qz1);
    const float inv0 = 1.f / (l0 + a.eps), inv1 = 1.f / (l1 + a.eps);
#pragma unroll
    for (int j = 0; j < D / 8; ++j) og[4 * j] *= inv0, og[4 * j + 1] *= inv0, og[4 * j + 2] *= inv1, og[4 * j + 3] *= inv1;
  } else {
    // Window with meta sinks: the current chunk's block first, then the older ones.
    const int ia = n * kC + r0 + g, ib = ia + 8;
    float m0 = meta_m, m1 = meta_m;
    float l0 = t4 == 0 ? meta_l : 0.f, l1 = l0;
#pragma unroll
    for (int j = 0; j < D / 2; ++j) og[j] = 0.f;
    const int wmin = n * kC, wmax = wmin + kC - 1;  // the warpgroup's query positions (uniform)
    for (int it = 0; it <= nb; ++it) {
      if (it == 1) {  // the older blocks (group 2 of the window threads on the CTA's first chunk)
        cp_async_wait_all();
        wg::fence_proxy_async();
        bar_sync(kBarWindow6, 128);
      }
      const int j = it == 0 ? nb : it - 1;
      const int cn = n - nb + j, t0 = cn * kC;
      if (cn < 0 || t0 + kC - 1 < wmin - w + 1 || t0 > wmax) continue;  // warpgroup-uniform
      const uint32_t kbase = sbase + oK + slot_of(cn, n) * kTile, vbase = sbase + oV + slot_of(cn, n) * kTile;
      float sc[kC / 2];
      wg::wgmma_fence();
#pragma unroll
      for (int s = 0; s < D / 16; ++s) {
        const uint64_t da = wg::desc_sw128(sQ + (s >> 2) * (kC * 128) + (s & 3) * 32, 16, 1024);
        const uint64_t db = wg::desc_sw128(kbase + (s >> 2) * (kC * 128) + (s & 3) * 32, 16, 1024);
        wg::wgmma_ss<kC>(sc, da, db, s > 0 ? 1 : 0);
      }
      wg::commit();
      wg::wait<0>();
      wg::fence_regs(sc);
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int q = 0; q < NK; ++q) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int tt = t0 + 8 * q + 2 * t4 + e;
          sc[4 * q + e] = (tt <= ia && tt > ia - w) ? sc[4 * q + e] * scale2 : -INFINITY;
          sc[4 * q + 2 + e] = (tt <= ib && tt > ib - w) ? sc[4 * q + 2 + e] * scale2 : -INFINITY;
          mx0 = fmaxf(mx0, sc[4 * q + e]), mx1 = fmaxf(mx1, sc[4 * q + 2 + e]);
        }
      }
      const float mn0 = fmaxf(m0, quad_max(mx0)), mn1 = fmaxf(m1, quad_max(mx1));
      const float u0 = mn0 == -INFINITY ? 0.f : mn0, u1 = mn1 == -INFINITY ? 0.f : mn1;
      const float c0 = exp2f(m0 - u0), c1 = exp2f(m1 - u1);
      m0 = mn0, m1 = mn1;
      l0 *= c0, l1 *= c1;
#pragma unroll
      for (int q = 0; q < D / 8; ++q) og[4 * q] *= c0, og[4 * q + 1] *= c0, og[4 * q + 2] *= c1, og[4 * q + 3] *= c1;
#pragma unroll
      for (int q = 0; q < NK; ++q) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          sc[4 * q + e] = round_bf16(exp2f(sc[4 * q + e] - u0));
          sc[4 * q + 2 + e] = round_bf16(exp2f(sc[4 * q + 2 + e] - u1));
          l0 += sc[4 * q + e], l1 += sc[4 * q + 2 + e];
        }
      }
      uint32_t pa[NK / 2][4];
#pragma unroll
      for (int s = 0; s < NK / 2; ++s) {
        pa[s][0] = pack_bf16(sc[8 * s], sc[8 * s + 1]);
        pa[s][1] = pack_bf16(sc[8 * s + 2], sc[8 * s + 3]);
        pa[s][2] = pack_bf16(sc[8 * s + 4], sc[8 * s + 5]);
        pa[s][3] = pack_bf16(sc[8 * s + 6], sc[8 * s + 7]);
      }
      wg::fence_regs(og);
      wg::wgmma_fence();
#pragma unroll
      for (int s = 0; s < NK / 2; ++s) wg::wgmma_rs_tb<D>(og, pa[s], wg::desc_sw128(vbase + s * (16 * 128), kC * 128, 1024));
      wg::commit();
      wg::wait<0>();
      wg::fence_regs(og);
    }
    l0 = quad_sum(l0), l1 = quad_sum(l1);
    const float inv0 = alpha / l0, inv1 = alpha / l1;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<uint32_t*>(Os + wg::sw128_offset(kC, r0 + g, j) + 4 * t4) = pack_bf16(og[4 * j] * inv0, og[4 * j + 1] * inv0);
      *reinterpret_cast<uint32_t*>(Os + wg::sw128_offset(kC, r0 + g + 8, j) + 4 * t4) =
          pack_bf16(og[4 * j + 2] * inv1, og[4 * j + 3] * inv1);
    }
  }
  __syncthreads();  // (B) the window output is in Os

  if (warp < 4) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      uint32_t* p0 = reinterpret_cast<uint32_t*>(Os + wg::sw128_offset(kC, r0 + g, j) + 4 * t4);
      uint32_t* p1 = reinterpret_cast<uint32_t*>(Os + wg::sw128_offset(kC, r0 + g + 8, j) + 4 * t4);
      const float2 w0 = unpack_bf16(*p0), w1 = unpack_bf16(*p1);
      *p0 = pack_bf16(og[4 * j] + w0.x, og[4 * j + 1] + w0.y);
      *p1 = pack_bf16(og[4 * j + 2] + w1.x, og[4 * j + 3] + w1.y);
    }
    __syncwarp();
    for (int p = lane; p < 16 * D / 8; p += 32) {
      const int r = p / (D / 8), c = p % (D / 8);
      const int pos = n * kC + r0 + r;
      if (pos < L)
        *reinterpret_cast<uint4*>(yb + int64_t(pos) * qstride + c * 8) =
            *reinterpret_cast<const uint4*>(Os + wg::sw128_offset(kC, r0 + r, c));
    }
  }
  }  // chunk loop
#endif
}

// wg_cpg > 0: the output pass on wgmma with wg_cpg consecutive chunks per CTA (variants 6: 1, 7: 4) where
// it can run (sm_90, shared memory), else the mma.sync output pass (variant 5); false when neither fits
// (the caller runs v3, then v0).
template <int D, int F>
bool launch_fwd5_t(const LizardAttnArgs& a, cudaStream_t stream, int wg_cpg) {
  const int nb = a.window > 1 ? (a.window - 1 + kC - 1) / kC : 0;
  const size_t smem5 = Out5Smem<D, F>::bytes(nb + 1), smem6 = Out6Smem<D, F>::bytes(nb + 1);
  constexpr size_t smem1 = State5Smem<D, F>::bytes();
  int dev = 0, optin = 0, major = 0, minor = 0;
  LZ_CUDA_OK(cudaGetDevice(&dev));
  LZ_CUDA_OK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  LZ_CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  LZ_CUDA_OK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  const bool use6 = wg_cpg > 0 && major == 9 && minor == 0 && smem6 <= size_t(optin);
  const size_t smem2 = use6 ? smem6 : smem5;
  if (smem2 > size_t(optin) || smem1 > size_t(optin)) return false;  // the caller runs v3 (then v0)
  const int F2 = 2 * F, nchunks = (a.L + kC - 1) / kC;
  const int64_t bh = int64_t(a.B) * a.Hq;
  if (bh > 65535) return false;  // grid y limit: the caller runs v3 (a 1-D grid)
  const size_t s_bytes = size_t(bh) * nchunks * F2 * D * sizeof(bf16);
  const size_t z_bytes = size_t(bh) * nchunks * F2 * sizeof(float);
  keep_pool_memory();
  unsigned char* ws = nullptr;
  LZ_CUDA_OK(cudaMallocAsync(reinterpret_cast<void**>(&ws), s_bytes + z_bytes, stream));
  bf16* st16 = reinterpret_cast<bf16*>(ws);
  float* stz = reinterpret_cast<float*>(ws + s_bytes);  // s_bytes is a multiple of 256 (F2 * D * 2)

  // LIZARD_CUDA_FWD5_PROFILE set: time both passes with events and print one line to stderr.
  const bool prof = std::getenv("LIZARD_CUDA_FWD5_PROFILE") != nullptr;
  cudaEvent_t ev[3] = {};
  if (prof)
    for (auto& e : ev) LZ_CUDA_OK(cudaEventCreate(&e));
  if (prof) LZ_CUDA_OK(cudaEventRecord(ev[0], stream));
  auto k1 = lizard_fwd5_state_kernel<D, F>;
  LZ_CUDA_OK(cudaFuncSetAttribute(k1, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem1)));
  k1<<<unsigned(bh * (D / kDVS)), kStateThreads, smem1, stream>>>(a, st16, stz);
  launched("lizard attention fwd v5 (chunk states)");
  if (prof) LZ_CUDA_OK(cudaEventRecord(ev[1], stream));
  if (use6) {
    auto k2 = wg_cpg == 1 ? lizard_fwd6_out_kernel<D, F> : lizard_fwd7_out_kernel<D, F, 4>;
    LZ_CUDA_OK(cudaFuncSetAttribute(k2, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem2)));
    const int cpg = wg_cpg == 1 ? 1 : 4;
    const int nx = (nchunks + cpg - 1) / cpg;
    k2<<<dim3(unsigned(nx), unsigned(bh)), kOutThreads, smem2, stream>>>(a, st16, stz, nb);
  } else {
    auto k2 = lizard_fwd5_out_kernel<D, F>;
    LZ_CUDA_OK(cudaFuncSetAttribute(k2, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem2)));
    k2<<<dim3(unsigned(nchunks), unsigned(bh)), kOutThreads, smem2, stream>>>(a, st16, stz, nb);
  }
  launched(use6 ? "lizard attention fwd v6/v7 (outputs, wgmma)" : "lizard attention fwd v5 (outputs)");
  LZ_CUDA_OK(cudaFreeAsync(ws, stream));
  if (prof) {
    LZ_CUDA_OK(cudaEventRecord(ev[2], stream));
    LZ_CUDA_OK(cudaEventSynchronize(ev[2]));
    float t1 = 0, t2 = 0;
    LZ_CUDA_OK(cudaEventElapsedTime(&t1, ev[0], ev[1]));
    LZ_CUDA_OK(cudaEventElapsedTime(&t2, ev[1], ev[2]));
    std::fprintf(stderr, "lizard fwd %s profile B%d L%d Hq%d D%d F%d w%d: states %.3f ms, outputs %.3f ms\n",
                 use6 ? (wg_cpg == 1 ? "v6" : "v7") : "v5", a.B, a.L, a.Hq, D, F, a.window, t1, t2);
    for (auto& e : ev) cudaEventDestroy(e);
  }
  return true;
}

}  // namespace

// Variant 5 entry (called by lizard_attention_fwd.cu's dispatch after its argument checks): false when it
// cannot run this configuration (pass 2's shared memory), and the caller falls back to variant 3.
// wg_cpg = 0: variant 5; 1: variant 6 (the output pass on wgmma); 4: variant 7 (wgmma, 4 consecutive
// chunks per output CTA sharing W and the window's K/V ring). 6/7 run v5's output pass off sm_90.
bool launch_fwd5(const LizardAttnArgs& a, cudaStream_t stream, int wg_cpg) {
  if (a.D == 128 && a.F == 64) return launch_fwd5_t<128, 64>(a, stream, wg_cpg);
  if (a.D == 64 && a.F == 64) return launch_fwd5_t<64, 64>(a, stream, wg_cpg);
  if (a.D == 128 && a.F == 32) return launch_fwd5_t<128, 32>(a, stream, wg_cpg);
  if (a.D == 64 && a.F == 32) return launch_fwd5_t<64, 32>(a, stream, wg_cpg);
  return false;
}

}  // namespace lizard::cuda
