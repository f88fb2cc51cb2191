// RMSNorm (Llama): y = x / sqrt(mean(x^2) + eps) * w, row by row.
#pragma once
#include <cstdint>

namespace lizard {

// x, y: [rows, dim] (y may alias x); w: [dim]. Multi-threaded over rows.
void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps);

}  // namespace lizard
