// The stage-1 loss kernel (train/cuda/stage1_loss.h).
#include "train/cuda/stage1_loss.h"

#include <algorithm>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "ops/cuda/cuda_check.h"

namespace lizard::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kThreads = 256;

// Grid-stride: each thread sums its squares in fp32, the block reduces them in shared memory and
// adds its partial to *sum_sq with one fp64 atomic.
__global__ void mse_loss_grad_k(const bf16* y, const bf16* y_ref, int64_t n, float scale, bf16* dy, double* sum_sq) {
  __shared__ float part[kThreads];
  float s = 0.f;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads) {
    const float d = __bfloat162float(y[i]) - __bfloat162float(y_ref[i]);
    s += d * d;
    if (dy) dy[i] = __float2bfloat16(scale * d);
  }
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(sum_sq, double(part[0]));
}

}  // namespace

void mse_loss_grad_bf16(const void* y, const void* y_ref, int64_t n, float scale, void* dy, double* sum_sq,
                        cudaStream_t s) {
  LZ_CUDA_CHECK(n >= 0 && y && y_ref && sum_sq, "mse_loss_grad_bf16: bad arguments (n ", n, ")");
  if (n == 0) return;
  // Enough blocks to fill the card; a few hundred elements per thread at most keeps fp32 sums exact enough.
  const int blocks = int(std::min<int64_t>((n + kThreads - 1) / kThreads, 132 * 8));
  mse_loss_grad_k<<<blocks, kThreads, 0, s>>>(static_cast<const bf16*>(y), static_cast<const bf16*>(y_ref), n, scale,
                                              static_cast<bf16*>(dy), sum_sq);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail_cat("mse_loss_grad_bf16: kernel launch failed: ", cudaGetErrorString(e));
}

}  // namespace lizard::cuda
