#include "model/cuda/random_weights.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "ops/cuda/cuda_check.h"

namespace lizard::cuda {
namespace {

__device__ inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void uniform_bf16_kernel(__nv_bfloat16* dst, int64_t n, float scale, uint64_t seed) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint64_t h = splitmix64(seed * 0x2545F4914F6CDD1Dull + uint64_t(i));
    const float u = float(h >> 40) * (1.0f / 16777216.0f);  // [0, 1), 24 bits
    dst[i] = __float2bfloat16((2.0f * u - 1.0f) * scale);
  }
}

__global__ void const_bf16_kernel(__nv_bfloat16* dst, int64_t n, float value) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = __float2bfloat16(value);
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + 255) / 256;
  return unsigned(b < 65536 ? (b < 1 ? 1 : b) : 65536);  // grid-stride loop covers the rest
}

}  // namespace

void fill_uniform_bf16(void* dst, int64_t n, float scale, uint64_t seed) {
  if (n <= 0) return;
  uniform_bf16_kernel<<<blocks_for(n), 256>>>(static_cast<__nv_bfloat16*>(dst), n, scale, seed);
  LZ_CUDA_OK(cudaGetLastError());
  LZ_CUDA_OK(cudaDeviceSynchronize());
}

void fill_const_bf16(void* dst, int64_t n, float value) {
  if (n <= 0) return;
  const_bf16_kernel<<<blocks_for(n), 256>>>(static_cast<__nv_bfloat16*>(dst), n, value);
  LZ_CUDA_OK(cudaGetLastError());
  LZ_CUDA_OK(cudaDeviceSynchronize());
}

}  // namespace lizard::cuda
