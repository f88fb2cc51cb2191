// Dequantization, activation quantization and the quantized dot products of the decode path.
// SIMD paths are chosen at compile time (CMake builds with -march=native, or AVX2+FMA+F16C);
// the scalar code is the reference and the fallback.
#include "formats/quant.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define LZ_Q_AVX2 1
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define LZ_Q_VNNI 1
#endif
#if defined(__AVX512F__)
#define LZ_Q_AVX512 1
#endif
#endif

#include "formats/quant_blocks.h"
#include "formats/quant_ref.h"
#include "util/error.h"
#include "util/half.h"

namespace lizard {

namespace {

inline float h2f(uint16_t h) {
#ifdef LZ_Q_AVX2
  return _cvtsh_ss(h);
#else
  return f16_to_f32(h);
#endif
}

struct Layout {
  int block;  // elements per block
  int bytes;  // bytes per block
};

Layout layout(DType t) {
  switch (t) {
    case DType::F32: return {1, 4};
    case DType::F16: return {1, 2};
    case DType::BF16: return {1, 2};
    case DType::Q8_0: return {32, 34};
    case DType::Q4_0: return {32, 18};
    case DType::Q4_1: return {32, 20};
    case DType::Q4_K: return {256, 144};
    case DType::Q6_K: return {256, 210};
  }
  fail("quant: unsupported tensor type id {}", static_cast<uint32_t>(t));
}

Layout checked_layout(DType t, int64_t n) {
  Layout l = layout(t);
  LZ_CHECK(n >= 0 && n % l.block == 0, "quant: row of {} elements is not a multiple of {}'s block of {}",
           n, dtype_name(t), l.block);
  return l;
}

inline size_t row_bytes(Layout l, int64_t n) { return static_cast<size_t>(n / l.block) * l.bytes; }

// ---------------------------------------------------------------------------------------------
// Scalar dequantization (reference + fallback).

void deq_q8_0_scalar(const qblock::Q8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    float d = h2f(b[i].d);
    for (int j = 0; j < 32; ++j) y[j] = b[i].qs[j] * d;
  }
}

void deq_q4_0_scalar(const qblock::Q4_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    float d = h2f(b[i].d);
    for (int j = 0; j < 16; ++j) {
      y[j] = ((b[i].qs[j] & 0x0F) - 8) * d;
      y[j + 16] = ((b[i].qs[j] >> 4) - 8) * d;
    }
  }
}

void deq_q4_1_scalar(const qblock::Q4_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    float d = h2f(b[i].d), m = h2f(b[i].m);
    for (int j = 0; j < 16; ++j) {
      y[j] = (b[i].qs[j] & 0x0F) * d + m;
      y[j + 16] = (b[i].qs[j] >> 4) * d + m;
    }
  }
}

void deq_q4_k_scalar(const qblock::Q4_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 256) {
    float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    for (int g = 0; g < 4; ++g) {
      uint8_t sc0, m0, sc1, m1;
      qblock::q4k_scale_min(b[i].scales, 2 * g, sc0, m0);
      qblock::q4k_scale_min(b[i].scales, 2 * g + 1, sc1, m1);
      float d0 = d * sc0, mm0 = dmin * m0, d1 = d * sc1, mm1 = dmin * m1;
      const uint8_t* q = b[i].qs + 32 * g;
      for (int l = 0; l < 32; ++l) {
        y[64 * g + l] = d0 * (q[l] & 0x0F) - mm0;
        y[64 * g + 32 + l] = d1 * (q[l] >> 4) - mm1;
      }
    }
  }
}

void deq_q6_k_scalar(const qblock::Q6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 256) {
    float d = h2f(b[i].d);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = b[i].ql + 64 * h;
      const uint8_t* qh = b[i].qh + 32 * h;
      const int8_t* sc = b[i].scales + 8 * h;
      float* o = y + 128 * h;
      for (int l = 0; l < 32; ++l) {
        int q0 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        int q1 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        int s = l / 16;
        o[l] = d * sc[s + 0] * q0;
        o[l + 32] = d * sc[s + 2] * q1;
        o[l + 64] = d * sc[s + 4] * q2;
        o[l + 96] = d * sc[s + 6] * q3;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Scalar dot products (reference + fallback). Each block's integer sum is exact; the float
// combination follows the same formulas as the SIMD kernels.

float dot_q8_0_scalar(const qblock::Q8_0* b, const Q8Block* x, int64_t nb) {
  float acc = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t s = 0;
    for (int j = 0; j < 32; ++j) s += b[i].qs[j] * x[i].qs[j];
    acc += h2f(b[i].d) * x[i].d * static_cast<float>(s);
  }
  return acc;
}

float dot_q4_0_scalar(const qblock::Q4_0* b, const Q8Block* x, int64_t nb) {
  float acc = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t s = 0;
    for (int j = 0; j < 16; ++j)
      s += ((b[i].qs[j] & 0x0F) - 8) * x[i].qs[j] + ((b[i].qs[j] >> 4) - 8) * x[i].qs[j + 16];
    acc += h2f(b[i].d) * x[i].d * static_cast<float>(s);
  }
  return acc;
}

float dot_q4_1_scalar(const qblock::Q4_1* b, const Q8Block* x, int64_t nb) {
  float acc = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t s = 0;
    for (int j = 0; j < 16; ++j) s += (b[i].qs[j] & 0x0F) * x[i].qs[j] + (b[i].qs[j] >> 4) * x[i].qs[j + 16];
    acc += h2f(b[i].d) * x[i].d * static_cast<float>(s) + h2f(b[i].m) * x[i].s;
  }
  return acc;
}

float dot_q4_k_scalar(const qblock::Q4_K* b, const Q8Block* x, int64_t nb) {
  float acc = 0;
  for (int64_t i = 0; i < nb; ++i, x += 8) {
    float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, mn;
      qblock::q4k_scale_min(b[i].scales, j, sc, mn);
      const uint8_t* q = b[i].qs + 32 * (j / 2);
      int shift = (j & 1) * 4;
      int32_t s = 0;
      for (int l = 0; l < 32; ++l) s += ((q[l] >> shift) & 0x0F) * x[j].qs[l];
      acc += d * sc * x[j].d * static_cast<float>(s) - dmin * mn * x[j].s;
    }
  }
  return acc;
}

float dot_q6_k_scalar(const qblock::Q6_K* b, const Q8Block* x, int64_t nb) {
  float acc = 0;
  for (int64_t i = 0; i < nb; ++i, x += 8) {
    float d = h2f(b[i].d);
    for (int j = 0; j < 8; ++j) {  // Q8 block j = half j/4, quarter p = j%4
      int h = j / 4, p = j % 4;
      const uint8_t* ql = b[i].ql + 64 * h + 32 * (p & 1);
      const uint8_t* qh = b[i].qh + 32 * h;
      int lshift = (p >> 1) * 4, hshift = 2 * p;
      int32_t s[2] = {0, 0};
      for (int l = 0; l < 32; ++l) {
        int q = (((ql[l] >> lshift) & 0x0F) | (((qh[l] >> hshift) & 3) << 4)) - 32;
        s[l / 16] += q * x[j].qs[l];
      }
      acc += d * x[j].d * static_cast<float>(b[i].scales[2 * j] * s[0] + b[i].scales[2 * j + 1] * s[1]);
    }
  }
  return acc;
}

float dot_f32_scalar(const float* w, const float* x, int64_t n) {
  float acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += w[i] * x[i];
  return acc;
}
float dot_f16_scalar(const uint16_t* w, const float* x, int64_t n) {
  float acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += h2f(w[i]) * x[i];
  return acc;
}
float dot_bf16_scalar(const uint16_t* w, const float* x, int64_t n) {
  float acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += bf16_to_f32(w[i]) * x[i];
  return acc;
}

void quantize_q8_scalar(const float* x, Q8Block* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 32) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    float d = amax / 127.0f;
    float id = d != 0 ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < 32; ++j) {
      int q = static_cast<int>(std::nearbyint(x[j] * id));  // round half to even, as cvtps does
      q = std::clamp(q, -127, 127);
      dst[i].qs[j] = static_cast<int8_t>(q);
      sum += q;
    }
    dst[i].d = d;
    dst[i].s = d * static_cast<float>(sum);
  }
}

#ifdef LZ_Q_AVX2
// ---------------------------------------------------------------------------------------------
// AVX2 (+ AVX-512 VNNI on 256-bit registers when present).

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// Sums of u8 * s8 over groups of 4 bytes -> 8 int32. u must be <= 127 or s small enough that a
// pair of products fits int16 (true for every caller: nibbles, 6-bit values, |q8| <= 128 * 127).
inline __m256i dot_us(__m256i u, __m256i s) {
#ifdef LZ_Q_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15), then high nibbles (16..31).
inline __m256i unpack_nibbles16(const uint8_t* p) {
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

inline __m256i loadu256(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

float dot_q8_0_avx2(const qblock::Q8_0* b, const Q8Block* x, int64_t nb) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 1 < nb; i += 2) {
    __m256i w0 = loadu256(b[i].qs), w1 = loadu256(b[i + 1].qs);
    // |w| * (x with w's sign): u8 * s8 products; |w| may be 128, x is within +-127.
    __m256i p0 = dot_us(_mm256_abs_epi8(w0), _mm256_sign_epi8(loadu256(x[i].qs), w0));
    __m256i p1 = dot_us(_mm256_abs_epi8(w1), _mm256_sign_epi8(loadu256(x[i + 1].qs), w1));
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(h2f(b[i].d) * x[i].d), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(h2f(b[i + 1].d) * x[i + 1].d), acc1);
  }
  for (; i < nb; ++i) {
    __m256i w0 = loadu256(b[i].qs);
    __m256i p0 = dot_us(_mm256_abs_epi8(w0), _mm256_sign_epi8(loadu256(x[i].qs), w0));
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(h2f(b[i].d) * x[i].d), acc0);
  }
  return hsum(_mm256_add_ps(acc0, acc1));
}

// sum (q - 8) * x = sum q * x - 8 * sum x, and d_x * sum x is the activation block's s.
float dot_q4_0_avx2(const qblock::Q4_0* b, const Q8Block* x, int64_t nb) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  float off = 0;
  int64_t i = 0;
  for (; i + 1 < nb; i += 2) {
    float d0 = h2f(b[i].d), d1 = h2f(b[i + 1].d);
    __m256i p0 = dot_us(unpack_nibbles16(b[i].qs), loadu256(x[i].qs));
    __m256i p1 = dot_us(unpack_nibbles16(b[i + 1].qs), loadu256(x[i + 1].qs));
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(d0 * x[i].d), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(d1 * x[i + 1].d), acc1);
    off += d0 * x[i].s + d1 * x[i + 1].s;
  }
  for (; i < nb; ++i) {
    float d0 = h2f(b[i].d);
    __m256i p0 = dot_us(unpack_nibbles16(b[i].qs), loadu256(x[i].qs));
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(d0 * x[i].d), acc0);
    off += d0 * x[i].s;
  }
  return hsum(_mm256_add_ps(acc0, acc1)) - 8.0f * off;
}

// sum (q d + m) x_q d_x = d d_x sum q x_q + m s_x.
float dot_q4_1_avx2(const qblock::Q4_1* b, const Q8Block* x, int64_t nb) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  float off = 0;
  int64_t i = 0;
  for (; i + 1 < nb; i += 2) {
    __m256i p0 = dot_us(unpack_nibbles16(b[i].qs), loadu256(x[i].qs));
    __m256i p1 = dot_us(unpack_nibbles16(b[i + 1].qs), loadu256(x[i + 1].qs));
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(h2f(b[i].d) * x[i].d), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(h2f(b[i + 1].d) * x[i + 1].d), acc1);
    off += h2f(b[i].m) * x[i].s + h2f(b[i + 1].m) * x[i + 1].s;
  }
  for (; i < nb; ++i) {
    __m256i p0 = dot_us(unpack_nibbles16(b[i].qs), loadu256(x[i].qs));
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(h2f(b[i].d) * x[i].d), acc0);
    off += h2f(b[i].m) * x[i].s;
  }
  return hsum(_mm256_add_ps(acc0, acc1)) + off;
}

// Decodes the 8 scales and 8 mins of a Q4_K block into bytes sc[0..7], mn[0..7].
inline void q4k_unpack_scales(const uint8_t* s, uint8_t* sc, uint8_t* mn) {
  uint32_t a, bb, c;
  std::memcpy(&a, s, 4);
  std::memcpy(&bb, s + 4, 4);
  std::memcpy(&c, s + 8, 4);
  uint32_t sc_lo = a & 0x3F3F3F3Fu;                                           // scales 0..3
  uint32_t mn_lo = bb & 0x3F3F3F3Fu;                                          // mins 0..3
  uint32_t sc_hi = (c & 0x0F0F0F0Fu) | ((a >> 2) & 0x30303030u);              // scales 4..7
  uint32_t mn_hi = ((c >> 4) & 0x0F0F0F0Fu) | ((bb >> 2) & 0x30303030u);      // mins 4..7
  std::memcpy(sc, &sc_lo, 4);
  std::memcpy(sc + 4, &sc_hi, 4);
  std::memcpy(mn, &mn_lo, 4);
  std::memcpy(mn + 4, &mn_hi, 4);
}

float dot_q4_k_avx2(const qblock::Q4_K* b, const Q8Block* x, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  float off = 0;
  for (int64_t i = 0; i < nb; ++i, x += 8) {
    float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    uint8_t sc[8], mn[8];
    q4k_unpack_scales(b[i].scales, sc, mn);
    float o = 0;
    for (int g = 0; g < 4; ++g) {
      __m256i q = loadu256(b[i].qs + 32 * g);
      __m256i lo = _mm256_and_si256(q, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      __m256i p0 = dot_us(lo, loadu256(x[2 * g].qs));
      __m256i p1 = dot_us(hi, loadu256(x[2 * g + 1].qs));
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(d * sc[2 * g] * x[2 * g].d), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(d * sc[2 * g + 1] * x[2 * g + 1].d), acc1);
      o += mn[2 * g] * x[2 * g].s + mn[2 * g + 1] * x[2 * g + 1].s;
    }
    off += dmin * o;
  }
  return hsum(_mm256_add_ps(acc0, acc1)) - off;
}

// Q6_K: 6-bit q in 0..63, value (q - 32) * sc * d. Per Q8 block: sum q x - 32 sum x over each half
// of 16 (their own scales); int32 lanes 0..3 hold the first 16 elements, lanes 4..7 the second.
float dot_q6_k_avx2(const qblock::Q6_K* b, const Q8Block* x, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30), c32 = _mm256_set1_epi8(32);
  // lane index patterns picking scale 2p (lanes 0..3) and 2p+1 (lanes 4..7) out of 8 floats
  const __m256i idx0 = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  const __m256i idx1 = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
  const __m256i idx2 = _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5);
  const __m256i idx3 = _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i, x += 8) {
    __m256 d = _mm256_set1_ps(h2f(b[i].d));
    for (int h = 0; h < 2; ++h) {
      const Q8Block* xh = x + 4 * h;
      __m256i A = loadu256(b[i].ql + 64 * h), B = loadu256(b[i].ql + 64 * h + 32);
      __m256i H = loadu256(b[i].qh + 32 * h);
      __m256i q0 = _mm256_or_si256(_mm256_and_si256(A, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30));
      __m256i q1 = _mm256_or_si256(_mm256_and_si256(B, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30));
      __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), m4), _mm256_and_si256(H, m30));
      __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(H, 2), m30));
      __m256 scf = _mm256_mul_ps(
          d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b[i].scales + 8 * h)))));
      __m256i x0 = loadu256(xh[0].qs), x1 = loadu256(xh[1].qs), x2 = loadu256(xh[2].qs), x3 = loadu256(xh[3].qs);
      __m256i p0 = _mm256_sub_epi32(dot_us(q0, x0), dot_us(c32, x0));
      __m256i p1 = _mm256_sub_epi32(dot_us(q1, x1), dot_us(c32, x1));
      __m256i p2 = _mm256_sub_epi32(dot_us(q2, x2), dot_us(c32, x2));
      __m256i p3 = _mm256_sub_epi32(dot_us(q3, x3), dot_us(c32, x3));
      __m256 f0 = _mm256_mul_ps(_mm256_permutevar8x32_ps(scf, idx0), _mm256_set1_ps(xh[0].d));
      __m256 f1 = _mm256_mul_ps(_mm256_permutevar8x32_ps(scf, idx1), _mm256_set1_ps(xh[1].d));
      __m256 f2 = _mm256_mul_ps(_mm256_permutevar8x32_ps(scf, idx2), _mm256_set1_ps(xh[2].d));
      __m256 f3 = _mm256_mul_ps(_mm256_permutevar8x32_ps(scf, idx3), _mm256_set1_ps(xh[3].d));
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), f0, acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), f1, acc1);
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p2), f2, acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p3), f3, acc1);
    }
  }
  return hsum(_mm256_add_ps(acc0, acc1));
}

float dot_f32_avx2(const float* w, const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += w[i] * x[i];
  return s;
}

inline __m256 load_f16x8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load_bf16x8(const uint16_t* p) {
  __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

template <__m256 (*Load)(const uint16_t*), float (*Cvt)(uint16_t)>
float dot_half_avx2(const uint16_t* w, const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(Load(w + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(Load(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    a2 = _mm256_fmadd_ps(Load(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
    a3 = _mm256_fmadd_ps(Load(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(Load(w + i), _mm256_loadu_ps(x + i), a0);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += Cvt(w[i]) * x[i];
  return s;
}

void quantize_q8_avx2(const float* x, Q8Block* dst, int64_t nb) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t i = 0; i < nb; ++i, x += 32) {
    __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16),
           v3 = _mm256_loadu_ps(x + 24);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float d = _mm_cvtss_f32(m4) / 127.0f;
    float id = d != 0 ? 1.0f / d : 0.0f;
    __m256 vid = _mm256_set1_ps(id);
    // cvtps rounds half to even (default MXCSR); |x * id| <= 127 up to rounding, never past 127.5
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
    int32_t sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
    __m256i p01 = _mm256_packs_epi32(i0, i1), p23 = _mm256_packs_epi32(i2, i3);
    __m256i p = _mm256_packs_epi16(p01, p23);  // lane-interleaved groups of 4
    p = _mm256_permutevar8x32_epi32(p, perm);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[i].qs), p);
    dst[i].d = d;
    dst[i].s = d * static_cast<float>(sum);
  }
}

// ---- dequantization to fp32 (prefill feeds sgemm with these) ----

// dst[0..16) = q[k] * a + c for 16 unsigned bytes
inline void store_u8x16(__m128i q, float* dst, __m256 a, __m256 c) {
  __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
  __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
  _mm256_storeu_ps(dst, _mm256_fmadd_ps(f0, a, c));
  _mm256_storeu_ps(dst + 8, _mm256_fmadd_ps(f1, a, c));
}
inline void store_u8x32(__m256i q, float* dst, __m256 a, __m256 c) {
  store_u8x16(_mm256_castsi256_si128(q), dst, a, c);
  store_u8x16(_mm256_extracti128_si256(q, 1), dst + 16, a, c);
}

void deq_q8_0_avx2(const qblock::Q8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    __m256 d = _mm256_set1_ps(h2f(b[i].d));
    for (int k = 0; k < 4; ++k) {
      __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b[i].qs + 8 * k));
      _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
    }
  }
}
void deq_q4_0_avx2(const qblock::Q4_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32) {
    float d = h2f(b[i].d);
    store_u8x32(unpack_nibbles16(b[i].qs), y, _mm256_set1_ps(d), _mm256_set1_ps(-8.0f * d));
  }
}
void deq_q4_1_avx2(const qblock::Q4_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += 32)
    store_u8x32(unpack_nibbles16(b[i].qs), y, _mm256_set1_ps(h2f(b[i].d)), _mm256_set1_ps(h2f(b[i].m)));
}
void deq_q4_k_avx2(const qblock::Q4_K* b, float* y, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t i = 0; i < nb; ++i, y += 256) {
    float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    uint8_t sc[8], mn[8];
    q4k_unpack_scales(b[i].scales, sc, mn);
    for (int g = 0; g < 4; ++g) {
      __m256i q = loadu256(b[i].qs + 32 * g);
      store_u8x32(_mm256_and_si256(q, m4), y + 64 * g, _mm256_set1_ps(d * sc[2 * g]),
                  _mm256_set1_ps(-dmin * mn[2 * g]));
      store_u8x32(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), y + 64 * g + 32,
                  _mm256_set1_ps(d * sc[2 * g + 1]), _mm256_set1_ps(-dmin * mn[2 * g + 1]));
    }
  }
}
void deq_q6_k_avx2(const qblock::Q6_K* b, float* y, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  for (int64_t i = 0; i < nb; ++i, y += 256) {
    float d = h2f(b[i].d);
    for (int h = 0; h < 2; ++h) {
      __m256i A = loadu256(b[i].ql + 64 * h), B = loadu256(b[i].ql + 64 * h + 32);
      __m256i H = loadu256(b[i].qh + 32 * h);
      __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(A, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30)),
          _mm256_or_si256(_mm256_and_si256(B, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), m4), _mm256_and_si256(H, m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), m4),
                          _mm256_and_si256(_mm256_srli_epi16(H, 2), m30))};
      const int8_t* sc = b[i].scales + 8 * h;
      float* o = y + 128 * h;
      for (int p = 0; p < 4; ++p) {
        float s0 = d * sc[2 * p], s1 = d * sc[2 * p + 1];
        store_u8x16(_mm256_castsi256_si128(q[p]), o + 32 * p, _mm256_set1_ps(s0), _mm256_set1_ps(-32.0f * s0));
        store_u8x16(_mm256_extracti128_si256(q[p], 1), o + 32 * p + 16, _mm256_set1_ps(s1),
                    _mm256_set1_ps(-32.0f * s1));
      }
    }
  }
}
void deq_f16_avx2(const uint16_t* w, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_f16x8(w + i));
  for (; i < n; ++i) y[i] = h2f(w[i]);
}
void deq_bf16_avx2(const uint16_t* w, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_bf16x8(w + i));
  for (; i < n; ++i) y[i] = bf16_to_f32(w[i]);
}

// ---- matvec kernels: activations pre-arranged once per product (XPack), scales vectorised ----
// Per-block scalar work (fp16 scale loads, multiplies, broadcasts) dominated the simple kernels;
// here 8 blocks' scales are fetched and multiplied at once, and Q4_0/Q4_1 read two blocks' nibbles
// per 256-bit register against activations interleaved to match.

struct XPack {
  const Q8Block* q;
  const float* d;     // activation scale per 32-block (zero-padded to a multiple of 8)
  const float* s;     // d * sum(qs)
  const float* sumq;  // sum(qs), exact
  const int8_t* q4;   // pairs of blocks: [x0 0..15 | x1 0..15 | x0 16..31 | x1 16..31] (Q4_0/Q4_1)
  const float* xd16;  // Q6_K: d per 16 elements
  const float* c16;   // Q6_K: 32 * d * sum of each 16 qs
};

// 8 fp16 values at p, p + stride, ... -> floats (low halves of the dwords there).
// The dwords at p, p + stride, ... (only the first r; the rest read as 0).
inline __m256i gather_dwords8(const uint8_t* p, int stride, int r = 8) {
  // Plain loads and inserts: vpgatherdd is slow on AMD; no stack round trip (store forwarding).
  auto ld = [&](int k) {
    int v = 0;
    if (k < r) std::memcpy(&v, p + k * stride, 4);
    return v;
  };
  __m128i a = _mm_insert_epi32(_mm_insert_epi32(_mm_insert_epi32(_mm_cvtsi32_si128(ld(0)), ld(1), 1), ld(2), 2), ld(3), 3);
  __m128i b = _mm_insert_epi32(_mm_insert_epi32(_mm_insert_epi32(_mm_cvtsi32_si128(ld(4)), ld(5), 1), ld(6), 2), ld(7), 3);
  return _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1);
}
// dwords (lo16 | hi16 << 16) -> lo halves as 8 floats, hi halves as 8 floats.
inline void split_f16_pairs(__m256i dm, __m256& lo, __m256& hi) {
  __m256i pk = _mm256_packus_epi32(_mm256_and_si256(dm, _mm256_set1_epi32(0xFFFF)), _mm256_srli_epi32(dm, 16));
  pk = _mm256_permute4x64_epi64(pk, 0xD8);
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(pk));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(pk, 1));
}
inline __m256 low_f16s(__m256i dm) {
  __m256i pk = _mm256_packus_epi32(_mm256_and_si256(dm, _mm256_set1_epi32(0xFFFF)), _mm256_setzero_si256());
  return _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(pk, 0xD8)));
}
inline __m256 lane_bcast(__m256 v, int k) { return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(k)); }
inline __m256 lane_pair(__m256 v, int k) {
  return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(k, k, k, k, k + 1, k + 1, k + 1, k + 1));
}
inline __m256i dp_acc(__m256i acc, __m256i u, __m256i s) {
#ifdef LZ_Q_VNNI
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

float dot_q8_0_packed(const void* row, const XPack& xp, int64_t nb) {
  // Measured: vectorising Q8_0's scales gains nothing (a block is already 32 bytes of work).
  return dot_q8_0_avx2(static_cast<const qblock::Q8_0*>(row), xp.q, nb);
}

// Q4_0 (Q41 = false): (q - 8) d; Q4_1: q d + m.
// R rows at once: the activation loads are shared and the R horizontal sums overlap.
template <bool Q41, int R>
void dot_q4_packed_rows(const uint8_t* row, size_t rb, const XPack& xp, int64_t nb, float* y) {
  constexpr int BB = Q41 ? 20 : 18, QO = Q41 ? 4 : 2;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc[R], off[R];
  for (int r = 0; r < R; ++r) acc[r] = off[r] = _mm256_setzero_ps();
  auto pair = [&](const uint8_t* bp, __m256i xa, __m256i xb) {  // two blocks -> 8 int32 (4 per block)
    __m256i v = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(bp + BB + QO),
                                    reinterpret_cast<const __m128i*>(bp + QO));
    __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    return _mm256_cvtepi32_ps(dp_acc(dp_acc(_mm256_setzero_si256(), lo, xa), hi, xb));
  };
  // 8 blocks' d * d_x; accumulates the offset terms (m s_x for Q4_1, d d_x sum(q_x) for Q4_0)
  auto scales = [&](__m256i dm, __m256 xd, __m256 xo, __m256& o) {
    __m256 d, m;
    if constexpr (Q41) {
      split_f16_pairs(dm, d, m);
      o = _mm256_fmadd_ps(m, xo, o);
      return _mm256_mul_ps(d, xd);
    } else {
      __m256 S = _mm256_mul_ps(low_f16s(dm), xd);
      o = _mm256_fmadd_ps(S, xo, o);
      return S;
    }
  };
  const float* xoff = Q41 ? xp.s : xp.sumq;
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    const int8_t* xq4 = xp.q4 + i * 32;
    __m256i x[8];
    for (int k = 0; k < 8; ++k) x[k] = loadu256(xq4 + 32 * k);
    __m256 xd = _mm256_loadu_ps(xp.d + i), xo = _mm256_loadu_ps(xoff + i);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const uint8_t* bp = row + r * rb + i * BB;
      __m256 S = scales(gather_dwords8(bp, BB), xd, xo, off[r]);
      __m256 a0 = _mm256_mul_ps(pair(bp, x[0], x[1]), lane_pair(S, 0));
      __m256 a1 = _mm256_mul_ps(pair(bp + 2 * BB, x[2], x[3]), lane_pair(S, 2));
      a0 = _mm256_fmadd_ps(pair(bp + 4 * BB, x[4], x[5]), lane_pair(S, 4), a0);
      a1 = _mm256_fmadd_ps(pair(bp + 6 * BB, x[6], x[7]), lane_pair(S, 6), a1);
      acc[r] = _mm256_add_ps(acc[r], _mm256_add_ps(a0, a1));
    }
  }
  if (i < nb) {  // last 1..7 blocks: same, one pair at a time
    int rem = static_cast<int>(nb - i);
    __m256 xd = _mm256_loadu_ps(xp.d + i), xo = _mm256_loadu_ps(xoff + i);
    for (int r = 0; r < R; ++r) {
      const uint8_t* bp = row + r * rb + i * BB;
      __m256 S = scales(gather_dwords8(bp, BB, rem), xd, xo, off[r]);  // 4 bytes at a block start stay inside it
      __m256i idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
      int k = 0;
      for (; k + 1 < rem; k += 2, idx = _mm256_add_epi32(idx, _mm256_set1_epi32(2))) {
        const int8_t* xq4 = xp.q4 + (i + k) * 32;
        acc[r] = _mm256_fmadd_ps(pair(bp + k * BB, loadu256(xq4), loadu256(xq4 + 32)),
                                 _mm256_permutevar8x32_ps(S, idx), acc[r]);
      }
      if (k < rem) {
        __m256i p = dot_us(unpack_nibbles16(bp + k * BB + QO), loadu256(xp.q[i + k].qs));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_permutevar8x32_ps(S, _mm256_set1_epi32(k)), acc[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    y[r] = hsum(Q41 ? _mm256_add_ps(acc[r], off[r]) : _mm256_fnmadd_ps(_mm256_set1_ps(8.0f), off[r], acc[r]));
}

template <bool Q41>
float dot_q4_packed(const void* row, const XPack& xp, int64_t nb) {
  float y;
  dot_q4_packed_rows<Q41, 1>(static_cast<const uint8_t*>(row), 0, xp, nb, &y);
  return y;
}

inline __m256 u8x8_to_ps(uint64_t v) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(v))));
}

float dot_q4_k_packed(const void* row, const XPack& xp, int64_t nb) {
  auto* b = static_cast<const qblock::Q4_K*>(row);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), off = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const Q8Block* x = xp.q + 8 * i;
    uint64_t sc, mn;
    q4k_unpack_scales(b[i].scales, reinterpret_cast<uint8_t*>(&sc), reinterpret_cast<uint8_t*>(&mn));
    __m256 S = _mm256_mul_ps(u8x8_to_ps(sc), _mm256_mul_ps(_mm256_set1_ps(h2f(b[i].d)), _mm256_loadu_ps(xp.d + 8 * i)));
    off = _mm256_fmadd_ps(_mm256_mul_ps(u8x8_to_ps(mn), _mm256_set1_ps(h2f(b[i].dmin))), _mm256_loadu_ps(xp.s + 8 * i),
                          off);
    alignas(32) float Sa[8];
    _mm256_store_ps(Sa, S);
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) {
      __m256i q = loadu256(b[i].qs + 32 * g);
      __m256i p0 = dot_us(_mm256_and_si256(q, m4), loadu256(x[2 * g].qs));
      __m256i p1 = dot_us(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), loadu256(x[2 * g + 1].qs));
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(Sa + 2 * g), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(Sa + 2 * g + 1), acc1);
    }
  }
  return hsum(_mm256_sub_ps(_mm256_add_ps(acc0, acc1), off));
}

// sum d sc (q - 32) x = sum (d sc xd) sum16(q xq) - d sum sc * c16, c16 = 32 xd sum16(xq) precomputed.
float dot_q6_k_packed(const void* row, const XPack& xp, int64_t nb) {
  auto* b = static_cast<const qblock::Q6_K*>(row);
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), off = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const Q8Block* x = xp.q + 8 * i;
    __m256 d = _mm256_set1_ps(h2f(b[i].d));
    __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].scales));
    __m256 sc0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc));
    __m256 sc1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8)));
    off = _mm256_fmadd_ps(d, _mm256_fmadd_ps(sc1, _mm256_loadu_ps(xp.c16 + 16 * i + 8),
                                             _mm256_mul_ps(sc0, _mm256_loadu_ps(xp.c16 + 16 * i))), off);
    __m256 F[2] = {_mm256_mul_ps(_mm256_mul_ps(d, sc0), _mm256_loadu_ps(xp.xd16 + 16 * i)),
                   _mm256_mul_ps(_mm256_mul_ps(d, sc1), _mm256_loadu_ps(xp.xd16 + 16 * i + 8))};
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      __m256i A = loadu256(b[i].ql + 64 * h), B = loadu256(b[i].ql + 64 * h + 32);
      __m256i H = loadu256(b[i].qh + 32 * h);
      __m256i q0 = _mm256_or_si256(_mm256_and_si256(A, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30));
      __m256i q1 = _mm256_or_si256(_mm256_and_si256(B, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30));
      __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), m4), _mm256_and_si256(H, m30));
      __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(H, 2), m30));
      const Q8Block* xh = x + 4 * h;
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_us(q0, loadu256(xh[0].qs))), lane_pair(F[h], 0), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_us(q1, loadu256(xh[1].qs))), lane_pair(F[h], 2), acc1);
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_us(q2, loadu256(xh[2].qs))), lane_pair(F[h], 4), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_us(q3, loadu256(xh[3].qs))), lane_pair(F[h], 6), acc1);
    }
  }
  return hsum(_mm256_sub_ps(_mm256_add_ps(acc0, acc1), off));
}

// Buffers behind an XPack; one per thread, reused across calls.
struct XPackBuf {
  std::vector<Q8Block> q;
  std::vector<float> d, s, sumq, xd16, c16;
  std::vector<int8_t> q4;
};

XPack build_pack(DType t, const float* x, int64_t n, XPackBuf& b) {
  int64_t nb = n / 32, padded = (nb + 7) / 8 * 8;
  b.q.resize(nb);
  quantize_q8_avx2(x, b.q.data(), nb);
  b.d.assign(padded, 0.0f);
  b.s.assign(padded, 0.0f);
  b.sumq.assign(padded, 0.0f);
  for (int64_t i = 0; i < nb; ++i) {
    int sum = 0;
    for (int j = 0; j < 32; ++j) sum += b.q[i].qs[j];
    b.d[i] = b.q[i].d;
    b.s[i] = b.q[i].s;
    b.sumq[i] = static_cast<float>(sum);
  }
  XPack p{b.q.data(), b.d.data(), b.s.data(), b.sumq.data(), nullptr, nullptr, nullptr};
  if (t == DType::Q4_0 || t == DType::Q4_1) {
    b.q4.resize(nb / 2 * 64);
    for (int64_t k = 0; k + 1 < nb; k += 2) {
      int8_t* o = b.q4.data() + k * 32;
      std::memcpy(o, b.q[k].qs, 16);
      std::memcpy(o + 16, b.q[k + 1].qs, 16);
      std::memcpy(o + 32, b.q[k].qs + 16, 16);
      std::memcpy(o + 48, b.q[k + 1].qs + 16, 16);
    }
    p.q4 = b.q4.data();
  }
  if (t == DType::Q6_K) {
    b.xd16.resize(2 * nb);
    b.c16.resize(2 * nb);
    for (int64_t i = 0; i < nb; ++i)
      for (int h = 0; h < 2; ++h) {
        int sum = 0;
        for (int j = 0; j < 16; ++j) sum += b.q[i].qs[16 * h + j];
        b.xd16[2 * i + h] = b.q[i].d;
        b.c16[2 * i + h] = 32.0f * b.q[i].d * static_cast<float>(sum);
      }
    p.xd16 = b.xd16.data();
    p.c16 = b.c16.data();
  }
  return p;
}

using PDot = float (*)(const void* row, const XPack& xp, int64_t nb);
PDot packed_kernel(DType t) {
  switch (t) {
    case DType::Q8_0: return dot_q8_0_packed;
    case DType::Q4_0: return dot_q4_packed<false>;
    case DType::Q4_1: return dot_q4_packed<true>;
    case DType::Q4_K: return dot_q4_k_packed;
    case DType::Q6_K: return dot_q6_k_packed;
    default: return nullptr;
  }
}
#endif  // LZ_Q_AVX2

// ---------------------------------------------------------------------------------------------
// Exact matvec: fp32 activations; weights dequantized block by block in registers and
// FMA'd with x in fp32 (no int8 rounding of x). R rows at a time share the activation loads.
// Kernel signature: rows at row, row + rb, ...; aux = per-matvec activation sums (AVX2 only);
// writes y[0..R).

// Scalar: the dequantize_row values of each block, dotted in order.
template <typename B, void (*Deq)(const B*, float*, int64_t), int BS>
void exact_scalar(const uint8_t* row, size_t, const float* x, const float*, int64_t nb, float* y) {
  const B* b = reinterpret_cast<const B*>(row);
  float buf[BS];
  float acc = 0;
  for (int64_t i = 0; i < nb; ++i) {
    Deq(b + i, buf, 1);
    for (int j = 0; j < BS; ++j) acc += buf[j] * x[i * BS + j];
  }
  *y = acc;
}

#ifdef LZ_Q_AVX2
inline __m256 bcast_h256(uint16_t h) { return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(h))); }
inline __m256i ld_u8x8_i32(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
inline uint16_t ld16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// AVX2 Q8_0: the block's scale is folded out of the 32-term sum: d * sum q x.
template <int R>
void ex2_q8_0(const uint8_t* row, size_t rb, const float* x, const float*, int64_t nb, float* y) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + 32 * i;
    __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8), x2 = _mm256_loadu_ps(xb + 16),
           x3 = _mm256_loadu_ps(xb + 24);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const uint8_t* bp = row + r * rb + 34 * i;
      auto w = [&](int k) {
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bp + 2 + 8 * k))));
      };
      __m256 t = _mm256_add_ps(_mm256_fmadd_ps(w(1), x1, _mm256_mul_ps(w(0), x0)),
                               _mm256_fmadd_ps(w(3), x3, _mm256_mul_ps(w(2), x2)));
      acc[r] = _mm256_fmadd_ps(t, bcast_h256(ld16(bp)), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) y[r] = hsum(acc[r]);
}

// AVX2 Q4_0 / Q4_1: nibbles -> int32 -> float; sum (q - 8) d x = d (sum q x - 8 sum x) and
// sum (q d + m) x = d sum q x + m sum x, with the per-block lane sums of x precomputed in aux
// (Q4_0: already times -8).
template <bool Q41, int R>
void ex2_q4(const uint8_t* row, size_t rb, const float* x, const float* aux, int64_t nb, float* y) {
  constexpr int BB = Q41 ? 20 : 18, QO = Q41 ? 4 : 2;
  const __m256i m4 = _mm256_set1_epi32(15);
  __m256 acc[R], off[R];
  for (int r = 0; r < R; ++r) acc[r] = off[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + 32 * i;
    __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8), x2 = _mm256_loadu_ps(xb + 16),
           x3 = _mm256_loadu_ps(xb + 24), ls = _mm256_loadu_ps(aux + 8 * i);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const uint8_t* bp = row + r * rb + BB * i;
      __m256i a = ld_u8x8_i32(bp + QO), b = ld_u8x8_i32(bp + QO + 8);
      __m256 w0 = _mm256_cvtepi32_ps(_mm256_and_si256(a, m4)), w1 = _mm256_cvtepi32_ps(_mm256_and_si256(b, m4));
      __m256 w2 = _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), w3 = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
      __m256 t01 = _mm256_fmadd_ps(w1, x1, Q41 ? _mm256_mul_ps(w0, x0) : _mm256_fmadd_ps(w0, x0, ls));
      __m256 t = _mm256_add_ps(t01, _mm256_fmadd_ps(w3, x3, _mm256_mul_ps(w2, x2)));
      acc[r] = _mm256_fmadd_ps(t, bcast_h256(ld16(bp)), acc[r]);
      if constexpr (Q41) off[r] = _mm256_fmadd_ps(ls, bcast_h256(ld16(bp + 2)), off[r]);
    }
  }
  for (int r = 0; r < R; ++r) y[r] = hsum(Q41 ? _mm256_add_ps(acc[r], off[r]) : acc[r]);
}

// AVX2 Q4_K: per sub-block j, D_j sum q x - M_j sum x (aux: lane sums of x per 32).
template <int R>
void ex2_q4_k(const uint8_t* row, size_t rb, const float* x, const float* aux, int64_t nb, float* y) {
  const __m256i m4 = _mm256_set1_epi32(15);
  __m256 acc[R], off[R];
  for (int r = 0; r < R; ++r) acc[r] = off[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const float* xs = x + 256 * i;
    const float* ls = aux + 64 * i;
    for (int r = 0; r < R; ++r) {
      auto* b = reinterpret_cast<const qblock::Q4_K*>(row + r * rb) + i;
      uint64_t sc, mn;
      q4k_unpack_scales(b->scales, reinterpret_cast<uint8_t*>(&sc), reinterpret_cast<uint8_t*>(&mn));
      alignas(32) float Dv[8], Mv[8];
      _mm256_store_ps(Dv, _mm256_mul_ps(u8x8_to_ps(sc), _mm256_set1_ps(h2f(b->d))));
      _mm256_store_ps(Mv, _mm256_mul_ps(u8x8_to_ps(mn), _mm256_set1_ps(h2f(b->dmin))));
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        const uint8_t* q = b->qs + 32 * g;
        const float* xg = xs + 64 * g;
        __m256i a0 = ld_u8x8_i32(q), a1 = ld_u8x8_i32(q + 8), a2 = ld_u8x8_i32(q + 16), a3 = ld_u8x8_i32(q + 24);
        auto lo = [&](__m256i a) { return _mm256_cvtepi32_ps(_mm256_and_si256(a, m4)); };
        auto hi = [&](__m256i a) { return _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)); };
        __m256 tl = _mm256_add_ps(_mm256_fmadd_ps(lo(a1), _mm256_loadu_ps(xg + 8), _mm256_mul_ps(lo(a0), _mm256_loadu_ps(xg))),
                                  _mm256_fmadd_ps(lo(a3), _mm256_loadu_ps(xg + 24), _mm256_mul_ps(lo(a2), _mm256_loadu_ps(xg + 16))));
        __m256 th = _mm256_add_ps(_mm256_fmadd_ps(hi(a1), _mm256_loadu_ps(xg + 40), _mm256_mul_ps(hi(a0), _mm256_loadu_ps(xg + 32))),
                                  _mm256_fmadd_ps(hi(a3), _mm256_loadu_ps(xg + 56), _mm256_mul_ps(hi(a2), _mm256_loadu_ps(xg + 48))));
        acc[r] = _mm256_fmadd_ps(tl, _mm256_broadcast_ss(Dv + 2 * g), acc[r]);
        acc[r] = _mm256_fmadd_ps(th, _mm256_broadcast_ss(Dv + 2 * g + 1), acc[r]);
        off[r] = _mm256_fmadd_ps(_mm256_loadu_ps(ls + 16 * g), _mm256_broadcast_ss(Mv + 2 * g), off[r]);
        off[r] = _mm256_fmadd_ps(_mm256_loadu_ps(ls + 16 * g + 8), _mm256_broadcast_ss(Mv + 2 * g + 1), off[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) y[r] = hsum(_mm256_sub_ps(acc[r], off[r]));
}

// The 4 quarters (32 six-bit values each, as bytes) of half h of a Q6_K block.
inline void q6k_quarters(const qblock::Q6_K* b, int h, __m256i q[4]) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  __m256i A = loadu256(b->ql + 64 * h), B = loadu256(b->ql + 64 * h + 32), H = loadu256(b->qh + 32 * h);
  q[0] = _mm256_or_si256(_mm256_and_si256(A, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30));
  q[1] = _mm256_or_si256(_mm256_and_si256(B, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30));
  q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), m4), _mm256_and_si256(H, m30));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), m4), _mm256_and_si256(_mm256_srli_epi16(H, 2), m30));
}

// AVX2 Q6_K: w = q S - 32 S (S = d sc, all exact in fp32, so these are dequantize_row's values).
template <int R>
void ex2_q6_k(const uint8_t* row, size_t rb, const float* x, const float*, int64_t nb, float* y) {
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    for (int r = 0; r < R; ++r) {
      auto* b = reinterpret_cast<const qblock::Q6_K*>(row + r * rb) + i;
      __m256 d = bcast_h256(b->d);
      __m128i scb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b->scales));
      alignas(32) float Sv[16], Cv[16];
      __m256 s0 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(scb)));
      __m256 s1 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(scb, 8))));
      _mm256_store_ps(Sv, s0), _mm256_store_ps(Sv + 8, s1);
      _mm256_store_ps(Cv, _mm256_mul_ps(s0, _mm256_set1_ps(-32.0f)));
      _mm256_store_ps(Cv + 8, _mm256_mul_ps(s1, _mm256_set1_ps(-32.0f)));
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        __m256i q[4];
        q6k_quarters(b, h, q);
        const float* xh = x + 256 * i + 128 * h;
#pragma GCC unroll 4
        for (int p = 0; p < 4; ++p) {
          __m128i lo = _mm256_castsi256_si128(q[p]), hi = _mm256_extracti128_si256(q[p], 1);
          __m128i c[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
#pragma GCC unroll 4
          for (int k = 0; k < 4; ++k) {
            int g = 8 * h + 2 * p + k / 2;
            __m256 w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c[k])), _mm256_broadcast_ss(Sv + g),
                                       _mm256_broadcast_ss(Cv + g));
            acc[r][k & 1] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xh + 32 * p + 8 * k), acc[r][k & 1]);
          }
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) y[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
}

// Per 32-block lane sums of x (8 floats per block), times f: the constant parts of Q4_0/Q4_1/Q4_K.
void lane_sums32(const float* x, int64_t nb32, float f, float* out) {
  __m256 vf = _mm256_set1_ps(f);
  for (int64_t i = 0; i < nb32; ++i) {
    const float* xb = x + 32 * i;
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8)),
                             _mm256_add_ps(_mm256_loadu_ps(xb + 16), _mm256_loadu_ps(xb + 24)));
    _mm256_storeu_ps(out + 8 * i, _mm256_mul_ps(s, vf));
  }
}
#endif  // LZ_Q_AVX2

#ifdef LZ_Q_AVX512
// GCC 12 warns about the intrinsics' own _mm512_undefined_* (a false positive, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// AVX-512: a 4-bit block is a 16-entry table lookup: vpermps picks T[q] from the block's 16
// dequantized values (T = d * iota + m, ...), ignoring the index bits above 4, so the nibbles
// need no masking; the products are exactly dequantize_row's values.
inline __m512 bcast_h512(uint16_t h) { return _mm512_cvtph_ps(_mm256_set1_epi16(static_cast<short>(h))); }
inline __m512i ld_u8x16_i32(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m512 iota16() { return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }

template <int R>
void ex512_q8_0(const uint8_t* row, size_t rb, const float* x, const float*, int64_t nb, float* y) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    __m512 x0 = _mm512_loadu_ps(x + 32 * i), x1 = _mm512_loadu_ps(x + 32 * i + 16);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const uint8_t* bp = row + r * rb + 34 * i;
      __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bp + 2))));
      __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bp + 18))));
      acc[r] = _mm512_fmadd_ps(_mm512_fmadd_ps(w1, x1, _mm512_mul_ps(w0, x0)), bcast_h512(ld16(bp)), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) y[r] = _mm512_reduce_add_ps(acc[r]);
}

template <bool Q41, int R>
void ex512_q4(const uint8_t* row, size_t rb, const float* x, const float*, int64_t nb, float* y) {
  constexpr int BB = Q41 ? 20 : 18, QO = Q41 ? 4 : 2;
  const __m512 iota = Q41 ? iota16() : _mm512_sub_ps(iota16(), _mm512_set1_ps(8.0f));
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    __m512 x0 = _mm512_loadu_ps(x + 32 * i), x1 = _mm512_loadu_ps(x + 32 * i + 16);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const uint8_t* bp = row + r * rb + BB * i;
      __m512 d = bcast_h512(ld16(bp));
      __m512 T = Q41 ? _mm512_fmadd_ps(iota, d, bcast_h512(ld16(bp + 2))) : _mm512_mul_ps(iota, d);
      __m512i q = ld_u8x16_i32(bp + QO);
      acc[r][0] = _mm512_fmadd_ps(_mm512_permutexvar_ps(q, T), x0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), T), x1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
}

template <int R>
void ex512_q4_k(const uint8_t* row, size_t rb, const float* x, const float*, int64_t nb, float* y) {
  const __m512 iota = iota16();
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const float* xs = x + 256 * i;
    for (int r = 0; r < R; ++r) {
      auto* b = reinterpret_cast<const qblock::Q4_K*>(row + r * rb) + i;
      uint64_t sc, mn;
      q4k_unpack_scales(b->scales, reinterpret_cast<uint8_t*>(&sc), reinterpret_cast<uint8_t*>(&mn));
      alignas(32) float Dv[8], Mv[8];
      _mm256_store_ps(Dv, _mm256_mul_ps(u8x8_to_ps(sc), _mm256_set1_ps(h2f(b->d))));
      _mm256_store_ps(Mv, _mm256_mul_ps(u8x8_to_ps(mn), _mm256_set1_ps(h2f(b->dmin))));
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        __m512 T0 = _mm512_fmsub_ps(iota, _mm512_set1_ps(Dv[2 * g]), _mm512_set1_ps(Mv[2 * g]));
        __m512 T1 = _mm512_fmsub_ps(iota, _mm512_set1_ps(Dv[2 * g + 1]), _mm512_set1_ps(Mv[2 * g + 1]));
        __m512i q0 = ld_u8x16_i32(b->qs + 32 * g), q1 = ld_u8x16_i32(b->qs + 32 * g + 16);
        const float* xg = xs + 64 * g;
        acc[r][0] = _mm512_fmadd_ps(_mm512_permutexvar_ps(q0, T0), _mm512_loadu_ps(xg), acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(_mm512_permutexvar_ps(q1, T0), _mm512_loadu_ps(xg + 16), acc[r][1]);
        acc[r][0] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q0, 4), T1), _mm512_loadu_ps(xg + 32), acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q1, 4), T1), _mm512_loadu_ps(xg + 48), acc[r][1]);
      }
    }
  }
  for (int r = 0; r < R; ++r) y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
}

template <int R>
void ex512_q6_k(const uint8_t* row, size_t rb, const float* x, const float*, int64_t nb, float* y) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    for (int r = 0; r < R; ++r) {
      auto* b = reinterpret_cast<const qblock::Q6_K*>(row + r * rb) + i;
      alignas(64) float Sv[16], Cv[16];
      __m512 S = _mm512_mul_ps(bcast_h512(b->d), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                                      _mm_loadu_si128(reinterpret_cast<const __m128i*>(b->scales)))));
      _mm512_store_ps(Sv, S);
      _mm512_store_ps(Cv, _mm512_mul_ps(S, _mm512_set1_ps(-32.0f)));
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        __m256i q[4];
        q6k_quarters(b, h, q);
        const float* xh = x + 256 * i + 128 * h;
#pragma GCC unroll 4
        for (int p = 0; p < 4; ++p) {
          __m128i c[2] = {_mm256_castsi256_si128(q[p]), _mm256_extracti128_si256(q[p], 1)};
#pragma GCC unroll 2
          for (int k = 0; k < 2; ++k) {
            int g = 8 * h + 2 * p + k;
            __m512 w = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c[k])), _mm512_set1_ps(Sv[g]),
                                       _mm512_set1_ps(Cv[g]));
            acc[r][k] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xh + 32 * p + 16 * k), acc[r][k]);
          }
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
}
#pragma GCC diagnostic pop
#endif  // LZ_Q_AVX512

using ExactK = void (*)(const uint8_t* row, size_t rb, const float* x, const float* aux, int64_t nb, float* y);
struct ExactKernels {
  ExactK k1 = nullptr, kr = nullptr;  // one row; R rows
  int r = 1;
  float aux = 0;  // 0: no aux; else lane sums of x times this factor
};

enum ExactIsa { kIsaScalar = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

constexpr int kBestIsa =
#if defined(LZ_Q_AVX512)
    kIsaAvx512;
#elif defined(LZ_Q_AVX2)
    kIsaAvx2;
#else
    kIsaScalar;
#endif

// Returns no kernels for a set that is not compiled in.
ExactKernels exact_kernels(int isa, DType t) {
  ExactKernels k;
  if (isa == kIsaScalar) {
    switch (t) {
      case DType::Q8_0: k.k1 = exact_scalar<qblock::Q8_0, deq_q8_0_scalar, 32>; break;
      case DType::Q4_0: k.k1 = exact_scalar<qblock::Q4_0, deq_q4_0_scalar, 32>; break;
      case DType::Q4_1: k.k1 = exact_scalar<qblock::Q4_1, deq_q4_1_scalar, 32>; break;
      case DType::Q4_K: k.k1 = exact_scalar<qblock::Q4_K, deq_q4_k_scalar, 256>; break;
      case DType::Q6_K: k.k1 = exact_scalar<qblock::Q6_K, deq_q6_k_scalar, 256>; break;
      default: break;
    }
    k.kr = k.k1;
    return k;
  }
#ifdef LZ_Q_AVX2
  if (isa == kIsaAvx2) {
    switch (t) {
      case DType::Q8_0: k = {ex2_q8_0<1>, ex2_q8_0<4>, 4, 0}; break;
      case DType::Q4_0: k = {ex2_q4<false, 1>, ex2_q4<false, 4>, 4, -8.0f}; break;
      case DType::Q4_1: k = {ex2_q4<true, 1>, ex2_q4<true, 4>, 4, 1.0f}; break;
      case DType::Q4_K: k = {ex2_q4_k<1>, ex2_q4_k<2>, 2, 1.0f}; break;
      case DType::Q6_K: k = {ex2_q6_k<1>, ex2_q6_k<2>, 2, 0}; break;
      default: break;
    }
    return k;
  }
#endif
#ifdef LZ_Q_AVX512
  if (isa == kIsaAvx512) {
    switch (t) {
      case DType::Q8_0: k = {ex512_q8_0<1>, ex512_q8_0<4>, 4, 0}; break;
      case DType::Q4_0: k = {ex512_q4<false, 1>, ex512_q4<false, 4>, 4, 0}; break;
      case DType::Q4_1: k = {ex512_q4<true, 1>, ex512_q4<true, 4>, 4, 0}; break;
      case DType::Q4_K: k = {ex512_q4_k<1>, ex512_q4_k<2>, 2, 0}; break;
      case DType::Q6_K: k = {ex512_q6_k<1>, ex512_q6_k<2>, 2, 0}; break;
      default: break;
    }
    return k;
  }
#endif
  return k;
}

// Activation sums the kernels need (AVX2 Q4 types), in a per-thread buffer.
const float* exact_aux(const ExactKernels& k, const float* x, int64_t n) {
  if (k.aux == 0) return nullptr;
  thread_local std::vector<float> buf;
  buf.resize(static_cast<size_t>(n / 32) * 8);
#ifdef LZ_Q_AVX2
  lane_sums32(x, n / 32, k.aux, buf.data());
#else
  (void)x;
#endif
  return buf.data();
}

// ---------------------------------------------------------------------------------------------
// Dispatch. A kernel takes the row, the activations (float or quantized) and the block count.

using QDot = float (*)(const void* row, const Q8Block* xq, int64_t nb);
using FDot = float (*)(const void* row, const float* x, int64_t n);

template <typename B, float (*K)(const B*, const Q8Block*, int64_t)>
float qdot(const void* row, const Q8Block* xq, int64_t nb) {
  return K(static_cast<const B*>(row), xq, nb);
}

QDot qdot_kernel(DType t) {
#ifdef LZ_Q_AVX2
  switch (t) {
    case DType::Q8_0: return qdot<qblock::Q8_0, dot_q8_0_avx2>;
    case DType::Q4_0: return qdot<qblock::Q4_0, dot_q4_0_avx2>;
    case DType::Q4_1: return qdot<qblock::Q4_1, dot_q4_1_avx2>;
    case DType::Q4_K: return qdot<qblock::Q4_K, dot_q4_k_avx2>;
    case DType::Q6_K: return qdot<qblock::Q6_K, dot_q6_k_avx2>;
    default: return nullptr;
  }
#else
  switch (t) {
    case DType::Q8_0: return qdot<qblock::Q8_0, dot_q8_0_scalar>;
    case DType::Q4_0: return qdot<qblock::Q4_0, dot_q4_0_scalar>;
    case DType::Q4_1: return qdot<qblock::Q4_1, dot_q4_1_scalar>;
    case DType::Q4_K: return qdot<qblock::Q4_K, dot_q4_k_scalar>;
    case DType::Q6_K: return qdot<qblock::Q6_K, dot_q6_k_scalar>;
    default: return nullptr;
  }
#endif
}

FDot fdot_kernel(DType t) {
  switch (t) {
#ifdef LZ_Q_AVX2
    case DType::F32:
      return [](const void* w, const float* x, int64_t n) { return dot_f32_avx2(static_cast<const float*>(w), x, n); };
    case DType::F16:
      return [](const void* w, const float* x, int64_t n) {
        return dot_half_avx2<load_f16x8, h2f>(static_cast<const uint16_t*>(w), x, n);
      };
    case DType::BF16:
      return [](const void* w, const float* x, int64_t n) {
        return dot_half_avx2<load_bf16x8, bf16_to_f32>(static_cast<const uint16_t*>(w), x, n);
      };
#else
    case DType::F32:
      return [](const void* w, const float* x, int64_t n) { return dot_f32_scalar(static_cast<const float*>(w), x, n); };
    case DType::F16:
      return [](const void* w, const float* x, int64_t n) { return dot_f16_scalar(static_cast<const uint16_t*>(w), x, n); };
    case DType::BF16:
      return [](const void* w, const float* x, int64_t n) { return dot_bf16_scalar(static_cast<const uint16_t*>(w), x, n); };
#endif
    default: return nullptr;
  }
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

// Rows below this many weights are not worth waking the thread team for.
constexpr int64_t kParallelMin = 1 << 15;

}  // namespace

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  Layout l = checked_layout(t, n);
  int64_t nb = n / l.block;
  switch (t) {
    case DType::F32: std::memcpy(dst, src, n * sizeof(float)); return;
#ifdef LZ_Q_AVX2
    case DType::F16: deq_f16_avx2(static_cast<const uint16_t*>(src), dst, n); return;
    case DType::BF16: deq_bf16_avx2(static_cast<const uint16_t*>(src), dst, n); return;
    case DType::Q8_0: deq_q8_0_avx2(static_cast<const qblock::Q8_0*>(src), dst, nb); return;
    case DType::Q4_0: deq_q4_0_avx2(static_cast<const qblock::Q4_0*>(src), dst, nb); return;
    case DType::Q4_1: deq_q4_1_avx2(static_cast<const qblock::Q4_1*>(src), dst, nb); return;
    case DType::Q4_K: deq_q4_k_avx2(static_cast<const qblock::Q4_K*>(src), dst, nb); return;
    case DType::Q6_K: deq_q6_k_avx2(static_cast<const qblock::Q6_K*>(src), dst, nb); return;
#else
    case DType::F16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = h2f(s[i]);
      return;
    }
    case DType::BF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::Q8_0: deq_q8_0_scalar(static_cast<const qblock::Q8_0*>(src), dst, nb); return;
    case DType::Q4_0: deq_q4_0_scalar(static_cast<const qblock::Q4_0*>(src), dst, nb); return;
    case DType::Q4_1: deq_q4_1_scalar(static_cast<const qblock::Q4_1*>(src), dst, nb); return;
    case DType::Q4_K: deq_q4_k_scalar(static_cast<const qblock::Q4_K*>(src), dst, nb); return;
    case DType::Q6_K: deq_q6_k_scalar(static_cast<const qblock::Q6_K*>(src), dst, nb); return;
#endif
  }
}

void dequantize_rows(DType t, const void* w, int64_t row0, int64_t nrows, int64_t n, float* dst) {
  Layout l = checked_layout(t, n);
  size_t rb = row_bytes(l, n);
  const uint8_t* base = static_cast<const uint8_t*>(w) + static_cast<size_t>(row0) * rb;
#pragma omp parallel for schedule(static) if (nrows * n >= 4 * kParallelMin && !omp_in_parallel())
  for (int64_t r = 0; r < nrows; ++r) dequantize_row(t, base + r * rb, dst + r * n, n);
}

void quantize_row_q8(const float* x, Q8Block* dst, int64_t n) {
  LZ_CHECK(n % 32 == 0, "quant: activation length {} is not a multiple of 32", n);
#ifdef LZ_Q_AVX2
  quantize_q8_avx2(x, dst, n / 32);
#else
  quantize_q8_scalar(x, dst, n / 32);
#endif
}

float dot_row(DType t, const void* row, const float* x, const Q8Block* xq, int64_t n) {
  Layout l = checked_layout(t, n);
  if (is_float(t)) return fdot_kernel(t)(row, x, n);
  return qdot_kernel(t)(row, xq, n / l.block);
}

void matvec(DType t, const void* w, int64_t rows, int64_t n, const float* x, float* y) {
  Layout l = checked_layout(t, n);
  size_t rb = row_bytes(l, n);
  const uint8_t* base = static_cast<const uint8_t*>(w);
  const bool par = rows * n >= kParallelMin && !omp_in_parallel();
  if (is_float(t)) {
    FDot k = fdot_kernel(t);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t r = 0; r < rows; ++r) y[r] = k(base + r * rb, x, n);
    return;
  }
  // Quantize the activations once; every row reads them.
  int64_t nb = n / l.block;
#ifdef LZ_Q_AVX2
  thread_local XPackBuf buf;
  const XPack xp = build_pack(t, x, n, buf);
  if (t == DType::Q4_0 || t == DType::Q4_1) {
    auto k4 = t == DType::Q4_1 ? dot_q4_packed_rows<true, 4> : dot_q4_packed_rows<false, 4>;
    auto k1 = t == DType::Q4_1 ? dot_q4_packed_rows<true, 1> : dot_q4_packed_rows<false, 1>;
    int64_t groups = (rows + 3) / 4;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t g = 0; g < groups; ++g) {
      int64_t r0 = 4 * g;
      if (r0 + 4 <= rows)
        k4(base + r0 * rb, rb, xp, nb, y + r0);
      else
        for (int64_t r = r0; r < rows; ++r) k1(base + r * rb, rb, xp, nb, y + r);
    }
    return;
  }
  PDot k = packed_kernel(t);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t r = 0; r < rows; ++r) y[r] = k(base + r * rb, xp, nb);
#else
  thread_local std::vector<Q8Block> xq;
  if (xq.size() < static_cast<size_t>(n / 32)) xq.resize(n / 32);
  quantize_row_q8(x, xq.data(), n);
  const Q8Block* xp = xq.data();
  QDot k = qdot_kernel(t);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t r = 0; r < rows; ++r) y[r] = k(base + r * rb, xp, nb);
#endif
}

namespace {
// The exact matvec with the kernels of one instruction set (false if it is not compiled in).
bool matvec_exact_run(int isa, DType t, const void* w, int64_t rows, int64_t n, const float* x, float* y) {
  Layout l = checked_layout(t, n);
  size_t rb = row_bytes(l, n);
  const uint8_t* base = static_cast<const uint8_t*>(w);
  const bool par = rows * n >= kParallelMin && !omp_in_parallel();
  if (is_float(t)) {  // these already use fp32 x
    FDot k = fdot_kernel(t);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t r = 0; r < rows; ++r) y[r] = k(base + r * rb, x, n);
    return true;
  }
  ExactKernels k = exact_kernels(isa, t);
  if (!k.k1) return false;
  const float* aux = exact_aux(k, x, n);
  const int64_t nb = n / l.block, R = k.r, groups = rows / R;
  // A group of R short rows is R interleaved streams of a few cache lines each: too short for the
  // hardware prefetchers to pick up (measured: 3-6 GB/s cold). The group's bytes are contiguous,
  // so fetch the next group's lines while this one computes.
  const size_t gb = static_cast<size_t>(R) * rb;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* p = base + g * gb;
    if (g + 1 < groups)
      for (size_t o = 0; o < gb; o += 64) __builtin_prefetch(p + gb + o, 0, 3);
    k.kr(p, rb, x, aux, nb, y + g * R);
  }
  for (int64_t r = groups * R; r < rows; ++r) k.k1(base + r * rb, rb, x, aux, nb, y + r);
  return true;
}
}  // namespace

void matvec(DType t, const void* w, int64_t rows, int64_t n, const float* x, float* y, MatvecPrecision p) {
  if (p == MatvecPrecision::Q8) return matvec(t, w, rows, n, x, y);
  matvec_exact_run(kBestIsa, t, w, rows, n, x, y);
}

float dot_row_f32(DType t, const void* row, const float* x, int64_t n) {
  float y = 0;
  matvec_exact_run(kBestIsa, t, row, 1, n, x, &y);
  return y;
}

bool matvec_exact_isa(int isa, DType t, const void* w, int64_t rows, int64_t n, const float* x, float* y) {
  return matvec_exact_run(isa, t, w, rows, n, x, y);
}

// Kept callable from tests: the plain scalar kernels, independent of the SIMD dispatch.
namespace quant_ref {
float dot_row_scalar(DType t, const void* row, const float* x, const Q8Block* xq, int64_t n) {
  Layout l = checked_layout(t, n);
  int64_t nb = n / l.block;
  switch (t) {
    case DType::F32: return dot_f32_scalar(static_cast<const float*>(row), x, n);
    case DType::F16: return dot_f16_scalar(static_cast<const uint16_t*>(row), x, n);
    case DType::BF16: return dot_bf16_scalar(static_cast<const uint16_t*>(row), x, n);
    case DType::Q8_0: return dot_q8_0_scalar(static_cast<const qblock::Q8_0*>(row), xq, nb);
    case DType::Q4_0: return dot_q4_0_scalar(static_cast<const qblock::Q4_0*>(row), xq, nb);
    case DType::Q4_1: return dot_q4_1_scalar(static_cast<const qblock::Q4_1*>(row), xq, nb);
    case DType::Q4_K: return dot_q4_k_scalar(static_cast<const qblock::Q4_K*>(row), xq, nb);
    case DType::Q6_K: return dot_q6_k_scalar(static_cast<const qblock::Q6_K*>(row), xq, nb);
  }
  return 0;
}
void dequantize_row_scalar(DType t, const void* src, float* dst, int64_t n) {
  Layout l = checked_layout(t, n);
  int64_t nb = n / l.block;
  switch (t) {
    case DType::F32: std::memcpy(dst, src, n * sizeof(float)); return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(static_cast<const uint16_t*>(src)[i]);
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
      return;
    case DType::Q8_0: deq_q8_0_scalar(static_cast<const qblock::Q8_0*>(src), dst, nb); return;
    case DType::Q4_0: deq_q4_0_scalar(static_cast<const qblock::Q4_0*>(src), dst, nb); return;
    case DType::Q4_1: deq_q4_1_scalar(static_cast<const qblock::Q4_1*>(src), dst, nb); return;
    case DType::Q4_K: deq_q4_k_scalar(static_cast<const qblock::Q4_K*>(src), dst, nb); return;
    case DType::Q6_K: deq_q6_k_scalar(static_cast<const qblock::Q6_K*>(src), dst, nb); return;
  }
}
void quantize_row_q8_scalar(const float* x, Q8Block* dst, int64_t n) {
  LZ_CHECK(n % 32 == 0, "quant: activation length {} is not a multiple of 32", n);
  quantize_q8_scalar(x, dst, n / 32);
}
}  // namespace quant_ref

}  // namespace lizard
