// Quantization formats: hand-built blocks with hand-computed values, then random blocks and rows
// against a plain reference written here (independent of src/formats/quant.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "formats/quant.h"
#include "formats/quant_ref.h"
#include "util/error.h"
#include "util/half.h"

using namespace lizard;

namespace {

// fp16 bit patterns of exactly representable values
constexpr uint16_t H_1 = 0x3C00, H_2 = 0x4000, H_0_5 = 0x3800, H_0_25 = 0x3400, H_M1 = 0xBC00, H_0_125 = 0x3000;

void put16(std::vector<uint8_t>& b, size_t off, uint16_t v) {
  b[off] = static_cast<uint8_t>(v & 0xFF);  // GGUF is little-endian
  b[off + 1] = static_cast<uint8_t>(v >> 8);
}

std::vector<float> deq(DType t, const std::vector<uint8_t>& b, int64_t n) {
  std::vector<float> y(n, std::nanf(""));
  dequantize_row(t, b.data(), y.data(), n);
  return y;
}

// ---------------------------------------------------------------------------------------------
// Plain reference of the formats, element by element.

int block_of(DType t) { return (t == DType::Q4_K || t == DType::Q6_K) ? 256 : (t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_1) ? 32 : 1; }
int bytes_of(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::Q8_0: return 34;
    case DType::Q4_0: return 18;
    case DType::Q4_1: return 20;
    case DType::Q4_K: return 144;
    case DType::Q6_K: return 210;
  }
  return 0;
}
size_t row_size(DType t, int64_t n) { return n / block_of(t) * bytes_of(t); }

double hf(const uint8_t* p) { return f16_to_f32(static_cast<uint16_t>(p[0] | p[1] << 8)); }

// Value of element e (0 <= e < n) of a row.
double ref_elem(DType t, const uint8_t* row, int64_t e) {
  switch (t) {
    case DType::F32: {
      float f;
      std::memcpy(&f, row + 4 * e, 4);
      return f;
    }
    case DType::F16: return hf(row + 2 * e);
    case DType::BF16: return bf16_to_f32(static_cast<uint16_t>(row[2 * e] | row[2 * e + 1] << 8));
    case DType::Q8_0: {
      const uint8_t* b = row + 34 * (e / 32);
      return hf(b) * static_cast<int8_t>(b[2 + e % 32]);
    }
    case DType::Q4_0: {
      const uint8_t* b = row + 18 * (e / 32);
      int k = e % 32;
      int q = k < 16 ? (b[2 + k] & 15) : (b[2 + k - 16] >> 4);
      return hf(b) * (q - 8);
    }
    case DType::Q4_1: {
      const uint8_t* b = row + 20 * (e / 32);
      int k = e % 32;
      int q = k < 16 ? (b[4 + k] & 15) : (b[4 + k - 16] >> 4);
      return hf(b) * q + hf(b + 2);
    }
    case DType::Q4_K: {
      const uint8_t* b = row + 144 * (e / 256);
      const uint8_t* s = b + 4;
      int k = e % 256, j = k / 32, l = k % 32;
      int sc, mn;
      if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
      } else {
        sc = (s[j + 4] & 15) + 16 * (s[j - 4] >> 6);
        mn = (s[j + 4] >> 4) + 16 * (s[j] >> 6);
      }
      uint8_t byte = b[16 + 32 * (j / 2) + l];
      int q = (j % 2 == 0) ? (byte & 15) : (byte >> 4);
      return hf(b) * sc * q - hf(b + 2) * mn;
    }
    case DType::Q6_K: {
      const uint8_t* b = row + 210 * (e / 256);
      int k = e % 256, h = k / 128, r = k % 128, p = r / 32, l = r % 32;
      uint8_t lo = b[64 * h + 32 * (p % 2) + l];
      int q = (p < 2 ? (lo & 15) : (lo >> 4)) + 16 * ((b[128 + 32 * h + l] >> (2 * p)) & 3);
      return hf(b + 208) * static_cast<int8_t>(b[192 + k / 16]) * (q - 32);
    }
  }
  return NAN;
}

// Size of the constant part the kernels fold in separately (q*d + offset): they sum the two parts
// apart and subtract, so their rounding scales with both magnitudes, not with the (maybe tiny) value.
double ref_offset_mag(DType t, const uint8_t* row, int64_t e) {
  switch (t) {
    case DType::Q4_0: return 8 * std::fabs(hf(row + 18 * (e / 32)));
    case DType::Q4_1: return std::fabs(hf(row + 20 * (e / 32) + 2));
    case DType::Q4_K: return std::fabs(hf(row + 144 * (e / 256) + 2)) * 63;
    case DType::Q6_K: {
      const uint8_t* b = row + 210 * (e / 256);
      return 32 * std::fabs(hf(b + 208) * static_cast<int8_t>(b[192 + (e % 256) / 16]));
    }
    default: return 0;
  }
}

std::vector<uint8_t> random_row(DType t, int64_t n, std::mt19937& rng) {
  std::vector<uint8_t> row(row_size(t, n));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto& b : row) b = static_cast<uint8_t>(byte(rng));
  auto put = [&](size_t off, float v) {
    uint16_t h = f32_to_f16(v);
    row[off] = h & 0xFF;
    row[off + 1] = h >> 8;
  };
  int64_t nb = n / block_of(t);
  for (int64_t i = 0; i < nb; ++i) {
    switch (t) {
      case DType::F32:
        for (int64_t k = 0; k < n; ++k) {
          float f = u(rng);
          std::memcpy(&row[4 * k], &f, 4);
        }
        return row;
      case DType::F16:
        for (int64_t k = 0; k < n; ++k) put(2 * k, u(rng));
        return row;
      case DType::BF16:
        for (int64_t k = 0; k < n; ++k) {
          uint16_t h = f32_to_bf16(u(rng));
          row[2 * k] = h & 0xFF;
          row[2 * k + 1] = h >> 8;
        }
        return row;
      case DType::Q8_0: put(34 * i, u(rng) * 0.01f); break;
      case DType::Q4_0: put(18 * i, u(rng) * 0.1f); break;
      case DType::Q4_1: put(20 * i, u(rng) * 0.1f), put(20 * i + 2, u(rng)); break;
      case DType::Q4_K: put(144 * i, u(rng) * 0.01f), put(144 * i + 2, u(rng) * 0.01f); break;
      case DType::Q6_K: put(210 * i + 208, u(rng) * 0.001f); break;
    }
  }
  return row;
}

// Activation quantization as specified: d = max|x| / 127, q = round(x / d), s = d * sum(q).
struct RefQ8 {
  double d;
  int q[32];
};

const DType kAll[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0,
                      DType::Q4_1, DType::Q4_K, DType::Q6_K};
const DType kQuant[] = {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K};

bool is_quant(DType t) { return block_of(t) > 1; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Hand-built blocks.

TEST(QuantHand, F32F16BF16) {
  std::vector<uint8_t> b(8);
  put16(b, 0, H_1), put16(b, 2, 0xC000), put16(b, 4, 0x0001), put16(b, 6, 0x7BFF);
  auto y = deq(DType::F16, b, 4);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -2.0f);
  EXPECT_EQ(y[2], std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(y[3], 65504.0f);
  put16(b, 0, 0x3F80), put16(b, 2, 0xC040), put16(b, 4, 0x4049), put16(b, 6, 0x0000);
  y = deq(DType::BF16, b, 4);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -3.0f);
  EXPECT_EQ(y[2], 3.140625f);
  EXPECT_EQ(y[3], 0.0f);
  float f[3] = {1.5f, -0.25f, 7.0f};
  std::vector<uint8_t> fb(12);
  std::memcpy(fb.data(), f, 12);
  y = deq(DType::F32, fb, 3);
  EXPECT_EQ(y[0], 1.5f);
  EXPECT_EQ(y[1], -0.25f);
  EXPECT_EQ(y[2], 7.0f);
}

TEST(QuantHand, Q8_0) {
  std::vector<uint8_t> b(34);
  put16(b, 0, H_0_5);
  for (int i = 0; i < 32; ++i) b[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(i - 16));
  b[2 + 31] = 0x80;  // -128 is a legal int8 in a file
  auto y = deq(DType::Q8_0, b, 32);
  EXPECT_EQ(y[0], -8.0f);
  EXPECT_EQ(y[16], 0.0f);
  EXPECT_EQ(y[17], 0.5f);
  EXPECT_EQ(y[30], 7.0f);
  EXPECT_EQ(y[31], -64.0f);
  for (int i = 0; i < 31; ++i) EXPECT_EQ(y[i], 0.5f * (i - 16)) << i;
}

TEST(QuantHand, Q4_0) {
  std::vector<uint8_t> b(18);
  put16(b, 0, H_2);
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(j | (15 - j) << 4);
  auto y = deq(DType::Q4_0, b, 32);
  const float expect[32] = {-16, -14, -12, -10, -8, -6, -4, -2, 0, 2, 4, 6, 8, 10, 12, 14,
                            14, 12, 10, 8, 6, 4, 2, 0, -2, -4, -6, -8, -10, -12, -14, -16};
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], expect[i]) << i;
}

TEST(QuantHand, Q4_1) {
  std::vector<uint8_t> b(20);
  put16(b, 0, H_0_25), put16(b, 2, H_M1);
  for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(j | (15 - j) << 4);
  auto y = deq(DType::Q4_1, b, 32);
  EXPECT_EQ(y[0], -1.0f);
  EXPECT_EQ(y[4], 0.0f);
  EXPECT_EQ(y[15], 2.75f);
  EXPECT_EQ(y[16], 2.75f);
  EXPECT_EQ(y[31], -1.0f);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 0.25f * j - 1.0f) << j;
    EXPECT_EQ(y[16 + j], 0.25f * (15 - j) - 1.0f) << j;
  }
}

namespace {
// Q4_K block: d = 1, dmin = 0.5, scales {1,2,3,4,33,40,63,17}, mins {0,5,10,63,20,33,48,1}
// packed by hand into the 12 bytes: bytes 0-3 = sc[0..3] | (sc[4..7] >> 4) << 6,
// bytes 4-7 = mn[0..3] | (mn[4..7] >> 4) << 6, bytes 8-11 = (sc[4..7] & 15) | (mn[4..7] & 15) << 4.
const int kSc[8] = {1, 2, 3, 4, 33, 40, 63, 17}, kMn[8] = {0, 5, 10, 63, 20, 33, 48, 1};
std::vector<uint8_t> hand_q4k() {
  std::vector<uint8_t> b(144);
  put16(b, 0, H_1), put16(b, 2, H_0_5);
  const uint8_t s[12] = {0x81, 0x82, 0xC3, 0x44, 0x40, 0x85, 0xCA, 0x3F, 0x41, 0x18, 0x0F, 0x11};
  std::memcpy(&b[4], s, 12);
  // qs[32g + l]: low nibble l & 15 (sub-block 2g), high nibble (l + g) & 15 (sub-block 2g+1)
  for (int g = 0; g < 4; ++g)
    for (int l = 0; l < 32; ++l) b[16 + 32 * g + l] = static_cast<uint8_t>((l & 15) | ((l + g) & 15) << 4);
  return b;
}
}  // namespace

TEST(QuantHand, Q4_K) {
  auto y = deq(DType::Q4_K, hand_q4k(), 256);
  EXPECT_EQ(y[0], 0.0f);     // sub-block 0, q 0: 1*1*0 - 0.5*0
  EXPECT_EQ(y[33], -0.5f);   // sub-block 1, q 1: 2*1 - 0.5*5
  EXPECT_EQ(y[130], 56.0f);  // sub-block 4, q 2: 33*2 - 0.5*20
  EXPECT_EQ(y[200], 480.0f); // sub-block 6, q 8: 63*8 - 0.5*48
  EXPECT_EQ(y[255], 33.5f);  // sub-block 7, q (31+3)&15 = 2: 17*2 - 0.5*1
  for (int e = 0; e < 256; ++e) {
    int j = e / 32, l = e % 32, g = j / 2;
    int q = (j % 2 == 0) ? (l & 15) : ((l + g) & 15);
    EXPECT_EQ(y[e], 1.0f * kSc[j] * q - 0.5f * kMn[j]) << e;
  }
}

TEST(QuantHand, Q6_K) {
  std::vector<uint8_t> b(210, 0);
  put16(b, 208, H_0_5);
  b[0] = 0x21;   // element 0 low bits 1; element 64 low bits 2
  b[32] = 0x43;  // element 32 low bits 3; element 96 low bits 4
  b[128] = 0xE4; // qh: element 0 +0, element 32 +16, element 64 +32, element 96 +48
  b[64] = 0x0F;  // second half: element 128 low bits 15
  b[192 + 0] = 1, b[192 + 2] = 2, b[192 + 4] = static_cast<uint8_t>(-3), b[192 + 6] = 4, b[192 + 8] = 5;
  auto y = deq(DType::Q6_K, b, 256);
  EXPECT_EQ(y[0], -15.5f);   // 0.5 * 1 * (1 - 32)
  EXPECT_EQ(y[1], -16.0f);   // 0.5 * 1 * (0 - 32)
  EXPECT_EQ(y[16], 0.0f);    // scale 1 is 0
  EXPECT_EQ(y[32], -13.0f);  // 0.5 * 2 * (19 - 32)
  EXPECT_EQ(y[33], -32.0f);  // 0.5 * 2 * -32
  EXPECT_EQ(y[64], -3.0f);   // 0.5 * -3 * (34 - 32)
  EXPECT_EQ(y[65], 48.0f);   // 0.5 * -3 * -32
  EXPECT_EQ(y[96], 40.0f);   // 0.5 * 4 * (52 - 32)
  EXPECT_EQ(y[128], -42.5f); // 0.5 * 5 * (15 - 32)
  EXPECT_EQ(y[129], -80.0f); // 0.5 * 5 * -32
  for (int e = 144; e < 256; ++e) EXPECT_EQ(y[e], 0.0f) << e;

  // A whole block of distinct quants, packed bit by bit: q(e) = (7e + 3) mod 64, scale k - 8 (k = e/16).
  std::fill(b.begin(), b.end(), 0);
  put16(b, 208, H_0_125);
  for (int k = 0; k < 16; ++k) b[192 + k] = static_cast<uint8_t>(static_cast<int8_t>(k - 8));
  for (int e = 0; e < 256; ++e) {
    int q = (7 * e + 3) % 64, h = e / 128, r = e % 128, p = r / 32, l = r % 32;
    b[64 * h + 32 * (p & 1) + l] |= static_cast<uint8_t>((q & 15) << (4 * (p >> 1)));
    b[128 + 32 * h + l] |= static_cast<uint8_t>((q >> 4) << (2 * p));
  }
  y = deq(DType::Q6_K, b, 256);
  for (int e = 0; e < 256; ++e) EXPECT_EQ(y[e], 0.125f * (e / 16 - 8) * ((7 * e + 3) % 64 - 32)) << e;
}

TEST(QuantHand, QuantizeQ8) {
  std::vector<float> x(64, 0.0f);
  x[0] = 127, x[1] = -64, x[2] = 3, x[3] = -2.4f, x[4] = 0.3f, x[31] = 100.6f;
  x[32 + 5] = -2.54f;  // second block: d = 0.02
  x[32 + 6] = 1.0f;
  std::vector<Q8Block> q(2);
  quantize_row_q8(x.data(), q.data(), 64);
  EXPECT_EQ(q[0].d, 1.0f);
  EXPECT_EQ(q[0].qs[0], 127);
  EXPECT_EQ(q[0].qs[1], -64);
  EXPECT_EQ(q[0].qs[2], 3);
  EXPECT_EQ(q[0].qs[3], -2);
  EXPECT_EQ(q[0].qs[4], 0);
  EXPECT_EQ(q[0].qs[31], 101);
  EXPECT_EQ(q[0].s, 127 - 64 + 3 - 2 + 101);
  EXPECT_FLOAT_EQ(q[1].d, 0.02f);
  EXPECT_EQ(q[1].qs[5], -127);
  EXPECT_EQ(q[1].qs[6], 50);
  EXPECT_FLOAT_EQ(q[1].s, 0.02f * (50 - 127));
  // all-zero block: d = 0, no NaN
  std::vector<float> z(32, 0.0f);
  quantize_row_q8(z.data(), q.data(), 32);
  EXPECT_EQ(q[0].d, 0.0f);
  EXPECT_EQ(q[0].s, 0.0f);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(q[0].qs[i], 0);
}

// Dot products of hand blocks with hand activations: x = 0.25 * qx with qx[i] = (i % 3) - 1.
TEST(QuantHand, DotRows) {
  Q8Block xq[8];
  double xs[256];
  for (int b = 0; b < 8; ++b) {
    xq[b].d = 0.25f;
    int sum = 0;
    for (int i = 0; i < 32; ++i) {
      xq[b].qs[i] = static_cast<int8_t>((i % 3) - 1);
      xs[32 * b + i] = 0.25 * ((i % 3) - 1);
      sum += (i % 3) - 1;
    }
    xq[b].s = 0.25f * sum;
  }
  // Q8_0 block: 0.5 * (i - 16) (i < 31), element 31 = -64; qx: -1,0,1,-1,0,1,...
  {
    std::vector<uint8_t> b(34);
    put16(b, 0, H_0_5);
    for (int i = 0; i < 32; ++i) b[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(i - 16));
    b[33] = 0x80;
    double e = 0;
    for (int i = 0; i < 31; ++i) e += 0.5 * (i - 16) * xs[i];
    e += -64 * xs[31];  // 31 % 3 = 1 -> x = 0
    EXPECT_EQ(dot_row(DType::Q8_0, b.data(), nullptr, xq, 32), static_cast<float>(e));
  }
  // Q4_0 of QuantHand.Q4_0: sum over i of expect[i] * x[i]
  {
    std::vector<uint8_t> b(18);
    put16(b, 0, H_2);
    for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(j | (15 - j) << 4);
    double e = 0;
    for (int j = 0; j < 16; ++j) e += 2.0 * (j - 8) * xs[j] + 2.0 * (7 - j) * xs[16 + j];
    EXPECT_EQ(dot_row(DType::Q4_0, b.data(), nullptr, xq, 32), static_cast<float>(e));
  }
  {
    std::vector<uint8_t> b(20);
    put16(b, 0, H_0_25), put16(b, 2, H_M1);
    for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(j | (15 - j) << 4);
    double e = 0;
    for (int j = 0; j < 16; ++j) e += (0.25 * j - 1) * xs[j] + (0.25 * (15 - j) - 1) * xs[16 + j];
    EXPECT_EQ(dot_row(DType::Q4_1, b.data(), nullptr, xq, 32), static_cast<float>(e));
  }
  {
    auto b = hand_q4k();
    double e = 0;
    for (int k = 0; k < 256; ++k) {
      int j = k / 32, l = k % 32, g = j / 2;
      int q = (j % 2 == 0) ? (l & 15) : ((l + g) & 15);
      e += (1.0 * kSc[j] * q - 0.5 * kMn[j]) * xs[k];
    }
    EXPECT_NEAR(dot_row(DType::Q4_K, b.data(), nullptr, xq, 256), e, 1e-6 * std::fabs(e));
  }
  {
    std::vector<uint8_t> b(210, 0);
    put16(b, 208, H_0_125);
    for (int k = 0; k < 16; ++k) b[192 + k] = static_cast<uint8_t>(static_cast<int8_t>(k - 8));
    for (int k = 0; k < 256; ++k) {
      int q = (7 * k + 3) % 64, h = k / 128, r = k % 128, p = r / 32, l = r % 32;
      b[64 * h + 32 * (p & 1) + l] |= static_cast<uint8_t>((q & 15) << (4 * (p >> 1)));
      b[128 + 32 * h + l] |= static_cast<uint8_t>((q >> 4) << (2 * p));
    }
    double e = 0;
    for (int k = 0; k < 256; ++k) e += 0.125 * (k / 16 - 8) * ((7 * k + 3) % 64 - 32) * xs[k];
    EXPECT_NEAR(dot_row(DType::Q6_K, b.data(), nullptr, xq, 256), e, 1e-6 * std::fabs(e));
  }
}

TEST(QuantHand, BadSizesThrow) {
  std::vector<uint8_t> b(1024);
  std::vector<float> y(1024);
  EXPECT_THROW(dequantize_row(DType::Q4_1, b.data(), y.data(), 48), Error);
  EXPECT_THROW(dequantize_row(DType::Q4_K, b.data(), y.data(), 128), Error);
  EXPECT_THROW(quantize_row_q8(y.data(), nullptr, 33), Error);
  EXPECT_THROW(dequantize_row(static_cast<DType>(7), b.data(), y.data(), 32), Error);
}

// ---------------------------------------------------------------------------------------------
// Random blocks and rows against the element-wise reference.

TEST(QuantRandom, DequantizeMatchesReference) {
  unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  for (DType t : kAll) {
    for (int64_t n : {256, 512, 1536, 4096}) {
      auto row = random_row(t, n, rng);
      std::vector<float> y(n), ys(n);
      dequantize_row(t, row.data(), y.data(), n);
      quant_ref::dequantize_row_scalar(t, row.data(), ys.data(), n);
      for (int64_t e = 0; e < n; ++e) {
        double r = ref_elem(t, row.data(), e);
        // Every format's value is an exact product of small integers and fp16 scales (at most 25
        // significant bits), so one correct rounding to float is the only error: demand bit equality.
        ASSERT_EQ(y[e], static_cast<float>(r)) << dtype_name(t) << " n=" << n << " e=" << e;
        ASSERT_EQ(ys[e], static_cast<float>(r)) << "scalar " << dtype_name(t) << " n=" << n << " e=" << e;
      }
    }
  }
}

TEST(QuantRandom, DequantizeRowsTile) {
  unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  for (DType t : kAll) {
    const int64_t n = 512, rows = 67, row0 = 5, nrows = 61;
    std::vector<uint8_t> w;
    for (int r = 0; r < rows; ++r) {
      auto row = random_row(t, n, rng);
      w.insert(w.end(), row.begin(), row.end());
    }
    std::vector<float> tile(nrows * n), one(n);
    dequantize_rows(t, w.data(), row0, nrows, n, tile.data());
    for (int64_t r = 0; r < nrows; ++r) {
      dequantize_row(t, w.data() + (row0 + r) * row_size(t, n), one.data(), n);
      ASSERT_EQ(std::memcmp(one.data(), tile.data() + r * n, n * sizeof(float)), 0) << dtype_name(t) << " row " << r;
    }
  }
}

TEST(QuantRandom, QuantizeQ8Properties) {
  unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, 3.f);
  for (int64_t n : {32, 96, 576, 4096}) {
    std::vector<float> x(n);
    for (auto& v : x) v = g(rng);
    std::vector<Q8Block> q(n / 32), qs(n / 32);
    quantize_row_q8(x.data(), q.data(), n);
    quant_ref::quantize_row_q8_scalar(x.data(), qs.data(), n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[32 * b + i]));
      ASSERT_EQ(q[b].d, amax / 127.0f);
      ASSERT_EQ(qs[b].d, q[b].d);
      int sum = 0;
      for (int i = 0; i < 32; ++i) {
        double exact = x[32 * b + i] / static_cast<double>(q[b].d);
        // round to nearest (x * (1/d) may sit one float ulp off x / d, so allow a hair past 0.5)
        ASSERT_LE(std::fabs(q[b].qs[i] - exact), 0.5 + 1e-4) << "block " << b << " i " << i;
        ASSERT_LE(std::abs(q[b].qs[i]), 127);
        ASSERT_EQ(q[b].qs[i], qs[b].qs[i]);
        sum += q[b].qs[i];
      }
      ASSERT_EQ(q[b].s, q[b].d * static_cast<float>(sum));
    }
  }
}

namespace {
// Checks one weight row's dot product three ways; returns false (with a gtest failure) on mismatch.
void check_dot(DType t, const uint8_t* row, const float* x, const Q8Block* xq, int64_t n, float got,
               const char* what) {
  // (1) Against dot(dequant(w), dequant(quantize(x))) in fp64, to 1e-5 of the L1 size
  // sum(|w| + |offset|)|x| (L1, not |dot|: the dot may cancel to ~0; offsets: ref_offset_mag).
  // The int8 block sums are exact, so only float rounding remains: to first order at most
  // (chain length + 3) * 2^-24 * L1. The quantized kernels' chains hold <= n/32 terms
  // (<= 131 * 6e-8 = 8e-6 at n = 4096); the float types' scalar fallback has one chain of n terms
  // whose errors are random-signed, ~sqrt(n) * 2^-24 = 4e-6 at 4096.
  // (2) Against the fp32 x: quantizing x moves each element by at most d/2 = max|x_block|/254,
  // so |dot(w,x) - dot(w,xq)| <= sum_i |w_i| d_b / 2 exactly; check that bound (+ the float slack).
  double exact_q = 0, l1_q = 0, exact_x = 0, l1_x = 0, qbound = 0;
  for (int64_t e = 0; e < n; ++e) {
    double w = ref_elem(t, row, e);
    double xv = is_quant(t) ? static_cast<double>(xq[e / 32].d) * xq[e / 32].qs[e % 32] : x[e];
    exact_q += w * xv;
    l1_q += (std::fabs(w) + ref_offset_mag(t, row, e)) * std::fabs(xv);
    exact_x += w * x[e];
    l1_x += std::fabs(w * x[e]);
    if (is_quant(t)) qbound += std::fabs(w) * xq[e / 32].d / 2;
  }
  double tol = 1e-5 * l1_q + 1e-30;
  EXPECT_NEAR(got, exact_q, tol) << what << " " << dtype_name(t) << " n=" << n;
  EXPECT_NEAR(got, exact_x, qbound * (1 + 1e-6) + 1e-5 * l1_x + 1e-30) << what << " vs fp32 x " << dtype_name(t) << " n=" << n;
}
}  // namespace

TEST(QuantRandom, DotRowAndMatvec) {
  unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, 1.f);
  for (DType t : kAll) {
    std::vector<int64_t> sizes = block_of(t) == 256 ? std::vector<int64_t>{256, 512, 768, 1536, 4096}
                                                    : std::vector<int64_t>{32, 64, 96, 288, 576, 1536, 4096};
    if (!is_quant(t)) sizes.insert(sizes.end(), {1, 7, 13, 37, 301, 1001});
    for (int64_t n : sizes) {
      for (int64_t rows : {1, 6, 7, 37, 129}) {
        if (rows * n > 600000) continue;
        std::vector<uint8_t> w;
        for (int64_t r = 0; r < rows; ++r) {
          auto row = random_row(t, n, rng);
          w.insert(w.end(), row.begin(), row.end());
        }
        std::vector<float> x(n);
        for (auto& v : x) v = g(rng);
        std::vector<Q8Block> xq((n + 31) / 32);
        if (is_quant(t)) quantize_row_q8(x.data(), xq.data(), n);
        std::vector<float> y(rows, NAN);
        matvec(t, w.data(), rows, n, x.data(), y.data());
        for (int64_t r = 0; r < rows; ++r) {
          const uint8_t* row = w.data() + r * row_size(t, n);
          check_dot(t, row, x.data(), xq.data(), n, dot_row(t, row, x.data(), xq.data(), n), "dot_row");
          check_dot(t, row, x.data(), xq.data(), n, quant_ref::dot_row_scalar(t, row, x.data(), xq.data(), n),
                    "scalar");
          check_dot(t, row, x.data(), xq.data(), n, y[r], "matvec");
          if (HasFailure()) return;
        }
      }
    }
  }
}

// Extreme blocks: q8 weights of -128, activations at +-127, largest nibbles and 6-bit values, so the
// int16 pair sums of maddubs would overflow if a kernel got the operand order wrong.
TEST(QuantRandom, ExtremeValues) {
  unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int64_t n = 512;
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = (i % 2 ? 1.f : -1.f) * (rng() % 2 ? 1.0f : 1.0f);
  std::vector<Q8Block> xq(n / 32);
  quantize_row_q8(x.data(), xq.data(), n);
  for (DType t : kQuant) {
    for (uint8_t fill : {0x00, 0x80, 0xFF, 0x7F}) {
      auto row = random_row(t, n, rng);
      size_t bb = bytes_of(t);
      for (size_t i = 0; i < row.size(); ++i) {
        size_t o = i % bb;
        bool payload = (t == DType::Q8_0 && o >= 2) || (t == DType::Q4_0 && o >= 2) || (t == DType::Q4_1 && o >= 4) ||
                       (t == DType::Q4_K && o >= 16) || (t == DType::Q6_K && o < 192);
        if (payload) row[i] = fill;
      }
      check_dot(t, row.data(), x.data(), xq.data(), n, dot_row(t, row.data(), x.data(), xq.data(), n), "extreme");
      float y[1];
      matvec(t, row.data(), 1, n, x.data(), y);
      check_dot(t, row.data(), x.data(), xq.data(), n, y[0], "extreme matvec");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Exact (fp32-activation) matvec: against fp64 dot(dequant(w), x), every compiled instruction set.

namespace {
const char* kIsaName[] = {"scalar", "avx2", "avx512"};
}  // namespace

TEST(QuantExact, MatchesFp64) {
  unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, 1.f);
  for (DType t : kAll) {
    std::vector<int64_t> sizes = block_of(t) == 256 ? std::vector<int64_t>{256, 512, 768, 1536, 4096}
                                                    : std::vector<int64_t>{32, 64, 96, 288, 576, 1536, 4096};
    if (!is_quant(t)) sizes.insert(sizes.end(), {1, 7, 37, 301});
    for (int64_t n : sizes) {
      for (int64_t rows : {1, 3, 5, 7, 37}) {
        if (rows * n > 100000) continue;
        std::vector<uint8_t> w;
        for (int64_t r = 0; r < rows; ++r) {
          auto row = random_row(t, n, rng);
          w.insert(w.end(), row.begin(), row.end());
        }
        std::vector<float> x(n);
        for (auto& v : x) v = g(rng);
        std::vector<double> want(rows), l1(rows);
        for (int64_t r = 0; r < rows; ++r) {
          const uint8_t* row = w.data() + r * row_size(t, n);
          for (int64_t e = 0; e < n; ++e) {
            double wv = ref_elem(t, row, e);
            want[r] += wv * x[e];
            l1[r] += std::fabs(wv * x[e]);
          }
        }
        auto check = [&](const std::vector<float>& y, const std::string& what) {
          for (int64_t r = 0; r < rows; ++r)
            ASSERT_NEAR(y[r], want[r], 1e-5 * l1[r] + 1e-30)
                << what << " " << dtype_name(t) << " n=" << n << " rows=" << rows << " row " << r;
        };
        std::vector<float> y(rows, NAN);
        matvec(t, w.data(), rows, n, x.data(), y.data(), MatvecPrecision::Exact);
        check(y, "matvec Exact");
        for (int64_t r = 0; r < rows; ++r) y[r] = dot_row_f32(t, w.data() + r * row_size(t, n), x.data(), n);
        check(y, "dot_row_f32");
        for (int isa = 0; isa < 3; ++isa) {
          std::fill(y.begin(), y.end(), NAN);
          if (matvec_exact_isa(isa, t, w.data(), rows, n, x.data(), y.data())) check(y, kIsaName[isa]);
        }
      }
    }
  }
}

// A unit vector x = e_j picks dequantize_row's value out of each row: exact for the kernels that
// multiply by the dequantized weights; AVX2's Q4 kernels fold the block constants apart (ulps).
TEST(QuantExact, UnitVectorGivesDequantizedValue) {
  unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int64_t n = 512, rows = 7;
  for (DType t : kQuant) {
    std::vector<uint8_t> w;
    for (int64_t r = 0; r < rows; ++r) {
      auto row = random_row(t, n, rng);
      w.insert(w.end(), row.begin(), row.end());
    }
    std::vector<float> deqw(rows * n);
    dequantize_rows(t, w.data(), 0, rows, n, deqw.data());
    for (int trial = 0; trial < 8; ++trial) {
      int64_t j = rng() % n;
      std::vector<float> x(n, 0.f), y(rows);
      x[j] = 1.f;
      for (int isa = 0; isa < 3; ++isa) {
        if (!matvec_exact_isa(isa, t, w.data(), rows, n, x.data(), y.data())) continue;
        bool folded = isa == 1 && (t == DType::Q4_1 || t == DType::Q4_K);
        for (int64_t r = 0; r < rows; ++r) {
          float v = deqw[r * n + j];
          if (folded)
            ASSERT_NEAR(y[r], v, 4e-7 * (std::fabs(v) + ref_offset_mag(t, w.data() + r * row_size(t, n), j)))
                << kIsaName[isa] << " " << dtype_name(t) << " j=" << j;
          else
            ASSERT_EQ(y[r], v) << kIsaName[isa] << " " << dtype_name(t) << " j=" << j;
        }
      }
    }
  }
}

// The precision flag keeps Q8 as it was: bitwise the 5-argument matvec.
TEST(QuantExact, Q8FlagIsTheOldMatvec) {
  unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, 1.f);
  const int64_t n = 768, rows = 37;
  for (DType t : kAll) {
    std::vector<uint8_t> w;
    for (int64_t r = 0; r < rows; ++r) {
      auto row = random_row(t, n, rng);
      w.insert(w.end(), row.begin(), row.end());
    }
    std::vector<float> x(n), a(rows), b(rows);
    for (auto& v : x) v = g(rng);
    matvec(t, w.data(), rows, n, x.data(), a.data());
    matvec(t, w.data(), rows, n, x.data(), b.data(), MatvecPrecision::Q8);
    for (int64_t r = 0; r < rows; ++r) ASSERT_EQ(a[r], b[r]) << dtype_name(t);
  }
}

TEST(QuantExact, BadSizesThrow) {
  std::vector<uint8_t> w(1024);
  std::vector<float> x(64), y(1);
  EXPECT_THROW(matvec(DType::Q4_K, w.data(), 1, 64, x.data(), y.data(), MatvecPrecision::Exact), Error);
  EXPECT_THROW(dot_row_f32(DType::Q8_0, w.data(), x.data(), 33), Error);
}
