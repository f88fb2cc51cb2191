// Linear layer product y = x W^T (+ b) for weights of any dtype.
//  - n <= kMatvecMaxRows (decode): quant.h matvec straight on the stored (quantized) weights;
//    block-quantized types quantize the activations to 8 bits, as llama.cpp does.
//  - larger n (prefill): W is dequantized in tiles of rows to fp32 and multiplied with cblas_sgemm,
//    one tile per OpenMP task (BLAS itself runs single-threaded inside them), or read from a
//    fully dequantized fp32 copy when the caller keeps one.
#pragma once
#include <cstdint>
#include <vector>

#include "formats/dtype.h"

namespace lizard {

inline constexpr int64_t kMatvecMaxRows = 2;

// x: [n, in] with in = W.cols(); y: [n, out] with out = W.rows(); w_f32 (optional) = W as fp32
// [out, in]; bias (optional) [out]. y must not alias x.
// exact: never round the activations to 8 bits (MatvecPrecision::Exact: weights decoded in
// registers, fp32 products; about half the speed, the same arithmetic as prefill up to order).
void matmul(const TensorView& w, const float* x, int64_t n, float* y, const float* w_f32 = nullptr,
            const float* bias = nullptr, bool exact = false);

// Several matrix-vector products on the same x in one parallel region (decode: q/k/v, gate/up):
// each thread takes its share of every matrix's rows, so there is one barrier instead of one each.
struct MatvecJob {
  const TensorView* w;
  float* y;
  const float* bias = nullptr;
};
void matvec_many(const MatvecJob* jobs, int count, const float* x, bool exact = false);

// OpenMP owns the cores: BLAS is set to run single-threaded inside our tasks (once per process).
// Call before using cblas from inside an OpenMP region.
void blas_single_threaded();

// The whole tensor as fp32 (any dtype), e.g. for a cached copy or small vectors such as norm weights.
std::vector<float> dequantize_tensor(const TensorView& t);

}  // namespace lizard
