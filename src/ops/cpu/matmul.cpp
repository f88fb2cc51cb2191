#include "ops/cpu/matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <mutex>

#include "formats/quant.h"
#include "util/error.h"

namespace lizard {

// Debian's OpenBLAS is the pthread build, whose own spinning workers would compete with OpenMP's.
void blas_single_threaded() {
  static std::once_flag once;
  std::call_once(once, [] {
#ifdef OPENBLAS_VERSION
    openblas_set_num_threads(1);
#endif
  });
}

std::vector<float> dequantize_tensor(const TensorView& t) {
  const int64_t rows = t.rows(), cols = t.cols();
  std::vector<float> out(static_cast<size_t>(rows * cols));
  const size_t row_bytes = dtype_row_bytes(t.type, cols);
  const auto* base = static_cast<const uint8_t*>(t.data);
#pragma omp parallel for schedule(static) if (rows > 64)
  for (int64_t r = 0; r < rows; ++r) dequantize_row(t.type, base + r * row_bytes, out.data() + r * cols, cols);
  return out;
}

void matvec_many(const MatvecJob* jobs, int count, const float* x, bool exact) {
  const auto prec = exact ? MatvecPrecision::Exact : MatvecPrecision::Q8;
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    for (int j = 0; j < count; ++j) {
      const TensorView& w = *jobs[j].w;
      const int64_t rows = w.shape[0], in = w.shape[1];
      const int64_t r0 = rows * tid / nt, r1 = rows * (tid + 1) / nt;
      if (r1 > r0)
        matvec(w.type, static_cast<const uint8_t*>(w.data) + r0 * dtype_row_bytes(w.type, in), r1 - r0, in, x,
               jobs[j].y + r0, prec);
      if (const float* b = jobs[j].bias)
        for (int64_t r = r0; r < r1; ++r) jobs[j].y[r] += b[r];
    }
  }
}

void matmul(const TensorView& w, const float* x, int64_t n, float* y, const float* w_f32, const float* bias,
            bool exact) {
  LZ_CHECK(w.shape.size() == 2, "weight '{}' must be 2-D, has shape {}", w.name, w.shape_str());
  const int64_t out = w.shape[0], in = w.shape[1];
  if (n <= 0) return;
  if (n <= kMatvecMaxRows) {
    const auto prec = exact ? MatvecPrecision::Exact : MatvecPrecision::Q8;
    for (int64_t i = 0; i < n; ++i) matvec(w.type, w.data, out, in, x + i * in, y + i * out, prec);
  } else {
    blas_single_threaded();
    const int threads = omp_get_max_threads();
    // Enough tiles to balance the threads, each large enough to keep sgemm efficient.
    int64_t tile = (out + 4 * threads - 1) / (4 * threads);
    tile = std::clamp<int64_t>((tile + 15) / 16 * 16, 32, 256);
    const int64_t n_tiles = (out + tile - 1) / tile;
#pragma omp parallel
    {
      thread_local std::vector<float> buf;
      if (!w_f32 && static_cast<int64_t>(buf.size()) < tile * in) buf.resize(tile * in);
#pragma omp for schedule(dynamic, 1)
      for (int64_t ti = 0; ti < n_tiles; ++ti) {
        const int64_t r0 = ti * tile, rows = std::min(tile, out - r0);
        const float* wt;
        if (w_f32) {
          wt = w_f32 + r0 * in;
        } else {
          dequantize_rows(w.type, w.data, r0, rows, in, buf.data());
          wt = buf.data();
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(rows),
                    static_cast<int>(in), 1.0f, x, static_cast<int>(in), wt, static_cast<int>(in), 0.0f,
                    y + r0, static_cast<int>(out));
      }
    }
  }
  if (bias) {
    for (int64_t i = 0; i < n; ++i) {
      float* yi = y + i * out;
#pragma omp simd
      for (int64_t j = 0; j < out; ++j) yi[j] += bias[j];
    }
  }
}

}  // namespace lizard
