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

// kDecode: one token at position pos[b], keys/values of earlier positions in the rings, state read from
// and written back to a.state_s / a.state_z. Otherwise: all L tokens of the input, state starting at zero
// and written out at the end if requested.
// separate_feature_qk: the feature maps read qf, kf; the window q, k. gate_skips_window: the key that joins
// the gated state at step i is t = i - w (from the rings when decoding: slot i % w), decayed by the gammas of
// t + 1 .. i; the window's keys t > i - w reach the query through the softmax alone.
template <typename T, bool kDecode>
__global__ void __launch_bounds__(kThreads) lizard_recurrent_kernel(const LizardAttnArgs a, const int* pos,
                                                                      const LizardDecodeRings r) {
  const int D = a.D, F = a.F, F2 = 2 * a.F, w = a.window;
  extern __shared__ float sm[];
  float* S = sm;              // [F2][D]
  float* z = S + F2 * D;      // [F2]
  float* sq = z + F2;         // [D] the window's q, k, v of this token
  float* sk = sq + D;         // [D]
  float* sv = sk + D;         // [D]
  float* xq = sv + D;         // [D] what the feature maps read: q (or qf) of this token,
  float* xk = xq + D;         // [D] k (or kf) of the key joining the state,
  float* xv = xk + D;         // [D] and its value
  float* u = xv + D;          // [2F]: q then k pre-activations
  float* phq = u + F2;        // [2F]
  float* phk = phq + F2;      // [2F]
  float* sc = phk + F2;       // [w]
  float* red = sc + w;        // [4]: softmax sum, the sinks' part, the joining key's weight

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int hq = blockIdx.x % a.Hq, b = blockIdx.x / a.Hq;
  const int group = a.Hq / a.Hkv, hkv = hq / group;
  const bool sep = a.separate_feature_qk, skip = a.gate_skips_window;
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* qf = static_cast<const T*>(sep ? a.qf : a.q);
  const T* kf = static_cast<const T*>(sep ? a.kf : a.k);
  const T* ring_k = static_cast<const T*>(r.k);
  const T* ring_v = static_cast<const T*>(r.v);
  const T* ring_kf = static_cast<const T*>(r.kf);
  T* y = static_cast<T*>(a.y);
  const T* wq = static_cast<const T*>(a.wq) + int64_t(hq) * D * F;
  const T* wk = static_cast<const T*>(a.wk) + int64_t(hq) * D * F;
  const float alpha = a.alpha[a.alpha_per_head ? hq : 0];
  const float scale = a.scale > 0 ? a.scale : rsqrtf(float(D));
  const float* mu = a.meta + (a.meta_per_head ? hq * a.n_meta : 0);
  const int64_t sidx = (int64_t(b) * a.Hq + hq);
  const int64_t ring_row0 = (int64_t(b) * a.Hkv + hkv) * w;  // this head's rows of ring_k / ring_v / ring_kf
  auto lg_at = [&](int t) {  // log gamma of position t (not decoding)
    return a.log_gamma[a.gate_per_head ? (int64_t(b) * a.L + t) * a.Hq + hq : int64_t(b) * a.L + t];
  };

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
    const float lg = kDecode ? a.log_gamma[a.gate_per_head ? b * a.Hq + hq : b] : lg_at(i);
    const int tj = skip ? i - w : i;  // the key joining the gated state this step
    const bool joins = tj >= 0;
    // where that key's feature-map k and its v are: this token, the ring's slot i % w, or the input
    const T* jk = !skip ? kf + ko : kDecode ? ring_kf + (ring_row0 + i % w) * D : kf + ((int64_t(b) * a.L + tj) * a.Hkv + hkv) * D;
    const T* jv = !skip ? v + ko : kDecode ? ring_v + (ring_row0 + i % w) * D : v + ((int64_t(b) * a.L + tj) * a.Hkv + hkv) * D;
    __syncthreads();
    for (int d = tid; d < D; d += kThreads) {
      sq[d] = to_f(q[qo + d]), sk[d] = to_f(k[ko + d]), sv[d] = to_f(v[ko + d]);
      xq[d] = to_f(qf[qo + d]);
      xk[d] = joins ? to_f(jk[d]) : 0.f;  // a key that does not exist gets weight 0 below (finite features)
      xv[d] = joins ? to_f(jv[d]) : 0.f;
    }
    if (warp == 2) {  // the joining key's decay: exp(sum of log gamma over tj + 1 .. i); 1 without skip
      float sum = 0.f;
      if (skip && joins) {
        if (kDecode) {
          for (int j = lane; j < w; j += 32)
            if (j != i % w) sum += r.lg[sidx * w + j];
        } else {
          for (int t = tj + 1 + lane; t < i; t += 32) sum += lg_at(t);
        }
      }
      sum = warp_sum(sum);
      if (lane == 0) red[2] = !joins ? 0.f : skip ? expf(sum + lg) : 1.f;
    }
    __syncthreads();
    for (int j = tid; j < F2; j += kThreads) {
      const float* x = j < F ? xq : xk;
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
        const T* kt = kDecode ? ring_k + (ring_row0 + t % w) * D : k + ((int64_t(b) * a.L + t) * a.Hkv + hkv) * D;
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
    const float gam = expf(lg), cj = red[2];
    for (int f = tid; f < F2; f += kThreads) z[f] = gam * z[f] + cj * phk[f];
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
          vt = to_f(ring_v[(ring_row0 + t % w) * D + d]);
        } else {
          vt = to_f(v[((int64_t(b) * a.L + t) * a.Hkv + hkv) * D + d]);
        }
        yw += sc[j] * vt;
      }
      float num = 0.f;
      const float cv = cj * xv[d];
      for (int f = 0; f < F2; ++f) {
        float s = gam * S[f * D + d] + phk[f] * cv;
        S[f * D + d] = s;
        num += phq[f] * s;
      }
      // shared_normaliser: (p N + alpha A) / (p d + 1 - p), d = den + eps, A = yw / l (p = red[1] / l)
      y[qo + d] = from_f<T>(a.shared_normaliser
                                ? (red[1] * num + alpha * yw) / (red[1] * (dz + a.eps) + (red[0] - red[1]))
                                : pm * num / (dz + a.eps) + alpha * yw * inv_den);
    }
    if (kDecode && skip && tid == 0) r.lg[sidx * w + i % w] = lg;  // read above by this CTA only
    if (kDecode && !skip && hq % group == 0) {
      // Slot pos % w holds position pos - w, which no query of this step reads. (gate_skips_window reads
      // it, from every head of the group: ring_write_kernel stores this token after the step.)
      T* rk = static_cast<T*>(r.k) + (ring_row0 + i % w) * D;
      T* rv = static_cast<T*>(r.v) + (ring_row0 + i % w) * D;
      for (int d = tid; d < D; d += kThreads) rk[d] = k[ko + d], rv[d] = v[ko + d];
    }
  }
  __syncthreads();
  if (a.state_s != nullptr)
    for (int i = tid; i < F2 * D; i += kThreads) a.state_s[sidx * F2 * D + i] = S[i];
  if (a.state_z != nullptr)
    for (int i = tid; i < F2; i += kThreads) a.state_z[sidx * F2 + i] = z[i];
}

// gate_skips_window decode: this token's k, v and feature-map k into slot pos % w, after the step read the
// slot's old token. One CTA per (b, kv head).
template <typename T>
__global__ void ring_write_kernel(const LizardAttnArgs a, const int* pos, const LizardDecodeRings r) {
  const int hkv = blockIdx.x % a.Hkv, b = blockIdx.x / a.Hkv, D = a.D;
  const int64_t src = (int64_t(b) * a.Hkv + hkv) * D, dst = ((int64_t(b) * a.Hkv + hkv) * a.window + pos[b] % a.window) * D;
  const T* kf = static_cast<const T*>(a.separate_feature_qk ? a.kf : a.k);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    static_cast<T*>(r.k)[dst + d] = static_cast<const T*>(a.k)[src + d];
    static_cast<T*>(r.v)[dst + d] = static_cast<const T*>(a.v)[src + d];
    static_cast<T*>(r.kf)[dst + d] = kf[src + d];
  }
}

template <typename T, bool kDecode>
void launch_rec(const LizardAttnArgs& a, const int* pos, const LizardDecodeRings& r, cudaStream_t stream) {
  const size_t smem = (size_t(2 * a.F) * a.D + 2 * a.F + 6 * a.D + 6 * a.F + a.window + 4) * sizeof(float);
  int dev = 0, optin = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  LZ_CUDA_CHECK(smem <= size_t(optin), "lizard attention (cuda, recurrent): D=", a.D, " F=", a.F, " w=", a.window, " needs ", smem, " bytes of shared memory");
  auto kern = lizard_recurrent_kernel<T, kDecode>;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  kern<<<a.B * a.Hq, kThreads, smem, stream>>>(a, pos, r);
  cudaError_t e = cudaGetLastError();
  LZ_CUDA_CHECK(e == cudaSuccess, "lizard attention (cuda, recurrent): launch failed: ", cudaGetErrorString(e));
  if (kDecode && a.gate_skips_window) {
    ring_write_kernel<T><<<a.B * a.Hkv, 128, 0, stream>>>(a, pos, r);
    e = cudaGetLastError();
    LZ_CUDA_CHECK(e == cudaSuccess, "lizard attention (cuda, decode): ring write launch failed: ", cudaGetErrorString(e));
  }
}

// lizard_attention_prompt_state: one CTA per (b, hq) walks the prompt's keys t <= L-1-lag backwards in tiles
// of kTile, keeping the suffix sum of log gamma (a sum of terms <= 0: no cancellation), so each key's weight
// e_t = exp(sum_{s=t+1}^{L-1} lg_s) is exact to rounding; each thread owns fixed elements of S in registers.
constexpr int kTile = 32;
constexpr int kStateRegs = 64;  // S elements per thread: 2F D <= 128 x 128 over 256 threads

template <typename T>
__global__ void __launch_bounds__(kThreads) prompt_state_kernel(const LizardAttnArgs a, const LizardDecodeRings r) {
  const int D = a.D, F = a.F, F2 = 2 * a.F, w = a.window, L = a.L;
  extern __shared__ float sm[];
  float* xk = sm;               // [kTile][D] feature-map keys of the tile
  float* xv = xk + kTile * D;   // [kTile][D] their values
  float* u = xv + kTile * D;    // [kTile][F] pre-activations
  float* ph = u + kTile * F;    // [kTile][F2] weighted features
  float* lgt = ph + kTile * F2; // [kTile] log gammas of the tile
  float* red = lgt + kTile;     // [kWarps]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int hq = blockIdx.x % a.Hq, b = blockIdx.x / a.Hq;
  const int group = a.Hq / a.Hkv, hkv = hq / group;
  const T* kf = static_cast<const T*>(a.separate_feature_qk ? a.kf : a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* wk = static_cast<const T*>(a.wk) + int64_t(hq) * D * F;
  const int64_t sidx = int64_t(b) * a.Hq + hq;
  auto lg_at = [&](int t) {
    return a.log_gamma[a.gate_per_head ? (int64_t(b) * L + t) * a.Hq + hq : int64_t(b) * L + t];
  };
  const int tmax = L - 1 - (a.gate_skips_window ? w : 0);  // the last key in the state

  // suffix: sum of log gamma over (the current tile's last key, L - 1]; the first tile processed ends at tmax
  float part = 0.f;
  for (int t = tmax + 1 + tid; t < L; t += kThreads) part += lg_at(t);
  part = warp_sum(part);
  if (lane == 0) red[warp] = part;
  __syncthreads();
  float suffix = 0.f;
  for (int j = 0; j < kWarps; ++j) suffix += red[j];

  const int n_el = F2 * D;
  float acc[kStateRegs];
#pragma unroll
  for (int j = 0; j < kStateRegs; ++j) acc[j] = 0.f;
  float zacc = 0.f;
  for (int end = tmax; end >= 0; end -= kTile) {
    const int t0 = max(0, end - kTile + 1), nt = end - t0 + 1;
    __syncthreads();
    for (int e = tid; e < kTile * D; e += kThreads) {
      const int r_ = e / D, d = e % D;
      const bool ok = r_ < nt;
      const int64_t o = ((int64_t(b) * L + t0 + r_) * a.Hkv + hkv) * D + d;
      xk[e] = ok ? to_f(kf[o]) : 0.f;
      xv[e] = ok ? to_f(v[o]) : 0.f;
    }
    for (int r_ = tid; r_ < kTile; r_ += kThreads) lgt[r_] = r_ < nt ? lg_at(t0 + r_) : 0.f;
    __syncthreads();
    for (int e = tid; e < kTile * F; e += kThreads) {
      const int r_ = e / F, c = e % F;
      float s = 0.f;
      for (int d = 0; d < D; ++d) s += xk[r_ * D + d] * to_f(wk[d * F + c]);
      u[e] = s;
    }
    __syncthreads();
    for (int r_ = warp; r_ < nt; r_ += kWarps) {
      float within = 0.f;  // sum of log gamma over (t, end]
      for (int m = r_ + 1 + lane; m < nt; m += 32) within += lgt[m];
      within = warp_sum(within);
      // phi(u) twice into ph: [softmax(u) | softmax(-u)] (or exp), then the key's weight
      warp_feature_map(u + r_ * F, ph + r_ * F2, F, a.act);
      __syncwarp();
      const float e_t = expf(suffix + within);
      for (int f = lane; f < F2; f += 32) ph[r_ * F2 + f] *= e_t;
    }
    for (int r_ = nt + warp; r_ < kTile; r_ += kWarps)
      for (int f = lane; f < F2; f += 32) ph[r_ * F2 + f] = 0.f;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kStateRegs; ++j) {
      const int e = tid + j * kThreads;
      if (e < n_el) {
        const int f = e / D, d = e % D;
        float s = acc[j];
        for (int r_ = 0; r_ < nt; ++r_) s += ph[r_ * F2 + f] * xv[r_ * D + d];
        acc[j] = s;
      }
    }
    if (tid < F2)
      for (int r_ = 0; r_ < nt; ++r_) zacc += ph[r_ * F2 + tid];
    for (int r_ = 0; r_ < nt; ++r_) suffix += lgt[r_];  // every thread the same sum: the next tile's suffix
  }
#pragma unroll
  for (int j = 0; j < kStateRegs; ++j) {
    const int e = tid + j * kThreads;
    if (e < n_el) a.state_s[sidx * n_el + e] = acc[j];
  }
  if (tid < F2) a.state_z[sidx * F2 + tid] = zacc;
  if (a.gate_skips_window) {  // the rings of the prompt's last w tokens: log gammas per head, feature keys per group
    for (int t = max(0, L - w) + tid; t < L; t += kThreads) r.lg[sidx * w + t % w] = lg_at(t);
    if (hq % group == 0) {
      T* rkf = static_cast<T*>(r.kf) + (int64_t(b) * a.Hkv + hkv) * w * D;
      for (int e = tid; e < min(L, w) * D; e += kThreads) {
        const int t = max(0, L - w) + e / D, d = e % D;
        rkf[(t % w) * D + d] = kf[((int64_t(b) * L + t) * a.Hkv + hkv) * D + d];
      }
    }
  }
}

}  // namespace

void lizard_attention_forward_recurrent(const LizardAttnArgs& a, bool fp32, cudaStream_t stream) {
  check_common_args(a);
  if (fp32)
    launch_rec<float, false>(a, nullptr, LizardDecodeRings{}, stream);
  else
    launch_rec<__nv_bfloat16, false>(a, nullptr, LizardDecodeRings{}, stream);
}

void lizard_attention_decode(const LizardAttnArgs& a, bool fp32, const int* pos, const LizardDecodeRings& rings,
                             cudaStream_t stream) {
  check_common_args(a);
  LZ_CUDA_CHECK(a.state_s && a.state_z && pos && rings.k && rings.v, "lizard attention (cuda, decode): state, positions and ring buffers are required");
  LZ_CUDA_CHECK(!a.gate_skips_window || (rings.kf && rings.lg),
                "lizard attention (cuda, decode): gate_skips_window needs the rings of feature keys and log gammas");
  if (fp32)
    launch_rec<float, true>(a, pos, rings, stream);
  else
    launch_rec<__nv_bfloat16, true>(a, pos, rings, stream);
}

void lizard_attention_prompt_state(const LizardAttnArgs& a, const LizardDecodeRings& rings, cudaStream_t stream) {
  check_common_args(a);
  LZ_CUDA_CHECK(a.state_s && a.state_z, "lizard attention (cuda, prompt state): state_s and state_z are required");
  LZ_CUDA_CHECK(!a.gate_skips_window || (rings.kf && rings.lg),
                "lizard attention (cuda, prompt state): gate_skips_window needs the rings of feature keys and log gammas");
  LZ_CUDA_CHECK(2 * a.F * a.D <= kStateRegs * kThreads && a.F <= 128, "lizard attention (cuda, prompt state): 2F x D = ",
                2 * a.F * a.D, " is more than ", kStateRegs * kThreads);
  const size_t smem = (size_t(2 * kTile) * a.D + size_t(kTile) * 3 * a.F + kTile + kWarps) * sizeof(float);
  auto kern = prompt_state_kernel<__nv_bfloat16>;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  kern<<<a.B * a.Hq, kThreads, smem, stream>>>(a, rings);
  const cudaError_t e = cudaGetLastError();
  LZ_CUDA_CHECK(e == cudaSuccess, "lizard attention (cuda, prompt state): launch failed: ", cudaGetErrorString(e));
}

}  // namespace lizard::cuda
