// Matrix products on the GPU through cuBLASLt: bf16 operands, fp32 accumulation, bf16 or fp32 output.
// Row-major, like the rest of the project. Plain C++ can include this header (no CUDA headers).
//
//   D[M, N] = alpha * op(A) op(B) + beta * C
//   op(A) is [M, K]: A stored [M, K], or [K, M] when ta (transposed).
//   op(B) is [K, N]: B stored [K, N], or [N, K] when tb (a weight in PyTorch's [out, in] layout).
// C may be null (then beta is ignored) or equal D (accumulate in place); C has D's type.
// Descriptors and algorithm choices are cached per shape, so repeated calls cost one cublasLtMatmul.
// One cuBLASLt handle per device and one 32 MiB workspace per (device, stream), made on first use.
#pragma once
#include <cstdint>

#include "ops/cuda/fused_ops.h"  // DType, cudaStream_t

namespace lizard::cuda {

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A, const void* B, DType d_type, void* D,
          const void* C = nullptr, float alpha = 1.f, float beta = 0.f, cudaStream_t s = nullptr);

// Linear layer, weight W [out, in] bf16, bias [out] bf16 or null:
//   y[rows, out] = x[rows, in] W^T + bias (+ y when accumulate)            x bf16, y of type ydt
void linear_fwd(const void* x, const void* w, const void* bias, void* y, DType ydt, int64_t rows, int in, int out,
                bool accumulate = false, cudaStream_t s = nullptr);
//   dx[rows, in] = dy[rows, out] W (+ dx when accumulate)                   dy bf16, dx of type dxdt
void linear_bwd_input(const void* dy, const void* w, void* dx, DType dxdt, int64_t rows, int in, int out,
                      bool accumulate = false, cudaStream_t s = nullptr);
//   dW[out, in] = dy^T x (+ dW when accumulate)                              dy, x bf16; dW of type dwdt
void linear_bwd_weight(const void* dy, const void* x, void* dw, DType dwdt, int64_t rows, int in, int out,
                       bool accumulate = false, cudaStream_t s = nullptr);

// Elementwise helpers used around the GEMMs (grid-stride kernels).
void convert(DType from, const void* src, DType to, void* dst, int64_t n, cudaStream_t s = nullptr);
void add_inplace(DType dt, void* y, const void* x, int64_t n, cudaStream_t s = nullptr);  // y += x
void add_bias_rows(DType dt, void* y, const void* bias_bf16, int64_t rows, int cols, cudaStream_t s = nullptr);

}  // namespace lizard::cuda
