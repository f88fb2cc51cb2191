// cuBLASLt GEMM (ops/cuda/gemm.h) and the elementwise helpers around it.
//
// Row-major D[M, N] = op(A) op(B) is computed by column-major cuBLASLt as D^T = op(B)^T op(A)^T: its first
// operand is our B, its second our A (same mapping as bench/gpu/bench_layer.cu make_gemm).
#include "ops/cuda/gemm.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_buffer.h"

#define LZ_LT_OK(call)                                                                                   \
  do {                                                                                                   \
    cublasStatus_t s_ = (call);                                                                          \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                                     \
      ::lizard::cuda::fail_cat(__FILE__, ":", __LINE__, ": ", #call, ": cuBLASLt status ", int(s_), " (", \
                               cublasLtGetStatusString(s_), ")");                                       \
  } while (0)

namespace lizard::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

int ew_grid(int64_t n) { return int(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 132 * 16))); }

// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristic must know the real alignment
// (it assumes 256 bytes otherwise), so sub-views at odd offsets get an algorithm that accepts them.
uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al >>= 1;
  return al;
}

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {  // statuses ignored: may run at exit
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
  }
};

// (ta, tb, M, N, K, d_type, has C, beta != 0, alignments of A, B, C, D)
using PlanKey = std::tuple<bool, bool, int64_t, int64_t, int64_t, int, bool, bool, uint32_t, uint32_t, uint32_t, uint32_t>;

struct DeviceCtx {
  cublasLtHandle_t handle = nullptr;
  // One workspace per stream: GEMMs on different streams may run at the same time.
  std::map<cudaStream_t, DeviceBuffer> workspaces;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
  void* workspace(cudaStream_t s) {
    DeviceBuffer& w = workspaces[s];
    w.resize(kWorkspaceBytes);
    return w.get();
  }
};

std::mutex g_mutex;

// One context per device, made on first use and kept for the process (never destroyed: the CUDA
// runtime may already be gone at static destruction).
DeviceCtx& device_ctx() {
  int dev = 0;
  LZ_CUDA_OK(cudaGetDevice(&dev));
  static std::map<int, DeviceCtx*> ctxs;
  DeviceCtx*& c = ctxs[dev];
  if (!c) {
    auto fresh = std::make_unique<DeviceCtx>();
    LZ_LT_OK(cublasLtCreate(&fresh->handle));
    c = fresh.release();
  }
  return *c;
}

const Plan& plan_for(DeviceCtx& ctx, const PlanKey& key) {
  auto it = ctx.plans.find(key);
  if (it != ctx.plans.end()) return *it->second;
  const auto [ta, tb, M, N, K, dt, has_c, beta_nz, al_a, al_b, al_c, al_d] = key;
  (void)has_c, (void)beta_nz;
  auto p = std::make_unique<Plan>();
  const int64_t m = N, n = M, k = K;  // the column-major problem
  const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t dtype = dt == int(DType::F32) ? CUDA_R_32F : CUDA_R_16BF;
  LZ_LT_OK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  LZ_LT_OK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
  LZ_LT_OK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
  const int64_t ar = opa == CUBLAS_OP_N ? m : k, ac = opa == CUBLAS_OP_N ? k : m;
  const int64_t br = opb == CUBLAS_OP_N ? k : n, bc = opb == CUBLAS_OP_N ? n : k;
  LZ_LT_OK(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, uint64_t(ar), uint64_t(ac), ar));
  LZ_LT_OK(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, uint64_t(br), uint64_t(bc), br));
  LZ_LT_OK(cublasLtMatrixLayoutCreate(&p->lc, dtype, uint64_t(m), uint64_t(n), m));
  cublasLtMatmulPreference_t pref = nullptr;
  LZ_LT_OK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  // cuBLASLt's A is our B, its B our A.
  const uint32_t aligns[4] = {al_b, al_a, al_c, al_d};
  const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                           sizeof(ws));
  for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; ++i)
    st = cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &aligns[i], sizeof(uint32_t));
  cublasLtMatmulHeuristicResult_t res{};
  int nres = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(ctx.handle, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &nres);
  cublasLtMatmulPreferenceDestroy(pref);
  LZ_LT_OK(st);
  if (nres < 1)
    fail_cat("cuBLASLt: no algorithm for GEMM M=", M, " N=", N, " K=", K, " ta=", ta, " tb=", tb,
             dt == int(DType::F32) ? " (fp32 out)" : " (bf16 out)");
  p->algo = res.algo;
  return *ctx.plans.emplace(key, std::move(p)).first->second;
}

// ---------------------------------------------------------------------------------------------- kernels
__device__ __forceinline__ float load_f(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_f(const bf16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store_f(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f(bf16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

template <typename From, typename To>
__global__ void convert_k(const From* src, To* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store_f(dst, i, load_f(src, i));
}

template <typename T>
__global__ void add_inplace_k(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store_f(y, i, load_f(y, i) + load_f(x, i));
}

template <typename T>
__global__ void add_bias_rows_k(T* y, const bf16* bias, int64_t rows, int cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store_f(y, i, load_f(y, i) + __bfloat162float(bias[i % cols]));
}

// D = beta * C (C may be null or D): the K = 0 product.
template <typename T>
__global__ void scale_k(T* d, const T* c, float beta, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store_f(d, i, c ? beta * load_f(c, i) : 0.f);
}

}  // namespace

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A, const void* B, DType d_type, void* D,
          const void* C, float alpha, float beta, cudaStream_t s) {
  LZ_CUDA_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M=", M, " N=", N, " K=", K);
  if (M == 0 || N == 0) return;
  if (!C) beta = 0.f;
  if (K == 0) {
    const int64_t n = M * N;
    if (d_type == DType::F32)
      scale_k<float><<<ew_grid(n), 256, 0, s>>>(static_cast<float*>(D), beta != 0.f ? static_cast<const float*>(C) : nullptr, beta, n);
    else
      scale_k<bf16><<<ew_grid(n), 256, 0, s>>>(static_cast<bf16*>(D), beta != 0.f ? static_cast<const bf16*>(C) : nullptr, beta, n);
    launched("gemm (K = 0)");
    return;
  }
  LZ_CUDA_CHECK(A && B && D, "gemm: null operand");
  const void* c = C ? C : D;
  const PlanKey key{ta, tb, M, N, K, int(d_type), C != nullptr, beta != 0.f,
                    alignment_of(A), alignment_of(B), alignment_of(c), alignment_of(D)};
  std::lock_guard<std::mutex> lock(g_mutex);  // the plan cache and the workspaces
  DeviceCtx& ctx = device_ctx();
  const Plan& p = plan_for(ctx, key);
  LZ_LT_OK(cublasLtMatmul(ctx.handle, p.desc, &alpha, B, p.la, A, p.lb, &beta, c, p.lc, D, p.lc, &p.algo,
                          ctx.workspace(s), kWorkspaceBytes, s));
}

void linear_fwd(const void* x, const void* w, const void* bias, void* y, DType ydt, int64_t rows, int in, int out,
                bool accumulate, cudaStream_t s) {
  gemm(false, true, rows, out, in, x, w, ydt, y, accumulate ? y : nullptr, 1.f, accumulate ? 1.f : 0.f, s);
  if (bias) add_bias_rows(ydt, y, bias, rows, out, s);
}

void linear_bwd_input(const void* dy, const void* w, void* dx, DType dxdt, int64_t rows, int in, int out,
                      bool accumulate, cudaStream_t s) {
  gemm(false, false, rows, in, out, dy, w, dxdt, dx, accumulate ? dx : nullptr, 1.f, accumulate ? 1.f : 0.f, s);
}

void linear_bwd_weight(const void* dy, const void* x, void* dw, DType dwdt, int64_t rows, int in, int out,
                       bool accumulate, cudaStream_t s) {
  gemm(true, false, out, in, rows, dy, x, dwdt, dw, accumulate ? dw : nullptr, 1.f, accumulate ? 1.f : 0.f, s);
}

void convert(DType from, const void* src, DType to, void* dst, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  if (from == to) {
    LZ_CUDA_OK(cudaMemcpyAsync(dst, src, size_t(n) * (from == DType::F32 ? 4 : 2), cudaMemcpyDeviceToDevice, s));
    return;
  }
  if (from == DType::F32)
    convert_k<float, bf16><<<ew_grid(n), 256, 0, s>>>(static_cast<const float*>(src), static_cast<bf16*>(dst), n);
  else
    convert_k<bf16, float><<<ew_grid(n), 256, 0, s>>>(static_cast<const bf16*>(src), static_cast<float*>(dst), n);
  launched("convert");
}

void add_inplace(DType dt, void* y, const void* x, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  if (dt == DType::F32)
    add_inplace_k<float><<<ew_grid(n), 256, 0, s>>>(static_cast<float*>(y), static_cast<const float*>(x), n);
  else
    add_inplace_k<bf16><<<ew_grid(n), 256, 0, s>>>(static_cast<bf16*>(y), static_cast<const bf16*>(x), n);
  launched("add_inplace");
}

void add_bias_rows(DType dt, void* y, const void* bias_bf16, int64_t rows, int cols, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t n = rows * cols;
  const bf16* b = static_cast<const bf16*>(bias_bf16);
  if (dt == DType::F32)
    add_bias_rows_k<float><<<ew_grid(n), 256, 0, s>>>(static_cast<float*>(y), b, rows, cols);
  else
    add_bias_rows_k<bf16><<<ew_grid(n), 256, 0, s>>>(static_cast<bf16*>(y), b, rows, cols);
  launched("add_bias_rows");
}

}  // namespace lizard::cuda
