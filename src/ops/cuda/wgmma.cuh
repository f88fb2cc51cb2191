// Warpgroup MMA (wgmma, sm_90a) helpers: bf16 x bf16 -> fp32, shapes m64nNk16, N in {64, 128}.
// A warpgroup is 4 consecutive warps (128 threads, first warp index divisible by 4); all of its
// threads must execute every wgmma_* call below together (warpgroup-uniform control flow).
//
// Shared-memory operands are given by 64-bit matrix descriptors (PTX ISA, "matrix descriptor"):
//   bits 0-13 start address >> 4, 16-29 leading byte offset (LBO) >> 4, 32-45 stride byte offset
//   (SBO) >> 4, 49-51 base offset (0: every swizzle atom is 1024-byte aligned), 62-63 swizzle mode
//   (1 = 128-byte swizzle).
// One smem layout serves every operand here ("SW128 tile"): a tile of R rows x C bf16 columns is C/64
// column blocks of R rows x 128 bytes each (block b at byte b * R * 128), and inside a block the
// 16-byte chunk c of row r sits at r * 128 + ((c ^ (r & 7)) * 16) (the XOR the hardware applies on
// address bits [4:6] ^= [7:9], so each block must start 1024-byte aligned).
//   K-major use (no transpose: A = [M][K] rows, B = [N][K] rows, K contiguous): rows are M or N,
//     SBO = 1024 (next group of 8 rows), LBO unused (the k16 slice, 32 bytes, lies inside one
//     128-byte row); the k16 step s of a block starts at block + (s % 4) * 32 bytes.
//   MN-major use (transposed B = [K][N] rows, N contiguous, imm-trans-b = 1): rows are K; SBO = 1024
//     (next 8 K rows), LBO = R * 128 (next 64-column block along N); the k16 step s starts at
//     s * 16 * 128 bytes.
// Register fragments (per warp w of the warpgroup, lane = 4 * g + t):
//   D (m64nN, fp32): d[4j + 0, 1] = (row 16w + g, cols 8j + 2t, +1), d[4j + 2, 3] = (row 16w + g + 8,
//     same cols), j < N / 8 (the mma.sync m16n8 C layout, tiled along N).
//   A (m64k16, bf16x2 regs): a0 = (row 16w + g, k 2t..2t+1), a1 = (row +8, k 2t..), a2 = (row g,
//     k 2t+8..), a3 = (row +8, k 2t+8..) (the mma.sync m16n8k16 A layout per warp).
// Ordering: wgmma_fence() before the first wgmma of a batch and whenever registers it reads (A,
// accumulators) were written by ordinary instructions; commit() closes a group, wait<n>() waits
// until at most n groups are pending. Shared memory written by ordinary stores or cp.async needs
// fence_proxy_async() in each writing thread (after its copies completed) before the barrier that
// precedes the wgmma reading it.
#pragma once
#include <cstdint>

namespace lizard::cuda::wg {

__device__ __forceinline__ uint64_t desc_sw128(uint32_t smem_byte_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return uint64_t((smem_byte_addr & 0x3FFFF) >> 4) | (uint64_t((lbo_bytes >> 4) & 0x3FFF) << 16) |
         (uint64_t((sbo_bytes >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}

// A descriptor moved by `bytes` within its tile (a k-step's slice): the start-address field (bits 0-13, the
// address >> 4) cannot carry into the next field because shared memory addresses stay below 2^18, so one 32-bit
// add on the low word does it (building each k-step's descriptor from its address cost ~12 instructions).
__device__ __forceinline__ uint64_t desc_advance(uint64_t d, uint32_t bytes) {
  const uint32_t lo = uint32_t(d) + (bytes >> 4), hi = uint32_t(d >> 32);
  return (uint64_t(hi) << 32) | lo;
}

// Byte offset of (row r, 16-byte chunk c) in an SW128 tile of R rows.
__host__ __device__ constexpr uint32_t sw128_offset(int R, int r, int c) {
  return uint32_t((c >> 3) * R * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Pins accumulator registers at this point of the program (the compiler must not move their reads
// or writes across an outstanding wgmma).
template <int n>
__device__ __forceinline__ void fence_regs(float (&r)[n]) {
#pragma unroll
  for (int i = 0; i < n; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// The accumulator operands of one m64nN wgmma: N / 2 fp32 registers per thread, as "{%0, ...}" in the
// instruction and as "+f" constraints (the repeated part of every form below).
#define LZ_WG_ACC32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define LZ_WG_ACC64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define LZ_WG_OUT32 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define LZ_WG_OUT64 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (+)= A B, A and B K-major in shared memory; scale_d = 0 overwrites d (d's inputs are ignored).
template <int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d);
// d += A B, A in registers, B MN-major ("transposed", [K][N], N contiguous) in shared memory.
template <int N>
__device__ __forceinline__ void wgmma_rs_tb(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db);
// d += A B, A in registers, B K-major ([N][K], K contiguous) in shared memory (imm-trans-b = 0).
template <int N>
__device__ __forceinline__ void wgmma_rs_kb(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db);

template <>
__device__ __forceinline__ void wgmma_ss<64>(float (&d)[32], uint64_t da, uint64_t db, int scale_d) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LZ_WG_ACC32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
               : LZ_WG_OUT32
               : "l"(da), "l"(db), "r"(scale_d)
               : "memory");
}

template <>
__device__ __forceinline__ void wgmma_ss<128>(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LZ_WG_ACC64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
               : LZ_WG_OUT64
               : "l"(da), "l"(db), "r"(scale_d)
               : "memory");
}

template <>
__device__ __forceinline__ void wgmma_rs_tb<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LZ_WG_ACC32 ", {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
               : LZ_WG_OUT32
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db)
               : "memory");
}

template <>
__device__ __forceinline__ void wgmma_rs_tb<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LZ_WG_ACC64 ", {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
               : LZ_WG_OUT64
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db)
               : "memory");
}

template <>
__device__ __forceinline__ void wgmma_rs_kb<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LZ_WG_ACC32 ", {%32, %33, %34, %35}, %36, 1, 1, 1, 0;\n"
               : LZ_WG_OUT32
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db)
               : "memory");
}

#undef LZ_WG_ACC32
#undef LZ_WG_ACC64
#undef LZ_WG_OUT32
#undef LZ_WG_OUT64

}  // namespace lizard::cuda::wg
