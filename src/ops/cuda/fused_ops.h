// Fused elementwise / row kernels of the teacher on the GPU, forward and backward. Device pointers,
// contiguous rows; `dt` is the storage type of activations and weights (fp32 or bf16); statistics
// and weight gradients are fp32. Gradients named "OVERWRITTEN" are zeroed by the call first.
#pragma once
#include <cstdint>

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace lizard::cuda {

enum class DType : int { F32 = 0, BF16 = 1 };

// y = x / sqrt(mean(x^2) + eps) * w per row; rstd [rows] (optional) keeps 1/sqrt(...) for backward.
void rmsnorm_fwd(DType dt, const void* x, const void* w, void* y, float* rstd, int64_t rows, int dim, float eps,
                 cudaStream_t s = nullptr);
// dx [rows, dim] (dt), dw [dim] fp32 OVERWRITTEN (sum over rows). rstd from rmsnorm_fwd.
void rmsnorm_bwd(DType dt, const void* x, const void* w, const float* rstd, const void* dy, void* dx, float* dw,
                 int64_t rows, int dim, cudaStream_t s = nullptr);

// out = silu(gate) * up; backward: dgate, dup (dt).
void swiglu_fwd(DType dt, const void* gate, const void* up, void* out, int64_t n, cudaStream_t s = nullptr);
void swiglu_bwd(DType dt, const void* gate, const void* up, const void* dout, void* dgate, void* dup, int64_t n,
                cudaStream_t s = nullptr);

// RoPE in place, HF rotate-half order, same arithmetic as ops/cpu/rope.h (angle = fp32 pos * inv_freq,
// cos/sin in double). inverse = true rotates by -angle (the backward). inv_freq: device, head_dim/2.
void rope_apply(DType dt, void* x, int64_t n, int64_t stride, int n_heads, int head_dim, int64_t pos0,
                const float* inv_freq, bool inverse, cudaStream_t s = nullptr);

// out[i] = table[ids[i]]; backward: dtable [vocab, dim] fp32 OVERWRITTEN, rows summed per id.
void embedding_fwd(DType dt, const void* table, const int32_t* ids, void* out, int64_t n, int dim,
                   cudaStream_t s = nullptr);
void embedding_bwd(DType dt, const void* dout, const int32_t* ids, float* dtable, int64_t n, int vocab, int dim,
                   cudaStream_t s = nullptr);

// Per-row cross-entropy: loss[r] = lse(logits[r]) - logits[r][target[r]], 0 where target < 0
// (ignored). lse [rows] kept for backward. Backward: dlogits = (softmax - onehot) * dloss[r] (dt),
// zero rows for ignored targets.
void cross_entropy_fwd(DType dt, const void* logits, const int32_t* target, float* loss, float* lse, int64_t rows,
                       int vocab, cudaStream_t s = nullptr);
void cross_entropy_bwd(DType dt, const void* logits, const int32_t* target, const float* lse, const float* dloss,
                       void* dlogits, int64_t rows, int vocab, cudaStream_t s = nullptr);

}  // namespace lizard::cuda
