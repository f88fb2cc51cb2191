// The plain scalar kernels of quant.cpp, whatever SIMD the build picked (tests compare them).
#pragma once
#include "formats/quant.h"

namespace lizard::quant_ref {
float dot_row_scalar(DType t, const void* row, const float* x, const Q8Block* xq, int64_t n);
void dequantize_row_scalar(DType t, const void* src, float* dst, int64_t n);
void quantize_row_q8_scalar(const float* x, Q8Block* dst, int64_t n);
}  // namespace lizard::quant_ref
