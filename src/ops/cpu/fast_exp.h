// exp(x) for fp32 that vectorizes inside `#pragma omp simd` loops (glibc's expf is a scalar call).
// Cephes-style: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r, 2^n from the exponent
// bits; about 1 ulp. Inputs are clamped to [-87.3, 88.3], so results stay normal and finite
// (exp of anything below -87.3 gives ~1e-38 instead of 0, harmless in softmax and SiLU).
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace lizard {

#pragma omp declare simd
inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;  // ln2 split in two for exactness
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(e);
}

}  // namespace lizard
