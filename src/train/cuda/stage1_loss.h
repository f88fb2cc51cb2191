// The stage-1 loss on the GPU (train/cuda/stage1_cuda.h): squared error of a Lizard layer's output
// against the teacher's attention output, and its gradient. Plain C++ can include this header.
#pragma once
#include <cstdint>

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace lizard::cuda {

// y, y_ref [n] bf16. *sum_sq (device fp64) += sum_i (y_i - y_ref_i)^2 (fp32 per block, fp64 across
// blocks). When dy is not null it receives scale * (y_i - y_ref_i) in bf16 (OVERWRITTEN).
void mse_loss_grad_bf16(const void* y, const void* y_ref, int64_t n, float scale, void* dy, double* sum_sq,
                        cudaStream_t s = nullptr);

}  // namespace lizard::cuda
