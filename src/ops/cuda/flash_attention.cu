// Causal softmax attention with GQA, flash style (no L x L matrix), bf16 in/out, fp32 accumulate on
// Hopper warpgroup MMA (wgmma, sm_90a). Saves the row log-sum-exp (natural log) for a backward pass.
// One kernel (flash_fwd_wgmma below); the mma.sync variants 0-2 and the 3-warpgroup variant 4 were
// slower on the H200 at both head dims and are deleted (docs/cuda_notes.md, 2026-11-27).
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

// Hopper warpgroup MMA (wgmma, sm_90a). CTA = kWG = 2 warpgroups (128 threads each), each owning 64
// query rows (one m64 tile); no producer warps: all threads issue the cp.async copies.
// Q (64 kWG x D) and double-buffered K, V blocks (BK x D) sit in shared memory in the SW128 layout of
// wgmma.cuh (written swizzled by cp.async, then fence.proxy.async + barrier before wgmma reads them).
// Per key block and warpgroup: S = Q K^T by D/16 wgmma m64nBKk16 (A = Q, B = K, both K-major from
// shared memory), online softmax on the fp32 accumulator in registers (log2 domain, raw scores,
// scale folded into the exponent's FMA), P rounded to bf16 and repacked from the
// accumulator layout into wgmma's register-A fragments (the same per-warp layout as mma.sync), then
// O += P V by BK/16 wgmma m64nDk16 (A = P from registers, B = V from shared memory, MN-major via
// imm-trans-b). Causal mask only on blocks crossing a warpgroup's first row or L; a warpgroup whose
// rows all precede the key block skips it. Grid (B * H, query blocks), the longest blocks first
// across all heads. 128 queries per CTA, BK = 64 for D = 128 (64 + 32 accumulator registers), 128 for
// D = 64, <= 128 registers so that 2 CTAs share an SM (the other CTA's wgmma runs while this one does
// its softmax).
constexpr int kWG = 2;

template <int R, int D, int NT>
__device__ __forceinline__ void load_sw128(unsigned char* dst, const bf16* src, int64_t stride, int row0, int L,
                                           int tid) {
  constexpr int NCH = D / 8, RPP = NT / NCH;  // 16-byte chunks per row; rows per pass
  static_assert(NT % NCH == 0 && RPP % 8 == 0, "each thread must keep one chunk column and swizzle phase");
  // Each thread keeps one chunk column and every RPP-th row (RPP % 8 == 0: same swizzle phase).
  const int r = tid / NCH, c = tid % NCH;
  dst += wg::sw128_offset(R, r, c);
  src += int64_t(row0 + r) * stride + c * 8;
#pragma unroll
  for (int i = 0; i < (R + RPP - 1) / RPP; ++i) {
    if (R % RPP != 0 && r + i * RPP >= R) break;  // only when RPP does not divide R
    const bool ok = row0 + r + i * RPP < L;
    cp_async16(dst + i * RPP * 128, ok ? src + i * RPP * stride : src - int64_t(row0 + r) * stride, ok ? 16 : 0);
  }
}

template <int D, int BK>
__global__ void __launch_bounds__(128 * kWG, 2) flash_fwd_wgmma(const FlashArgs a) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // wgmma exists only in sm_90a code (CMake's 90a; -gencode=arch=compute_90a,code=sm_90a).
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) printf("flash attention fwd needs an sm_90a build\n");
#else
  constexpr int kNT = 128 * kWG, kBQ = 64 * kWG;
  constexpr uint32_t kQBytes = kBQ * D * 2, kKBytes = BK * D * 2;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw), pad = (1024u - (raw & 1023u)) & 1023u;  // swizzle atoms: 1024-aligned
  unsigned char* Qp = smem_raw + pad;
  unsigned char* Kp = Qp + kQBytes;  // [2][BK x D]
  unsigned char* Vp = Kp + 2 * kKBytes;
  const uint32_t sQ = raw + pad, sK = sQ + kQBytes, sV = sK + 2 * kKBytes;
  const int tid = threadIdx.x, wgi = tid >> 7, wl = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int qb = gridDim.y - 1 - blockIdx.y;  // longest rows first
  const int h = blockIdx.x % a.H, b = blockIdx.x / a.H, hkv = h / (a.H / a.Hkv);
  const int64_t qs = int64_t(a.H) * D, ks = int64_t(a.Hkv) * D;
  const bf16* q = static_cast<const bf16*>(a.q) + int64_t(b) * a.L * qs + int64_t(h) * D;
  const bf16* k = static_cast<const bf16*>(a.k) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  const bf16* v = static_cast<const bf16*>(a.v) + int64_t(b) * a.L * ks + int64_t(hkv) * D;
  bf16* o = static_cast<bf16*>(a.out) + int64_t(b) * a.L * qs + int64_t(h) * D;
  const float scale2 = (a.scale > 0 ? a.scale : rsqrtf(float(D))) * kLog2e;

  load_sw128<kBQ, D, kNT>(Qp, q, qs, qb * kBQ, a.L, tid);
  load_sw128<BK, D, kNT>(Kp, k, ks, 0, a.L, tid);
  load_sw128<BK, D, kNT>(Vp, v, ks, 0, a.L, tid);
  cp_async_commit();

  const int wrow0 = qb * kBQ + 64 * wgi;  // this warpgroup's first query
  const int ia = wrow0 + 16 * wl + g, ib = ia + 8;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  float acc[D / 2], sc[BK / 2];
#pragma unroll
  for (int j = 0; j < D / 2; ++j) acc[j] = 0.f;

  const int last = min((qb + 1) * kBQ, a.L);
  const int nkb = (last + BK - 1) / BK;
  for (int kb = 0; kb < nkb; ++kb) {
    if (kb + 1 < nkb) {
      load_sw128<BK, D, kNT>(Kp + ((kb + 1) & 1) * kKBytes, k, ks, (kb + 1) * BK, a.L, tid);
      load_sw128<BK, D, kNT>(Vp + ((kb + 1) & 1) * kKBytes, v, ks, (kb + 1) * BK, a.L, tid);
      cp_async_commit();
      asm volatile("cp.async.wait_group 1;\n" ::: "memory");
    } else {
      cp_async_wait_all();
    }
    wg::fence_proxy_async();  // this thread's cp.async writes -> visible to the async proxy (wgmma)
    __syncthreads();
    const int t0 = kb * BK;
    if (t0 <= wrow0 + 63) {  // warpgroup-uniform: some row of this warpgroup sees a key of the block
      const uint32_t kbase = sK + (kb & 1) * kKBytes, vbase = sV + (kb & 1) * kKBytes;
      wg::wgmma_fence();
#pragma unroll
      for (int s = 0; s < D / 16; ++s) {
        const uint64_t da = wg::desc_sw128(sQ + (s >> 2) * (kBQ * 128) + wgi * (64 * 128) + (s & 3) * 32, 16, 1024);
        const uint64_t db = wg::desc_sw128(kbase + (s >> 2) * (BK * 128) + (s & 3) * 32, 16, 1024);
        wg::wgmma_ss<BK>(sc, da, db, s > 0 ? 1 : 0);
      }
      wg::commit();
      wg::wait<0>();
      wg::fence_regs(sc);
      const bool masked = t0 + BK - 1 > wrow0 || t0 + BK > a.L;
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int j = 0; j < BK / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (masked) {
            const int tt = t0 + 8 * j + 2 * t4 + e;
            if (!(tt <= ia && tt < a.L)) sc[4 * j + e] = -INFINITY;
            if (!(tt <= ib && tt < a.L)) sc[4 * j + 2 + e] = -INFINITY;
          }
          mx0 = fmaxf(mx0, sc[4 * j + e]), mx1 = fmaxf(mx1, sc[4 * j + 2 + e]);
        }
      }
      const float mn0 = fmaxf(m0, quad_max(mx0) * scale2), mn1 = fmaxf(m1, quad_max(mx1) * scale2);
      const float u0 = mn0 == -INFINITY ? 0.f : mn0, u1 = mn1 == -INFINITY ? 0.f : mn1;
      const float c0 = fast_exp2(m0 - u0), c1 = fast_exp2(m1 - u1);
      m0 = mn0, m1 = mn1, l0 *= c0, l1 *= c1;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) acc[4 * j] *= c0, acc[4 * j + 1] *= c0, acc[4 * j + 2] *= c1, acc[4 * j + 3] *= c1;
#pragma unroll
      for (int j = 0; j < BK / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          sc[4 * j + e] = round_bf16(fast_exp2(fmaf(sc[4 * j + e], scale2, -u0)));
          sc[4 * j + 2 + e] = round_bf16(fast_exp2(fmaf(sc[4 * j + 2 + e], scale2, -u1)));
          l0 += sc[4 * j + e], l1 += sc[4 * j + 2 + e];
        }
      }
      uint32_t pa[BK / 16][4];
#pragma unroll
      for (int s = 0; s < BK / 16; ++s) {
        pa[s][0] = pack_bf16(sc[8 * s], sc[8 * s + 1]);
        pa[s][1] = pack_bf16(sc[8 * s + 2], sc[8 * s + 3]);
        pa[s][2] = pack_bf16(sc[8 * s + 4], sc[8 * s + 5]);
        pa[s][3] = pack_bf16(sc[8 * s + 6], sc[8 * s + 7]);
      }
      wg::fence_regs(acc);
      wg::wgmma_fence();
#pragma unroll
      for (int s = 0; s < BK / 16; ++s)
        wg::wgmma_rs_tb<D>(acc, pa[s], wg::desc_sw128(vbase + s * (16 * 128), BK * 128, 1024));
      wg::commit();
      wg::wait<0>();
      wg::fence_regs(acc);
    }
    __syncthreads();  // this buffer is refilled two iterations on
  }
  l0 = quad_sum(l0), l1 = quad_sum(l1);
  const float inv0 = 1.f / l0, inv1 = 1.f / l1;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    const int c = 8 * j + 2 * t4;
    if (ia < a.L) *reinterpret_cast<uint32_t*>(o + int64_t(ia) * qs + c) = pack_bf16(acc[4 * j] * inv0, acc[4 * j + 1] * inv0);
    if (ib < a.L)
      *reinterpret_cast<uint32_t*>(o + int64_t(ib) * qs + c) = pack_bf16(acc[4 * j + 2] * inv1, acc[4 * j + 3] * inv1);
  }
  if (a.lse != nullptr && t4 == 0) {
    float* lse = a.lse + (int64_t(b) * a.H + h) * a.L;
    if (ia < a.L) lse[ia] = (m0 + log2f(l0)) / kLog2e;
    if (ib < a.L) lse[ib] = (m1 + log2f(l1)) / kLog2e;
  }
#endif
}

template <int D, int BK>
void launch_wgmma(const FlashArgs& a, cudaStream_t s) {
  constexpr int kBQ = 64 * kWG;
  const size_t smem = size_t(kBQ + 4 * BK) * D * sizeof(bf16) + 1024;  // + 1024: aligning the swizzle atoms
  auto kern = flash_fwd_wgmma<D, BK>;
  LZ_CUDA_OK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const int nqb = (a.L + kBQ - 1) / kBQ;
  LZ_CUDA_CHECK(nqb <= 65535, "flash attention (cuda): L = ", a.L, " too long for the wgmma kernel's grid");
  kern<<<dim3(a.B * a.H, nqb), 128 * kWG, smem, s>>>(a);
  launched("flash attention (cuda)");
}

}  // namespace

void flash_attention_fwd(const FlashArgs& a, cudaStream_t s) {
  LZ_CUDA_CHECK(a.B > 0 && a.L > 0 && a.H > 0 && a.Hkv > 0 && a.H % a.Hkv == 0,
                "flash attention (cuda): bad shape B=", a.B, " L=", a.L, " H=", a.H, " Hkv=", a.Hkv);
  LZ_CUDA_CHECK(a.q && a.k && a.v && a.out, "flash attention (cuda): a tensor pointer is null");
  if (a.D == 64) return launch_wgmma<64, 128>(a, s);
  if (a.D == 128) return launch_wgmma<128, 64>(a, s);
  fail_cat("flash attention (cuda): head dim must be 64 or 128, got ", a.D);
}

}  // namespace lizard::cuda
