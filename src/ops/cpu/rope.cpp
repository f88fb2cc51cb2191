#include "ops/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "util/error.h"

namespace lizard {

std::vector<double> rope_inv_freq_f64(int head_dim, double theta, const RopeScaling& s) {
  LZ_CHECK(head_dim > 0 && head_dim % 2 == 0, "RoPE needs an even head dimension, got {}", head_dim);
  LZ_CHECK(theta > 0, "RoPE theta must be positive, got {}", theta);
  const int half = head_dim / 2;
  std::vector<double> inv(half);
  for (int j = 0; j < half; ++j) inv[j] = 1.0 / std::pow(theta, 2.0 * j / head_dim);
  if (s.kind == RopeScaling::Kind::Linear) {
    LZ_CHECK(s.factor > 0, "RoPE scaling factor must be positive, got {}", s.factor);
    for (auto& f : inv) f /= s.factor;
  } else if (s.kind == RopeScaling::Kind::Llama3) {
    LZ_CHECK(s.factor > 0 && s.high_freq_factor > s.low_freq_factor && s.original_max_position > 0,
             "bad Llama-3 RoPE scaling (factor {}, low {}, high {}, original context {})", s.factor,
             s.low_freq_factor, s.high_freq_factor, s.original_max_position);
    // Long wavelengths are slowed by `factor`, short ones kept, the band between blended smoothly.
    const double old_ctx = s.original_max_position;
    const double low_wavelen = old_ctx / s.low_freq_factor, high_wavelen = old_ctx / s.high_freq_factor;
    for (auto& f : inv) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen < high_wavelen) continue;
      if (wavelen > low_wavelen) {
        f /= s.factor;
      } else {
        const double smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
  }
  return inv;
}

std::vector<float> rope_inv_freq(int head_dim, float theta, const RopeScaling& s) {
  const auto d = rope_inv_freq_f64(head_dim, theta, s);
  return std::vector<float>(d.begin(), d.end());
}

void rope_apply(float* x, int64_t n, int64_t stride, int n_heads, int head_dim, int64_t pos0,
                const float* inv_freq) {
  const int half = head_dim / 2;
#pragma omp parallel for schedule(static) if (n > 16)
  for (int64_t i = 0; i < n; ++i) {
    // Angles in fp32 as HF computes them; cos/sin of that angle to full precision.
    float cs[512], sn[512];
    const float pos = static_cast<float>(pos0 + i);
    for (int j0 = 0; j0 < half; j0 += 512) {
      const int m = std::min(512, half - j0);
      for (int j = 0; j < m; ++j) {
        const double a = pos * inv_freq[j0 + j];
        cs[j] = static_cast<float>(std::cos(a));
        sn[j] = static_cast<float>(std::sin(a));
      }
      float* row = x + i * stride;
      for (int h = 0; h < n_heads; ++h) {
        float* lo = row + static_cast<int64_t>(h) * head_dim + j0;
        float* hi = lo + half;
#pragma omp simd
        for (int j = 0; j < m; ++j) {
          const float a = lo[j], b = hi[j];
          lo[j] = a * cs[j] - b * sn[j];
          hi[j] = b * cs[j] + a * sn[j];
        }
      }
    }
  }
}

}  // namespace lizard
