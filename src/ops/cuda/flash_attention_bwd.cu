// Backward of the causal GQA flash attention (flash_attention.cu), no L x L matrix in memory:
// P is recomputed from the forward's saved log-sum-exp. bf16 in/out, fp32 accumulation on tensor
// cores (mma.sync m16n8k16). Three kernels, no atomics, deterministic:
//   1. delta[b, h, i] = sum_e dout[i, e] * out[i, e]                      (one warp per row)
//   2. dk, dv: one CTA (4 warps x 16 keys) per (64-key block, b, kv head); loops over the query
//      heads of the group and the query blocks at or after the key block, Q / dO / lse / delta
//      double-buffered (cp.async). Per step (S^T = K Q^T, keys as rows):
//        P^T = exp(scale S^T - lse),  dV += P^T dO,  dP^T = V dO^T,  dS^T = P^T (dP^T - delta),
//        dK += dS^T Q;  dk, dv stay in registers for the whole group, so no atomics.
//   3. dq: one CTA (4 warps x 16 queries) per (64-query block, b, h); loops over key blocks like the
//      forward, recomputing S and dP:  dQ += (P (dP - delta)) K.
// This recomputes Q K^T and dO V^T once more than an atomic-dq design (7 instead of 5 matrix
// products per block pair) in exchange for no fp32 dq workspace, no memset and no atomics. The
// atomic-dq designs (64- and 128-key CTAs) were slower at every shape on the H200 and are deleted
// (docs/cuda_notes.md, 2026-11-27).
// Variant 1 (opt-in, flash_set_bwd_variant(1), below): kernels 2 and 3 on Hopper wgmma, same design.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace lizard::cuda {
namespace {

using namespace mma;
constexpr int kB = 64, kWarps = 4, kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;
int g_bwd_variant = 0;  // flash_set_bwd_variant

// delta[(b * H + h) * L + i] = dot(dout row, out row), rows of [B, L, H, D] bf16.
__global__ void flash_bwd_delta_kernel(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                                       float* __restrict__ delta, int B, int L, int H, int D) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= int64_t(B) * L * H) return;
  const bf16* o = out + row * D;
  const bf16* d = dout + row * D;
  float s = 0.f;
  for (int e = 2 * lane; e < D; e += 64) {
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(o + e));
    const float2 c = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(d + e));
    s += a.x * c.x + a.y * c.y;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) {
    const int h = int(row % H);
    const int64_t bi = row / H;  // b * L + i
    const int i = int(bi % L), b = int(bi / L);
    delta[(int64_t(b) * H + h) * L + i] = s;
  }
}

// Copy a kB-row tile (rows row0.., D columns) of a [.., stride] bf16 matrix into shared memory
// with row stride LD, by the CTA's kThreads threads; rows past L are zero-filled.
template <int D>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int64_t stride, int row0, int L) {
  constexpr int LD = D + 8;
  for (int p = threadIdx.x; p < kB * D / 8; p += kThreads) {
    const int r = p / (D / 8), c = (p % (D / 8)) * 8, pos = row0 + r;
    const bool ok = pos < L;
    cp_async16(dst + r * LD + c, src + int64_t(ok ? pos : 0) * stride + c, ok ? 16 : 0);
  }
}

// kWarps warps, 16 keys each (kB keys per CTA); query tiles of kB rows.
template <int D>
__global__ void __launch_bounds__(kThreads) flash_bwd_dkdv_kernel(const FlashBwdArgs a) {
  constexpr int LD = D + 8, ND = D / 8, NQ = kB / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + kB * LD;
  bf16* Qs = Vs + kB * LD;    // [2][kB][LD]
  bf16* dOs = Qs + 2 * kB * LD;  // [2][kB][LD]
  float* lse2s = reinterpret_cast<float*>(dOs + 2 * kB * LD);  // [2][kB], log2 domain
  float* dels = lse2s + 2 * kB;                                // [2][kB]
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int kb = blockIdx.x;  // small kb = most query blocks: scheduled first
  const int hkv = blockIdx.y % a.Hkv, b = blockIdx.y / a.Hkv, G = a.H / a.Hkv;
  // causal: query blocks from the key block's own on
  const int nqb = (a.L + kB - 1) / kB, qb0 = kb, nq_it = nqb - qb0, n_it = G * nq_it;
  const int64_t qs = int64_t(a.H) * D, ks = int64_t(a.Hkv) * D;
  const bf16* q0 = static_cast<const bf16*>(a.q) + int64_t(b) * a.L * qs;
  const bf16* do0 = static_cast<const bf16*>(a.dout) + int64_t(b) * a.L * qs;
  const bf16* k = static_cast<const bf16*>(a.k) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  const bf16* v = static_cast<const bf16*>(a.v) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const float scale2 = scale * kLog2e;

  auto issue = [&](int it, int buf) {
    const int j = it / nq_it, qb = qb0 + it % nq_it, h = hkv * G + j;
    load_tile<D>(Qs + buf * kB * LD, q0 + int64_t(h) * D, qs, qb * kB, a.L);
    load_tile<D>(dOs + buf * kB * LD, do0 + int64_t(h) * D, qs, qb * kB, a.L);
    if (tid < kB) {
      const int i = qb * kB + tid;
      const int64_t r = (int64_t(b) * a.H + h) * a.L + i;
      const bool ok = i < a.L;
      lse2s[buf * kB + tid] = ok ? a.lse[r] * kLog2e : 0.f;
      dels[buf * kB + tid] = ok ? a.delta[r] : 0.f;
    }
  };
  load_tile<D>(Ks, k, ks, kb * kB, a.L);
  load_tile<D>(Vs, v, ks, kb * kB, a.L);
  issue(0, 0);
  cp_async_commit();

  const int r0 = warp * 16;
  const int kr0 = kb * kB + r0 + g, kr1 = kr0 + 8;
  float dk[ND][4], dv[ND][4];
#pragma unroll
  for (int j = 0; j < ND; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[j][e] = dv[j][e] = 0.f;
  }

  for (int it = 0; it < n_it; ++it) {
    const int buf = it & 1, qb = qb0 + it % nq_it;
    if (it + 1 < n_it) {
      issue(it + 1, buf ^ 1);
      cp_async_commit();
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      cp_async_wait_all();
    }
    __syncthreads();
    const bf16* Qb = Qs + buf * kB * LD;
    const bf16* dOb = dOs + buf * kB * LD;
    const float* l2 = lse2s + buf * kB;
    const float* dl = dels + buf * kB;

    // S^T = K Q^T (16 keys x 64 queries per warp)
    float sc[NQ][4];
#pragma unroll
    for (int j = 0; j < NQ; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
    for (int s = 0; s < D / 16; ++s) {
      uint32_t ka[4];
      load_a(ka, Ks, LD, r0, s * 16);
#pragma unroll
      for (int np = 0; np < NQ / 2; ++np) {
        uint32_t bb[4];
        load_b_nk(bb, Qb, LD, np * 16, s * 16);
        mma16816(sc[2 * np], ka, bb[0], bb[1]);
        mma16816(sc[2 * np + 1], ka, bb[2], bb[3]);
      }
    }
    // P^T (fp32), causal: query >= key, query < L
#pragma unroll
    for (int j = 0; j < NQ; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = 8 * j + 2 * t4 + e, qi = qb * kB + col;
        const float lq = l2[col];
        sc[j][e] = (qi >= kr0 && qi < a.L) ? exp2f(sc[j][e] * scale2 - lq) : 0.f;
        sc[j][2 + e] = (qi >= kr1 && qi < a.L) ? exp2f(sc[j][2 + e] * scale2 - lq) : 0.f;
      }
    }
    uint32_t pa[NQ / 2][4];
#pragma unroll
    for (int s = 0; s < NQ / 2; ++s) {
      pa[s][0] = pack_bf16(sc[2 * s][0], sc[2 * s][1]);
      pa[s][1] = pack_bf16(sc[2 * s][2], sc[2 * s][3]);
      pa[s][2] = pack_bf16(sc[2 * s + 1][0], sc[2 * s + 1][1]);
      pa[s][3] = pack_bf16(sc[2 * s + 1][2], sc[2 * s + 1][3]);
    }
    // dV += P^T dO
#pragma unroll
    for (int s = 0; s < NQ / 2; ++s) {
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bb[4];
        load_b_kn(bb, dOb, LD, np * 16, s * 16);
        mma16816(dv[2 * np], pa[s], bb[0], bb[1]);
        mma16816(dv[2 * np + 1], pa[s], bb[2], bb[3]);
      }
    }
    // dP^T = V dO^T
    float dp[NQ][4];
#pragma unroll
    for (int j = 0; j < NQ; ++j) dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
#pragma unroll
    for (int s = 0; s < D / 16; ++s) {
      uint32_t va[4];
      load_a(va, Vs, LD, r0, s * 16);
#pragma unroll
      for (int np = 0; np < NQ / 2; ++np) {
        uint32_t bb[4];
        load_b_nk(bb, dOb, LD, np * 16, s * 16);
        mma16816(dp[2 * np], va, bb[0], bb[1]);
        mma16816(dp[2 * np + 1], va, bb[2], bb[3]);
      }
    }
    // dS^T = P^T (dP^T - delta)
#pragma unroll
    for (int j = 0; j < NQ; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float d = dl[8 * j + 2 * t4 + e];
        dp[j][e] = sc[j][e] * (dp[j][e] - d);
        dp[j][2 + e] = sc[j][2 + e] * (dp[j][2 + e] - d);
      }
    }
#pragma unroll
    for (int s = 0; s < NQ / 2; ++s) {
      pa[s][0] = pack_bf16(dp[2 * s][0], dp[2 * s][1]);
      pa[s][1] = pack_bf16(dp[2 * s][2], dp[2 * s][3]);
      pa[s][2] = pack_bf16(dp[2 * s + 1][0], dp[2 * s + 1][1]);
      pa[s][3] = pack_bf16(dp[2 * s + 1][2], dp[2 * s + 1][3]);
    }
    // dK += dS^T Q
#pragma unroll
    for (int s = 0; s < NQ / 2; ++s) {
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bb[4];
        load_b_kn(bb, Qb, LD, np * 16, s * 16);
        mma16816(dk[2 * np], pa[s], bb[0], bb[1]);
        mma16816(dk[2 * np + 1], pa[s], bb[2], bb[3]);
      }
    }
    __syncthreads();  // this buffer is refilled by the next iteration
  }
  bf16* dkp = static_cast<bf16*>(a.dk) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  bf16* dvp = static_cast<bf16*>(a.dv) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int c = 8 * j + 2 * t4;
    if (kr0 < a.L) {
      *reinterpret_cast<uint32_t*>(dkp + int64_t(kr0) * ks + c) = pack_bf16(dk[j][0] * scale, dk[j][1] * scale);
      *reinterpret_cast<uint32_t*>(dvp + int64_t(kr0) * ks + c) = pack_bf16(dv[j][0], dv[j][1]);
    }
    if (kr1 < a.L) {
      *reinterpret_cast<uint32_t*>(dkp + int64_t(kr1) * ks + c) = pack_bf16(dk[j][2] * scale, dk[j][3] * scale);
      *reinterpret_cast<uint32_t*>(dvp + int64_t(kr1) * ks + c) = pack_bf16(dv[j][2], dv[j][3]);
    }
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads) flash_bwd_dq_kernel(const FlashBwdArgs a) {
  constexpr int LD = D + 8, ND = D / 8, NK = kB / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* dOs = Qs + kB * LD;
  bf16* Ks = dOs + kB * LD;  // [2][kB][LD]
  bf16* Vs = Ks + 2 * kB * LD;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int nqb = (a.L + kB - 1) / kB;
  const int qb = nqb - 1 - blockIdx.x;  // longest rows first
  const int h = blockIdx.y % a.H, b = blockIdx.y / a.H, hkv = h / (a.H / a.Hkv);
  const int64_t qs = int64_t(a.H) * D, ks = int64_t(a.Hkv) * D;
  const bf16* q = static_cast<const bf16*>(a.q) + int64_t(b) * a.L * qs + int64_t(h) * D;
  const bf16* dO = static_cast<const bf16*>(a.dout) + int64_t(b) * a.L * qs + int64_t(h) * D;
  const bf16* k = static_cast<const bf16*>(a.k) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  const bf16* v = static_cast<const bf16*>(a.v) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const float scale2 = scale * kLog2e;

  load_tile<D>(Qs, q, qs, qb * kB, a.L);
  load_tile<D>(dOs, dO, qs, qb * kB, a.L);
  load_tile<D>(Ks, k, ks, 0, a.L);
  load_tile<D>(Vs, v, ks, 0, a.L);
  cp_async_commit();

  const int r0 = warp * 16;
  const int ia = qb * kB + r0 + g, ib = ia + 8;
  const int64_t rowbase = (int64_t(b) * a.H + h) * a.L;
  const float la = ia < a.L ? a.lse[rowbase + ia] * kLog2e : 0.f;
  const float lb = ib < a.L ? a.lse[rowbase + ib] * kLog2e : 0.f;
  const float da = ia < a.L ? a.delta[rowbase + ia] : 0.f;
  const float db = ib < a.L ? a.delta[rowbase + ib] : 0.f;
  float dq[ND][4];
#pragma unroll
  for (int j = 0; j < ND; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;

  for (int kb = 0; kb <= qb; ++kb) {
    if (kb < qb) {
      load_tile<D>(Ks + ((kb + 1) & 1) * kB * LD, k, ks, (kb + 1) * kB, a.L);
      load_tile<D>(Vs + ((kb + 1) & 1) * kB * LD, v, ks, (kb + 1) * kB, a.L);
      cp_async_commit();
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      cp_async_wait_all();
    }
    __syncthreads();
    const bf16* Kb = Ks + (kb & 1) * kB * LD;
    const bf16* Vb = Vs + (kb & 1) * kB * LD;
    float sc[NK][4], dp[NK][4];
#pragma unroll
    for (int j = 0; j < NK; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[j][e] = dp[j][e] = 0.f;
    }
    // S = Q K^T and dP = dO V^T (16 queries x 64 keys per warp)
#pragma unroll
    for (int s = 0; s < D / 16; ++s) {
      uint32_t qa[4], oa[4];
      load_a(qa, Qs, LD, r0, s * 16);
      load_a(oa, dOs, LD, r0, s * 16);
#pragma unroll
      for (int np = 0; np < NK / 2; ++np) {
        uint32_t bb[4];
        load_b_nk(bb, Kb, LD, np * 16, s * 16);
        mma16816(sc[2 * np], qa, bb[0], bb[1]);
        mma16816(sc[2 * np + 1], qa, bb[2], bb[3]);
        load_b_nk(bb, Vb, LD, np * 16, s * 16);
        mma16816(dp[2 * np], oa, bb[0], bb[1]);
        mma16816(dp[2 * np + 1], oa, bb[2], bb[3]);
      }
    }
    // dS = P (dP - delta), P = exp(scale S - lse), causal
    const int t0 = kb * kB;
#pragma unroll
    for (int j = 0; j < NK; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tt = t0 + 8 * j + 2 * t4 + e;
        const float p0 = (tt <= ia && tt < a.L) ? exp2f(sc[j][e] * scale2 - la) : 0.f;
        const float p1 = (tt <= ib && tt < a.L) ? exp2f(sc[j][2 + e] * scale2 - lb) : 0.f;
        dp[j][e] = p0 * (dp[j][e] - da);
        dp[j][2 + e] = p1 * (dp[j][2 + e] - db);
      }
    }
    uint32_t pa[NK / 2][4];
#pragma unroll
    for (int s = 0; s < NK / 2; ++s) {
      pa[s][0] = pack_bf16(dp[2 * s][0], dp[2 * s][1]);
      pa[s][1] = pack_bf16(dp[2 * s][2], dp[2 * s][3]);
      pa[s][2] = pack_bf16(dp[2 * s + 1][0], dp[2 * s + 1][1]);
      pa[s][3] = pack_bf16(dp[2 * s + 1][2], dp[2 * s + 1][3]);
    }
    // dQ += dS K
#pragma unroll
    for (int s = 0; s < NK / 2; ++s) {
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bb[4];
        load_b_kn(bb, Kb, LD, np * 16, s * 16);
        mma16816(dq[2 * np], pa[s], bb[0], bb[1]);
        mma16816(dq[2 * np + 1], pa[s], bb[2], bb[3]);
      }
    }
    __syncthreads();  // this buffer is refilled two iterations on
  }
  bf16* dqp = static_cast<bf16*>(a.dq) + int64_t(b) * a.L * qs + int64_t(h) * D;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int c = 8 * j + 2 * t4;
    if (ia < a.L) *reinterpret_cast<uint32_t*>(dqp + int64_t(ia) * qs + c) = pack_bf16(dq[j][0] * scale, dq[j][1] * scale);
    if (ib < a.L) *reinterpret_cast<uint32_t*>(dqp + int64_t(ib) * qs + c) = pack_bf16(dq[j][2] * scale, dq[j][3] * scale);
  }
}

// ---- Variant 1 (opt-in, flash_set_bwd_variant(1)): the same two kernels on Hopper wgmma (sm_90a).
// One warpgroup (128 threads) per CTA, the same 64-row blocks, grid, loop order, cp.async double
// buffering, masks, scale and lse conventions as variant 0 above; the tiles sit in shared memory in
// the SW128 layout of wgmma.cuh (one layout serves both the K-major and the MN-major reads).
//   dk/dv (64 keys per warpgroup, keys as the m64 rows):
//     S^T = K Q^T and dP^T = V dO^T: wgmma ss m64n64k16 (A = K or V, B = Q or dO, both K-major),
//     P^T = exp2(scale2 S^T - lse2), dS^T = P^T (dP^T - delta) on the fp32 accumulators,
//     dV += P^T dO and dK += dS^T Q: wgmma rs m64nDk16 (A = P^T / dS^T repacked from the
//     accumulators into register fragments, B = dO / Q MN-major via the transpose bit).
//   dq (64 queries per warpgroup): S = Q K^T, dP = dO V^T (ss), dS = P (dP - delta),
//     dQ += dS K (rs, B = K MN-major).

// A kB-row SW128 tile (rows row0.., D columns) of a [.., stride] bf16 matrix by cp.async, kThreads
// threads; rows at or past L are zero-filled. Each thread keeps one 16-byte chunk column and rows
// r, r + RPP, ... (RPP a multiple of 8: one swizzle phase per thread).
template <int D>
__device__ __forceinline__ void load_tile_sw(unsigned char* dst, const bf16* src, int64_t stride, int row0, int L,
                                             int tid) {
  constexpr int NCH = D / 8, RPP = kThreads / NCH;
  static_assert(kThreads % NCH == 0 && RPP % 8 == 0 && kB % RPP == 0, "chunk column and swizzle phase per thread");
  const int r = tid / NCH, c = tid % NCH;
  dst += wg::sw128_offset(kB, r, c);
#pragma unroll
  for (int i = 0; i < kB / RPP; ++i) {
    const int pos = row0 + r + i * RPP;
    const bool ok = pos < L;
    cp_async16(dst + i * RPP * 128, src + int64_t(ok ? pos : 0) * stride + c * 8, ok ? 16 : 0);
  }
}

// K-major descriptor of k16 step s of a kB-row SW128 tile at byte address base.
__device__ __forceinline__ uint64_t desc_k(uint32_t base, int s) {
  return wg::desc_sw128(base + (s >> 2) * (kB * 128) + (s & 3) * 32, 16, 1024);
}
// MN-major descriptor (rows = the k dimension) of k16 step s of a kB-row SW128 tile.
__device__ __forceinline__ uint64_t desc_mn(uint32_t base, int s) {
  return wg::desc_sw128(base + s * (16 * 128), kB * 128, 1024);
}

// fp32 m64n64 accumulator (wgmma D layout) -> bf16 register-A fragments of its 4 k16 slices.
__device__ __forceinline__ void pack_a64(uint32_t (&pa)[4][4], const float (&x)[32]) {
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    pa[s][0] = pack_bf16(x[8 * s], x[8 * s + 1]);
    pa[s][1] = pack_bf16(x[8 * s + 2], x[8 * s + 3]);
    pa[s][2] = pack_bf16(x[8 * s + 4], x[8 * s + 5]);
    pa[s][3] = pack_bf16(x[8 * s + 6], x[8 * s + 7]);
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads) flash_bwd_dkdv_wgmma(const FlashBwdArgs a) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) printf("flash attention bwd v1 needs an sm_90a build\n");
#else
  constexpr uint32_t kT = kB * D * 2;  // bytes of one kB x D tile
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw), pad = (1024u - (raw & 1023u)) & 1023u;  // swizzle atoms 1024-aligned
  unsigned char* Kp = smem_raw + pad;
  unsigned char* Vp = Kp + kT;
  unsigned char* Qp = Kp + 2 * kT;   // [2] tiles
  unsigned char* dOp = Kp + 4 * kT;  // [2] tiles
  float* lse2s = reinterpret_cast<float*>(Kp + 6 * kT);  // [2][kB], log2 domain
  float* dels = lse2s + 2 * kB;                           // [2][kB]
  const uint32_t sK = raw + pad, sV = sK + kT, sQ = sK + 2 * kT, sdO = sK + 4 * kT;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int kb = blockIdx.x;
  const int hkv = blockIdx.y % a.Hkv, b = blockIdx.y / a.Hkv, G = a.H / a.Hkv;
  const int nqb = (a.L + kB - 1) / kB, qb0 = kb, nq_it = nqb - qb0, n_it = G * nq_it;
  const int64_t qs = int64_t(a.H) * D, ks = int64_t(a.Hkv) * D;
  const bf16* q0 = static_cast<const bf16*>(a.q) + int64_t(b) * a.L * qs;
  const bf16* do0 = static_cast<const bf16*>(a.dout) + int64_t(b) * a.L * qs;
  const bf16* k = static_cast<const bf16*>(a.k) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  const bf16* v = static_cast<const bf16*>(a.v) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const float scale2 = scale * kLog2e;

  auto issue = [&](int it, int buf) {
    const int j = it / nq_it, qb = qb0 + it % nq_it, h = hkv * G + j;
    load_tile_sw<D>(Qp + buf * kT, q0 + int64_t(h) * D, qs, qb * kB, a.L, tid);
    load_tile_sw<D>(dOp + buf * kT, do0 + int64_t(h) * D, qs, qb * kB, a.L, tid);
    if (tid < kB) {
      const int i = qb * kB + tid;
      const int64_t r = (int64_t(b) * a.H + h) * a.L + i;
      const bool ok = i < a.L;
      lse2s[buf * kB + tid] = ok ? a.lse[r] * kLog2e : 0.f;
      dels[buf * kB + tid] = ok ? a.delta[r] : 0.f;
    }
  };
  load_tile_sw<D>(Kp, k, ks, kb * kB, a.L, tid);
  load_tile_sw<D>(Vp, v, ks, kb * kB, a.L, tid);
  issue(0, 0);
  cp_async_commit();

  const int kr0 = kb * kB + warp * 16 + g, kr1 = kr0 + 8;
  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int j = 0; j < D / 2; ++j) dk[j] = dv[j] = 0.f;

  for (int it = 0; it < n_it; ++it) {
    const int buf = it & 1, qb = qb0 + it % nq_it;
    if (it + 1 < n_it) {
      issue(it + 1, buf ^ 1);
      cp_async_commit();
      asm volatile("cp.async.wait_group 1;\n" ::: "memory");
    } else {
      cp_async_wait_all();
    }
    wg::fence_proxy_async();  // this thread's cp.async writes -> visible to wgmma
    __syncthreads();
    const uint32_t qbase = sQ + buf * kT, obase = sdO + buf * kT;
    const float* l2 = lse2s + buf * kB;
    const float* dl = dels + buf * kB;

    // S^T = K Q^T and dP^T = V dO^T as two groups: P^T is computed while dP^T is in flight, dS^T
    // while dV += P^T dO is.
    float sc[32], dp[32];
    wg::wgmma_fence();
#pragma unroll
    for (int s = 0; s < D / 16; ++s) wg::wgmma_ss<64>(sc, desc_k(sK, s), desc_k(qbase, s), s > 0 ? 1 : 0);
    wg::commit();
#pragma unroll
    for (int s = 0; s < D / 16; ++s) wg::wgmma_ss<64>(dp, desc_k(sV, s), desc_k(obase, s), s > 0 ? 1 : 0);
    wg::commit();
    wg::wait<1>();  // S^T done
    wg::fence_regs(sc);
    // P^T = exp2(scale2 S^T - lse2), causal (query >= key) and query < L
    const bool masked = qb == kb || (qb + 1) * kB > a.L;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = 8 * j + 2 * t4 + e, qi = qb * kB + col;
        const float lq = l2[col];
        float p0 = exp2f(sc[4 * j + e] * scale2 - lq), p1 = exp2f(sc[4 * j + 2 + e] * scale2 - lq);
        if (masked) {
          if (!(qi >= kr0 && qi < a.L)) p0 = 0.f;
          if (!(qi >= kr1 && qi < a.L)) p1 = 0.f;
        }
        sc[4 * j + e] = p0, sc[4 * j + 2 + e] = p1;
      }
    }
    uint32_t pa[4][4], da[4][4];
    pack_a64(pa, sc);
    // dV += P^T dO (B MN-major: rows = queries)
    wg::wgmma_fence();
#pragma unroll
    for (int s = 0; s < 4; ++s) wg::wgmma_rs_tb<D>(dv, pa[s], desc_mn(obase, s));
    wg::commit();
    wg::wait<1>();  // dP^T done (dV may still run)
    wg::fence_regs(dp);
    // dS^T = P^T (dP^T - delta)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float d = dl[8 * j + 2 * t4 + e];
        dp[4 * j + e] = sc[4 * j + e] * (dp[4 * j + e] - d);
        dp[4 * j + 2 + e] = sc[4 * j + 2 + e] * (dp[4 * j + 2 + e] - d);
      }
    }
    pack_a64(da, dp);
    // dK += dS^T Q
    wg::wgmma_fence();
#pragma unroll
    for (int s = 0; s < 4; ++s) wg::wgmma_rs_tb<D>(dk, da[s], desc_mn(qbase, s));
    wg::commit();
    wg::wait<0>();
    wg::fence_regs(dv);
    wg::fence_regs(dk);
    __syncthreads();  // this buffer is refilled by the next iteration
  }
  bf16* dkp = static_cast<bf16*>(a.dk) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  bf16* dvp = static_cast<bf16*>(a.dv) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    const int c = 8 * j + 2 * t4;
    if (kr0 < a.L) {
      *reinterpret_cast<uint32_t*>(dkp + int64_t(kr0) * ks + c) = pack_bf16(dk[4 * j] * scale, dk[4 * j + 1] * scale);
      *reinterpret_cast<uint32_t*>(dvp + int64_t(kr0) * ks + c) = pack_bf16(dv[4 * j], dv[4 * j + 1]);
    }
    if (kr1 < a.L) {
      *reinterpret_cast<uint32_t*>(dkp + int64_t(kr1) * ks + c) =
          pack_bf16(dk[4 * j + 2] * scale, dk[4 * j + 3] * scale);
      *reinterpret_cast<uint32_t*>(dvp + int64_t(kr1) * ks + c) = pack_bf16(dv[4 * j + 2], dv[4 * j + 3]);
    }
  }
#endif
}

template <int D>
__global__ void __launch_bounds__(kThreads) flash_bwd_dq_wgmma(const FlashBwdArgs a) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) printf("flash attention bwd v1 needs an sm_90a build\n");
#else
  constexpr uint32_t kT = kB * D * 2;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw), pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* Qp = smem_raw + pad;
  unsigned char* dOp = Qp + kT;
  unsigned char* Kp = Qp + 2 * kT;  // [2] tiles
  unsigned char* Vp = Qp + 4 * kT;  // [2] tiles
  const uint32_t sQ = raw + pad, sdO = sQ + kT, sK = sQ + 2 * kT, sV = sQ + 4 * kT;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int nqb = (a.L + kB - 1) / kB;
  const int qb = nqb - 1 - blockIdx.x;  // longest rows first
  const int h = blockIdx.y % a.H, b = blockIdx.y / a.H, hkv = h / (a.H / a.Hkv);
  const int64_t qs = int64_t(a.H) * D, ks = int64_t(a.Hkv) * D;
  const bf16* q = static_cast<const bf16*>(a.q) + int64_t(b) * a.L * qs + int64_t(h) * D;
  const bf16* dO = static_cast<const bf16*>(a.dout) + int64_t(b) * a.L * qs + int64_t(h) * D;
  const bf16* k = static_cast<const bf16*>(a.k) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  const bf16* v = static_cast<const bf16*>(a.v) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const float scale2 = scale * kLog2e;

  load_tile_sw<D>(Qp, q, qs, qb * kB, a.L, tid);
  load_tile_sw<D>(dOp, dO, qs, qb * kB, a.L, tid);
  load_tile_sw<D>(Kp, k, ks, 0, a.L, tid);
  load_tile_sw<D>(Vp, v, ks, 0, a.L, tid);
  cp_async_commit();

  const int ia = qb * kB + warp * 16 + g, ib = ia + 8;
  const int64_t rowbase = (int64_t(b) * a.H + h) * a.L;
  const float la = ia < a.L ? a.lse[rowbase + ia] * kLog2e : 0.f;
  const float lb = ib < a.L ? a.lse[rowbase + ib] * kLog2e : 0.f;
  const float da = ia < a.L ? a.delta[rowbase + ia] : 0.f;
  const float db = ib < a.L ? a.delta[rowbase + ib] : 0.f;
  float dq[D / 2];
#pragma unroll
  for (int j = 0; j < D / 2; ++j) dq[j] = 0.f;

  for (int kb = 0; kb <= qb; ++kb) {
    if (kb < qb) {
      load_tile_sw<D>(Kp + ((kb + 1) & 1) * kT, k, ks, (kb + 1) * kB, a.L, tid);
      load_tile_sw<D>(Vp + ((kb + 1) & 1) * kT, v, ks, (kb + 1) * kB, a.L, tid);
      cp_async_commit();
      asm volatile("cp.async.wait_group 1;\n" ::: "memory");
    } else {
      cp_async_wait_all();
    }
    wg::fence_proxy_async();
    __syncthreads();
    const uint32_t kbase = sK + (kb & 1) * kT, vbase = sV + (kb & 1) * kT;
    // S = Q K^T and dP = dO V^T as two groups: P is computed while dP is in flight.
    float sc[32], dp[32];
    wg::wgmma_fence();
#pragma unroll
    for (int s = 0; s < D / 16; ++s) wg::wgmma_ss<64>(sc, desc_k(sQ, s), desc_k(kbase, s), s > 0 ? 1 : 0);
    wg::commit();
#pragma unroll
    for (int s = 0; s < D / 16; ++s) wg::wgmma_ss<64>(dp, desc_k(sdO, s), desc_k(vbase, s), s > 0 ? 1 : 0);
    wg::commit();
    wg::wait<1>();  // S done
    wg::fence_regs(sc);
    // P = exp2(scale2 S - lse2), causal (key <= query) and key < L
    const int t0 = kb * kB;
    const bool masked = kb == qb || t0 + kB > a.L;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tt = t0 + 8 * j + 2 * t4 + e;
        float p0 = exp2f(sc[4 * j + e] * scale2 - la), p1 = exp2f(sc[4 * j + 2 + e] * scale2 - lb);
        if (masked) {
          if (!(tt <= ia && tt < a.L)) p0 = 0.f;
          if (!(tt <= ib && tt < a.L)) p1 = 0.f;
        }
        sc[4 * j + e] = p0, sc[4 * j + 2 + e] = p1;
      }
    }
    wg::wait<0>();  // dP done
    wg::fence_regs(dp);
    // dS = P (dP - delta)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        dp[4 * j + e] = sc[4 * j + e] * (dp[4 * j + e] - da);
        dp[4 * j + 2 + e] = sc[4 * j + 2 + e] * (dp[4 * j + 2 + e] - db);
      }
    }
    uint32_t pa[4][4];
    pack_a64(pa, dp);
    // dQ += dS K (B MN-major: rows = keys)
    wg::wgmma_fence();
#pragma unroll
    for (int s = 0; s < 4; ++s) wg::wgmma_rs_tb<D>(dq, pa[s], desc_mn(kbase, s));
    wg::commit();
    wg::wait<0>();
    wg::fence_regs(dq);
    __syncthreads();  // this buffer is refilled two iterations on
  }
  bf16* dqp = static_cast<bf16*>(a.dq) + int64_t(b) * a.L * qs + int64_t(h) * D;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    const int c = 8 * j + 2 * t4;
    if (ia < a.L)
      *reinterpret_cast<uint32_t*>(dqp + int64_t(ia) * qs + c) = pack_bf16(dq[4 * j] * scale, dq[4 * j + 1] * scale);
    if (ib < a.L)
      *reinterpret_cast<uint32_t*>(dqp + int64_t(ib) * qs + c) =
          pack_bf16(dq[4 * j + 2] * scale, dq[4 * j + 3] * scale);
  }
#endif
}

template <int D>
void launch_bwd(const FlashBwdArgs& a, cudaStream_t s) {
  const int64_t rows = int64_t(a.B) * a.L * a.H;
  constexpr int kRowsPerBlock = 8;
  flash_bwd_delta_kernel<<<unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock), kRowsPerBlock * 32, 0, s>>>(
      static_cast<const bf16*>(a.out), static_cast<const bf16*>(a.dout), a.delta, a.B, a.L, a.H, D);
  launched("flash attention backward (cuda): delta");
  const int nb = (a.L + kB - 1) / kB;
  if (g_bwd_variant == 1) {
    const size_t tiles = size_t(6) * kB * D * sizeof(bf16) + 1024;  // + 1024: aligning the swizzle atoms
    auto kdkdv = flash_bwd_dkdv_wgmma<D>;
    LZ_CUDA_OK(cudaFuncSetAttribute(kdkdv, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(tiles + 4 * kB * sizeof(float))));
    kdkdv<<<dim3(nb, a.B * a.Hkv), kThreads, tiles + 4 * kB * sizeof(float), s>>>(a);
    launched("flash attention backward (cuda): dk/dv (wgmma)");
    auto kdq = flash_bwd_dq_wgmma<D>;
    LZ_CUDA_OK(cudaFuncSetAttribute(kdq, cudaFuncAttributeMaxDynamicSharedMemorySize, int(tiles)));
    kdq<<<dim3(nb, a.B * a.H), kThreads, tiles, s>>>(a);
    launched("flash attention backward (cuda): dq (wgmma)");
    return;
  }
  {
    const size_t smem = size_t(6) * kB * (D + 8) * sizeof(bf16) + 4 * kB * sizeof(float);
    auto kern = flash_bwd_dkdv_kernel<D>;
    LZ_CUDA_OK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kern<<<dim3(nb, a.B * a.Hkv), kThreads, smem, s>>>(a);
    launched("flash attention backward (cuda): dk/dv");
  }
  {
    const size_t tiles = size_t(6) * kB * (D + 8) * sizeof(bf16);
    auto kern = flash_bwd_dq_kernel<D>;
    LZ_CUDA_OK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(tiles)));
    kern<<<dim3(nb, a.B * a.H), kThreads, tiles, s>>>(a);
    launched("flash attention backward (cuda): dq");
  }
}

}  // namespace

void flash_set_bwd_variant(int v) {
  LZ_CUDA_CHECK(v == 0 || v == 1, "flash attention backward (cuda): variant must be 0 (mma.sync) or 1 (wgmma), got ", v);
  g_bwd_variant = v;
}
int flash_bwd_variant() { return g_bwd_variant; }

void flash_attention_bwd(const FlashBwdArgs& a, cudaStream_t s) {
  LZ_CUDA_CHECK(a.B > 0 && a.L > 0 && a.H > 0 && a.Hkv > 0 && a.H % a.Hkv == 0,
                "flash attention backward (cuda): bad shape B=", a.B, " L=", a.L, " H=", a.H, " Hkv=", a.Hkv);
  LZ_CUDA_CHECK(a.q && a.k && a.v && a.out && a.dout && a.lse && a.dq && a.dk && a.dv && a.delta,
                "flash attention backward (cuda): a tensor pointer is null (lse from the forward and the delta "
                "workspace of B*H*L floats are required)");
  LZ_CUDA_CHECK(int64_t(a.B) * a.L * a.H / 8 < (int64_t(1) << 31), "flash attention backward (cuda): too many rows");
  if (a.D == 64) return launch_bwd<64>(a, s);
  if (a.D == 128) return launch_bwd<128>(a, s);
  fail_cat("flash attention backward (cuda): head dim must be 64 or 128, got ", a.D);
}

}  // namespace lizard::cuda
