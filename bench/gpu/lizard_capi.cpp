// C ABI over the CUDA Lizard kernels for the Python benchmark (ctypes, raw device pointers from
// torch tensors' data_ptr()). Returns 0 on success, -1 with lz_last_error() set otherwise.
#include <cstring>
#include <exception>
#include <string>

#include "ops/cuda/device_buffer.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/lizard_attention.h"

namespace {
thread_local std::string g_err;

// lz_set_save_window_stats(1): every call's args carry the window-statistics buffers kept here, so a chunked
// forward writes them and the chunked backward after it reads them (bench_lizard.py's fwd_bwd_chunked).
bool g_save_stats = false;
lizard::cuda::DeviceBuffer g_lse, g_out;  // fp32 [B, Hq, L], bf16 [B, L, Hq, D]

lizard::cuda::LizardAttnArgs make(const void* q, const void* k, const void* v, const float* lg, const void* wq,
                                  const void* wk, const float* meta, const float* alpha, void* y, int B, int L,
                                  int Hq, int Hkv, int D, int F, int w, int m, int act) {
  lizard::cuda::LizardAttnArgs a;
  a.B = B, a.L = L, a.Hq = Hq, a.Hkv = Hkv, a.D = D, a.F = F, a.window = w, a.n_meta = m;
  a.act = act ? lizard::cuda::FeatureAct::Exp : lizard::cuda::FeatureAct::Softmax;
  a.q = q, a.k = k, a.v = v, a.log_gamma = lg, a.wq = wq, a.wk = wk, a.meta = meta, a.alpha = alpha, a.y = y;
  if (g_save_stats) {
    const size_t rows = size_t(B) * L * Hq;
    g_lse.resize(rows * sizeof(float));
    g_out.resize(rows * D * 2);
    a.win_lse = g_lse.as<float>(), a.win_out = g_out.get();
  }
  return a;
}

// Runs f; 0 on success, -1 with the message kept for lz_last_error() on an exception.
template <class F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    g_err = e.what();
    return -1;
  }
}

using BackwardFn = void (*)(const lizard::cuda::LizardAttnArgs&, bool, const void*, const lizard::cuda::LizardAttnGrads&,
                            cudaStream_t);

int backward(BackwardFn fn, const void* q, const void* k, const void* v, const float* lg, const void* wq,
             const void* wk, const float* meta, const float* alpha, const void* dy, float* dq, float* dk, float* dv,
             float* dwq, float* dwk, float* dlg, float* dmeta, float* dalpha, int B, int L, int Hq, int Hkv, int D,
             int F, int w, int m, int act, int fp32, void* stream) {
  return guarded([&] {
    lizard::cuda::LizardAttnGrads g;
    g.dq = dq, g.dk = dk, g.dv = dv, g.dwq = dwq, g.dwk = dwk, g.dlog_gamma = dlg, g.dmeta = dmeta, g.dalpha = dalpha;
    fn(make(q, k, v, lg, wq, wk, meta, alpha, const_cast<void*>(dy), B, L, Hq, Hkv, D, F, w, m, act), fp32 != 0, dy, g,
       static_cast<cudaStream_t>(stream));
  });
}
}  // namespace

extern "C" {

const char* lz_last_error() { return g_err.c_str(); }

// Lizard forward variant 0 or 3; returns -1 for another.
int lz_set_forward_variant(int v) {
  return guarded([&] { lizard::cuda::set_forward_variant(v); });
}
void lz_set_forward_split(int m) { lizard::cuda::set_forward_split(m); }
// Chunked backward stage variant 2 (default) or 1; returns -1 (lz_last_error) for another.
int lz_set_backward_stage_variant(int v) {
  return guarded([&] { lizard::cuda::set_backward_stage_variant(v); });
}
// 1: the chunked forward keeps the window statistics and the chunked backward reads them (no statistics stage);
// 0 (default): the backward recomputes them. Returns 0.
int lz_set_save_window_stats(int on) {
  g_save_stats = on != 0;
  return 0;
}
// Chunked backward gate state passes 2 (default) or 1; returns -1 (lz_last_error) for another.
int lz_set_backward_state_variant(int v) {
  return guarded([&] { lizard::cuda::set_backward_state_variant(v); });
}

// bf16 chunked forward; scalar gate [B, L], meta [m] per layer, alpha [Hq] per head.
int lz_forward_bf16(const void* q, const void* k, const void* v, const float* lg, const void* wq, const void* wk,
                    const float* meta, const float* alpha, void* y, int B, int L, int Hq, int Hkv, int D, int F,
                    int w, int m, int act, void* stream) {
  return guarded([&] {
    lizard::cuda::lizard_attention_forward_bf16(make(q, k, v, lg, wq, wk, meta, alpha, y, B, L, Hq, Hkv, D, F, w, m, act),
                                                static_cast<cudaStream_t>(stream));
  });
}

// fp32-arithmetic recurrent forward (fp32 = 1: float tensors, 0: bf16 tensors).
int lz_forward_recurrent(const void* q, const void* k, const void* v, const float* lg, const void* wq,
                         const void* wk, const float* meta, const float* alpha, void* y, int B, int L, int Hq,
                         int Hkv, int D, int F, int w, int m, int act, int fp32, void* stream) {
  return guarded([&] {
    lizard::cuda::lizard_attention_forward_recurrent(
        make(q, k, v, lg, wq, wk, meta, alpha, y, B, L, Hq, Hkv, D, F, w, m, act), fp32 != 0,
        static_cast<cudaStream_t>(stream));
  });
}

// Backward, parallel form, fp32 arithmetic; gradients fp32 (see lizard_attention.h).
int lz_backward_parallel(const void* q, const void* k, const void* v, const float* lg, const void* wq, const void* wk,
                         const float* meta, const float* alpha, const void* dy, float* dq, float* dk, float* dv,
                         float* dwq, float* dwk, float* dlg, float* dmeta, float* dalpha, int B, int L, int Hq,
                         int Hkv, int D, int F, int w, int m, int act, int fp32, void* stream) {
  return backward(lizard::cuda::lizard_attention_backward_parallel, q, k, v, lg, wq, wk, meta, alpha, dy, dq, dk, dv,
                  dwq, dwk, dlg, dmeta, dalpha, B, L, Hq, Hkv, D, F, w, m, act, fp32, stream);
}

// Same, gated branch chunked on tensor cores (lizard_attention_backward_chunked).
int lz_backward_chunked(const void* q, const void* k, const void* v, const float* lg, const void* wq, const void* wk,
                        const float* meta, const float* alpha, const void* dy, float* dq, float* dk, float* dv,
                        float* dwq, float* dwk, float* dlg, float* dmeta, float* dalpha, int B, int L, int Hq,
                        int Hkv, int D, int F, int w, int m, int act, int fp32, void* stream) {
  return backward(lizard::cuda::lizard_attention_backward_chunked, q, k, v, lg, wq, wk, meta, alpha, dy, dq, dk, dv,
                  dwq, dwk, dlg, dmeta, dalpha, B, L, Hq, Hkv, D, F, w, m, act, fp32, stream);
}

// Causal GQA flash attention forward, bf16 [B, L, H, D]; lse optional.
int lz_flash_fwd(const void* q, const void* k, const void* v, void* out, float* lse, int B, int L, int H, int Hkv,
                 int D, void* stream) {
  return guarded([&] {
    lizard::cuda::FlashArgs a;
    a.B = B, a.L = L, a.H = H, a.Hkv = Hkv, a.D = D, a.q = q, a.k = k, a.v = v, a.out = out, a.lse = lse;
    lizard::cuda::flash_attention_fwd(a, static_cast<cudaStream_t>(stream));
  });
}

// Its backward: dq [B, L, H, D], dk, dv [B, L, Hkv, D] bf16; lse from the forward; delta: B*H*L floats.
int lz_flash_bwd(const void* q, const void* k, const void* v, const void* out, const void* dout, const float* lse,
                 void* dq, void* dk, void* dv, float* delta, int B, int L, int H, int Hkv, int D, void* stream) {
  return guarded([&] {
    lizard::cuda::FlashBwdArgs a;
    a.B = B, a.L = L, a.H = H, a.Hkv = Hkv, a.D = D, a.q = q, a.k = k, a.v = v, a.out = out, a.dout = dout;
    a.lse = lse, a.dq = dq, a.dk = dk, a.dv = dv, a.delta = delta;
    lizard::cuda::flash_attention_bwd(a, static_cast<cudaStream_t>(stream));
  });
}

}  // extern "C"
