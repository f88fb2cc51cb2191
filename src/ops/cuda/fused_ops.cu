// Fused teacher kernels: RMSNorm, SwiGLU, RoPE, embedding, cross-entropy (forward and backward).
// Row kernels use one block per row and fp32 arithmetic; storage is fp32 or bf16.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/fused_ops.h"

namespace lizard::cuda {
namespace {

constexpr int kBlock = 256;

__device__ __forceinline__ float ldf(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ldf(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void stf(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void stf(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

// Sum over the block; every thread gets the result. red: kBlock/32 floats of shared memory.
__device__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  __syncthreads();
  if (l == 0) red[w] = v;
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < int(blockDim.x >> 5); ++i) s += red[i];
  return s;
}
__device__ float block_max(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  __syncthreads();
  if (l == 0) red[w] = v;
  __syncthreads();
  float s = -INFINITY;
  for (int i = 0; i < int(blockDim.x >> 5); ++i) s = fmaxf(s, red[i]);
  return s;
}

template <typename T>
__global__ void rmsnorm_fwd_k(const T* x, const T* w, T* y, float* rstd, int dim, float eps) {
  __shared__ float red[kBlock / 32];
  const int64_t r = blockIdx.x, o = r * dim;
  float ss = 0.f;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) {
    const float v = ldf(x, o + j);
    ss += v * v;
  }
  const float inv = 1.f / sqrtf(block_sum(ss, red) / float(dim) + eps);
  for (int j = threadIdx.x; j < dim; j += blockDim.x) stf(y, o + j, ldf(x, o + j) * inv * ldf(w, j));
  if (rstd != nullptr && threadIdx.x == 0) rstd[r] = inv;
}

// dx = r g - x r^3 (g . x) / dim with g = dy * w; dw += dy * x * r (per-block partials, atomics).
template <typename T>
__global__ void rmsnorm_bwd_k(const T* x, const T* w, const float* rstd, const T* dy, T* dx, float* dw, int dim) {
  __shared__ float red[kBlock / 32];
  const int64_t r = blockIdx.x, o = r * dim;
  const float inv = rstd[r];
  float gx = 0.f;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) gx += ldf(dy, o + j) * ldf(w, j) * ldf(x, o + j);
  gx = block_sum(gx, red);
  const float c = inv * inv * inv * gx / float(dim);
  for (int j = threadIdx.x; j < dim; j += blockDim.x) {
    const float xv = ldf(x, o + j), g = ldf(dy, o + j);
    stf(dx, o + j, inv * g * ldf(w, j) - xv * c);
    if (dw != nullptr) atomicAdd(dw + j, g * xv * inv);
  }
}

template <typename T>
__global__ void swiglu_fwd_k(const T* g, const T* u, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float a = ldf(g, i), s = 1.f / (1.f + expf(-a));
    stf(out, i, a * s * ldf(u, i));
  }
}

template <typename T>
__global__ void swiglu_bwd_k(const T* g, const T* u, const T* d, T* dg, T* du, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float a = ldf(g, i), s = 1.f / (1.f + expf(-a)), dv = ldf(d, i), uv = ldf(u, i);
    stf(dg, i, dv * uv * s * (1.f + a * (1.f - s)));
    stf(du, i, dv * a * s);
  }
}

template <typename T>
__global__ void rope_k(T* x, int64_t stride, int n_heads, int head_dim, int64_t pos0, const float* inv_freq,
                       float sign) {
  const int64_t i = blockIdx.x;
  const int half = head_dim / 2;
  const float pos = float(pos0 + i);
  T* row = x + i * stride;
  for (int p = threadIdx.x; p < n_heads * half; p += blockDim.x) {
    const int h = p / half, j = p % half;
    const double ang = double(__fmul_rn(pos, inv_freq[j]));  // fp32 angle, as the CPU reference
    const float c = float(cos(ang)), s = sign * float(sin(ang));
    const int64_t lo = int64_t(h) * head_dim + j, hi = lo + half;
    const float a = ldf(row, lo), b = ldf(row, hi);
    stf(row, lo, a * c - b * s);
    stf(row, hi, b * c + a * s);
  }
}

template <typename T>
__global__ void embedding_fwd_k(const T* table, const int32_t* ids, T* out, int dim) {
  const int64_t i = blockIdx.x, id = ids[i];
  for (int j = threadIdx.x; j < dim; j += blockDim.x) stf(out, i * dim + j, ldf(table, id * dim + j));
}

template <typename T>
__global__ void embedding_bwd_k(const T* dout, const int32_t* ids, float* dtable, int dim) {
  const int64_t i = blockIdx.x, id = ids[i];
  for (int j = threadIdx.x; j < dim; j += blockDim.x) atomicAdd(dtable + id * dim + j, ldf(dout, i * dim + j));
}

template <typename T>
__global__ void ce_fwd_k(const T* logits, const int32_t* target, float* loss, float* lse, int vocab) {
  __shared__ float red[kBlock / 32];
  const int64_t r = blockIdx.x, o = r * vocab;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, ldf(logits, o + j));
  mx = block_max(mx, red);
  float s = 0.f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(ldf(logits, o + j) - mx);
  s = block_sum(s, red);
  if (threadIdx.x == 0) {
    const float l = mx + logf(s);
    if (lse != nullptr) lse[r] = l;
    const int t = target[r];
    loss[r] = t >= 0 ? l - ldf(logits, o + t) : 0.f;
  }
}

template <typename T>
__global__ void ce_bwd_k(const T* logits, const int32_t* target, const float* lse, const float* dloss, T* dlogits,
                         int vocab) {
  const int64_t r = blockIdx.x, o = r * vocab;
  const int t = target[r];
  const float l = lse[r], g = t >= 0 ? dloss[r] : 0.f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x)
    stf(dlogits, o + j, g * (expf(ldf(logits, o + j) - l) - (j == t ? 1.f : 0.f)));
}

int grid_for(int64_t n) { return int(std::min<int64_t>((n + kBlock - 1) / kBlock, 132 * 16)); }

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  LZ_CUDA_CHECK(e == cudaSuccess, what, ": launch failed: ", cudaGetErrorString(e));
}

#define LZ_DISPATCH(dt, F)                   \
  do {                                       \
    if ((dt) == DType::F32) {                \
      using T = float;                       \
      F;                                     \
    } else {                                 \
      using T = __nv_bfloat16;               \
      F;                                     \
    }                                        \
  } while (0)

}  // namespace

void rmsnorm_fwd(DType dt, const void* x, const void* w, void* y, float* rstd, int64_t rows, int dim, float eps,
                 cudaStream_t s) {
  LZ_CUDA_CHECK(rows >= 0 && dim > 0, "rmsnorm (cuda): bad shape rows=", rows, " dim=", dim);
  if (rows == 0) return;
  LZ_DISPATCH(dt, (rmsnorm_fwd_k<T><<<rows, kBlock, 0, s>>>(static_cast<const T*>(x), static_cast<const T*>(w),
                                                            static_cast<T*>(y), rstd, dim, eps)));
  check_launch("rmsnorm_fwd");
}

void rmsnorm_bwd(DType dt, const void* x, const void* w, const float* rstd, const void* dy, void* dx, float* dw,
                 int64_t rows, int dim, cudaStream_t s) {
  LZ_CUDA_CHECK(rows >= 0 && dim > 0 && rstd != nullptr, "rmsnorm backward (cuda): bad arguments");
  if (dw != nullptr) LZ_CUDA_OK(cudaMemsetAsync(dw, 0, size_t(dim) * sizeof(float), s));
  if (rows == 0) return;
  LZ_DISPATCH(dt, (rmsnorm_bwd_k<T><<<rows, kBlock, 0, s>>>(static_cast<const T*>(x), static_cast<const T*>(w), rstd,
                                                            static_cast<const T*>(dy), static_cast<T*>(dx), dw, dim)));
  check_launch("rmsnorm_bwd");
}

void swiglu_fwd(DType dt, const void* gate, const void* up, void* out, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  LZ_DISPATCH(dt, (swiglu_fwd_k<T><<<grid_for(n), kBlock, 0, s>>>(static_cast<const T*>(gate),
                                                                   static_cast<const T*>(up), static_cast<T*>(out), n)));
  check_launch("swiglu_fwd");
}

void swiglu_bwd(DType dt, const void* gate, const void* up, const void* dout, void* dgate, void* dup, int64_t n,
                cudaStream_t s) {
  if (n <= 0) return;
  LZ_DISPATCH(dt, (swiglu_bwd_k<T><<<grid_for(n), kBlock, 0, s>>>(
                      static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<const T*>(dout),
                      static_cast<T*>(dgate), static_cast<T*>(dup), n)));
  check_launch("swiglu_bwd");
}

void rope_apply(DType dt, void* x, int64_t n, int64_t stride, int n_heads, int head_dim, int64_t pos0,
                const float* inv_freq, bool inverse, cudaStream_t s) {
  LZ_CUDA_CHECK(head_dim % 2 == 0 && n_heads > 0, "rope (cuda): head_dim must be even, got ", head_dim);
  if (n <= 0) return;
  LZ_DISPATCH(dt, (rope_k<T><<<n, kBlock, 0, s>>>(static_cast<T*>(x), stride, n_heads, head_dim, pos0, inv_freq,
                                                  inverse ? -1.f : 1.f)));
  check_launch("rope_apply");
}

void embedding_fwd(DType dt, const void* table, const int32_t* ids, void* out, int64_t n, int dim, cudaStream_t s) {
  if (n <= 0) return;
  LZ_DISPATCH(dt, (embedding_fwd_k<T><<<n, kBlock, 0, s>>>(static_cast<const T*>(table), ids, static_cast<T*>(out),
                                                           dim)));
  check_launch("embedding_fwd");
}

void embedding_bwd(DType dt, const void* dout, const int32_t* ids, float* dtable, int64_t n, int vocab, int dim,
                   cudaStream_t s) {
  LZ_CUDA_OK(cudaMemsetAsync(dtable, 0, size_t(vocab) * dim * sizeof(float), s));
  if (n <= 0) return;
  LZ_DISPATCH(dt, (embedding_bwd_k<T><<<n, kBlock, 0, s>>>(static_cast<const T*>(dout), ids, dtable, dim)));
  check_launch("embedding_bwd");
}

void cross_entropy_fwd(DType dt, const void* logits, const int32_t* target, float* loss, float* lse, int64_t rows,
                       int vocab, cudaStream_t s) {
  if (rows <= 0) return;
  LZ_DISPATCH(dt, (ce_fwd_k<T><<<rows, kBlock, 0, s>>>(static_cast<const T*>(logits), target, loss, lse, vocab)));
  check_launch("cross_entropy_fwd");
}

void cross_entropy_bwd(DType dt, const void* logits, const int32_t* target, const float* lse, const float* dloss,
                       void* dlogits, int64_t rows, int vocab, cudaStream_t s) {
  if (rows <= 0) return;
  LZ_DISPATCH(dt, (ce_bwd_k<T><<<rows, kBlock, 0, s>>>(static_cast<const T*>(logits), target, lse, dloss,
                                                       static_cast<T*>(dlogits), vocab)));
  check_launch("cross_entropy_bwd");
}

}  // namespace lizard::cuda
