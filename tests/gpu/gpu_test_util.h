// Helpers the GPU kernel tests share: a fresh seed per case, bf16 rounding, and device buffers filled
// from / read back as double (Dev<T> by element type, Buf by a runtime DType). A failed CUDA call is a
// test failure (EXPECT), not an exception.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "ops/cuda/fused_ops.h"  // lizard::cuda::DType
#include "util/half.h"

namespace lizard::testing {

// LIZARD_TEST_SEED=N replays a failure: every case then takes seed N (the seed its message printed).
inline uint64_t fresh_seed() {
  if (const char* e = std::getenv("LIZARD_TEST_SEED")) return std::strtoull(e, nullptr, 10);
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

// x rounded to the nearest bf16 value.
inline double bf16r(double x) { return bf16_to_f32(f32_to_bf16(static_cast<float>(x))); }

template <typename T>
T to_t(double x);
template <>
inline float to_t<float>(double x) {
  return static_cast<float>(x);
}
template <>
inline __nv_bfloat16 to_t<__nv_bfloat16>(double x) {
  return __float2bfloat16(static_cast<float>(x));
}
inline double from_t(float x) { return x; }
inline double from_t(__nv_bfloat16 x) { return __bfloat162float(x); }

// Device array of n elements of T (float or bf16).
template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  Dev() = default;
  explicit Dev(size_t count) : n(count) { EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess); }
  template <typename S>
  explicit Dev(const std::vector<S>& h) : Dev(h.size()) {
    std::vector<T> t(h.size());
    for (size_t i = 0; i < h.size(); ++i) t[i] = to_t<T>(static_cast<double>(h[i]));
    EXPECT_EQ(cudaMemcpy(p, t.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  std::vector<double> get() const {
    std::vector<T> t(n);
    EXPECT_EQ(cudaMemcpy(t.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    std::vector<double> r(n);
    for (size_t i = 0; i < n; ++i) r[i] = from_t(t[i]);
    return r;
  }
  void poison() { EXPECT_EQ(cudaMemset(p, 0xff, n * sizeof(T)), cudaSuccess); }  // NaN in fp32 and bf16
};

// Device buffer of n elements of type dt (fp32 or bf16), filled from / read back as double.
struct Buf {
  lizard::cuda::DType dt;
  size_t n;
  void* p = nullptr;
  Buf(lizard::cuda::DType t, size_t count) : dt(t), n(count) {
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(n, 1) * (t == lizard::cuda::DType::F32 ? 4 : 2)), cudaSuccess);
  }
  Buf(lizard::cuda::DType t, const std::vector<double>& h) : Buf(t, h.size()) { put(h); }
  ~Buf() { cudaFree(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  void put(const std::vector<double>& h) {
    if (dt == lizard::cuda::DType::F32) {
      std::vector<float> f(h.begin(), h.end());
      EXPECT_EQ(cudaMemcpy(p, f.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
    } else {
      std::vector<uint16_t> b(n);
      for (size_t i = 0; i < n; ++i) b[i] = f32_to_bf16(float(h[i]));
      EXPECT_EQ(cudaMemcpy(p, b.data(), n * 2, cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  std::vector<double> get() const { return download(dt, p, n); }
  // n elements of type dt at device address p (any device array, not only a Buf's).
  static std::vector<double> download(lizard::cuda::DType dt, const void* p, size_t n) {
    std::vector<double> r(n);
    if (dt == lizard::cuda::DType::F32) {
      std::vector<float> f(n);
      EXPECT_EQ(cudaMemcpy(f.data(), p, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      for (size_t i = 0; i < n; ++i) r[i] = f[i];
    } else {
      std::vector<uint16_t> b(n);
      EXPECT_EQ(cudaMemcpy(b.data(), p, n * 2, cudaMemcpyDeviceToHost), cudaSuccess);
      for (size_t i = 0; i < n; ++i) r[i] = bf16_to_f32(b[i]);
    }
    return r;
  }
  float* f() const { return static_cast<float*>(p); }
};

}  // namespace lizard::testing
