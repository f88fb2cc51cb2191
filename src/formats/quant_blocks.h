// ggml's block layouts, byte for byte (internal to the quantization code).
#pragma once
#include <cstdint>

namespace lizard::qblock {

// 32 values: qs[i] * d.
struct Q8_0 {
  uint16_t d;  // fp16
  int8_t qs[32];
};
// 32 values: element j < 16 is the low nibble of qs[j], element j + 16 the high nibble; (q - 8) * d.
struct Q4_0 {
  uint16_t d;
  uint8_t qs[16];
};
// As Q4_0 but q * d + m.
struct Q4_1 {
  uint16_t d, m;
  uint8_t qs[16];
};
// 256 values in 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes.
// qs[32g .. 32g+31]: low nibbles are sub-block 2g, high nibbles sub-block 2g+1.
// value = d * sc[j] * q - dmin * mn[j].
struct Q4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
// 256 values in two halves of 128; 6-bit q = 4 bits from ql, 2 bits from qh; value d*sc[e/16]*(q-32).
struct Q6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};

static_assert(sizeof(Q8_0) == 34 && sizeof(Q4_0) == 18 && sizeof(Q4_1) == 20);
static_assert(sizeof(Q4_K) == 144 && sizeof(Q6_K) == 210);

// Scale and min of sub-block j (0..7) of a Q4_K block: j < 4 live in the low 6 bits of bytes j and
// j+4; j >= 4 take 4 low bits from byte j+4 (scale: low nibble, min: high nibble) and 2 high bits
// from the top of bytes j-4 (scale) and j (min).
inline void q4k_scale_min(const uint8_t* s, int j, uint8_t& sc, uint8_t& mn) {
  if (j < 4) {
    sc = s[j] & 63;
    mn = s[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
    mn = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

}  // namespace lizard::qblock
