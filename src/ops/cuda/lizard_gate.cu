// The Lizard gate (ops/cuda/lizard_gate.h): log gamma = logsigmoid(x_n . w_g + b_g), forward and backward.
#include "ops/cuda/lizard_gate.h"

#include <algorithm>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "ops/cuda/cuda_check.h"

namespace lizard::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kWarps = 8;  // warps per block in the per-(token, gate) kernels

// z = x_n[t] . w_g[g] + b_g[g], one warp per (t, g).
__device__ __forceinline__ float gate_logit(const bf16* xn, const float* wg, const float* bg, int64_t t, int g,
                                            int d, int lane) {
  const bf16* x = xn + t * d;
  const float* w = wg + int64_t(g) * d;
  float s = 0.f;
  for (int j = lane; j < d; j += 32) s += __bfloat162float(x[j]) * w[j];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s + bg[g];
}

__global__ void gate_fwd_k(const bf16* xn, const float* wg, const float* bg, float* lg, int64_t T, int d, int G) {
  const int64_t item = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;  // t * G + g
  if (item >= T * G) return;
  const int lane = threadIdx.x % 32;
  const int64_t t = item / G;
  const int g = int(item % G);
  const float z = gate_logit(xn, wg, bg, t, g, d, lane);
  if (lane == 0) lg[item] = fminf(z, 0.f) - log1pf(expf(-fabsf(z)));  // logsigmoid, stable
}

// dz = dlog_gamma * sigmoid(-z), z recomputed.
__global__ void gate_dz_k(const bf16* xn, const float* wg, const float* bg, const float* dlg, float* dz, int64_t T,
                          int d, int G) {
  const int64_t item = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;
  if (item >= T * G) return;
  const int lane = threadIdx.x % 32;
  const int64_t t = item / G;
  const int g = int(item % G);
  const float z = gate_logit(xn, wg, bg, t, g, d, lane);
  if (lane == 0) dz[item] = dlg[item] / (1.f + expf(z));
}

// dxn[t, j] += sum_g dz[t, g] w_g[g, j]: block per token, threads over j.
__global__ void gate_dxn_k(const float* dz, const float* wg, bf16* dxn, int64_t T, int d, int G) {
  const int64_t t = blockIdx.x;
  if (t >= T) return;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float s = 0.f;
    for (int g = 0; g < G; ++g) s += dz[t * G + g] * wg[int64_t(g) * d + j];
    bf16* p = dxn + t * d + j;
    *p = __float2bfloat16(__bfloat162float(*p) + s);
  }
}

// dw_g[g, j] += sum_{t in chunk} x_n[t, j] dz[t, g]; db_g[g] += sum_{t in chunk} dz[t, g], for kGatesPerThread
// gates g0.. at once so x_n is read G / kGatesPerThread times. Grid (column tiles of blockDim.x, token
// chunks, gate groups); both outputs zeroed before.
constexpr int kGatesPerThread = 8;
__global__ void gate_dw_k(const bf16* xn, const float* dz, float* dwg, float* dbg, int64_t T, int d, int G,
                          int64_t chunk) {
  const int g0 = blockIdx.z * kGatesPerThread;
  const int ng = min(kGatesPerThread, G - g0);
  const int64_t t0 = blockIdx.y * chunk, t1 = min(T, t0 + chunk);
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j < d) {
    float s[kGatesPerThread] = {};
    for (int64_t t = t0; t < t1; ++t) {
      const float x = __bfloat162float(xn[t * d + j]);
      const float* dzt = dz + t * G + g0;
#pragma unroll
      for (int k = 0; k < kGatesPerThread; ++k)
        if (k < ng) s[k] = fmaf(x, dzt[k], s[k]);
    }
#pragma unroll
    for (int k = 0; k < kGatesPerThread; ++k)
      if (k < ng) atomicAdd(dwg + int64_t(g0 + k) * d + j, s[k]);
  }
  if (blockIdx.x == 0 && threadIdx.x < ng) {
    const int g = g0 + threadIdx.x;
    float s = 0.f;
    for (int64_t t = t0; t < t1; ++t) s += dz[t * G + g];
    atomicAdd(dbg + g, s);
  }
}

int64_t blocks_for_items(int64_t items) { return (items + kWarps - 1) / kWarps; }

void check_args(int64_t T, int d, int G) {
  LZ_CUDA_CHECK(T >= 0 && d > 0 && G > 0, "lizard gate: bad sizes T=", T, " d=", d, " G=", G);
  LZ_CUDA_CHECK(blocks_for_items(T * G) < (int64_t(1) << 31) && T < (int64_t(1) << 31),
                "lizard gate: too many tokens T=", T, " G=", G);
  LZ_CUDA_CHECK(G <= 65535, "lizard gate: G=", G, " exceeds the grid's z limit");
}

}  // namespace

void lizard_gate_fwd(const void* xn, const float* w_g, const float* b_g, float* log_gamma, int64_t T, int d, int G,
                     cudaStream_t s) {
  check_args(T, d, G);
  if (T == 0) return;
  gate_fwd_k<<<unsigned(blocks_for_items(T * G)), kWarps * 32, 0, s>>>(static_cast<const bf16*>(xn), w_g, b_g,
                                                                     log_gamma, T, d, G);
  launched("lizard_gate_fwd");
}

void lizard_gate_bwd(const void* xn, const float* w_g, const float* b_g, const float* dlog_gamma, float* dw_g,
                     float* db_g, void* dxn, int64_t T, int d, int G, cudaStream_t s) {
  check_args(T, d, G);
  LZ_CUDA_OK(cudaMemsetAsync(dw_g, 0, size_t(G) * d * sizeof(float), s));
  LZ_CUDA_OK(cudaMemsetAsync(db_g, 0, size_t(G) * sizeof(float), s));
  if (T == 0) return;
  float* dz = nullptr;  // [T, G], stream-ordered scratch
  LZ_CUDA_OK(cudaMallocAsync(reinterpret_cast<void**>(&dz), size_t(T) * G * sizeof(float), s));
  const bf16* x = static_cast<const bf16*>(xn);
  gate_dz_k<<<unsigned(blocks_for_items(T * G)), kWarps * 32, 0, s>>>(x, w_g, b_g, dlog_gamma, dz, T, d, G);
  launched("lizard_gate_bwd (dz)");
  if (dxn) {
    gate_dxn_k<<<unsigned(T), 256, 0, s>>>(dz, w_g, static_cast<bf16*>(dxn), T, d, G);
    launched("lizard_gate_bwd (dxn)");
  }
  // Enough chunks to fill the card (~2K blocks), at least 64 tokens each.
  const int tiles = (d + 255) / 256, groups = (G + kGatesPerThread - 1) / kGatesPerThread;
  const int64_t want_chunks = std::max<int64_t>(1, 2048 / (int64_t(tiles) * groups));
  const int64_t chunk = std::max<int64_t>(64, (T + want_chunks - 1) / want_chunks);
  const int64_t chunks = (T + chunk - 1) / chunk;
  gate_dw_k<<<dim3(unsigned(tiles), unsigned(chunks), unsigned(groups)), 256, 0, s>>>(x, dz, dw_g, db_g, T, d, G,
                                                                                    chunk);
  launched("lizard_gate_bwd (dw)");
  LZ_CUDA_OK(cudaFreeAsync(dz, s));
}

}  // namespace lizard::cuda
