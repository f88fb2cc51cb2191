// Split-K softmax decode against a bf16 KV cache (ops/cuda/attention_decode.h).
//
// Split kernel: one CTA per (key chunk, kv head x row group, slot). Its rows are the query heads of the
// kv head's GQA group times the n new tokens (at most kRows per CTA); it streams the chunk's keys in
// tiles of kTile through shared memory with an online softmax and writes the unnormalised partial output
// and its (max, sum) to the workspace. Combine kernel: one CTA per (slot, token, head) merges the chunks.
#include "ops/cuda/attention_decode.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "ops/cuda/cuda_check.h"

namespace lizard::cuda {
namespace {

using bf16 = __nv_bfloat16;
using bf162 = __nv_bfloat162;

constexpr int kThreads = 128;
constexpr int kTile = 32;  // keys per shared-memory tile (one per lane in the score step)
constexpr int kRows = 16;  // query rows per CTA
constexpr int kMaxD = 256;

// Keys per split: enough splits for ~1024 CTAs per kv head over the batch, at least 128 keys each.
int64_t chunk_keys(int B, int max_ctx) {
  const int64_t target_splits = std::max(1, (1024 + B - 1) / std::max(B, 1));
  int64_t ch = (int64_t(max_ctx) + target_splits - 1) / target_splits;
  ch = (ch + kTile - 1) / kTile * kTile;
  return std::max<int64_t>(ch, 128);
}
int64_t n_splits(int B, int max_ctx) {
  return std::max<int64_t>(1, (int64_t(max_ctx) + chunk_keys(B, max_ctx) - 1) / chunk_keys(B, max_ctx));
}

struct Params {
  const bf16 *q, *k, *v;
  const int* lens;
  bf16* out;
  float* acc;  // [B * n * H, splits, D]
  float* ml;   // [B * n * H, splits, 2]: running max, sum of exp
  int B, n, H, Hkv, D, max_ctx;
  int64_t chunk, splits;
  float scale;
  bool vec16;  // D % 8 == 0 and both caches 16-byte aligned
};

template <int MAXD>
__global__ void __launch_bounds__(kThreads) decode_split_k(Params p) {
  constexpr int DPT = MAXD / kThreads;  // output dims per thread
  __shared__ bf162 q_s[kRows][MAXD / 2];
  __shared__ bf162 k_s[kTile][MAXD / 2 + 1];  // odd word stride: lanes (keys) hit different banks
  __shared__ __align__(16) bf16 v_s[kTile][MAXD];
  __shared__ float p_s[kRows][kTile];
  __shared__ float m_s[kRows], l_s[kRows], c_s[kRows];

  const int s = blockIdx.x;
  const int kvh = blockIdx.y % p.Hkv, rg = blockIdx.y / p.Hkv;
  const int b = blockIdx.z;
  const int len = min(p.lens[b], p.max_ctx);  // a length past the cache would read outside it
  if (len <= 0) return;
  const int64_t start = int64_t(s) * p.chunk;
  if (start >= len) return;  // the combine kernel reads only the splits below len
  const int end = int(std::min<int64_t>(len, start + p.chunk));
  const int G = p.H / p.Hkv, R = G * p.n, r0 = rg * kRows;
  const int nr = min(kRows, R - r0);
  if (nr <= 0) return;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int W = p.D / 2;  // words (bf16 pairs) per row

  // Row rr: token j = (r0 + rr) / G, head h = kvh * G + (r0 + rr) % G.
  for (int i = tid; i < nr * W; i += kThreads) {
    const int rr = i / W, w = i % W, r = r0 + rr;
    const int j = r / G, h = kvh * G + r % G;
    q_s[rr][w] = reinterpret_cast<const bf162*>(p.q + ((int64_t(b) * p.n + j) * p.H + h) * p.D)[w];
  }
  if (tid < kRows) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.f;
  }
  float acc[kRows][DPT];
#pragma unroll
  for (int rr = 0; rr < kRows; ++rr)
#pragma unroll
    for (int i = 0; i < DPT; ++i) acc[rr][i] = 0.f;

  const int64_t kv_base = (int64_t(b) * p.Hkv + kvh) * p.max_ctx;
  for (int t0 = int(start); t0 < end; t0 += kTile) {
    const int nk = min(kTile, end - t0);
    __syncthreads();  // the previous tile is consumed (and q_s, m_s are ready on the first pass)
    if (p.vec16) {  // 16-byte loads; k_s rows have an odd word stride, so its stores go word by word
      const int W4 = p.D / 8;
      for (int i = tid; i < nk * W4; i += kThreads) {
        const int key = i / W4, c = i % W4;
        const int64_t off = (kv_base + t0 + key) * p.D;
        const uint4 kk = reinterpret_cast<const uint4*>(p.k + off)[c];
        const uint4 vv = reinterpret_cast<const uint4*>(p.v + off)[c];
        uint32_t* kr = reinterpret_cast<uint32_t*>(&k_s[key][4 * c]);
        kr[0] = kk.x, kr[1] = kk.y, kr[2] = kk.z, kr[3] = kk.w;
        reinterpret_cast<uint4*>(&v_s[key][0])[c] = vv;
      }
    } else {
      for (int i = tid; i < nk * W; i += kThreads) {
        const int key = i / W, w = i % W;
        const int64_t off = (kv_base + t0 + key) * p.D;
        k_s[key][w] = reinterpret_cast<const bf162*>(p.k + off)[w];
        reinterpret_cast<bf162*>(&v_s[key][0])[w] = reinterpret_cast<const bf162*>(p.v + off)[w];
      }
    }
    __syncthreads();
    // Scores: lane = key, warps over rows. Causal: query row at len - n + j sees keys <= its position.
    for (int rr = warp; rr < nr; rr += kThreads / 32) {
      float sc = -INFINITY;
      const int qpos = len - p.n + (r0 + rr) / G;
      if (lane < nk && t0 + lane <= qpos) {
        float d0 = 0.f, d1 = 0.f;
        for (int w = 0; w < W; ++w) {
          const float2 a = __bfloat1622float2(q_s[rr][w]), c = __bfloat1622float2(k_s[lane][w]);
          d0 = fmaf(a.x, c.x, d0);
          d1 = fmaf(a.y, c.y, d1);
        }
        sc = (d0 + d1) * p.scale;
      }
      // Online softmax statistics of the row, in the same warp.
      float mx = sc;
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_old = m_s[rr];
      const float m_new = fmaxf(m_old, mx);
      const float e = (sc == -INFINITY) ? 0.f : expf(sc - m_new);
      float sum = e;
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      p_s[rr][lane] = e;
      if (lane == 0) {
        const float corr = (m_old == -INFINITY) ? 0.f : expf(m_old - m_new);
        c_s[rr] = corr;
        l_s[rr] = l_s[rr] * corr + sum;
        m_s[rr] = m_new;
      }
    }
    __syncthreads();
    // acc = acc * corr + P V, thread per output dim.
#pragma unroll
    for (int i = 0; i < DPT; ++i) {
      const int d = tid + kThreads * i;
      if (d >= p.D) continue;
#pragma unroll
      for (int rr = 0; rr < kRows; ++rr) {
        if (rr >= nr) break;
        float a = acc[rr][i] * c_s[rr];
        for (int key = 0; key < nk; ++key) a = fmaf(p_s[rr][key], __bfloat162float(v_s[key][d]), a);
        acc[rr][i] = a;
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int rr = 0; rr < kRows; ++rr) {
    if (rr >= nr) break;
    const int r = r0 + rr, j = r / G, h = kvh * G + r % G;
    const int64_t part = ((int64_t(b) * p.n + j) * p.H + h) * p.splits + s;
#pragma unroll
    for (int i = 0; i < DPT; ++i) {
      const int d = tid + kThreads * i;
      if (d < p.D) p.acc[part * p.D + d] = acc[rr][i];
    }
    if (tid == 0) {
      p.ml[part * 2] = m_s[rr];
      p.ml[part * 2 + 1] = l_s[rr];
    }
  }
}

// One CTA per (slot, token, head): out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
__global__ void __launch_bounds__(kThreads) decode_combine_k(Params p) {
  const int64_t row = blockIdx.x;  // (b * n + j) * H + h
  const int b = int(row / (int64_t(p.n) * p.H));
  const int len = min(p.lens[b], p.max_ctx);
  if (len <= 0) return;
  const int64_t ns = std::min<int64_t>(p.splits, (len + p.chunk - 1) / p.chunk);
  const float* ml = p.ml + row * p.splits * 2;
  float M = -INFINITY;
  for (int64_t s = 0; s < ns; ++s) M = fmaxf(M, ml[s * 2]);
  float L = 0.f;
  if (M != -INFINITY)
    for (int64_t s = 0; s < ns; ++s)
      if (ml[s * 2] != -INFINITY) L += expf(ml[s * 2] - M) * ml[s * 2 + 1];
  const float inv = L > 0.f ? 1.f / L : 0.f;
  const float* acc = p.acc + row * p.splits * p.D;
  for (int d = threadIdx.x; d < p.D; d += blockDim.x) {
    float o = 0.f;
    if (L > 0.f)
      for (int64_t s = 0; s < ns; ++s)
        if (ml[s * 2] != -INFINITY) o += expf(ml[s * 2] - M) * acc[s * p.D + d];
    p.out[row * p.D + d] = __float2bfloat16(o * inv);
  }
}

__global__ void kv_cache_write_k(const uint32_t* src, uint32_t* cache, int B, int n, int Hkv, int W, int max_ctx,
                                 const int* pos0) {
  const int64_t total = int64_t(B) * n * Hkv * W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int w = int(i % W);
    int64_t rest = i / W;
    const int kvh = int(rest % Hkv);
    rest /= Hkv;
    const int j = int(rest % n);
    const int b = int(rest / n);
    const int p0 = pos0[b];
    if (p0 < 0) continue;
    const int64_t pos = int64_t(p0) + j;
    if (pos >= max_ctx) continue;
    cache[((int64_t(b) * Hkv + kvh) * max_ctx + pos) * W + w] = src[i];
  }
}

bool aligned4(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 4 == 0; }

}  // namespace

void kv_cache_write(const void* src, void* cache, int B, int n, int Hkv, int D, int max_ctx, const int* pos0,
                    cudaStream_t s) {
  LZ_CUDA_CHECK(B >= 0 && n >= 0 && Hkv > 0 && D > 0 && D % 2 == 0 && max_ctx > 0,
                "kv_cache_write: bad sizes B=", B, " n=", n, " Hkv=", Hkv, " D=", D, " max_ctx=", max_ctx);
  if (B == 0 || n == 0) return;
  LZ_CUDA_CHECK(src && cache && pos0 && aligned4(src) && aligned4(cache), "kv_cache_write: null or misaligned pointer");
  const int64_t total = int64_t(B) * n * Hkv * (D / 2);
  const int grid = int(std::max<int64_t>(1, std::min<int64_t>((total + 255) / 256, 132 * 16)));
  kv_cache_write_k<<<grid, 256, 0, s>>>(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(cache), B, n, Hkv,
                                        D / 2, max_ctx, pos0);
  launched("kv_cache_write");
}

size_t attention_decode_workspace_bytes(int B, int n, int H, int D, int max_ctx) {
  if (B <= 0 || n <= 0 || H <= 0 || D <= 0 || max_ctx <= 0) return 0;
  const int64_t parts = int64_t(B) * n * H * n_splits(B, max_ctx);
  return size_t(parts) * size_t(D + 2) * sizeof(float);
}

void attention_decode(const AttentionDecodeArgs& a) {
  LZ_CUDA_CHECK(a.B >= 0 && a.n > 0 && a.H > 0 && a.Hkv > 0 && a.H % a.Hkv == 0 && a.max_ctx > 0,
                "attention_decode: bad sizes B=", a.B, " n=", a.n, " H=", a.H, " Hkv=", a.Hkv, " max_ctx=", a.max_ctx);
  LZ_CUDA_CHECK(a.D > 0 && a.D % 2 == 0 && a.D <= kMaxD, "attention_decode: head dim ", a.D,
                " unsupported (even, <= ", kMaxD, ")");
  if (a.B == 0) return;
  LZ_CUDA_CHECK(a.q && a.k_cache && a.v_cache && a.lens && a.out && a.workspace, "attention_decode: null pointer");
  LZ_CUDA_CHECK(aligned4(a.q) && aligned4(a.k_cache) && aligned4(a.v_cache),
                "attention_decode: q and the caches must be 4-byte aligned");
  Params p;
  p.q = static_cast<const bf16*>(a.q);
  p.k = static_cast<const bf16*>(a.k_cache);
  p.v = static_cast<const bf16*>(a.v_cache);
  p.lens = a.lens;
  p.out = static_cast<bf16*>(a.out);
  p.B = a.B, p.n = a.n, p.H = a.H, p.Hkv = a.Hkv, p.D = a.D, p.max_ctx = a.max_ctx;
  p.chunk = chunk_keys(a.B, a.max_ctx);
  p.splits = n_splits(a.B, a.max_ctx);
  p.acc = a.workspace;
  p.ml = a.workspace + int64_t(a.B) * a.n * a.H * p.splits * a.D;
  p.vec16 = a.D % 8 == 0 && reinterpret_cast<uintptr_t>(a.k_cache) % 16 == 0 &&
            reinterpret_cast<uintptr_t>(a.v_cache) % 16 == 0;
  p.scale = a.scale != 0.f ? a.scale : 1.f / std::sqrt(float(a.D));
  const int rows = (a.H / a.Hkv) * a.n;
  const int64_t row_groups = (rows + kRows - 1) / kRows;
  LZ_CUDA_CHECK(int64_t(a.Hkv) * row_groups <= 65535 && a.B <= 65535, "attention_decode: grid too large (Hkv=",
                a.Hkv, " rows=", rows, " B=", a.B, ")");
  const dim3 grid(unsigned(p.splits), unsigned(a.Hkv * row_groups), unsigned(a.B));
  if (a.D <= 128)
    decode_split_k<128><<<grid, kThreads, 0, a.stream>>>(p);
  else
    decode_split_k<256><<<grid, kThreads, 0, a.stream>>>(p);
  launched("attention_decode (split)");
  decode_combine_k<<<unsigned(int64_t(a.B) * a.n * a.H), kThreads, 0, a.stream>>>(p);
  launched("attention_decode (combine)");
}

}  // namespace lizard::cuda
