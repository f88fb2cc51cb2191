#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "util/half.h"

using namespace lizard;

TEST(Half, F16RoundTripAllValues) {
  for (uint32_t h = 0; h < 65536; ++h) {
    uint16_t x = static_cast<uint16_t>(h);
    float f = f16_to_f32(x);
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), x) << h;
  }
}

TEST(Half, F16RoundsToNearest) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> u(-70000.f, 70000.f);
  for (int i = 0; i < 100000; ++i) {
    float f = u(rng) * (i % 3 == 0 ? 1e-6f : 1.f);
    float r = f16_to_f32(f32_to_f16(f));
    if (std::isinf(r)) continue;
    // the neighbours of the rounded value are no closer
    uint16_t h = f32_to_f16(f);
    float up = f16_to_f32(h + 1), dn = f16_to_f32(h - 1);
    if (!std::isnan(up) && !std::isinf(up)) EXPECT_LE(std::fabs(r - f), std::fabs(up - f));
    if (!std::isnan(dn) && !std::isinf(dn)) EXPECT_LE(std::fabs(r - f), std::fabs(dn - f));
  }
}

TEST(Half, BF16RoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_bf16(f), h);
  }
}
