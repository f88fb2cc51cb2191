// Block quantization formats of GGUF (ggml): F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K.
// Dequantizers turn a row into fp32; the dot products are the decode path that reads the
// quantized weights directly (no fp32 copy of the model is kept for them).
#pragma once
#include <cstdint>

#include "formats/dtype.h"

namespace lizard {

// dst[0..n) = dequantized src row; n must be a multiple of the type's block size.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);

// Rows [row0, row0 + nrows) of a row-major weight w (row stride dtype_row_bytes(t, n)) to fp32:
// dst is nrows x n, row-major. Multi-threaded (OpenMP) for large tiles unless already inside a
// parallel region. For prefill: dequantize a tile, then sgemm it.
void dequantize_rows(DType t, const void* w, int64_t row0, int64_t nrows, int64_t n, float* dst);

// Activations quantized once per matrix-vector product, as llama.cpp does: blocks of 32 int8 with an
// fp32 scale (and the block sum, used by Q4_1/Q4_K's offsets). size n/32 blocks.
struct Q8Block {
  float d;      // scale
  float s;      // d * sum(qs)
  int8_t qs[32];
};
void quantize_row_q8(const float* x, Q8Block* dst, int64_t n);

// Dot product of one weight row (type t, n elements) with an activation vector.
// For F32/F16/BF16 `x` is used; for block-quantized types `xq` (quantize_row_q8 of x) is used.
float dot_row(DType t, const void* row, const float* x, const Q8Block* xq, int64_t n);

// y[r] = dot(W[r], x) for rows [0, rows) of a row-major weight (row stride dtype_row_bytes(t, n)).
// Multi-threaded with OpenMP over rows.
void matvec(DType t, const void* w, int64_t rows, int64_t n, const float* x, float* y);

// How a block-quantized matvec treats the activations. Exact: x stays fp32 and each weight block
// is dequantized in registers (the values dequantize_row gives) and multiplied in fp32 with fp32
// accumulation, so decode matches the dequantize + sgemm prefill to fp32 rounding. Q8: x is
// quantized to int8 blocks first (quantize_row_q8, llama.cpp's way): faster, but it perturbs logits.
// F32/F16/BF16 weights use fp32 x either way.
enum class MatvecPrecision { Exact, Q8 };
void matvec(DType t, const void* w, int64_t rows, int64_t n, const float* x, float* y, MatvecPrecision p);

// Exact dot product of one weight row (n elements) with fp32 x: sum_j dequant(w_j) x_j in fp32.
float dot_row_f32(DType t, const void* row, const float* x, int64_t n);

// For tests and benchmarks: the exact matvec with the kernels of one instruction set
// (0 scalar, 1 AVX2, 2 AVX-512); returns false, computing nothing, if that set is not compiled in.
bool matvec_exact_isa(int isa, DType t, const void* w, int64_t rows, int64_t n, const float* x, float* y);

}  // namespace lizard
