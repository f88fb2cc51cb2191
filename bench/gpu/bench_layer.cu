// One full decoder layer on the GPU, forward and forward+backward, bf16 storage with fp32 accumulation:
//   teacher: RMSNorm -> q/k/v GEMMs -> RoPE -> flash attention (GQA) -> W_o GEMM (+ residual) -> RMSNorm
//            -> gate/up GEMMs -> SwiGLU -> down GEMM (+ residual)
//   lizard:  the same with Lizard attention (chunked forward, chunked backward) instead of RoPE + flash;
//            log gamma = logsigmoid(x_n . w_g + b_g) from a GEMV of the normed input (scalar gate), and the
//            default Lizard config (F 64, window 128, 4 meta sinks, alpha per head, no RoPE: feature_on_rope =
//            window_rope = false).
// Matrix products through cuBLASLt (bf16 A/B/C/D, fp32 compute and scale); residual adds fused as C != D.
// Backward: input-gradient and weight-gradient GEMMs of every weight (all trainable: the worst case), every
// op's backward (RMSNorm incl. dw, SwiGLU, RoPE inverse, flash or Lizard incl. feature-map/gate/meta/alpha
// gradients, gate GEMV).
// Prints the card, a measured bf16 cuBLASLt 8192^3 GEMM (the card's reference throughput in this run), then
// per configuration: fwd ms, fwd+bwd ms, tokens/s, GEMM TFLOP/s and GEMM+attention TFLOP/s, and their
// fraction of the 8192^3 figure. Timing: CUDA events per repetition, warm-up, median of >= 20.
// Built by scripts/device_cuda.sh build (build-dev/bench_layer); run: build-dev/bench_layer [--quick].
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/fused_ops.h"
#include "ops/cuda/lizard_attention.h"

using bf16 = __nv_bfloat16;
using lizard::cuda::fail_cat;

#define LT_OK(call)                                                                                  \
  do {                                                                                               \
    cublasStatus_t s_ = (call);                                                                      \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                                 \
      fail_cat(__FILE__, ":", __LINE__, ": ", #call, ": cublas status ", int(s_), " (",              \
               cublasLtGetStatusString(s_), ")");                                                    \
  } while (0)

namespace {

cudaStream_t g_st = nullptr;
cublasLtHandle_t g_lt = nullptr;
void* g_ws = nullptr;
constexpr size_t kWs = size_t(64) << 20;

void launched(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail_cat(what, ": launch failed: ", cudaGetErrorString(e));
}

// ---------------------------------------------------------------------------------------------- small kernels
__device__ __forceinline__ float urand(uint64_t i, uint32_t seed) {
  uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t(seed) * 0xBF58476D1CE4E5B9ull + 0x94D049BB133111EBull);
  x ^= x >> 31;
  x *= 0xD6E8FEB86659FD93ull;
  x ^= x >> 32;
  x *= 0x9E3779B97F4A7C15ull;
  x ^= x >> 29;
  // (k + 0.5) / 2^24 in (0, 1): 2u - 1 is never exactly 0
  return (float(uint32_t(x >> 40)) + 0.5f) * (1.0f / 16777216.0f);
}

template <typename T>
__global__ void fill_k(T* p, int64_t n, uint32_t seed, float offset, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = offset + scale * (2.f * urand(i, seed) - 1.f);
    if constexpr (sizeof(T) == 2)
      p[i] = __float2bfloat16(v);
    else
      p[i] = v;
  }
}

__global__ void add_k(const bf16* a, const bf16* b, bf16* o, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    o[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

__global__ void to_bf16_k(const float* a, bf16* o, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    o[i] = __float2bfloat16(a[i]);
}

// Warp per token: z = x_n . w_g + b_g, log gamma = logsigmoid(z) (<= 0).
__global__ void gate_fwd_k(const bf16* xn, const float* wg, const float* bg, float* z, float* lg, int64_t T, int d) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (t >= T) return;
  float s = 0.f;
  for (int j = lane; j < d; j += 32) s += __bfloat162float(xn[t * d + j]) * wg[j];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) {
    const float zz = s + bg[0];
    z[t] = zz;
    lg[t] = fminf(zz, 0.f) - log1pf(expf(-fabsf(zz)));
  }
}

// Warp per token: dz = dlg * sigmoid(-z); dxn[t] += dz * w_g; db += dz.
__global__ void gate_bwd_k(const float* z, const float* dlg, const float* wg, bf16* dxn, float* dz, float* db,
                           int64_t T, int d) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (t >= T) return;
  const float g = dlg[t] / (1.f + expf(z[t]));
  for (int j = lane; j < d; j += 32) dxn[t * d + j] = __float2bfloat16(__bfloat162float(dxn[t * d + j]) + g * wg[j]);
  if (lane == 0) {
    dz[t] = g;
    atomicAdd(db, g);
  }
}

// dw_g[j] = sum_t x_n[t, j] dz[t]: block (column tile of 256, token chunk), fp32 atomics per column.
__global__ void gate_dw_k(const bf16* xn, const float* dz, float* dwg, int64_t T, int d, int64_t chunk) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= d) return;
  const int64_t t0 = blockIdx.y * chunk, t1 = std::min<int64_t>(T, t0 + chunk);
  float s = 0.f;
  for (int64_t t = t0; t < t1; ++t) s += __bfloat162float(xn[t * d + j]) * dz[t];
  atomicAdd(dwg + j, s);
}

int ew_grid(int64_t n) { return int(std::min<int64_t>((n + 255) / 256, 132 * 16)); }

template <typename T>
void fill(T* p, int64_t n, uint32_t seed, float offset, float scale) {
  fill_k<T><<<ew_grid(n), 256, 0, g_st>>>(p, n, seed, offset, scale);
  launched("fill");
}

// ---------------------------------------------------------------------------------------------- device memory
std::vector<void*> g_allocs;
template <typename T>
T* dalloc(int64_t n) {
  void* p = nullptr;
  LZ_CUDA_OK(cudaMalloc(&p, size_t(std::max<int64_t>(n, 1)) * sizeof(T)));
  g_allocs.push_back(p);
  return static_cast<T*>(p);
}
void free_all() {
  LZ_CUDA_OK(cudaDeviceSynchronize());
  for (void* p : g_allocs) LZ_CUDA_OK(cudaFree(p));
  g_allocs.clear();
}

// ---------------------------------------------------------------------------------------------- cuBLASLt GEMM
// Row-major D[M, N] = op(A) op(B) + beta C, op(A) [M, K] (A stored [M, K], or [K, M] with ta), op(B) [K, N]
// (B stored [K, N], or [N, K] with tb: a weight in PyTorch's [out, in] layout). cuBLASLt is column-major, so
// it computes D^T = op(B)^T op(A)^T: its first operand is B, its second A.
struct Gemm {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  const void *a = nullptr, *b = nullptr, *c = nullptr;
  void* d = nullptr;
  float beta = 0.f;
  double flops = 0;
  void run() const {
    const float alpha = 1.f;
    LT_OK(cublasLtMatmul(g_lt, desc, &alpha, a, la, b, lb, &beta, c, lc, d, lc, &algo, g_ws, kWs, g_st));
  }
  void destroy() noexcept {  // also runs from destructors: statuses ignored
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    desc = nullptr, la = lb = lc = nullptr;
  }
};

Gemm make_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const bf16* A, const bf16* B, bf16* D,
               const bf16* C = nullptr, float beta = 0.f) {
  Gemm g;
  const int64_t m = N, n = M, k = K;  // column-major problem
  const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  LT_OK(cublasLtMatmulDescCreate(&g.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  LT_OK(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
  LT_OK(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
  const int64_t ar = opa == CUBLAS_OP_N ? m : k, ac = opa == CUBLAS_OP_N ? k : m;
  const int64_t br = opb == CUBLAS_OP_N ? k : n, bc = opb == CUBLAS_OP_N ? n : k;
  LT_OK(cublasLtMatrixLayoutCreate(&g.la, CUDA_R_16BF, uint64_t(ar), uint64_t(ac), ar));
  LT_OK(cublasLtMatrixLayoutCreate(&g.lb, CUDA_R_16BF, uint64_t(br), uint64_t(bc), br));
  LT_OK(cublasLtMatrixLayoutCreate(&g.lc, CUDA_R_16BF, uint64_t(m), uint64_t(n), m));
  cublasLtMatmulPreference_t pref = nullptr;
  LT_OK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWs;
  LT_OK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  cublasLtMatmulHeuristicResult_t res{};
  int nres = 0;
  LT_OK(cublasLtMatmulAlgoGetHeuristic(g_lt, g.desc, g.la, g.lb, g.lc, g.lc, pref, 1, &res, &nres));
  LT_OK(cublasLtMatmulPreferenceDestroy(pref));
  if (nres < 1) fail_cat("cuBLASLt: no algorithm for M=", M, " N=", N, " K=", K, " ta=", ta, " tb=", tb);
  g.algo = res.algo;
  g.a = B;  // column-major first operand
  g.b = A;
  g.c = C ? C : D;
  g.d = D;
  g.beta = beta;
  g.flops = 2.0 * double(M) * double(N) * double(K);
  return g;
}

// ---------------------------------------------------------------------------------------------- timing
double median_ms(const std::function<void()>& fn, int reps, int warm) {
  for (int i = 0; i < warm; ++i) fn();
  LZ_CUDA_OK(cudaStreamSynchronize(g_st));
  std::vector<cudaEvent_t> ev(2 * reps);
  for (auto& e : ev) LZ_CUDA_OK(cudaEventCreate(&e));
  for (int r = 0; r < reps; ++r) {
    LZ_CUDA_OK(cudaEventRecord(ev[2 * r], g_st));
    fn();
    LZ_CUDA_OK(cudaEventRecord(ev[2 * r + 1], g_st));
  }
  LZ_CUDA_OK(cudaStreamSynchronize(g_st));
  std::vector<float> ms(reps);
  for (int r = 0; r < reps; ++r) LZ_CUDA_OK(cudaEventElapsedTime(&ms[r], ev[2 * r], ev[2 * r + 1]));
  for (auto& e : ev) LZ_CUDA_OK(cudaEventDestroy(e));
  std::sort(ms.begin(), ms.end());
  return reps % 2 ? ms[reps / 2] : 0.5 * (ms[reps / 2 - 1] + ms[reps / 2]);
}

// Wall time of one call (synchronised), to pick a repetition count that keeps the run short.
double once_ms(const std::function<void()>& fn) {
  LZ_CUDA_OK(cudaStreamSynchronize(g_st));
  auto t0 = std::chrono::steady_clock::now();
  fn();
  LZ_CUDA_OK(cudaStreamSynchronize(g_st));
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

int reps_for(double ms_one, double budget_ms) {
  return std::clamp(int(budget_ms / std::max(ms_one, 1e-3)), 20, 50);
}

double peak_gemm_tflops() {
  const int64_t n = 8192;
  bf16* a = dalloc<bf16>(n * n);
  bf16* b = dalloc<bf16>(n * n);
  bf16* c = dalloc<bf16>(n * n);
  fill(a, n * n, 101, 0.f, 1.f);
  fill(b, n * n, 102, 0.f, 1.f);
  Gemm g = make_gemm(false, true, n, n, n, a, b, c);
  const double ms = median_ms([&] { g.run(); }, 30, 5);
  g.destroy();
  free_all();
  const double tf = g.flops / (ms * 1e-3) / 1e12;
  std::printf("reference: cuBLASLt bf16 GEMM 8192^3 (fp32 compute, bf16 out): %.3f ms = %.1f TFLOP/s\n", ms, tf);
  return tf;
}

// ---------------------------------------------------------------------------------------------- the layer
struct Shape {
  const char* name;
  int B, L, d, H, Hkv, D, ff;
  float rope_theta;
};

struct LayerBench {
  Shape s;
  bool lizard;
  int64_t T = 0;
  int dq = 0, dkv = 0;
  // weights
  bf16 *Wq, *Wk, *Wv, *Wo, *Wg, *Wu, *Wd, *n1, *n2;
  bf16 *fq = nullptr, *fk = nullptr;  // Lizard feature maps [H, D, F]
  float *wg = nullptr, *bg = nullptr, *meta = nullptr, *alpha = nullptr, *inv_freq = nullptr;
  // weight gradients
  bf16 *dWq, *dWk, *dWv, *dWo, *dWg, *dWu, *dWd;
  float *dn1, *dn2;
  float *dfq = nullptr, *dfk = nullptr, *dwg = nullptr, *dbg = nullptr, *dmeta = nullptr, *dalpha = nullptr;
  // activations
  bf16 *x, *xn1, *q, *k, *v, *att, *h, *xn2, *g, *u, *act, *out;
  float *rstd1, *rstd2, *lse = nullptr, *z = nullptr, *lg = nullptr;
  // backward buffers
  bf16 *dy, *dact, *dg, *du, *dxn2, *dtmp, *dh, *datt, *dq_, *dk_, *dv_, *dxn1, *dx;
  float *delta = nullptr, *dqf = nullptr, *dkf = nullptr, *dvf = nullptr, *dlg = nullptr, *dz = nullptr;
  std::vector<Gemm> fwd_g, bwd_g;  // in execution order, see fwd()/bwd()
  lizard::cuda::LizardAttnArgs la;
  static constexpr int F = 64, W = 128, M = 4;

  LayerBench(const Shape& sh, bool liz) : s(sh), lizard(liz) {
    T = int64_t(s.B) * s.L;
    dq = s.H * s.D;
    dkv = s.Hkv * s.D;
    const int64_t d = s.d, ff = s.ff;
    Wq = dalloc<bf16>(dq * d), Wk = dalloc<bf16>(dkv * d), Wv = dalloc<bf16>(dkv * d), Wo = dalloc<bf16>(d * dq);
    Wg = dalloc<bf16>(ff * d), Wu = dalloc<bf16>(ff * d), Wd = dalloc<bf16>(d * ff);
    n1 = dalloc<bf16>(d), n2 = dalloc<bf16>(d);
    dWq = dalloc<bf16>(dq * d), dWk = dalloc<bf16>(dkv * d), dWv = dalloc<bf16>(dkv * d), dWo = dalloc<bf16>(d * dq);
    dWg = dalloc<bf16>(ff * d), dWu = dalloc<bf16>(ff * d), dWd = dalloc<bf16>(d * ff);
    dn1 = dalloc<float>(d), dn2 = dalloc<float>(d);
    x = dalloc<bf16>(T * d), xn1 = dalloc<bf16>(T * d), q = dalloc<bf16>(T * dq), k = dalloc<bf16>(T * dkv);
    v = dalloc<bf16>(T * dkv), att = dalloc<bf16>(T * dq), h = dalloc<bf16>(T * d), xn2 = dalloc<bf16>(T * d);
    g = dalloc<bf16>(T * ff), u = dalloc<bf16>(T * ff), act = dalloc<bf16>(T * ff), out = dalloc<bf16>(T * d);
    rstd1 = dalloc<float>(T), rstd2 = dalloc<float>(T);
    dy = dalloc<bf16>(T * d), dact = dalloc<bf16>(T * ff), dg = dalloc<bf16>(T * ff), du = dalloc<bf16>(T * ff);
    dxn2 = dalloc<bf16>(T * d), dtmp = dalloc<bf16>(T * d), dh = dalloc<bf16>(T * d), datt = dalloc<bf16>(T * dq);
    dq_ = dalloc<bf16>(T * dq), dk_ = dalloc<bf16>(T * dkv), dv_ = dalloc<bf16>(T * dkv);
    dxn1 = dalloc<bf16>(T * d), dx = dalloc<bf16>(T * d);

    uint32_t seed = liz ? 1000 : 1;
    auto wscale = [](int64_t fan_in) { return float(1.0 / std::sqrt(double(fan_in))); };
    fill(Wq, dq * d, seed++, 0.f, wscale(d)), fill(Wk, dkv * d, seed++, 0.f, wscale(d));
    fill(Wv, dkv * d, seed++, 0.f, wscale(d)), fill(Wo, d * dq, seed++, 0.f, wscale(dq));
    fill(Wg, ff * d, seed++, 0.f, wscale(d)), fill(Wu, ff * d, seed++, 0.f, wscale(d));
    fill(Wd, d * ff, seed++, 0.f, wscale(ff));
    fill(n1, d, seed++, 1.f, 0.1f), fill(n2, d, seed++, 1.f, 0.1f);
    fill(x, T * d, seed++, 0.f, 1.f), fill(dy, T * d, seed++, 0.f, 1.f);

    if (!lizard) {
      lse = dalloc<float>(T * s.H);
      delta = dalloc<float>(T * s.H);
      std::vector<float> f(s.D / 2);
      for (int j = 0; j < s.D / 2; ++j) f[j] = float(std::pow(double(s.rope_theta), -2.0 * j / s.D));
      inv_freq = dalloc<float>(s.D / 2);
      LZ_CUDA_OK(cudaMemcpy(inv_freq, f.data(), f.size() * sizeof(float), cudaMemcpyHostToDevice));
    } else {
      const int64_t nf = int64_t(s.H) * s.D * F;
      fq = dalloc<bf16>(nf), fk = dalloc<bf16>(nf), dfq = dalloc<float>(nf), dfk = dalloc<float>(nf);
      wg = dalloc<float>(d), bg = dalloc<float>(1), dwg = dalloc<float>(d), dbg = dalloc<float>(1);
      meta = dalloc<float>(M), dmeta = dalloc<float>(M), alpha = dalloc<float>(s.H), dalpha = dalloc<float>(s.H);
      z = dalloc<float>(T), lg = dalloc<float>(T), dlg = dalloc<float>(T), dz = dalloc<float>(T);
      dqf = dalloc<float>(T * dq), dkf = dalloc<float>(T * dkv), dvf = dalloc<float>(T * dkv);
      fill(fq, nf, seed++, 0.f, wscale(s.D)), fill(fk, nf, seed++, 0.f, wscale(s.D));
      fill(wg, d, seed++, 0.f, 0.1f * wscale(d));
      fill(bg, 1, seed++, 2.944f, 0.01f);  // sigmoid(b_g) ~ 0.95, the config's gate_init
      fill(meta, M, seed++, 0.f, 0.5f), fill(alpha, s.H, seed++, 1.f, 0.1f);
      la = lizard::cuda::LizardAttnArgs{};
      la.B = s.B, la.L = s.L, la.Hq = s.H, la.Hkv = s.Hkv, la.D = s.D, la.F = F;
      la.window = W, la.n_meta = M, la.meta_per_head = false, la.alpha_per_head = true, la.gate_per_head = false;
      la.act = lizard::cuda::FeatureAct::Softmax;
      la.q = q, la.k = k, la.v = v, la.log_gamma = lg, la.wq = fq, la.wk = fk, la.meta = meta, la.alpha = alpha;
      la.y = att;
    }

    // forward GEMMs: q, k, v, o (+x), gate, up, down (+h)
    fwd_g.push_back(make_gemm(false, true, T, dq, d, xn1, Wq, q));
    fwd_g.push_back(make_gemm(false, true, T, dkv, d, xn1, Wk, k));
    fwd_g.push_back(make_gemm(false, true, T, dkv, d, xn1, Wv, v));
    fwd_g.push_back(make_gemm(false, true, T, d, dq, att, Wo, h, x, 1.f));
    fwd_g.push_back(make_gemm(false, true, T, ff, d, xn2, Wg, g));
    fwd_g.push_back(make_gemm(false, true, T, ff, d, xn2, Wu, u));
    fwd_g.push_back(make_gemm(false, true, T, d, ff, act, Wd, out, h, 1.f));
    // backward GEMMs, 0..13 in the order bwd() runs them
    bwd_g.push_back(make_gemm(false, false, T, ff, d, dy, Wd, dact));          // 0 dact = dy Wd
    bwd_g.push_back(make_gemm(true, false, d, ff, T, dy, act, dWd));           // 1 dWd = dy^T act
    bwd_g.push_back(make_gemm(false, false, T, d, ff, dg, Wg, dxn2));          // 2 dxn2 = dg Wg
    bwd_g.push_back(make_gemm(false, false, T, d, ff, du, Wu, dxn2, dxn2, 1.f));  // 3 += du Wu
    bwd_g.push_back(make_gemm(true, false, ff, d, T, dg, xn2, dWg));           // 4
    bwd_g.push_back(make_gemm(true, false, ff, d, T, du, xn2, dWu));           // 5
    bwd_g.push_back(make_gemm(false, false, T, dq, d, dh, Wo, datt));          // 6 datt = dh Wo
    bwd_g.push_back(make_gemm(true, false, d, dq, T, dh, att, dWo));           // 7
    bwd_g.push_back(make_gemm(false, false, T, d, dq, dq_, Wq, dxn1));         // 8 dxn1 = dq Wq
    bwd_g.push_back(make_gemm(false, false, T, d, dkv, dk_, Wk, dxn1, dxn1, 1.f));  // 9
    bwd_g.push_back(make_gemm(false, false, T, d, dkv, dv_, Wv, dxn1, dxn1, 1.f));  // 10
    bwd_g.push_back(make_gemm(true, false, dq, d, T, dq_, xn1, dWq));          // 11
    bwd_g.push_back(make_gemm(true, false, dkv, d, T, dk_, xn1, dWk));         // 12
    bwd_g.push_back(make_gemm(true, false, dkv, d, T, dv_, xn1, dWv));         // 13
    LZ_CUDA_OK(cudaStreamSynchronize(g_st));
  }
  ~LayerBench() {
    for (auto& gm : fwd_g) gm.destroy();
    for (auto& gm : bwd_g) gm.destroy();
  }

  void rope(bf16* p, int stride, int heads, bool inverse) {
    for (int b = 0; b < s.B; ++b)
      lizard::cuda::rope_apply(lizard::cuda::DType::BF16, p + int64_t(b) * s.L * stride, s.L, stride, heads, s.D, 0,
                               inv_freq, inverse, g_st);
  }

  void fwd() {
    using lizard::cuda::DType;
    lizard::cuda::rmsnorm_fwd(DType::BF16, x, n1, xn1, rstd1, T, s.d, 1e-5f, g_st);
    fwd_g[0].run(), fwd_g[1].run(), fwd_g[2].run();
    if (!lizard) {
      rope(q, dq, s.H, false);
      rope(k, dkv, s.Hkv, false);
      lizard::cuda::FlashArgs fa;
      fa.B = s.B, fa.L = s.L, fa.H = s.H, fa.Hkv = s.Hkv, fa.D = s.D;
      fa.q = q, fa.k = k, fa.v = v, fa.out = att, fa.lse = lse;
      lizard::cuda::flash_attention_fwd(fa, g_st);
    } else {
      gate_fwd_k<<<unsigned((T + 7) / 8), 256, 0, g_st>>>(xn1, wg, bg, z, lg, T, s.d);
      launched("gate_fwd");
      lizard::cuda::lizard_attention_forward_bf16(la, g_st);
    }
    fwd_g[3].run();  // h = x + att Wo^T
    lizard::cuda::rmsnorm_fwd(DType::BF16, h, n2, xn2, rstd2, T, s.d, 1e-5f, g_st);
    fwd_g[4].run(), fwd_g[5].run();
    lizard::cuda::swiglu_fwd(DType::BF16, g, u, act, T * s.ff, g_st);
    fwd_g[6].run();  // out = h + act Wd^T
  }

  void bwd() {
    using lizard::cuda::DType;
    bwd_g[0].run(), bwd_g[1].run();
    lizard::cuda::swiglu_bwd(DType::BF16, g, u, dact, dg, du, T * s.ff, g_st);
    bwd_g[2].run(), bwd_g[3].run(), bwd_g[4].run(), bwd_g[5].run();
    lizard::cuda::rmsnorm_bwd(DType::BF16, h, n2, rstd2, dxn2, dtmp, dn2, T, s.d, g_st);
    add_k<<<ew_grid(T * s.d), 256, 0, g_st>>>(dy, dtmp, dh, T * s.d);
    launched("add");
    bwd_g[6].run(), bwd_g[7].run();
    if (!lizard) {
      lizard::cuda::FlashBwdArgs fb;
      fb.B = s.B, fb.L = s.L, fb.H = s.H, fb.Hkv = s.Hkv, fb.D = s.D;
      fb.q = q, fb.k = k, fb.v = v, fb.out = att, fb.dout = datt, fb.lse = lse;
      fb.dq = dq_, fb.dk = dk_, fb.dv = dv_, fb.delta = delta;
      lizard::cuda::flash_attention_bwd(fb, g_st);
      rope(dq_, dq, s.H, true);
      rope(dk_, dkv, s.Hkv, true);
    } else {
      lizard::cuda::LizardAttnGrads gr;
      gr.dq = dqf, gr.dk = dkf, gr.dv = dvf, gr.dwq = dfq, gr.dwk = dfk, gr.dlog_gamma = dlg, gr.dmeta = dmeta;
      gr.dalpha = dalpha;
      lizard::cuda::lizard_attention_backward_chunked(la, false, datt, gr, g_st);
      to_bf16_k<<<ew_grid(T * dq), 256, 0, g_st>>>(dqf, dq_, T * dq);
      launched("to_bf16 dq");
      to_bf16_k<<<ew_grid(T * dkv), 256, 0, g_st>>>(dkf, dk_, T * dkv);
      launched("to_bf16 dk");
      to_bf16_k<<<ew_grid(T * dkv), 256, 0, g_st>>>(dvf, dv_, T * dkv);
      launched("to_bf16 dv");
    }
    bwd_g[8].run(), bwd_g[9].run(), bwd_g[10].run();
    bwd_g[11].run(), bwd_g[12].run(), bwd_g[13].run();
    if (lizard) {
      LZ_CUDA_OK(cudaMemsetAsync(dwg, 0, size_t(s.d) * sizeof(float), g_st));
      LZ_CUDA_OK(cudaMemsetAsync(dbg, 0, sizeof(float), g_st));
      gate_bwd_k<<<unsigned((T + 7) / 8), 256, 0, g_st>>>(z, dlg, wg, dxn1, dz, dbg, T, s.d);
      launched("gate_bwd");
      const int64_t chunk = 256;
      gate_dw_k<<<dim3(unsigned((s.d + 255) / 256), unsigned((T + chunk - 1) / chunk)), 256, 0, g_st>>>(xn1, dz, dwg,
                                                                                                       T, s.d, chunk);
      launched("gate_dw");
    }
    lizard::cuda::rmsnorm_bwd(DType::BF16, x, n1, rstd1, dxn1, dtmp, dn1, T, s.d, g_st);
    add_k<<<ew_grid(T * s.d), 256, 0, g_st>>>(dh, dtmp, dx, T * s.d);
    launched("add");
  }

  double gemm_fwd_flops() const {
    double f = 0;
    for (auto& gm : fwd_g) f += gm.flops;
    return f;
  }
  // Attention forward FLOPs counted analytically (multiply-add = 2). Flash: causal QK^T and PV, L(L+1)/2
  // pairs per head. Lizard (C = 64 chunk, as the kernel computes it, masked tiles included): per chunk and
  // head, feature maps 2 x 2CDF, intra scores 2C^2(2F), A V 2C^2 D, phi_q S 2C(2F)D, state update 2C(2F)D,
  // window QK^T and PV 2 x 2C(w+C)D; GEMV of the gate not counted.
  double attn_fwd_flops() const {
    const double B = s.B, L = s.L, H = s.H, D = s.D;
    if (!lizard) return 4.0 * B * H * D * (L * (L + 1) / 2);
    const double C = 64, nc = std::ceil(L / C), F2 = 2.0 * F;
    const double per = 2 * 2 * C * D * F + 2 * C * C * F2 + 2 * C * C * D + 2 * (2 * C * F2 * D) +
                       2 * (2 * C * (W + C) * D);
    return B * H * nc * per;
  }
};

void bench(const Shape& sh, bool lizard, double peak, bool quick) {
  LayerBench lb(sh, lizard);
  auto f = [&] { lb.fwd(); };
  auto fb = [&] {
    lb.fwd();
    lb.bwd();
  };
  // first calls (cuBLASLt and kernel set-up), then a wall-clock estimate for the repetition count
  fb();
  LZ_CUDA_OK(cudaStreamSynchronize(g_st));
  const double one = once_ms(fb);
  const int reps = quick ? 20 : reps_for(one, 2500.0);
  const double ms_f = median_ms(f, reps, 3);
  const double ms_fb = median_ms(fb, reps, 3);
  const double tok = double(lb.T);
  const double gf = lb.gemm_fwd_flops(), af = lb.attn_fwd_flops();
  // fwd+bwd: GEMMs 3x forward (dX and dW per product); attention 3.5x forward (backward 2.5x: 5 products vs 2)
  const double g_fb = 3 * gf, a_fb = 3.5 * af;
  auto tf = [](double flops, double ms) { return flops / (ms * 1e-3) / 1e12; };
  std::printf(
      "%-7s %-18s B%-2d L%d d%d H%dx%d kv%d ff%d | fwd %8.3f ms  fwd+bwd %8.3f ms | tokens/s fwd %9.0f  fwd+bwd %9.0f"
      " | fwd+bwd GEMM %6.1f TF/s (%.2f of ref), GEMM+attn %6.1f TF/s (%.2f of ref); fwd GEMM %6.1f TF/s (%.2f),"
      " GEMM+attn %6.1f (%.2f) | GEMM fwd %.3f TFLOP, attn fwd %.3f TFLOP | reps %d\n",
      lizard ? "lizard" : "teacher", sh.name, sh.B, sh.L, sh.d, sh.H, sh.D, sh.Hkv, sh.ff, ms_f, ms_fb,
      tok / (ms_f * 1e-3), tok / (ms_fb * 1e-3), tf(g_fb, ms_fb), tf(g_fb, ms_fb) / peak, tf(g_fb + a_fb, ms_fb),
      tf(g_fb + a_fb, ms_fb) / peak, tf(gf, ms_f), tf(gf, ms_f) / peak, tf(gf + af, ms_f), tf(gf + af, ms_f) / peak,
      gf / 1e12, af / 1e12, reps);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else {
      std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
      return 2;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  try {
    int dev = 0;
    LZ_CUDA_OK(cudaGetDevice(&dev));
    cudaDeviceProp p{};
    LZ_CUDA_OK(cudaGetDeviceProperties(&p, dev));
    int clk_khz = 0;
    cudaDeviceGetAttribute(&clk_khz, cudaDevAttrClockRate, dev);  // informational; ignore failure
    cudaGetLastError();
    std::printf("card: %s, %d SMs, %.1f GiB, sm_%d%d, max SM clock %.0f MHz; cuBLASLt %zu\n", p.name,
                p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, p.major, p.minor, clk_khz / 1000.0,
                cublasLtGetVersion());
    LZ_CUDA_OK(cudaStreamCreateWithFlags(&g_st, cudaStreamNonBlocking));
    LT_OK(cublasLtCreate(&g_lt));
    LZ_CUDA_OK(cudaMalloc(&g_ws, kWs));
    const double peak = peak_gemm_tflops();
    std::printf(
        "per layer, bf16 storage / fp32 accumulation; tokens/s = B*L / time; TF/s counted analytically: GEMMs 2MNK "
        "(fwd+bwd 3x), attention fwd as printed (fwd+bwd 3.5x); 'of ref' = fraction of the 8192^3 GEMM above\n");
    std::fflush(stdout);
    const Shape small{"teacher-default", 8, 2048, 576, 9, 3, 64, 1536, 10000.f};
    const Shape l8b1{"llama3-8b", 1, 2048, 4096, 32, 8, 128, 14336, 500000.f};
    const Shape l8b2{"llama3-8b", 2, 2048, 4096, 32, 8, 128, 14336, 500000.f};
    for (const Shape* sh : {&small, &l8b1, &l8b2}) {
      for (bool liz : {false, true}) {
        try {
          bench(*sh, liz, peak, quick);
        } catch (const std::exception& e) {
          std::printf("%-7s %-18s B%d: FAILED: %s\n", liz ? "lizard" : "teacher", sh->name, sh->B, e.what());
          std::fflush(stdout);
          cudaError_t st = cudaDeviceSynchronize();
          if (st != cudaSuccess) throw;  // sticky error: the context is gone
        }
        free_all();
      }
    }
    LZ_CUDA_OK(cudaFree(g_ws));
    LT_OK(cublasLtDestroy(g_lt));
    LZ_CUDA_OK(cudaStreamDestroy(g_st));
  } catch (const std::exception& e) {
    std::printf("bench_layer: error: %s\n", e.what());
    return 1;
  }
  std::printf("total wall time %.1f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}
