// Backward of the causal GQA flash attention (flash_attention.cu), no L x L matrix in memory:
// P is recomputed from the forward's saved log-sum-exp. bf16 in/out, fp32 accumulation on Hopper
// wgmma tensor cores (sm_90a). Three kernels, no atomics, deterministic:
//   1. delta[b, h, i] = sum_e dout[i, e] * out[i, e]                      (one warp per row)
//   2. dk, dv: one CTA (one warpgroup, 64 keys as the m64 rows) per (64-key block, b, kv head);
//      loops over the query heads of the group and the query blocks at or after the key block,
//      Q / dO / lse / delta double-buffered (cp.async). Per step (keys as rows):
//        S^T = K Q^T and dP^T = V dO^T: wgmma ss m64n64k16 (A = K or V, B = Q or dO, both K-major),
//        P^T = exp2(scale2 S^T - lse2), dS^T = P^T (dP^T - delta) on the fp32 accumulators,
//        dV += P^T dO and dK += dS^T Q: wgmma rs m64nDk16 (A = P^T / dS^T repacked from the
//        accumulators into register fragments, B = dO / Q MN-major via the transpose bit);
//      dk, dv stay in registers for the whole group, so no atomics.
//   3. dq: one CTA (one warpgroup, 64 queries) per (64-query block, b, h); loops over key blocks
//      like the forward, recomputing S = Q K^T and dP = dO V^T (ss), dS = P (dP - delta),
//      dQ += dS K (rs, B = K MN-major).
// The tiles sit in shared memory in the SW128 layout of wgmma.cuh (one layout serves both the
// K-major and the MN-major reads).
// This recomputes Q K^T and dO V^T once more than an atomic-dq design (7 instead of 5 matrix
// products per block pair) in exchange for no fp32 dq workspace, no memset and no atomics. The
// atomic-dq designs (64- and 128-key CTAs) were slower at every shape on the H200 and are deleted;
// so is the mma.sync m16n8k16 version of kernels 2 and 3, slower than this one at every measured
// shape on the H200 (docs/cuda_notes.md, 2026-11-27).
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
constexpr int kB = 64, kThreads = 128;  // one warpgroup (4 warps) per CTA

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
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) printf("flash attention backward needs an sm_90a build\n");
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
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) printf("flash attention backward needs an sm_90a build\n");
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
}

}  // namespace

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
