#include "ops/cpu/swiglu.h"

#include "ops/cpu/fast_exp.h"

namespace lizard {

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + fast_exp(-g)) * up[i];
  }
}

}  // namespace lizard
