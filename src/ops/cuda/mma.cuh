// Warp-level bf16 tensor-core helpers (mma.sync m16n8k16, fp32 accumulate) and ldmatrix fragment
// loaders for shared-memory tiles. Fragment layouts (PTX ISA, m16n8k16 .bf16): lane = 4 * g + t.
//   A (16x16): a0 = (row g, k 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16x8):  b0 = (k 2t..2t+1, col g), b1 = (k 2t+8.., col g)
//   C (16x8):  c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, cols 2t, 2t+1)
// All loaders take a bf16 shared-memory base, its row stride in elements (a multiple of 8, padded
// so that 8 consecutive rows fall in distinct banks) and a tile origin.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>

namespace lizard::cuda::mma {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// A tile (16 x 16) of a row-major [m][k] matrix.
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* base, int ld, int m0, int k0) {
  const int l = threadIdx.x & 31;
  ldsm4(a, base + (m0 + (l & 15)) * ld + k0 + (l >> 4) * 8);
}

// A tile (16 x 16) of a matrix stored transposed, [k][m].
__device__ __forceinline__ void load_a_t(uint32_t (&a)[4], const bf16* base, int ld, int m0, int k0) {
  const int l = threadIdx.x & 31, mi = l >> 3, rr = l & 7;
  ldsm4t(a, base + (k0 + (mi >> 1) * 8 + rr) * ld + m0 + (mi & 1) * 8);
}

// B fragments for two n-tiles (n0..n0+15) and k0..k0+15 from storage [n][k] (k contiguous):
// b[0], b[1] for n-tile n0, b[2], b[3] for n-tile n0 + 8.
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const bf16* base, int ld, int n0, int k0) {
  const int l = threadIdx.x & 31, mi = l >> 3, rr = l & 7;
  ldsm4(b, base + (n0 + (mi >> 1) * 8 + rr) * ld + k0 + (mi & 1) * 8);
}

// Same fragments from storage [k][n] (n contiguous).
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const bf16* base, int ld, int n0, int k0) {
  const int l = threadIdx.x & 31, mi = l >> 3, rr = l & 7;
  ldsm4t(b, base + (k0 + (mi & 1) * 8 + rr) * ld + n0 + (mi >> 1) * 8);
}

constexpr float kLog2e = 1.4426950408889634f;  // log2(e): e^x = 2^(x log2 e)

// 2^x by the SFU (ex2.approx, flush-to-zero): -inf gives 0; ~2 ulp, far below any bf16 rounding. exp2f and
// __expf compile to the same MUFU.EX2 on the same argument plus a guard for results below 2^-126 (an FSETP
// and two predicated FMULs per call); here those flush to 0, every other result is bit-identical.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// e^x as __expf forms it (x times log2(e) rounded to float, then 2^x), without the guard.
__device__ __forceinline__ float fast_exp(float x) { return fast_exp2(x * kLog2e); }

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

__device__ __forceinline__ float2 unpack_bf16(uint32_t u) {
  __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&u);
  return __bfloat1622float2(h);
}

__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

// Multiply the two bf16 halves of a packed register by (s0, s1), rounding back to bf16.
__device__ __forceinline__ uint32_t scale_bf16x2(uint32_t u, float s0, float s1) {
  float2 f = unpack_bf16(u);
  return pack_bf16(f.x * s0, f.y * s1);
}

// Accumulator -> A fragment: two adjacent n-tiles of C (c0: columns 0..7, c1: 8..15) are, rounded to
// bf16, the A fragment whose k runs over those 16 columns (C and A share the row/column lane layout).
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

// The first S k-steps of an accumulator row block c[N][4] (N >= 2 S n-tiles) as A fragments.
template <int S, int N>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[S][4], const float (&c)[N][4]) {
  static_assert(2 * S <= N, "acc_to_a: not enough accumulator tiles");
#pragma unroll
  for (int s = 0; s < S; ++s) acc_to_a(a[s], c[2 * s], c[2 * s + 1]);
}

// The same from a flat accumulator c[4 N] (wgmma's layout: c[4 j + e] is c2d[j][e]).
template <int S, int N>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[S][4], const float (&c)[N]) {
  static_assert(8 * S <= N, "acc_to_a: not enough accumulator tiles");
#pragma unroll
  for (int s = 0; s < S; ++s) {
    a[s][0] = pack_bf16(c[8 * s], c[8 * s + 1]);
    a[s][1] = pack_bf16(c[8 * s + 2], c[8 * s + 3]);
    a[s][2] = pack_bf16(c[8 * s + 4], c[8 * s + 5]);
    a[s][3] = pack_bf16(c[8 * s + 6], c[8 * s + 7]);
  }
}

template <int N>
__device__ __forceinline__ void zero_acc(float (&c)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
}

// Scale an A fragment's rows by exp-style factors: rows g (a0, a2) by sa, rows g + 8 (a1, a3) by sb.
__device__ __forceinline__ void scale_a_rows(uint32_t (&a)[4], float sa, float sb) {
  a[0] = scale_bf16x2(a[0], sa, sa), a[1] = scale_bf16x2(a[1], sb, sb);
  a[2] = scale_bf16x2(a[2], sa, sa), a[3] = scale_bf16x2(a[3], sb, sb);
}

// Warp tile products acc[N][4] += A (16 x 16 KS) * B (16 KS x 8 N), N even, B in shared memory stored
// [n][k] (BLayout::NK) or [k][n] (BLayout::KN); A from shared memory rows r0.. (mma_smem, optionally
// row-scaled as in scale_a_rows) or from registers (mma_frag).
enum class BLayout { NK, KN };

template <BLayout BL>
__device__ __forceinline__ void load_b(uint32_t (&b)[4], const bf16* base, int ld, int n0, int k0) {
  if constexpr (BL == BLayout::NK)
    load_b_nk(b, base, ld, n0, k0);
  else
    load_b_kn(b, base, ld, n0, k0);
}

template <int S, BLayout BL, int N>
__device__ __forceinline__ void mma_frag(float (&acc)[N][4], const uint32_t (&a)[S][4], const bf16* B, int ldb) {
#pragma unroll
  for (int s = 0; s < S; ++s) {
#pragma unroll
    for (int np = 0; np < N / 2; ++np) {
      uint32_t bb[4];
      load_b<BL>(bb, B, ldb, np * 16, s * 16);
      mma16816(acc[2 * np], a[s], bb[0], bb[1]);
      mma16816(acc[2 * np + 1], a[s], bb[2], bb[3]);
    }
  }
}

// acc = P B: a 16 x 64 fp32 accumulator tile P (8 n-tiles), as bf16 A fragments, times the 64-row k x n
// shared tile B (row stride ldb).
template <int N>
__device__ __forceinline__ void acc_times_tile(float (&acc)[N][4], const float (&p)[8][4], const bf16* B, int ldb) {
  zero_acc(acc);
  uint32_t pa[4][4];
  acc_to_a(pa, p);
  mma_frag<4, BLayout::KN>(acc, pa, B, ldb);
}

template <int KS, BLayout BL, bool kScaled = false, int N>
__device__ __forceinline__ void mma_smem(float (&acc)[N][4], const bf16* A, int lda, int r0, const bf16* B, int ldb,
                                         float sa = 1.f, float sb = 1.f) {
#pragma unroll
  for (int s = 0; s < KS; ++s) {
    uint32_t fa[4];
    load_a(fa, A, lda, r0, s * 16);
    if constexpr (kScaled) scale_a_rows(fa, sa, sb);
#pragma unroll
    for (int np = 0; np < N / 2; ++np) {
      uint32_t bb[4];
      load_b<BL>(bb, B, ldb, np * 16, s * 16);
      mma16816(acc[2 * np], fa, bb[0], bb[1]);
      mma16816(acc[2 * np + 1], fa, bb[2], bb[3]);
    }
  }
}

// Two products sharing the k loop (and B's shape), their loads interleaved as in the flash backward:
// c1 += A1 B1, c2 += A2 B2, A1, A2 from shared memory rows r0.., B1, B2 stored [n][k].
template <int KS, int N>
__device__ __forceinline__ void mma_smem_pair(float (&c1)[N][4], float (&c2)[N][4], const bf16* A1, const bf16* A2,
                                              int lda, int r0, const bf16* B1, const bf16* B2, int ldb) {
#pragma unroll
  for (int s = 0; s < KS; ++s) {
    uint32_t a1[4], a2[4];
    load_a(a1, A1, lda, r0, s * 16);
    load_a(a2, A2, lda, r0, s * 16);
#pragma unroll
    for (int np = 0; np < N / 2; ++np) {
      uint32_t bb[4];
      load_b_nk(bb, B1, ldb, np * 16, s * 16);
      mma16816(c1[2 * np], a1, bb[0], bb[1]);
      mma16816(c1[2 * np + 1], a1, bb[2], bb[3]);
      load_b_nk(bb, B2, ldb, np * 16, s * 16);
      mma16816(c2[2 * np], a2, bb[0], bb[1]);
      mma16816(c2[2 * np + 1], a2, bb[2], bb[3]);
    }
  }
}

// The register-A counterpart: c1 += a1 B1, c2 += a2 B2, B1, B2 stored [k][n].
template <int S, int N>
__device__ __forceinline__ void mma_frag_pair(float (&c1)[N][4], float (&c2)[N][4], const uint32_t (&a1)[S][4],
                                              const uint32_t (&a2)[S][4], const bf16* B1, const bf16* B2, int ldb) {
#pragma unroll
  for (int s = 0; s < S; ++s) {
#pragma unroll
    for (int np = 0; np < N / 2; ++np) {
      uint32_t bb[4];
      load_b_kn(bb, B1, ldb, np * 16, s * 16);
      mma16816(c1[2 * np], a1[s], bb[0], bb[1]);
      mma16816(c1[2 * np + 1], a1[s], bb[2], bb[3]);
      load_b_kn(bb, B2, ldb, np * 16, s * 16);
      mma16816(c2[2 * np], a2[s], bb[0], bb[1]);
      mma16816(c2[2 * np + 1], a2[s], bb[2], bb[3]);
    }
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_min(float x) {
  x = fminf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fminf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// cp.async 16 bytes; src_bytes = 0 zero-fills the destination.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }

}  // namespace lizard::cuda::mma
