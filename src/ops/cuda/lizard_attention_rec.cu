// Lizard attention, recurrent form (LIZARD.md sections 2-4) in fp32 arithmetic: one CTA per
// (sequence, query head), one token at a time. Used as the fp32 check path of the chunked kernel
// and, one token per launch, as the generation (decode) step with a ring buffer of the last w
// keys/values.
#include <cuda_bf16.h>

#include <cmath>

#include "ops/cuda/lizard_attention.h"
#include "ops/cuda/cuda_check.h"

namespace lizard::cuda {

void check_common_args(const LizardAttnArgs& a) {
  LZ_CUDA_CHECK(a.B > 0 && a.L > 0 && a.Hq > 0 && a.Hkv > 0 && a.D > 0 && a.F > 0, "lizard attention (cuda): sizes must be positive (B=", a.B, " L=", a.L, " Hq=", a.Hq, " Hkv=", a.Hkv, " D=", a.D, " F=", a.F, ")");
  LZ_CUDA_CHECK(a.Hq % a.Hkv == 0, "lizard attention (cuda): ", a.Hq, " query heads are not a multiple of ", a.Hkv, " kv heads");
  LZ_CUDA_CHECK(a.window >= 1, "lizard attention (cuda): window must be >= 1, got ", a.window);
  LZ_CUDA_CHECK(a.n_meta >= 0 && (a.n_meta == 0 || a.meta != nullptr), "lizard attention (cuda): ", a.n_meta, " meta logits but no meta pointer");
  LZ_CUDA_CHECK(a.q && a.k && a.v && a.y && a.wq && a.wk && a.log_gamma && a.alpha, "lizard attention (cuda): a required tensor pointer is null");
  LZ_CUDA_CHECK(a.eps >= 0.f, "lizard attention (cuda): eps must be >= 0");
  LZ_CUDA_CHECK(!a.meta_weights_gate || a.n_meta >= 1, "lizard attention (cuda): meta_weights_gate needs meta tokens");
  LZ_CUDA_CHECK(!a.shared_normaliser || a.meta_weights_gate, "lizard attention (cuda): shared_normaliser needs meta_weights_gate");
  LZ_CUDA_CHECK(a.act == FeatureAct::Softmax || a.act == FeatureAct::Exp, "lizard attention (cuda): unknown feature act");
  LZ_CUDA_CHECK(!a.gate_skips_window || (a.window % 64 == 0),
                "lizard attention (cuda): gate_skips_window needs a window that is a multiple of 64, got ", a.window);
  LZ_CUDA_CHECK(!a.separate_feature_qk || (a.qf && a.kf),
                "lizard attention (cuda): feature_on_rope != window_rope needs the feature maps' q, k (qf, kf)");
}

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// phi of pre-activations u[0..F) into out[0..2F), by one warp.
__device__ void warp_feature_map(const float* u, float* out, int F, FeatureAct act) {
  const int lane = threadIdx.x & 31;
  if (act == FeatureAct::Exp) {
    for (int j = lane; j < F; j += 32) out[j] = expf(u[j]), out[F + j] = expf(-u[j]);
    return;
  }
  float mx = -INFINITY, mn = INFINITY;
  for (int j = lane; j < F; j += 32) mx = fmaxf(mx, u[j]), mn = fminf(mn, u[j]);
  mx = warp_max(mx);
  mn = -warp_max(-mn);
  float sp = 0.f, sm = 0.f;
  for (int j = lane; j < F; j += 32) sp += expf(u[j] - mx), sm += expf(mn - u[j]);
  sp = 1.f / warp_sum(sp);
  sm = 1.f / warp_sum(sm);
  for (int j = lane; j < F; j += 32) out[j] = expf(u[j] - mx) * sp, out[F + j] = expf(mn - u[j]) * sm;
}

// kDecode: one token at position pos[b], keys/values of earlier positions in the ring buffers,
// state read from and written back to a.state_s / a.state_z. Otherwise: all L tokens of the input,
// state starting at zero and written out at the end if requested.
template <typename T, bool kDecode>
__global__ void __launch_bounds__(kThreads) lizard_recurrent_kernel(const LizardAttnArgs a, const int* pos,
                                                                      T* ring_k, T* ring_v) {
  const int D = a.D, F = a.F, F2 = 2 * a.F, w = a.window;
  extern __shared__ float sm[];
  float* S = sm;              // [F2][D]
  float* z = S + F2 * D;      // [F2]
  float* sq = z + F2;         // [D]
  float* sk = sq + D;         // [D]
  float* sv = sk + D;         // [D]
  float* u = sv + D;          // [2F]: q then k pre-activations
  float* phq = u + F2;        // [2F]
  float* phk = phq + F2;      // [2F]
  float* sc = phk + F2;       // [w]
  float* red = sc + w;        // [4]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int hq = blockIdx.x % a.Hq, b = blockIdx.x / a.Hq;
  const int group = a.Hq / a.Hkv, hkv = hq / group;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  T* y = static_cast<T*>(a.y);
  const T* wq = static_cast<const T*>(a.wq) + int64_t(hq) * D * F;
  const T* wk = static_cast<const T*>(a.wk) + int64_t(hq) * D * F;
  const float alpha = a.alpha[a.alpha_per_head ? hq : 0];
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const float* mu = a.meta + (a.meta_per_head ? hq * a.n_meta : 0);
  const int64_t sidx = (int64_t(b) * a.Hq + hq);

  if (kDecode) {
    for (int i = tid; i < F2 * D; i += kThreads) S[i] = a.state_s[sidx * F2 * D + i];
    for (int i = tid; i < F2; i += kThreads) z[i] = a.state_z[sidx * F2 + i];
  } else {
    for (int i = tid; i < F2 * D; i += kThreads) S[i] = 0.f;
    for (int i = tid; i < F2; i += kThreads) z[i] = 0.f;
  }

  const int L = kDecode ? 1 : a.L;
  const int p_begin = kDecode ? pos[b] : 0;
  for (int step = 0; step < L; ++step) {
    const int i = p_begin + step;  // position of this token
    // Token tensors: decode holds one token per sequence, [B, H, D].
    const int64_t qo = kDecode ? (int64_t(b) * a.Hq + hq) * D : ((int64_t(b) * a.L + i) * a.Hq + hq) * D;
    const int64_t ko = kDecode ? (int64_t(b) * a.Hkv + hkv) * D : ((int64_t(b) * a.L + i) * a.Hkv + hkv) * D;
    const float lg = kDecode ? a.log_gamma[a.gate_per_head ? b * a.Hq + hq : b]
                             : a.log_gamma[a.gate_per_head ? (int64_t(b) * a.L + i) * a.Hq + hq : int64_t(b) * a.L + i];
    __syncthreads();
    for (int d = tid; d < D; d += kThreads) sq[d] = to_f(q[qo + d]), sk[d] = to_f(k[ko + d]), sv[d] = to_f(v[ko + d]);
    __syncthreads();
    for (int j = tid; j < F2; j += kThreads) {
      const float* x = j < F ? sq : sk;
      const T* W = j < F ? wq : wk;
      const int c = j < F ? j : j - F;
      float s = 0.f;
      for (int d = 0; d < D; ++d) s += x[d] * to_f(W[d * F + c]);
      u[j] = s;
    }
    __syncthreads();
    if (warp == 0) warp_feature_map(u, phq, F, a.act);
    if (warp == 1) warp_feature_map(u + F, phk, F, a.act);
    // Window scores for t in [i-nw+1, i].
    const int nw = min(i + 1, w);
    for (int j = warp; j < nw; j += kWarps) {
      const int t = i - nw + 1 + j;
      float s = 0.f;
      if (t == i) {
        for (int d = lane; d < D; d += 32) s += sq[d] * sk[d];
      } else {
        const T* kt = kDecode ? ring_k + ((int64_t(b) * a.Hkv + hkv) * w + t % w) * D
                              : k + ((int64_t(b) * a.L + t) * a.Hkv + hkv) * D;
        for (int d = lane; d < D; d += 32) s += sq[d] * to_f(kt[d]);
      }
      s = warp_sum(s);
      if (lane == 0) sc[j] = s * scale;
    }
    __syncthreads();
    if (warp == 0) {
      float mx = -INFINITY;
      for (int j = lane; j < nw; j += 32) mx = fmaxf(mx, sc[j]);
      for (int j = lane; j < a.n_meta; j += 32) mx = fmaxf(mx, mu[j]);
      mx = warp_max(mx);
      float s = 0.f;
      for (int j = lane; j < nw; j += 32) {
        float p = expf(sc[j] - mx);
        sc[j] = p;
        s += p;
      }
      float sm = 0.f;  // the sinks' part of the softmax sum
      for (int j = lane; j < a.n_meta; j += 32) sm += expf(mu[j] - mx);
      s = warp_sum(s + sm);
      sm = warp_sum(sm);
      if (lane == 0) red[0] = s, red[1] = sm;
    }
    const float gam = expf(lg);
    for (int f = tid; f < F2; f += kThreads) z[f] = gam * z[f] + phk[f];
    __syncthreads();
    float dz = 0.f;
    for (int f = 0; f < F2; ++f) dz += phq[f] * z[f];
    const float inv_den = 1.f / red[0];
    const float pm = a.meta_weights_gate ? red[1] * inv_den : 1.f;  // weight of the gated branch
    for (int d = tid; d < D; d += kThreads) {
      float yw = 0.f;
      for (int j = 0; j < nw; ++j) {
        const int t = i - nw + 1 + j;
        float vt;
        if (t == i) {
          vt = sv[d];
        } else if (kDecode) {
          vt = to_f(ring_v[((int64_t(b) * a.Hkv + hkv) * w + t % w) * D + d]);
        } else {
          vt = to_f(v[((int64_t(b) * a.L + t) * a.Hkv + hkv) * D + d]);
        }
        yw += sc[j] * vt;
      }
      float num = 0.f;
      for (int f = 0; f < F2; ++f) {
        float s = gam * S[f * D + d] + phk[f] * sv[d];
        S[f * D + d] = s;
        num += phq[f] * s;
      }
      // shared_normaliser: (p N + alpha A) / (p d + 1 - p), d = den + eps, A = yw / l (p = red[1] / l)
      y[qo + d] = from_f<T>(a.shared_normaliser
                                ? (red[1] * num + alpha * yw) / (red[1] * (dz + a.eps) + (red[0] - red[1]))
                                : pm * num / (dz + a.eps) + alpha * yw * inv_den);
    }
    if (kDecode && hq % group == 0) {
      // Slot pos % w holds position pos - w, which no query of this step reads.
      T* rk = ring_k + ((int64_t(b) * a.Hkv + hkv) * w + i % w) * D;
      T* rv = ring_v + ((int64_t(b) * a.Hkv + hkv) * w + i % w) * D;
      for (int d = tid; d < D; d += kThreads) rk[d] = k[ko + d], rv[d] = v[ko + d];
    }
  }
  __syncthreads();
  if (a.state_s != nullptr)
    for (int i = tid; i < F2 * D; i += kThreads) a.state_s[sidx * F2 * D + i] = S[i];
  if (a.state_z != nullptr)
    for (int i = tid; i < F2; i += kThreads) a.state_z[sidx * F2 + i] = z[i];
}

template <typename T, bool kDecode>
void launch_rec(const LizardAttnArgs& a, const int* pos, void* rk, void* rv, cudaStream_t stream) {
  const size_t smem = (size_t(2 * a.F) * a.D + 2 * a.F + 3 * a.D + 6 * a.F + a.window + 4) * sizeof(float);
  int dev = 0, optin = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  LZ_CUDA_CHECK(smem <= size_t(optin), "lizard attention (cuda, recurrent): D=", a.D, " F=", a.F, " w=", a.window, " needs ", smem, " bytes of shared memory");
  auto kern = lizard_recurrent_kernel<T, kDecode>;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  kern<<<a.B * a.Hq, kThreads, smem, stream>>>(a, pos, static_cast<T*>(rk), static_cast<T*>(rv));
  cudaError_t e = cudaGetLastError();
  LZ_CUDA_CHECK(e == cudaSuccess, "lizard attention (cuda, recurrent): launch failed: ", cudaGetErrorString(e));
}

}  // namespace

void lizard_attention_forward_recurrent(const LizardAttnArgs& a, bool fp32, cudaStream_t stream) {
  check_common_args(a);
  LZ_CUDA_CHECK(!a.gate_skips_window, "lizard attention (cuda): the recurrent form does not implement "
                "gate_skips_window (the chunked forward and backward do)");
  LZ_CUDA_CHECK(!a.separate_feature_qk, "lizard attention (cuda): the recurrent form does not implement "
                "feature_on_rope != window_rope (the chunked forward and backward do)");
  if (fp32)
    launch_rec<float, false>(a, nullptr, nullptr, nullptr, stream);
  else
    launch_rec<__nv_bfloat16, false>(a, nullptr, nullptr, nullptr, stream);
}

void lizard_attention_decode(const LizardAttnArgs& a, bool fp32, const int* pos, void* ring_k, void* ring_v,
                             cudaStream_t stream) {
  check_common_args(a);
  LZ_CUDA_CHECK(a.state_s && a.state_z && pos && ring_k && ring_v, "lizard attention (cuda, decode): state, positions and ring buffers are required");
  LZ_CUDA_CHECK(!a.gate_skips_window, "lizard attention (cuda, decode): gate_skips_window is not implemented for "
                "decoding on the GPU (use --device cpu)");
  LZ_CUDA_CHECK(!a.separate_feature_qk, "lizard attention (cuda, decode): feature_on_rope != window_rope is not "
                "implemented for decoding on the GPU (use --device cpu)");
  if (fp32)
    launch_rec<float, true>(a, pos, ring_k, ring_v, stream);
  else
    launch_rec<__nv_bfloat16, true>(a, pos, ring_k, ring_v, stream);
}

}  // namespace lizard::cuda
