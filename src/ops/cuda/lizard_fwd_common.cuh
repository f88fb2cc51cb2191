// Device helpers of the Lizard attention forward kernels (lizard_attention_fwd.cu, variants 0 and 3):
// the feature maps, the X W products, the log-gamma scan and the swizzled (SW128) loaders. Internal
// header (it once served the two-pass variants 5-7 as well, deleted 2026-11-27); everything sits in an
// anonymous namespace, as in the kernels' file.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "ops/cuda/lizard_attention.h"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace lizard::cuda {
namespace {

constexpr int kC = 64;  // chunk length (rows of a chunk tile)
using mma::kLog2e;

// Feature map of 16 rows held as C fragments acc[F/8][4] (pre-activations x W) -> phi in fp32: acc becomes the
// plus half, out_m the minus half (same fragment layout). Not rounded here: every product takes phi as bf16
// through its packing (round to nearest, the same values), the normaliser's dots take the fp32 values.
template <int F>
__device__ __forceinline__ void feature_map(float (&acc)[F / 8][4], float (&out_m)[F / 8][4], FeatureAct act) {
  if (act == FeatureAct::Softmax) {
    float mx0 = -INFINITY, mx1 = -INFINITY, mn0 = INFINITY, mn1 = INFINITY;
#pragma unroll
    for (int j = 0; j < F / 8; ++j) {
      mx0 = fmaxf(mx0, fmaxf(acc[j][0], acc[j][1]));
      mn0 = fminf(mn0, fminf(acc[j][0], acc[j][1]));
      mx1 = fmaxf(mx1, fmaxf(acc[j][2], acc[j][3]));
      mn1 = fminf(mn1, fminf(acc[j][2], acc[j][3]));
    }
    mx0 = mma::quad_max(mx0), mx1 = mma::quad_max(mx1), mn0 = mma::quad_min(mn0), mn1 = mma::quad_min(mn1);
    // e^(x - mx) as 2^(x log2 e - mx log2 e): one FFMA and the SFU per value
    const float lx0 = mx0 * kLog2e, lx1 = mx1 * kLog2e, ln0 = mn0 * kLog2e, ln1 = mn1 * kLog2e;
    float sp0 = 0, sp1 = 0, sm0 = 0, sm1 = 0;
#pragma unroll
    for (int j = 0; j < F / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float x0 = acc[j][e], x1 = acc[j][2 + e];
        float p0 = mma::fast_exp2(fmaf(x0, kLog2e, -lx0)), p1 = mma::fast_exp2(fmaf(x1, kLog2e, -lx1));
        float m0 = mma::fast_exp2(fmaf(-x0, kLog2e, ln0)), m1 = mma::fast_exp2(fmaf(-x1, kLog2e, ln1));
        acc[j][e] = p0, acc[j][2 + e] = p1, out_m[j][e] = m0, out_m[j][2 + e] = m1;
        sp0 += p0, sp1 += p1, sm0 += m0, sm1 += m1;
      }
    }
    sp0 = 1.f / mma::quad_sum(sp0), sp1 = 1.f / mma::quad_sum(sp1), sm0 = 1.f / mma::quad_sum(sm0), sm1 = 1.f / mma::quad_sum(sm1);
#pragma unroll
    for (int j = 0; j < F / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        acc[j][e] *= sp0, acc[j][2 + e] *= sp1;
        out_m[j][e] *= sm0, out_m[j][2 + e] *= sm1;
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < F / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = acc[j][e];
        acc[j][e] = mma::fast_exp(x);
        out_m[j][e] = mma::fast_exp(-x);
      }
  }
}

// Pre-activations of 16 rows times W (smem [D][LDW]): load_a(a, k0) gives the rows' A fragment at
// column k0, so the padded and the SW128 row tiles share the product.
template <int D, int F, typename LoadA>
__device__ __forceinline__ void rows_times_w_from(float (&acc)[F / 8][4], LoadA&& load_a, const mma::bf16* W) {
  constexpr int LDW = F + 8;
#pragma unroll
  for (int j = 0; j < F / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    uint32_t a[4];
    load_a(a, ks * 16);
#pragma unroll
    for (int np = 0; np < F / 16; ++np) {
      uint32_t b[4];
      mma::load_b_kn(b, W, LDW, np * 16, ks * 16);
      mma::mma16816(acc[2 * np], a, b[0], b[1]);
      mma::mma16816(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// X a padded row tile (smem [64][D + 8]), rows m0 .. m0 + 15.
template <int D, int F>
__device__ __forceinline__ void rows_times_w(float (&acc)[F / 8][4], const mma::bf16* X, const mma::bf16* W, int m0) {
  rows_times_w_from<D, F>(acc, [&](uint32_t (&a)[4], int k0) { mma::load_a(a, X, D + 8, m0, k0); }, W);
}

// Named barriers (id 0 is __syncthreads; each file numbers its own).
__device__ __forceinline__ void bar_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// log gamma of chunk n into lg[64] (0 past L), 2 positions per lane; read back by the same lane.
__device__ __forceinline__ void log_gamma_async(float* lg, const float* lgb, int gts, int n, int L, int lane) {
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int p = n * kC + 2 * lane + e;
    const bool ok = p < L;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(mma::smem_addr(lg + 2 * lane + e)),
                 "l"(lgb + int64_t(ok ? p : 0) * gts), "r"(ok ? 4 : 0));
  }
}

// b_i (inclusive prefix sums of the chunk's log gamma lg[64], 0 past L) into bsum[64]; one warp.
// bsum may equal lg: each lane reads its own two entries before writing them.
__device__ __forceinline__ void scan_log_gamma(float* bsum, const float* lg, int lane) {
  const float v0 = lg[2 * lane], v1 = lg[2 * lane + 1];
  const float s = v0 + v1;
  float inc = s;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += u;
  }
  bsum[2 * lane] = inc - s + v0;
  bsum[2 * lane + 1] = inc;
}

// ldmatrix on an SW128 tile (R rows, byte address base): the mma.sync A fragment of mma.cuh's load_a,
// each lane addressing its 16-byte row piece through the swizzle.
__device__ __forceinline__ void ldsm4_at(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// stmatrix (sm_90): four 8x8 bf16 matrices stored from fragment registers (lane l's r_m holds row l / 4, columns
// 2 (l % 4), + 1 of matrix m; lanes 8 m .. 8 m + 7 address matrix m's rows): one instruction where four 32-bit
// stores per lane, each with its own swizzled address, did the same.
__device__ __forceinline__ void stsm4_at(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}
// The lane's row address for ldsm4_at / stsm4_at over rows m0 .. m0 + 15 and 16-byte chunks c, c + 1 (two 8-column
// n-tiles) of an SW128 tile of R rows, matrices in C-fragment order: {rows 0-7 of chunk c, rows 8-15 of chunk c,
// rows 0-7 of chunk c + 1, rows 8-15 of chunk c + 1} = packed {d[4j], d[4j+1] | d[4j+2], d[4j+3] | the same at j+1}.
template <int R>
__device__ __forceinline__ uint32_t frag_rows_sw(uint32_t base, int m0, int c) {
  const int l = threadIdx.x & 31, m = l >> 3;
  return base + wg::sw128_offset(R, m0 + 8 * (m & 1) + (l & 7), c + (m >> 1));
}

template <int R>
__device__ __forceinline__ void load_a_sw(uint32_t (&a)[4], uint32_t base, int m0, int k0) {
  const int l = threadIdx.x & 31;
  ldsm4_at(a, base + wg::sw128_offset(R, m0 + (l & 15), (k0 >> 3) + (l >> 4)));
}

// rows_times_w with X an SW128 chunk tile.
template <int D, int F>
__device__ __forceinline__ void rows_times_w_sw(float (&acc)[F / 8][4], uint32_t X, const mma::bf16* W, int m0) {
  rows_times_w_from<D, F>(acc, [&](uint32_t (&a)[4], int k0) { load_a_sw<kC>(a, X, m0, k0); }, W);
}

// Pre-activations of the warpgroup's 64 rows (X an SW128 chunk tile) times W (an SW128 tile of D rows
// x 64 columns) on wgmma: A = this warp's 16 rows by ldmatrix (registers), B = W MN-major (trans-b).
// acc: the rows_times_w fragment layout (acc[j][e] = d[4j + e]).
template <int D>
__device__ __forceinline__ void rows_times_w_wg(float (&acc)[8][4], uint32_t X, uint32_t W, int m0) {
  uint32_t a[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) load_a_sw<kC>(a[ks], X, m0, ks * 16);
  float(&d)[32] = reinterpret_cast<float(&)[32]>(acc);
#pragma unroll
  for (int j = 0; j < 32; ++j) d[j] = 0.f;
  wg::wgmma_fence();
  const uint64_t dw = wg::desc_sw128(W, D * 128, 1024);
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) wg::wgmma_rs_tb<64>(d, a[ks], wg::desc_advance(dw, ks * (16 * 128)));
  wg::commit();
  wg::wait<0>();
  wg::fence_regs(d);
}

// One chunk's rows of a [L][stride] bf16 matrix into an SW128 chunk tile (rows past L zero-filled), by the NT
// threads t = 0 .. NT - 1. NT a compile-time multiple of 8 D / 8: each thread keeps its 16-byte column c and
// its row's swizzle phase, so the loop unrolls to one row step (an add) per copy.
template <int D, int NT>
__device__ __forceinline__ void tile_async_sw(unsigned char* dst, const mma::bf16* src, int64_t stride, int n, int L,
                                              int t) {
  constexpr int CPR = D / 8, RS = NT / CPR;  // 16-byte copies per row, rows per step
  static_assert(NT % CPR == 0 && RS % 8 == 0 && kC % RS == 0, "tile copies must split evenly");
  const int c = t % CPR, r0 = t / CPR;
  unsigned char* d0 = dst + wg::sw128_offset(kC, r0, c);  // RS % 8 == 0: row r0 + k RS has r0's swizzle phase
  if ((n + 1) * kC <= L) {  // a whole chunk (uniform): one pointer step per copy, no bounds
    const mma::bf16* p = src + int64_t(n * kC + r0) * stride + c * 8;
    const int64_t step = int64_t(RS) * stride;
#pragma unroll
    for (int k = 0; k < kC / RS; ++k) mma::cp_async16(d0 + k * RS * 128, p + k * step, 16);
    return;
  }
#pragma unroll
  for (int k = 0; k < kC / RS; ++k) {
    const int pos = n * kC + r0 + k * RS;
    const bool ok = pos < L;
    mma::cp_async16(d0 + k * RS * 128, src + int64_t(ok ? pos : 0) * stride + c * 8, ok ? 16 : 0);
  }
}

// phi_Q of the warp's 16 rows (ap plus, am minus half, C fragments) -> A fragments phq (plus in
// k-steps 0..F/16-1, minus after); returns the rows' dots with the normaliser zs [2F] (x: row g,
// y: row g + 8; not yet quad-reduced).
template <int F>
__device__ __forceinline__ float2 phi_q_frags(uint32_t (&phq)[2 * F / 16][4], const float (&ap)[F / 8][4],
                                              const float (&am)[F / 8][4], const float* zs, int t4) {
  float qz0 = 0.f, qz1 = 0.f;
#pragma unroll
  for (int j = 0; j < F / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      int c = 8 * j + 2 * t4 + e;
      qz0 += ap[j][e] * zs[c] + am[j][e] * zs[F + c];
      qz1 += ap[j][2 + e] * zs[c] + am[j][2 + e] * zs[F + c];
    }
  }
#pragma unroll
  for (int s = 0; s < F / 16; ++s) {
    mma::acc_to_a(phq[s], ap[2 * s], ap[2 * s + 1]);
    mma::acc_to_a(phq[F / 16 + s], am[2 * s], am[2 * s + 1]);
  }
  return make_float2(qz0, qz1);
}

}  // namespace
}  // namespace lizard::cuda
