#include "model/cuda/cuda_model_kernels.h"

#include <cuda_bf16.h>

#include <algorithm>

#include "ops/cuda/cuda_check.h"

namespace lizard::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kBlock = 256;

void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail_cat(what, " (cuda): kernel launch failed: ", cudaGetErrorString(e));
}

// One block per row; same arithmetic as fused_ops.cu's rope_k.
__global__ void rope_rows_k(bf16* x, int64_t stride, int n_heads, int head_dim, const int* pos,
                            const float* inv_freq) {
  const int64_t r = blockIdx.x;
  const int half = head_dim / 2;
  const float p = float(pos[r]);
  bf16* row = x + r * stride;
  for (int i = threadIdx.x; i < n_heads * half; i += blockDim.x) {
    const int h = i / half, j = i % half;
    const double ang = double(__fmul_rn(p, inv_freq[j]));
    const float c = float(cos(ang)), s = float(sin(ang));
    const int64_t lo = int64_t(h) * head_dim + j, hi = lo + half;
    const float a = __bfloat162float(row[lo]), b = __bfloat162float(row[hi]);
    row[lo] = __float2bfloat16(a * c - b * s);
    row[hi] = __float2bfloat16(b * c + a * s);
  }
}

// Element e of the kept tail: (j, h, d) with j counting the last `keep` positions.
__global__ void ring_fill_k(const bf16* k, const bf16* v, bf16* rk, bf16* rv, int64_t n, int64_t keep, int Hkv,
                            int D, int w) {
  const int64_t total = keep * Hkv * D;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(e % D);
    const int h = int((e / D) % Hkv);
    const int64_t t = n - keep + e / (int64_t(D) * Hkv);
    const int64_t src = (t * Hkv + h) * D + d;
    const int64_t dst = (int64_t(h) * w + t % w) * D + d;
    rk[dst] = k[src];
    rv[dst] = v[src];
  }
}

}  // namespace

void rope_rows(void* x, int64_t rows, int64_t stride, int n_heads, int head_dim, const int* pos,
               const float* inv_freq, cudaStream_t s) {
  LZ_CUDA_CHECK(head_dim % 2 == 0 && n_heads > 0 && stride >= int64_t(n_heads) * head_dim,
                "rope_rows (cuda): bad shape (heads ", n_heads, ", head_dim ", head_dim, ", stride ", stride, ")");
  if (rows <= 0) return;
  rope_rows_k<<<unsigned(rows), kBlock, 0, s>>>(static_cast<bf16*>(x), stride, n_heads, head_dim, pos, inv_freq);
  check_launch("rope_rows");
}

void lizard_ring_fill(const void* k, const void* v, void* ring_k, void* ring_v, int64_t n, int Hkv, int D, int w,
                      cudaStream_t s) {
  LZ_CUDA_CHECK(Hkv > 0 && D > 0 && w > 0, "lizard_ring_fill (cuda): bad shape (Hkv ", Hkv, ", D ", D, ", w ", w, ")");
  if (n <= 0) return;
  const int64_t keep = std::min<int64_t>(n, w);
  const int64_t total = keep * Hkv * D;
  const int grid = int(std::min<int64_t>((total + kBlock - 1) / kBlock, 4096));
  ring_fill_k<<<grid, kBlock, 0, s>>>(static_cast<const bf16*>(k), static_cast<const bf16*>(v),
                                      static_cast<bf16*>(ring_k), static_cast<bf16*>(ring_v), n, keep, Hkv, D, w);
  check_launch("lizard_ring_fill");
}

}  // namespace lizard::cuda
