// Stage 2 on the GPU: host orchestration of the shared kernels (ops/cuda/*), cuBLASLt GEMMs (gemm.h)
// and device weights (model/cuda/device_weights.h). See stage2_cuda.h for what is computed.
#include "train/cuda/stage2_cuda.h"

#include "util/error.h"

#ifndef LIZARD_HAVE_CUDA

namespace lizard {

std::unique_ptr<Stage> make_stage2_cuda(std::shared_ptr<const Checkpoint>, const LizardCheckpoint&,
                                        const Stage2Options&) {
  fail("stage 2 on the GPU (--device cuda): this lizard was built without CUDA");
}

}  // namespace lizard

#else

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>

#include "model/cuda/device_weights.h"
#include "model/load_model.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/fused_ops.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/lizard_attention.h"
#include "ops/cuda/lizard_gate.h"
#include "ops/cuda/lolcats_attention.h"
#include "train/lora.h"
#include "util/half.h"

namespace lizard {

namespace {

using cuda::DeviceBuffer;
// Storage types of the GPU kernels (lizard::DType is the file formats' enum).
constexpr cuda::DType kBF16 = cuda::DType::BF16, kF32 = cuda::DType::F32;
constexpr size_t kBf16 = 2;  // bytes of a bf16 element

// Grows b to n elements of `elem` bytes (at least one) and returns its pointer.
template <typename T = void>
T* sized(DeviceBuffer& b, int64_t n, size_t elem) {
  b.resize(size_t(std::max<int64_t>(n, 1)) * elem);
  return static_cast<T*>(b.get());
}
void* bf16_buf(DeviceBuffer& b, int64_t n) { return sized(b, n, kBf16); }
float* f32_buf(DeviceBuffer& b, int64_t n) { return sized<float>(b, n, sizeof(float)); }

// Row r of a bf16 matrix with `cols` columns.
void* row_ptr(void* p, int64_t r, int64_t cols) { return static_cast<char*>(p) + r * cols * int64_t(kBf16); }

void upload(DeviceBuffer& b, const void* src, size_t bytes) {
  b.resize(std::max<size_t>(bytes, 1));
  LZ_CUDA_OK(cudaMemcpy(b.get(), src, bytes, cudaMemcpyHostToDevice));
}

void download(std::vector<float>& dst, const float* src) {
  LZ_CUDA_OK(cudaMemcpy(dst.data(), src, dst.size() * sizeof(float), cudaMemcpyDeviceToHost));
}

int64_t lora_out(const ModelConfig& mc, const std::string& t) {
  return int64_t(t == "q" ? mc.n_heads : mc.n_kv_heads) * mc.head_dim;
}

}  // namespace

struct Stage2Cuda::Impl {
  // Host master copies (what the optimizer updates) and their device mirrors.
  struct Adapter {
    std::vector<float> a, b, ga, gb;  // A [r, d], B [out, r]; gradients
    DeviceBuffer a_dev, b_dev;        // bf16 copies of a, b (uploaded per call)
    DeviceBuffer ga_dev, gb_dev;      // fp32 gradients
    int64_t out = 0;
  };
  // Gradients of one Lizard layer on the device (fp32, the kernels' layouts = LizardParams' layouts).
  struct LizardGrads {
    DeviceBuffer feat_q, feat_k, gate_w, gate_b, meta, alpha, lolcats_f;
  };
  // What one layer's backward needs (bf16 unless noted).
  struct Acts {
    DeviceBuffer xn1, q, k, v, att, xm, g, u;
    DeviceBuffer qf, kf;        // Lizard layers with feature_on_rope != window_rope: the feature maps' q, k
    DeviceBuffer rstd1, rstd2;  // fp32 [T]
    DeviceBuffer lse;           // softmax layers: fp32 [B, H, L]
    DeviceBuffer log_gamma;     // Lizard layers: fp32 [T, G]
    DeviceBuffer win_lse, win_out;  // Lizard layers: the forward's window statistics for the backward
    std::map<std::string, DeviceBuffer> h;  // LoRA x A^T per target [T, r]
  };

  std::shared_ptr<const Checkpoint> ckpt;
  Stage2Options opt;
  ModelConfig mc;
  LizardCheckpoint base;  // stage 1's model with the initial adapters
  std::unique_ptr<LlamaModel> teacher_model;

  int rank = 0;
  float scale = 0.f;
  std::map<int, std::map<std::string, Adapter>> lora;  // layer -> "q" | "k" | "v"
  std::map<int, LizardParams> lizard, lizard_grad;
  bool lolcats = false;      // combine = lolcats: the LoLCATs baseline's kernels (no gate, meta, alpha)
  bool rope_lizard = false;  // RoPE the window's q, k before the mixer kernels (lolcats, or window_rope)
  bool sep_qk = false;       // Lizard with feature_on_rope != window_rope: the feature maps read their own q, k

  std::unique_ptr<cuda::TeacherWeights> tw;
  cuda::LizardWeights lw;
  std::map<int, LizardGrads> lizard_grad_dev;

  // Activations: residual stream inputs xs[l] (xs[n_layers] = last output), per-layer saved tensors.
  std::vector<DeviceBuffer> xs;
  std::vector<Acts> acts;
  // Scratch shared by all layers.
  DeviceBuffer ids, targets, xn2, act, xf, rstdf, loss, lse_ce, dloss, logits, dlogits;
  DeviceBuffer dres, dxf, tmp, da, dg, du, dxn2, datt, dq, dk, dv, dq32, dk32, dv32, dlg, dh, dxn1, delta;
  DeviceBuffer dqf32, dkf32;  // sep_qk: the feature maps' part of d q, d k
  DeviceBuffer gate_dw_scratch, gate_db_scratch, x_scratch;

  Impl(std::shared_ptr<const Checkpoint> teacher, const LizardCheckpoint& lz, const Stage2Options& o)
      : ckpt(std::move(teacher)), opt(o) {
    LZ_CHECK(ckpt != nullptr, "no teacher given");
    LZ_CHECK(opt.seq_len >= 1, "sequence length must be positive");
    mc = ckpt->config;
    base = stage2_start(mc, lz, opt);
    LZ_CHECK(mc.n_heads % mc.n_kv_heads == 0, "stage 2: {} heads over {} kv heads", mc.n_heads, mc.n_kv_heads);
    const LizardConfig& c = base.config;
    lolcats = c.combine == LizardConfig::Combine::Lolcats;
    rope_lizard = lolcats || c.window_rope;
    sep_qk = !lolcats && c.feature_on_rope != c.window_rope;
    // Fail here, not at the first step, on sizes and options the kernels do not implement.
    LZ_CHECK(mc.head_dim == 64 || mc.head_dim == 128,
             "stage 2 on the GPU: head_dim {} (the GPU attention kernels take 64 or 128; use --device cpu)",
             mc.head_dim);
    if (!base.layers.empty() && lolcats) {
      (void)cuda::lolcats_cuda_args(c, base.shape, 1, 1);
    } else if (!base.layers.empty()) {
      (void)cuda::lizard_cuda_args(c, base.shape, 1, 1);
      LZ_CHECK(c.feature_dim == 32 || c.feature_dim == 64,
               "stage 2 on the GPU: feature_dim {} (the GPU Lizard kernels take 32 or 64)", c.feature_dim);
      LZ_CHECK(mc.head_dim == 64 || c.window <= 192,
               "stage 2 on the GPU: window {} at head_dim 128 (the GPU Lizard kernels take up to 192)", c.window);
    }
    for (const auto& [l, p] : base.layers) {
      lizard[l] = p;
      lizard_grad[l].resize(c, base.shape);
    }
    rank = base.lora.rank;
    scale = float(base.lora.scale());
    for (const auto& [l, m] : base.lora.layers)
      for (const auto& [t, ad] : m) {
        Adapter& a = lora[l][t];
        a.out = lora_out(mc, t);
        LZ_CHECK(int64_t(ad.a.size()) == int64_t(rank) * mc.d_model && int64_t(ad.b.size()) == a.out * rank,
                 "stage 2: LoRA blk.{}.{} has the wrong size", l, t);
        a.a = ad.a;
        a.b = ad.b;
        a.ga.assign(a.a.size(), 0.f);
        a.gb.assign(a.b.size(), 0.f);
      }

    tw = std::make_unique<cuda::TeacherWeights>(*ckpt);  // frozen, no merged LoRA
    if (opt.train_lizard)
      for (auto& [l, p] : lizard) {
        LizardGrads& g = lizard_grad_dev[l];
        f32_buf(g.feat_q, int64_t(p.feat_q.size()));
        f32_buf(g.feat_k, int64_t(p.feat_k.size()));
        f32_buf(g.gate_w, int64_t(p.gate_w.size()));
        f32_buf(g.gate_b, int64_t(p.gate_b.size()));
        f32_buf(g.meta, int64_t(p.meta.size()));
        f32_buf(g.alpha, int64_t(p.alpha.size()));
        f32_buf(g.lolcats_f, int64_t(p.lolcats_f.size()));
      }
    xs.resize(size_t(mc.n_layers) + 1);
    acts.resize(size_t(mc.n_layers));

    ModelOptions mo;
    mo.n_threads = opt.threads;
    mo.context = std::max<int64_t>(opt.seq_len, 1);
    mo.fp32_cache_bytes = opt.fp32_cache_bytes;
    teacher_model = std::make_unique<LlamaModel>(ckpt, mo);
  }

  // Host parameters -> device (LoRA in bf16; Lizard through LizardWeights).
  void upload_params() {
    std::vector<uint16_t> tmp16;
    auto to_bf16 = [&](DeviceBuffer& dst, const std::vector<float>& src) {
      tmp16.resize(src.size());
      for (size_t i = 0; i < src.size(); ++i) tmp16[i] = f32_to_bf16(src[i]);
      upload(dst, tmp16.data(), tmp16.size() * kBf16);
    };
    for (auto& [l, m] : lora)
      for (auto& [t, a] : m) {
        to_bf16(a.a_dev, a.a);
        to_bf16(a.b_dev, a.b);
      }
    for (auto& [l, p] : lizard) lw.upload(l, base.config, base.shape, p);
  }

  Adapter* adapter(int li, const std::string& t) {
    auto it = lora.find(li);
    if (it == lora.end()) return nullptr;
    auto jt = it->second.find(t);
    return jt == it->second.end() ? nullptr : &jt->second;
  }

  // stats: the forward keeps the window statistics in a.win_lse / a.win_out and the backward reads them
  cuda::LizardAttnArgs lizard_args(const cuda::DeviceLizardLayer& lz, const Acts& a, int B, int L, bool stats) const {
    cuda::LizardAttnArgs la = cuda::lizard_cuda_args(lz.cfg, lz.shape, B, L);
    la.q = a.q.get();
    la.k = a.k.get();
    la.v = a.v.get();
    la.log_gamma = static_cast<const float*>(a.log_gamma.get());
    la.wq = lz.feat_q;
    la.wk = lz.feat_k;
    la.meta = lz.meta;
    la.alpha = lz.alpha;
    la.y = a.att.get();
    if (sep_qk) la.qf = a.qf.get(), la.kf = a.kf.get();
    if (stats && a.win_out.bytes() > 0) la.win_lse = a.win_lse.as<float>(), la.win_out = a.win_out.get();
    return la;
  }

  cuda::LolcatsAttnArgs lolcats_args(const cuda::DeviceLizardLayer& lz, const Acts& a, int B, int L) const {
    cuda::LolcatsAttnArgs la = cuda::lolcats_cuda_args(lz.cfg, lz.shape, B, L);
    la.q = a.q.get();
    la.k = a.k.get();
    la.v = a.v.get();
    la.wq = lz.feat_q;
    la.wk = lz.feat_k;
    la.lolcats_f = lz.lolcats_f;
    la.y = a.att.get();
    return la;
  }

  int gate_groups() const { return base.config.gate == LizardConfig::Gate::PerHead ? mc.n_heads : 1; }

  // RoPE (or its inverse) on q-like rows [B * L, heads * D], positions 0..L-1 in every sequence (bf16, or
  // fp32 where f32).
  void rope(void* p, int B, int L, int heads, bool inverse, bool f32 = false) {
    const int64_t cols = int64_t(heads) * mc.head_dim;
    for (int b = 0; b < B; ++b)
      cuda::rope_apply(f32 ? kF32 : kBF16, static_cast<char*>(p) + int64_t(b) * L * cols * (f32 ? 4 : kBf16), L,
                       cols, heads, mc.head_dim, 0, tw->rope_inv_freq(), inverse);
  }

  // One decoder layer: x_in [T, d] -> x_out [T, d]; a receives what the backward needs.
  // stats: a backward of this layer follows on these activations (the Lizard forward then keeps its window
  // statistics for it; evaluation and the first pass of recomputation skip them)
  void layer_forward(int li, int B, int L, const void* x_in, void* x_out, Acts& a, bool stats) {
    const int64_t T = int64_t(B) * L;
    const int d = mc.d_model, H = mc.n_heads, Hkv = mc.n_kv_heads, D = mc.head_dim, qd = H * D, kvd = Hkv * D,
              F = mc.d_ff;
    const float eps = float(mc.rms_eps);
    const cuda::DeviceLayer& w = tw->layer(li);
    void* xn1 = bf16_buf(a.xn1, T * d);
    cuda::rmsnorm_fwd(kBF16, x_in, w.attn_norm, xn1, f32_buf(a.rstd1, T), T, d, eps);
    auto proj = [&](const std::string& t, const cuda::DeviceLinear& lin, int out, DeviceBuffer& yb) {
      void* y = bf16_buf(yb, T * out);
      cuda::linear_fwd(xn1, lin.w, lin.bias, y, kBF16, T, d, out);
      if (Adapter* ad = adapter(li, t)) {
        void* h = bf16_buf(a.h[t], T * rank);
        cuda::linear_fwd(xn1, ad->a_dev.get(), nullptr, h, kBF16, T, d, rank);  // h = x A^T
        cuda::gemm(false, true, T, out, rank, h, ad->b_dev.get(), kBF16, y, y, scale, 1.f);  // y += s h B^T
      }
    };
    proj("q", w.q, qd, a.q);
    proj("k", w.k, kvd, a.k);
    proj("v", w.v, kvd, a.v);
    bf16_buf(a.att, T * qd);
    if (const cuda::DeviceLizardLayer* lz = lw.find(li); lz && lolcats) {
      rope(a.q.get(), B, L, H, false);
      rope(a.k.get(), B, L, Hkv, false);
      cuda::lolcats_attention_forward(lolcats_args(*lz, a, B, L));
    } else if (lz) {
      cuda::lizard_gate_fwd(xn1, lz->gate_w, lz->gate_b, f32_buf(a.log_gamma, T * gate_groups()), T, d,
                            gate_groups());
      if (sep_qk) {  // the feature maps' own q, k: the projections, RoPE'd where feature_on_rope
        LZ_CUDA_OK(cudaMemcpyAsync(bf16_buf(a.qf, T * qd), a.q.get(), size_t(T) * qd * kBf16, cudaMemcpyDeviceToDevice));
        LZ_CUDA_OK(cudaMemcpyAsync(bf16_buf(a.kf, T * kvd), a.k.get(), size_t(T) * kvd * kBf16, cudaMemcpyDeviceToDevice));
        if (base.config.feature_on_rope) {
          rope(a.qf.get(), B, L, H, false);
          rope(a.kf.get(), B, L, Hkv, false);
        }
      }
      if (rope_lizard) {
        rope(a.q.get(), B, L, H, false);
        rope(a.k.get(), B, L, Hkv, false);
      }
      if (stats) f32_buf(a.win_lse, T * H), bf16_buf(a.win_out, T * qd);  // kept for the backward's statistics
      cuda::lizard_attention_forward_bf16(lizard_args(*lz, a, B, L, stats));
    } else {
      rope(a.q.get(), B, L, H, false);  // kept rotated: the flash backward wants q, k as the forward saw them
      rope(a.k.get(), B, L, Hkv, false);
      cuda::FlashArgs fa;
      fa.B = B, fa.L = L, fa.H = H, fa.Hkv = Hkv, fa.D = D;
      fa.q = a.q.get(), fa.k = a.k.get(), fa.v = a.v.get(), fa.out = a.att.get();
      fa.lse = f32_buf(a.lse, T * H);
      cuda::flash_attention_fwd(fa);
    }
    // xm = x + att W_o^T (the teacher's W_o bias, if any, is not used: as the CPU Stage2)
    void* xm = bf16_buf(a.xm, T * d);
    LZ_CUDA_OK(cudaMemcpyAsync(xm, x_in, size_t(T) * d * kBf16, cudaMemcpyDeviceToDevice));
    cuda::linear_fwd(a.att.get(), w.o.w, nullptr, xm, kBF16, T, qd, d, true);
    // x_out = xm + down(swiglu(gate(xn2), up(xn2))), xn2 = rmsnorm(xm)
    void* xn2b = bf16_buf(xn2, T * d);
    cuda::rmsnorm_fwd(kBF16, xm, w.ffn_norm, xn2b, f32_buf(a.rstd2, T), T, d, eps);
    cuda::linear_fwd(xn2b, w.gate.w, nullptr, bf16_buf(a.g, T * F), kBF16, T, d, F);
    cuda::linear_fwd(xn2b, w.up.w, nullptr, bf16_buf(a.u, T * F), kBF16, T, d, F);
    void* actb = bf16_buf(act, T * F);
    cuda::swiglu_fwd(kBF16, a.g.get(), a.u.get(), actb, T * F);
    LZ_CUDA_OK(cudaMemcpyAsync(x_out, xm, size_t(T) * d * kBf16, cudaMemcpyDeviceToDevice));
    cuda::linear_fwd(actb, w.down.w, nullptr, x_out, kBF16, T, F, d, true);
  }

  // dres: d loss / d(layer output) on entry, d loss / d(layer input) on return.
  void layer_backward(int li, int B, int L, const void* x_in, Acts& a, void* dresp) {
    const int64_t T = int64_t(B) * L;
    const int d = mc.d_model, H = mc.n_heads, Hkv = mc.n_kv_heads, D = mc.head_dim, qd = H * D, kvd = Hkv * D,
              F = mc.d_ff;
    const cuda::DeviceLayer& w = tw->layer(li);
    void* tmpb = bf16_buf(tmp, T * d);
    // MLP (input gradients only: the teacher is frozen)
    void* dab = bf16_buf(da, T * F);
    void* dgb = bf16_buf(dg, T * F);
    void* dub = bf16_buf(du, T * F);
    void* dxn2b = bf16_buf(dxn2, T * d);
    cuda::linear_bwd_input(dresp, w.down.w, dab, kBF16, T, F, d);
    cuda::swiglu_bwd(kBF16, a.g.get(), a.u.get(), dab, dgb, dub, T * F);
    cuda::linear_bwd_input(dgb, w.gate.w, dxn2b, kBF16, T, d, F);
    cuda::linear_bwd_input(dub, w.up.w, dxn2b, kBF16, T, d, F, true);
    cuda::rmsnorm_bwd(kBF16, a.xm.get(), w.ffn_norm, static_cast<const float*>(a.rstd2.get()), dxn2b, tmpb,
                      nullptr, T, d);
    cuda::add_inplace(kBF16, dresp, tmpb, T * d);  // dres = d xm
    // Attention
    void* dattb = bf16_buf(datt, T * qd);
    cuda::linear_bwd_input(dresp, w.o.w, dattb, kBF16, T, qd, d);
    void* dqb = bf16_buf(dq, T * qd);
    void* dkb = bf16_buf(dk, T * kvd);
    void* dvb = bf16_buf(dv, T * kvd);
    const cuda::DeviceLizardLayer* lz = lw.find(li);
    float* dlgp = nullptr;
    if (lz && lolcats) {
      cuda::LolcatsAttnGrads gr;
      gr.dq = f32_buf(dq32, T * qd);
      gr.dk = f32_buf(dk32, T * kvd);
      gr.dv = f32_buf(dv32, T * kvd);
      if (opt.train_lizard) {
        LizardGrads& g = lizard_grad_dev.at(li);
        gr.dwq = static_cast<float*>(g.feat_q.get());
        gr.dwk = static_cast<float*>(g.feat_k.get());
        gr.dlolcats_f = static_cast<float*>(g.lolcats_f.get());
      }
      cuda::lolcats_attention_backward(lolcats_args(*lz, a, B, L), dattb, gr);
      cuda::convert(kF32, gr.dq, kBF16, dqb, T * qd);
      cuda::convert(kF32, gr.dk, kBF16, dkb, T * kvd);
      cuda::convert(kF32, gr.dv, kBF16, dvb, T * kvd);
      rope(dqb, B, L, H, true);  // gradients w.r.t. the RoPE'd q, k: rotate back
      rope(dkb, B, L, Hkv, true);
    } else if (lz) {
      cuda::LizardAttnGrads gr;
      gr.dq = f32_buf(dq32, T * qd);
      gr.dk = f32_buf(dk32, T * kvd);
      gr.dv = f32_buf(dv32, T * kvd);
      gr.dlog_gamma = dlgp = f32_buf(dlg, T * gate_groups());  // always: the gate passes gradient to x
      if (opt.train_lizard) {
        LizardGrads& g = lizard_grad_dev.at(li);
        gr.dwq = static_cast<float*>(g.feat_q.get());
        gr.dwk = static_cast<float*>(g.feat_k.get());
        gr.dmeta = lizard.at(li).meta.empty() ? nullptr : static_cast<float*>(g.meta.get());
        gr.dalpha = static_cast<float*>(g.alpha.get());
      }
      if (sep_qk) gr.dqf = f32_buf(dqf32, T * qd), gr.dkf = f32_buf(dkf32, T * kvd);
      // the forward before it kept the statistics (layer_forward with stats: training, or the recompute)
      cuda::lizard_attention_backward_chunked(lizard_args(*lz, a, B, L, true), false, dattb, gr);
      if (sep_qk) {  // d q = the window's part + the feature maps', each rotated back where it was RoPE'd (fp32)
        if (rope_lizard) rope(gr.dq, B, L, H, true, true), rope(gr.dk, B, L, Hkv, true, true);
        if (base.config.feature_on_rope) rope(gr.dqf, B, L, H, true, true), rope(gr.dkf, B, L, Hkv, true, true);
        cuda::add_inplace(kF32, gr.dq, gr.dqf, T * qd);
        cuda::add_inplace(kF32, gr.dk, gr.dkf, T * kvd);
      }
      cuda::convert(kF32, gr.dq, kBF16, dqb, T * qd);
      cuda::convert(kF32, gr.dk, kBF16, dkb, T * kvd);
      cuda::convert(kF32, gr.dv, kBF16, dvb, T * kvd);
      if (rope_lizard && !sep_qk) {  // gradient through an orthogonal rotation: the inverse rotation
        rope(dqb, B, L, H, true);
        rope(dkb, B, L, Hkv, true);
      }
    } else {
      cuda::FlashBwdArgs fb;
      fb.B = B, fb.L = L, fb.H = H, fb.Hkv = Hkv, fb.D = D;
      fb.q = a.q.get(), fb.k = a.k.get(), fb.v = a.v.get(), fb.out = a.att.get(), fb.dout = dattb;
      fb.lse = static_cast<const float*>(a.lse.get());
      fb.dq = dqb, fb.dk = dkb, fb.dv = dvb;
      fb.delta = f32_buf(delta, T * H);
      cuda::flash_attention_bwd(fb);
      rope(dqb, B, L, H, true);
      rope(dkb, B, L, Hkv, true);
    }
    // q/k/v input gradients, then LoRA
    void* dxn1b = bf16_buf(dxn1, T * d);
    cuda::linear_bwd_input(dqb, w.q.w, dxn1b, kBF16, T, d, qd);
    cuda::linear_bwd_input(dkb, w.k.w, dxn1b, kBF16, T, d, kvd, true);
    cuda::linear_bwd_input(dvb, w.v.w, dxn1b, kBF16, T, d, kvd, true);
    if (auto it = lora.find(li); it != lora.end())
      for (auto& [t, ad] : it->second) {
        const void* dy = t == "q" ? dqb : t == "k" ? dkb : dvb;
        const void* h = a.h.at(t).get();
        void* dhb = bf16_buf(dh, T * rank);
        // dB = s dy^T h;  dh = s dy B;  dA = dh^T x;  dx += dh A
        cuda::gemm(true, false, ad.out, rank, T, dy, h, kF32, f32_buf(ad.gb_dev, ad.out * rank), nullptr, scale,
                   0.f);
        cuda::gemm(false, false, T, rank, ad.out, dy, ad.b_dev.get(), kBF16, dhb, nullptr, scale, 0.f);
        cuda::linear_bwd_weight(dhb, a.xn1.get(), f32_buf(ad.ga_dev, int64_t(rank) * d), kF32, T, d, rank);
        cuda::linear_bwd_input(dhb, ad.a_dev.get(), dxn1b, kBF16, T, d, rank, true);
      }
    if (lz && !lolcats) {
      const int G = gate_groups();
      float *dw = f32_buf(gate_dw_scratch, int64_t(G) * d), *db = f32_buf(gate_db_scratch, G);
      if (opt.train_lizard) {
        dw = static_cast<float*>(lizard_grad_dev.at(li).gate_w.get());
        db = static_cast<float*>(lizard_grad_dev.at(li).gate_b.get());
      }
      cuda::lizard_gate_bwd(a.xn1.get(), lz->gate_w, lz->gate_b, dlgp, dw, db, dxn1b, T, d, G);
    }
    cuda::rmsnorm_bwd(kBF16, x_in, w.attn_norm, static_cast<const float*>(a.rstd1.get()), dxn1b, tmpb, nullptr,
                      T, d);
    cuda::add_inplace(kBF16, dresp, tmpb, T * d);  // dres = d x_in
  }

  // Where the time of the last run went (host clock at synchronisation points, seconds): parameter and
  // token upload, forward through the layers, head + cross-entropy (with its backward), layer backward,
  // gradient download. Only with LIZARD_STAGE2_PROFILE set (not "0"), read at construction: the laps
  // synchronise the device, which a plain step need not do; without it `seconds` stays empty.
  std::vector<std::pair<std::string, double>> seconds;
  const bool profile = [] {
    const char* e = std::getenv("LIZARD_STAGE2_PROFILE");
    return e != nullptr && *e != '\0' && std::strcmp(e, "0") != 0;
  }();

  // The whole batch; returns the summed cross-entropy (nats) over its T tokens. With grads, the device
  // gradients hold d(mean CE)/d(param) on return.
  double run(const std::vector<const int32_t*>& seqs, int L, bool grads) {
    seconds.clear();
    auto t = std::chrono::steady_clock::now();
    auto lap = [&](const char* what) {  // synchronises (profile only): a handful per step
      if (!profile) return;
      LZ_CUDA_OK(cudaDeviceSynchronize());
      const auto now = std::chrono::steady_clock::now();
      seconds.emplace_back(what, std::chrono::duration<double>(now - t).count());
      t = now;
    };
    const int B = int(seqs.size());
    const int64_t T = int64_t(B) * L;
    const int d = mc.d_model, V = mc.vocab_size, nl = mc.n_layers;
    const float eps = float(mc.rms_eps);
    std::vector<int32_t> in(static_cast<size_t>(T)), tg(static_cast<size_t>(T));
    for (int b = 0; b < B; ++b)
      for (int i = 0; i <= L; ++i) {
        const int32_t t = seqs[size_t(b)][i];
        LZ_CHECK(t >= 0 && t < V, "token id {} is out of range (vocabulary of {})", t, V);
        if (i < L) in[size_t(b) * L + i] = t;
        if (i > 0) tg[size_t(b) * L + i - 1] = t;
      }
    upload(ids, in.data(), in.size() * sizeof(int32_t));
    upload(targets, tg.data(), tg.size() * sizeof(int32_t));
    upload_params();
    lap("upload");

    // Forward. Layers keep their activations only when a backward without recomputation follows.
    const bool keep = grads && !opt.recompute;
    for (auto& x : xs) bf16_buf(x, T * d);
    cuda::embedding_fwd(kBF16, tw->embedding(), static_cast<const int32_t*>(ids.get()), xs[0].get(), T, d);
    for (int li = 0; li < nl; ++li) layer_forward(li, B, L, xs[li].get(), xs[li + 1].get(), acts[keep ? li : 0], keep);
    void* xfb = bf16_buf(xf, T * d);
    float* rstdfp = f32_buf(rstdf, T);
    cuda::rmsnorm_fwd(kBF16, xs[nl].get(), tw->out_norm(), xfb, rstdfp, T, d, eps);
    lap("forward");

    // Head and cross-entropy by row chunks; with grads, their backward at once (dxf = dlogits W_head).
    float* lossp = f32_buf(loss, T);
    float* lsep = f32_buf(lse_ce, T);
    void* dxfb = grads ? bf16_buf(dxf, T * d) : nullptr;
    float* dlossp = nullptr;
    if (grads) {
      const std::vector<float> w(size_t(T), float(1.0 / double(T)));  // d(mean CE)/d(CE of a token)
      upload(dloss, w.data(), w.size() * sizeof(float));
      dlossp = static_cast<float*>(dloss.get());
    }
    const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(T, kLogitChunkElems / V));
    float* logitsp = f32_buf(logits, rows * V);
    void* dlogitsb = grads ? bf16_buf(dlogits, rows * V) : nullptr;
    const cuda::DeviceLinear& head = tw->head();
    const int32_t* tgp = static_cast<const int32_t*>(targets.get());
    for (int64_t r0 = 0; r0 < T; r0 += rows) {
      const int64_t n = std::min(rows, T - r0);
      cuda::linear_fwd(row_ptr(xfb, r0, d), head.w, head.bias, logitsp, kF32, n, d, V);
      cuda::cross_entropy_fwd(kF32, logitsp, tgp + r0, lossp + r0, lsep + r0, n, V);
      if (!grads) continue;
      cuda::cross_entropy_bwd(kF32, logitsp, tgp + r0, lsep + r0, dlossp + r0, logitsp, n, V);  // in place
      cuda::convert(kF32, logitsp, kBF16, dlogitsb, n * V);
      cuda::linear_bwd_input(dlogitsb, head.w, row_ptr(dxfb, r0, d), kBF16, n, d, V);
    }

    lap(grads ? "head_ce_fwd_bwd" : "head_ce");
    if (grads) {
      void* dresb = bf16_buf(dres, T * d);
      cuda::rmsnorm_bwd(kBF16, xs[nl].get(), tw->out_norm(), rstdfp, dxfb, dresb, nullptr, T, d);
      for (int li = nl - 1; li >= 0; --li) {
        if (!keep) layer_forward(li, B, L, xs[li].get(), bf16_buf(x_scratch, T * d), acts[0], true);  // recompute
        layer_backward(li, B, L, xs[li].get(), acts[keep ? li : 0], dresb);
      }
      lap(opt.recompute ? "backward_with_recompute" : "backward");
    }
    std::vector<float> host_loss(static_cast<size_t>(T));
    download(host_loss, lossp);  // synchronises
    double ce = 0;
    for (float v : host_loss) ce += v;
    if (grads) {
      for (auto& [l, m] : lora)
        for (auto& [t, a] : m) {
          download(a.ga, static_cast<const float*>(a.ga_dev.get()));
          download(a.gb, static_cast<const float*>(a.gb_dev.get()));
        }
      for (auto& [l, g] : lizard_grad_dev) {
        LizardParams& hg = lizard_grad.at(l);
        download(hg.feat_q, static_cast<const float*>(g.feat_q.get()));
        download(hg.feat_k, static_cast<const float*>(g.feat_k.get()));
        // Parameters the combine does not use get zero gradients (as on the CPU).
        if (lolcats) {
          for (std::vector<float>* unused : {&hg.gate_w, &hg.gate_b, &hg.meta, &hg.alpha})
            std::fill(unused->begin(), unused->end(), 0.f);
          download(hg.lolcats_f, static_cast<const float*>(g.lolcats_f.get()));
        } else {
          std::fill(hg.lolcats_f.begin(), hg.lolcats_f.end(), 0.f);
          download(hg.gate_w, static_cast<const float*>(g.gate_w.get()));
          download(hg.gate_b, static_cast<const float*>(g.gate_b.get()));
          if (!hg.meta.empty()) download(hg.meta, static_cast<const float*>(g.meta.get()));
          download(hg.alpha, static_cast<const float*>(g.alpha.get()));
        }
      }
    }
    lap("download");
    return ce;
  }

  // The batch's mean cross-entropy; with grads, the step's time split as `seconds` says.
  LossResult batch_loss(const std::vector<const int32_t*>& seqs, int seq_len, bool grads) {
    LZ_CHECK(!seqs.empty(), "stage 2: empty batch");
    LZ_CHECK(seq_len >= 1 && seq_len <= opt.seq_len, "stage 2: a sequence of {} tokens (up to {})", seq_len,
             opt.seq_len);
    const auto t0 = std::chrono::steady_clock::now();
    LossResult r;
    r.total = run(seqs, seq_len, grads) / (double(seqs.size()) * seq_len);
    r.parts = {r.total};
    r.seconds = {{grads ? "forward_backward" : "forward",
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}};
    if (grads) r.seconds.insert(r.seconds.end(), seconds.begin(), seconds.end());
    return r;
  }

  size_t device_bytes() const {
    size_t n = tw->bytes() + lw.bytes();
    auto add = [&](const DeviceBuffer& b) { n += b.bytes(); };
    for (auto& x : xs) add(x);
    for (auto& a : acts) {
      for (const DeviceBuffer* b : {&a.xn1, &a.q, &a.k, &a.v, &a.qf, &a.kf, &a.att, &a.xm, &a.g, &a.u, &a.rstd1,
                                    &a.rstd2, &a.lse, &a.log_gamma})
        add(*b);
      for (auto& [t, h] : a.h) add(h);
    }
    for (const DeviceBuffer* b : {&ids, &targets, &xn2, &act, &xf, &rstdf, &loss, &lse_ce, &dloss, &logits, &dlogits,
                                  &dres, &dxf, &tmp, &da, &dg, &du, &dxn2, &datt, &dq, &dk, &dv, &dq32, &dk32, &dv32,
                                  &dlg, &dh, &dxn1, &delta, &dqf32, &dkf32, &gate_dw_scratch, &gate_db_scratch, &x_scratch})
      add(*b);
    for (auto& [l, m] : lora)
      for (auto& [t, a] : m)
        for (const DeviceBuffer* b : {&a.a_dev, &a.b_dev, &a.ga_dev, &a.gb_dev}) add(*b);
    for (auto& [l, g] : lizard_grad_dev)
      for (const DeviceBuffer* b : {&g.feat_q, &g.feat_k, &g.gate_w, &g.gate_b, &g.meta, &g.alpha, &g.lolcats_f})
        add(*b);
    return n;
  }
};

Stage2Cuda::Stage2Cuda(std::shared_ptr<const Checkpoint> teacher, const LizardCheckpoint& lizard,
                       const Stage2Options& opt)
    : impl_(std::make_unique<Impl>(std::move(teacher), lizard, opt)) {}

Stage2Cuda::~Stage2Cuda() = default;

std::vector<ParamTensor> Stage2Cuda::params() {
  return stage2_params(impl_->lora, impl_->lizard, impl_->lizard_grad, impl_->base, impl_->opt.train_lizard);
}

LossResult Stage2Cuda::forward_backward(const std::vector<const int32_t*>& seqs, int seq_len) {
  return impl_->batch_loss(seqs, seq_len, true);
}

LossResult Stage2Cuda::evaluate(const std::vector<const int32_t*>& seqs, int seq_len) {
  return impl_->batch_loss(seqs, seq_len, false);
}

LizardCheckpoint Stage2Cuda::checkpoint() const {
  return stage2_checkpoint(impl_->base, impl_->lizard, impl_->lora);
}

void Stage2Cuda::save_model(const std::string& dir) const { save_lizard_dir(dir, checkpoint()); }

std::string Stage2Cuda::fingerprint() const { return stage2_fingerprint(impl_->base, impl_->opt); }

const LlamaModel& Stage2Cuda::teacher() const { return *impl_->teacher_model; }

std::unique_ptr<LlamaModel> Stage2Cuda::student() const {
  return stage2_student(impl_->ckpt, *impl_->teacher_model, impl_->opt, checkpoint());
}

size_t Stage2Cuda::device_bytes() const { return impl_->device_bytes(); }

std::unique_ptr<Stage> make_stage2_cuda(std::shared_ptr<const Checkpoint> teacher, const LizardCheckpoint& lizard,
                                        const Stage2Options& opt) {
  return std::make_unique<Stage2Cuda>(std::move(teacher), lizard, opt);
}

}  // namespace lizard

#endif  // LIZARD_HAVE_CUDA
