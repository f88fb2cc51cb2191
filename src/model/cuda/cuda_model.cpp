// Generation on the GPU (model/cuda/cuda_model.h): host orchestration of the CUDA kernels.
#include "model/cuda/cuda_model.h"

#include "model/load_model.h"
#include "util/error.h"

#ifdef LIZARD_HAVE_CUDA

#include <algorithm>
#include <cstdint>
#include <cstring>

#include <cuda_runtime.h>

#include "model/cuda/cuda_model_kernels.h"
#include "model/cuda/device_weights.h"
#include "ops/cuda/attention_decode.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/fused_ops.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/lizard_attention.h"
#include "ops/cuda/lizard_gate.h"

namespace lizard::cuda {

namespace {

constexpr DType kBF16 = DType::BF16;

// bf16 element offset of a device pointer (2 bytes each; no CUDA bf16 type needed here).
void* bf(void* p, int64_t elems) { return static_cast<uint16_t*>(p) + elems; }

void to_device(void* dst, const void* src, size_t bytes) {
  LZ_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) == cudaSuccess, "copy to the GPU failed: {}",
           cudaGetErrorString(cudaGetLastError()));
}
void to_host(void* dst, const void* src, size_t bytes) {
  const cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);  // waits for the kernels
  LZ_CHECK(e == cudaSuccess, "GPU computation or copy failed: {}", cudaGetErrorString(e));
}

// Calls fn(first, count) for every maximal run of consecutive active slots.
template <typename Fn>
void for_active_runs(const bool* active, int slots, Fn&& fn) {
  for (int b = 0; b < slots;) {
    if (!active[b]) {
      ++b;
      continue;
    }
    int e = b;
    while (e < slots && active[e]) ++e;
    fn(b, e - b);
    b = e;
  }
}

}  // namespace

// ---- the batch ----------------------------------------------------------------------------------------

struct CudaBatch::Impl {
  const void* owner = nullptr;  // the CudaModel::Impl it was made by
  int slots = 0;
  int64_t ctx = 0;
  std::vector<int64_t> n_past;
  struct Layer {
    DeviceBuffer k_cache, v_cache;  // softmax: [slots, Hkv, ctx, D] bf16
    DeviceBuffer s, z;              // Lizard: [slots, H, 2F, D], [slots, H, 2F] fp32
    DeviceBuffer ring_k, ring_v;    // Lizard: [slots, Hkv, w, D] bf16
  };
  std::vector<Layer> layers;
  // Decode scratch, one row per slot.
  DeviceBuffer x, xn, q, k, v, y, gate, up, log_gamma, logits, tokens, pos, lens, workspace;

  size_t bytes() const {
    size_t n = 0;
    for (const auto& l : layers)
      for (const DeviceBuffer* d : {&l.k_cache, &l.v_cache, &l.s, &l.z, &l.ring_k, &l.ring_v}) n += d->bytes();
    for (const DeviceBuffer* d : {&x, &xn, &q, &k, &v, &y, &gate, &up, &log_gamma, &logits, &tokens, &pos, &lens,
                                  &workspace})
      n += d->bytes();
    return n;
  }
};

CudaBatch::CudaBatch() = default;
CudaBatch::~CudaBatch() = default;
CudaBatch::CudaBatch(CudaBatch&&) noexcept = default;
CudaBatch& CudaBatch::operator=(CudaBatch&&) noexcept = default;
int CudaBatch::slots() const { return impl ? impl->slots : 0; }
int64_t CudaBatch::context() const { return impl ? impl->ctx : 0; }
int64_t CudaBatch::n_past(int slot) const {
  LZ_CHECK(impl && slot >= 0 && slot < impl->slots, "slot {} does not exist (the batch has {})", slot, slots());
  return impl->n_past[size_t(slot)];
}
size_t CudaBatch::bytes() const { return impl ? impl->bytes() : 0; }

// ---- the model ----------------------------------------------------------------------------------------

struct CudaModel::Impl {
  ModelConfig cfg;
  CudaModelOptions opt;
  std::unique_ptr<TeacherWeights> w;
  LizardWeights lz;
  std::vector<const DeviceLizardLayer*> lizard_of;  // per layer; null: softmax
  std::vector<LizardAttnArgs> lz_args;              // per Lizard layer: options and sizes (B, L set per call)
  int n_softmax = 0;
  int64_t d = 0, H = 0, Hkv = 0, D = 0, F = 0, V = 0, qd = 0, kvd = 0, G = 1;
  // Prefill scratch: whole-prompt tensors and piece-sized ones.
  DeviceBuffer x, q, k, v, y, log_gamma, tokens, zero, xn, gate, up, logits;

  size_t scratch_bytes() const {
    size_t n = 0;
    for (const DeviceBuffer* b : {&x, &q, &k, &v, &y, &log_gamma, &tokens, &zero, &xn, &gate, &up, &logits})
      n += b->bytes();
    return n;
  }

  void init(const Checkpoint& teacher, const LizardCheckpoint* lizard) {
    cfg = teacher.config;
    const LoraSet* lora = lizard && !lizard->lora.empty() ? &lizard->lora : nullptr;
    lizard_of.assign(size_t(cfg.n_layers), nullptr);
    lz_args.resize(size_t(cfg.n_layers));
    if (lizard) {
      LZ_CHECK(lizard->n_layers == cfg.n_layers && lizard->shape.d_model == cfg.d_model &&
                   lizard->shape.n_heads == cfg.n_heads && lizard->shape.n_kv_heads == cfg.n_kv_heads &&
                   lizard->shape.head_dim == cfg.head_dim,
               "the Lizard checkpoint does not fit this teacher's shape");
      LZ_CHECK(lizard->config.combine == LizardConfig::Combine::Lizard,
               "the GPU model runs combine = lizard layers only; this checkpoint has combine = {} (use --device cpu)",
               to_string(lizard->config.combine));
      for (const auto& [layer, p] : lizard->layers) {
        LZ_CHECK(layer >= 0 && layer < cfg.n_layers, "Lizard layer {} does not exist (the teacher has {})", layer,
                 cfg.n_layers);
        lz_args[size_t(layer)] = lizard_cuda_args(lizard->config, lizard->shape, 1, 1);  // refuses what it can't do
      }
    }
    w = std::make_unique<TeacherWeights>(teacher, lora);
    if (lizard)
      for (const auto& [layer, p] : lizard->layers) {
        lz.upload(layer, lizard->config, lizard->shape, p);
        lizard_of[size_t(layer)] = lz.find(layer);
      }
    d = cfg.d_model, H = cfg.n_heads, Hkv = cfg.n_kv_heads, D = cfg.head_dim, F = cfg.d_ff, V = cfg.vocab_size;
    qd = H * D, kvd = Hkv * D;
    for (auto* l : lizard_of) {
      if (!l) ++n_softmax;
      else if (l->cfg.gate == LizardConfig::Gate::PerHead) G = H;
    }
    LZ_CHECK(opt.prefill_piece >= 1, "prefill piece must be at least 1 row");
    zero.resize(sizeof(int));
    LZ_CHECK(cudaMemset(zero.get(), 0, sizeof(int)) == cudaSuccess, "cudaMemset failed");
  }

  bool rope_lizard(const DeviceLizardLayer& l) const { return l.cfg.feature_on_rope && l.cfg.window_rope; }
  int gates_of(const DeviceLizardLayer& l) const { return l.cfg.gate == LizardConfig::Gate::PerHead ? int(H) : 1; }

  LizardAttnArgs lizard_args(int layer, int B, int L) const {
    const DeviceLizardLayer& l = *lizard_of[size_t(layer)];
    LizardAttnArgs a = lz_args[size_t(layer)];
    a.B = B;
    a.L = L;
    a.wq = l.feat_q;
    a.wk = l.feat_k;
    a.meta = l.meta;
    a.alpha = l.alpha;
    return a;
  }

  // MLP block on `rows` rows of the residual x (in place): x += down(swiglu(gate(xn), up(xn))).
  void mlp(const DeviceLayer& L, void* xr, int64_t rows, void* xn_, void* g, void* u) {
    rmsnorm_fwd(kBF16, xr, L.ffn_norm, xn_, nullptr, rows, int(d), cfg.rms_eps);
    linear_fwd(xn_, L.gate.w, L.gate.bias, g, kBF16, rows, int(d), int(F));
    linear_fwd(xn_, L.up.w, L.up.bias, u, kBF16, rows, int(d), int(F));
    swiglu_fwd(kBF16, g, u, g, rows * F);
    linear_fwd(g, L.down.w, L.down.bias, xr, kBF16, rows, int(F), int(d), /*accumulate=*/true);
  }

  // Runs tokens[0..n) from position 0. With a batch: writes slot's KV caches / Lizard states. Logits of
  // the last token (all = false) or of every token (all = true) into out (host).
  void run_prompt(const int32_t* ids, int64_t n, CudaBatch::Impl* b, int slot, bool all, float* out) {
    LZ_CHECK(n > 0, "nothing to run: no tokens given");
    LZ_CHECK(n <= INT32_MAX, "prompt of {} tokens is too long", n);
    for (int64_t i = 0; i < n; ++i)
      LZ_CHECK(ids[i] >= 0 && ids[i] < V, "token id {} is out of range (vocabulary of {})", ids[i], V);
    const int64_t P = std::min(opt.prefill_piece, n);
    x.resize(size_t(n * d) * 2);
    q.resize(size_t(n * qd) * 2);
    k.resize(size_t(n * kvd) * 2);
    v.resize(size_t(n * kvd) * 2);
    y.resize(size_t(n * qd) * 2);
    if (size_t(n_softmax) < lizard_of.size()) log_gamma.resize(size_t(n * G) * sizeof(float));
    tokens.resize(size_t(n) * sizeof(int32_t));
    xn.resize(size_t(P * d) * 2);
    gate.resize(size_t(P * F) * 2);
    up.resize(size_t(P * F) * 2);
    logits.resize(size_t((all ? P : 1) * V) * sizeof(float));
    to_device(tokens.get(), ids, size_t(n) * sizeof(int32_t));
    embedding_fwd(kBF16, w->embedding(), tokens.as<int32_t>(), x.get(), n, int(d));

    for (int li = 0; li < cfg.n_layers; ++li) {
      const DeviceLayer& L = w->layer(li);
      const DeviceLizardLayer* lzl = lizard_of[size_t(li)];
      for (int64_t r0 = 0; r0 < n; r0 += P) {
        const int64_t p = std::min(P, n - r0);
        rmsnorm_fwd(kBF16, bf(x.get(), r0 * d), L.attn_norm, xn.get(), nullptr, p, int(d), cfg.rms_eps);
        linear_fwd(xn.get(), L.q.w, L.q.bias, bf(q.get(), r0 * qd), kBF16, p, int(d), int(qd));
        linear_fwd(xn.get(), L.k.w, L.k.bias, bf(k.get(), r0 * kvd), kBF16, p, int(d), int(kvd));
        linear_fwd(xn.get(), L.v.w, L.v.bias, bf(v.get(), r0 * kvd), kBF16, p, int(d), int(kvd));
        if (lzl) {
          const int g = gates_of(*lzl);
          lizard_gate_fwd(xn.get(), lzl->gate_w, lzl->gate_b, log_gamma.as<float>() + r0 * g, p, int(d), g);
        }
      }
      if (!lzl) {
        rope_apply(kBF16, q.get(), n, qd, int(H), int(D), 0, w->rope_inv_freq(), false);
        rope_apply(kBF16, k.get(), n, kvd, int(Hkv), int(D), 0, w->rope_inv_freq(), false);
        if (b) {
          auto& bl = b->layers[size_t(li)];
          const int64_t slot_off = int64_t(slot) * Hkv * b->ctx * D;
          kv_cache_write(k.get(), bf(bl.k_cache.get(), slot_off), 1, int(n), int(Hkv), int(D), int(b->ctx),
                         zero.as<int>());
          kv_cache_write(v.get(), bf(bl.v_cache.get(), slot_off), 1, int(n), int(Hkv), int(D), int(b->ctx),
                         zero.as<int>());
        }
        FlashArgs fa;
        fa.B = 1, fa.L = int(n), fa.H = int(H), fa.Hkv = int(Hkv), fa.D = int(D);
        fa.q = q.get(), fa.k = k.get(), fa.v = v.get(), fa.out = y.get();
        flash_attention_fwd(fa);
      } else {
        if (rope_lizard(*lzl)) {
          rope_apply(kBF16, q.get(), n, qd, int(H), int(D), 0, w->rope_inv_freq(), false);
          rope_apply(kBF16, k.get(), n, kvd, int(Hkv), int(D), 0, w->rope_inv_freq(), false);
        }
        LizardAttnArgs a = lizard_args(li, 1, int(n));
        a.q = q.get(), a.k = k.get(), a.v = v.get(), a.y = y.get(), a.log_gamma = log_gamma.as<float>();
        if (b) {
          auto& bl = b->layers[size_t(li)];
          const int64_t F2 = 2 * int64_t(a.F);
          a.state_s = bl.s.as<float>() + int64_t(slot) * H * F2 * D;
          a.state_z = bl.z.as<float>() + int64_t(slot) * H * F2;
        }
        lizard_attention_forward_bf16(a);
        if (b) {
          auto& bl = b->layers[size_t(li)];
          const int64_t off = int64_t(slot) * Hkv * a.window * D;
          lizard_ring_fill(k.get(), v.get(), bf(bl.ring_k.get(), off), bf(bl.ring_v.get(), off), n, int(Hkv), int(D),
                           a.window);
        }
      }
      for (int64_t r0 = 0; r0 < n; r0 += P) {
        const int64_t p = std::min(P, n - r0);
        void* xr = bf(x.get(), r0 * d);
        linear_fwd(bf(y.get(), r0 * qd), L.o.w, L.o.bias, xr, kBF16, p, int(qd), int(d), /*accumulate=*/true);
        mlp(L, xr, p, xn.get(), gate.get(), up.get());
      }
    }
    const DeviceLinear& head = w->head();
    if (all) {
      for (int64_t r0 = 0; r0 < n; r0 += P) {
        const int64_t p = std::min(P, n - r0);
        rmsnorm_fwd(kBF16, bf(x.get(), r0 * d), w->out_norm(), xn.get(), nullptr, p, int(d), cfg.rms_eps);
        linear_fwd(xn.get(), head.w, head.bias, logits.get(), DType::F32, p, int(d), int(V));
        to_host(out + r0 * V, logits.get(), size_t(p * V) * sizeof(float));
      }
    } else {
      rmsnorm_fwd(kBF16, bf(x.get(), (n - 1) * d), w->out_norm(), xn.get(), nullptr, 1, int(d), cfg.rms_eps);
      linear_fwd(xn.get(), head.w, head.bias, logits.get(), DType::F32, 1, int(d), int(V));
      to_host(out, logits.get(), size_t(V) * sizeof(float));
    }
    if (b) b->n_past[size_t(slot)] = n;
  }

  void decode(CudaBatch::Impl& b, const int32_t* ids, const bool* active, float* out) {
    const int B = b.slots;
    std::vector<int32_t> tok(size_t(B), 0), pos(size_t(B), 0), lens(size_t(B), 0);
    bool any = false;
    for (int s = 0; s < B; ++s) {
      if (!active[s]) continue;
      any = true;
      LZ_CHECK(ids[s] >= 0 && ids[s] < V, "token id {} of slot {} is out of range (vocabulary of {})", ids[s], s, V);
      // Only KV caches are bounded by the batch's context; Lizard states hold any length.
      LZ_CHECK((n_softmax == 0 || b.n_past[size_t(s)] < b.ctx) && b.n_past[size_t(s)] < INT32_MAX,
               "slot {} is full: it holds {} positions, the context is {}", s, b.n_past[size_t(s)], b.ctx);
      tok[size_t(s)] = ids[s];
      pos[size_t(s)] = int32_t(b.n_past[size_t(s)]);
      lens[size_t(s)] = pos[size_t(s)] + 1;
    }
    LZ_CHECK(any, "decode: no active slot");
    to_device(b.tokens.get(), tok.data(), tok.size() * sizeof(int32_t));
    to_device(b.pos.get(), pos.data(), pos.size() * sizeof(int32_t));
    to_device(b.lens.get(), lens.data(), lens.size() * sizeof(int32_t));
    embedding_fwd(kBF16, w->embedding(), b.tokens.as<int32_t>(), b.x.get(), B, int(d));
    const float* inv_freq = w->rope_inv_freq();
    for (int li = 0; li < cfg.n_layers; ++li) {
      const DeviceLayer& L = w->layer(li);
      const DeviceLizardLayer* lzl = lizard_of[size_t(li)];
      auto& bl = b.layers[size_t(li)];
      rmsnorm_fwd(kBF16, b.x.get(), L.attn_norm, b.xn.get(), nullptr, B, int(d), cfg.rms_eps);
      linear_fwd(b.xn.get(), L.q.w, L.q.bias, b.q.get(), kBF16, B, int(d), int(qd));
      linear_fwd(b.xn.get(), L.k.w, L.k.bias, b.k.get(), kBF16, B, int(d), int(kvd));
      linear_fwd(b.xn.get(), L.v.w, L.v.bias, b.v.get(), kBF16, B, int(d), int(kvd));
      if (!lzl) {
        rope_rows(b.q.get(), B, qd, int(H), int(D), b.pos.as<int>(), inv_freq);
        rope_rows(b.k.get(), B, kvd, int(Hkv), int(D), b.pos.as<int>(), inv_freq);
        // Inactive slots are not written: their cache may be full.
        for_active_runs(active, B, [&](int s0, int ns) {
          const int64_t off = int64_t(s0) * Hkv * b.ctx * D;
          kv_cache_write(bf(b.k.get(), s0 * kvd), bf(bl.k_cache.get(), off), ns, 1, int(Hkv), int(D), int(b.ctx),
                         b.pos.as<int>() + s0);
          kv_cache_write(bf(b.v.get(), s0 * kvd), bf(bl.v_cache.get(), off), ns, 1, int(Hkv), int(D), int(b.ctx),
                         b.pos.as<int>() + s0);
        });
        AttentionDecodeArgs a;
        a.B = B, a.n = 1, a.H = int(H), a.Hkv = int(Hkv), a.D = int(D), a.max_ctx = int(b.ctx);
        a.q = b.q.get(), a.k_cache = bl.k_cache.get(), a.v_cache = bl.v_cache.get();
        a.lens = b.lens.as<int>();  // 0 for inactive slots: skipped
        a.out = b.y.get();
        a.workspace = b.workspace.as<float>();
        attention_decode(a);
      } else {
        const int g = gates_of(*lzl);
        lizard_gate_fwd(b.xn.get(), lzl->gate_w, lzl->gate_b, b.log_gamma.as<float>(), B, int(d), g);
        if (rope_lizard(*lzl)) {
          rope_rows(b.q.get(), B, qd, int(H), int(D), b.pos.as<int>(), inv_freq);
          rope_rows(b.k.get(), B, kvd, int(Hkv), int(D), b.pos.as<int>(), inv_freq);
        }
        // The decode kernel updates every slot it is given: only active runs go in.
        for_active_runs(active, B, [&](int s0, int ns) {
          LizardAttnArgs a = lizard_args(li, ns, 1);
          const int64_t F2 = 2 * int64_t(a.F);
          a.q = bf(b.q.get(), s0 * qd), a.k = bf(b.k.get(), s0 * kvd), a.v = bf(b.v.get(), s0 * kvd);
          a.y = bf(b.y.get(), s0 * qd);
          a.log_gamma = b.log_gamma.as<float>() + int64_t(s0) * g;
          a.state_s = bl.s.as<float>() + int64_t(s0) * H * F2 * D;
          a.state_z = bl.z.as<float>() + int64_t(s0) * H * F2;
          const int64_t roff = int64_t(s0) * Hkv * a.window * D;
          lizard_attention_decode(a, /*fp32=*/false, b.pos.as<int>() + s0, bf(bl.ring_k.get(), roff),
                                  bf(bl.ring_v.get(), roff));
        });
      }
      linear_fwd(b.y.get(), L.o.w, L.o.bias, b.x.get(), kBF16, B, int(qd), int(d), /*accumulate=*/true);
      mlp(L, b.x.get(), B, b.xn.get(), b.gate.get(), b.up.get());
    }
    rmsnorm_fwd(kBF16, b.x.get(), w->out_norm(), b.xn.get(), nullptr, B, int(d), cfg.rms_eps);
    const DeviceLinear& head = w->head();
    linear_fwd(b.xn.get(), head.w, head.bias, b.logits.get(), DType::F32, B, int(d), int(V));
    to_host(out, b.logits.get(), size_t(B) * size_t(V) * sizeof(float));
    for (int s = 0; s < B; ++s)
      if (active[s]) ++b.n_past[size_t(s)];
  }

  CudaBatch new_batch(int slots, int64_t ctx) const {
    LZ_CHECK(slots >= 1, "a batch needs at least one slot, got {}", slots);
    LZ_CHECK(ctx >= 1 && ctx <= INT32_MAX, "batch context {} is out of range", ctx);
    CudaBatch out;
    out.impl = std::make_unique<CudaBatch::Impl>();
    CudaBatch::Impl& b = *out.impl;
    b.owner = this;
    b.slots = slots;
    b.ctx = ctx;
    b.n_past.assign(size_t(slots), 0);
    b.layers.resize(size_t(cfg.n_layers));
    const size_t S = size_t(slots);
    for (int li = 0; li < cfg.n_layers; ++li) {
      auto& bl = b.layers[size_t(li)];
      const DeviceLizardLayer* l = lizard_of[size_t(li)];
      if (!l) {
        const size_t cache = S * size_t(Hkv) * size_t(ctx) * size_t(D) * 2;
        bl.k_cache.resize(cache);
        bl.v_cache.resize(cache);
        continue;
      }
      const size_t F2 = 2 * size_t(l->cfg.feature_dim);
      bl.s.resize(S * size_t(H) * F2 * size_t(D) * sizeof(float));
      bl.z.resize(S * size_t(H) * F2 * sizeof(float));
      bl.ring_k.resize(S * size_t(Hkv) * size_t(l->cfg.window) * size_t(D) * 2);
      bl.ring_v.resize(bl.ring_k.bytes());
      // A slot decoded before any prefill starts from an empty state.
      LZ_CHECK(cudaMemset(bl.s.get(), 0, bl.s.bytes()) == cudaSuccess &&
                   cudaMemset(bl.z.get(), 0, bl.z.bytes()) == cudaSuccess,
               "cudaMemset failed");
    }
    b.x.resize(S * size_t(d) * 2);
    b.xn.resize(S * size_t(d) * 2);
    b.q.resize(S * size_t(qd) * 2);
    b.k.resize(S * size_t(kvd) * 2);
    b.v.resize(S * size_t(kvd) * 2);
    b.y.resize(S * size_t(qd) * 2);
    b.gate.resize(S * size_t(F) * 2);
    b.up.resize(S * size_t(F) * 2);
    b.log_gamma.resize(S * size_t(H) * sizeof(float));
    b.logits.resize(S * size_t(V) * sizeof(float));
    b.tokens.resize(S * sizeof(int32_t));
    b.pos.resize(S * sizeof(int32_t));
    b.lens.resize(S * sizeof(int32_t));
    if (n_softmax > 0)
      b.workspace.resize(std::max<size_t>(attention_decode_workspace_bytes(slots, 1, int(H), int(D), int(ctx)), 4));
    return out;
  }

  CudaBatch::Impl& check_batch(CudaBatch& b) const {
    LZ_CHECK(b.impl && b.impl->owner == this, "this batch was made by another model");
    return *b.impl;
  }
};

CudaModel::CudaModel(const LoadedModel& lm, const CudaModelOptions& opt)
    : CudaModel(lm.checkpoint(), lm.lizard ? &*lm.lizard : nullptr, opt) {}

CudaModel::CudaModel(const Checkpoint& teacher, const LizardCheckpoint* lizard, const CudaModelOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  impl_->opt = opt;
  impl_->init(teacher, lizard);
}

CudaModel::~CudaModel() = default;
const ModelConfig& CudaModel::config() const { return impl_->cfg; }
int CudaModel::vocab_size() const { return impl_->cfg.vocab_size; }
size_t CudaModel::weight_bytes() const { return impl_->w->bytes() + impl_->lz.bytes(); }
size_t CudaModel::scratch_bytes() const { return impl_->scratch_bytes(); }
bool CudaModel::has_softmax_layers() const { return impl_->n_softmax > 0; }

void CudaModel::release_scratch() {
  Impl& m = *impl_;
  for (DeviceBuffer* b : {&m.x, &m.q, &m.k, &m.v, &m.y, &m.log_gamma, &m.tokens, &m.xn, &m.gate, &m.up, &m.logits})
    b->release();
}

CudaBatch CudaModel::new_batch(int slots, int64_t ctx) const { return impl_->new_batch(slots, ctx); }

std::vector<float> CudaModel::prefill(CudaBatch& b, int slot, const int32_t* tokens, int64_t n) {
  CudaBatch::Impl& bi = impl_->check_batch(b);
  LZ_CHECK(slot >= 0 && slot < bi.slots, "slot {} does not exist (the batch has {})", slot, bi.slots);
  if (impl_->n_softmax > 0)
    LZ_CHECK(n <= bi.ctx, "prompt has {} tokens, the batch's context is {}", n, bi.ctx);
  std::vector<float> out(size_t(impl_->V));
  impl_->run_prompt(tokens, n, &bi, slot, false, out.data());
  return out;
}

void CudaModel::copy_slot(CudaBatch& b, int from, int to) {
  CudaBatch::Impl& bi = impl_->check_batch(b);
  LZ_CHECK(from >= 0 && from < bi.slots && to >= 0 && to < bi.slots, "slots {} and {}: the batch has {}", from, to,
           bi.slots);
  if (from == to) return;
  // Every per-layer buffer is [slots, ...]: copy one slot's share of each.
  auto copy = [&](DeviceBuffer& buf) {
    if (buf.bytes() == 0) return;
    const size_t per = buf.bytes() / size_t(bi.slots);
    const cudaError_t e = cudaMemcpy(static_cast<char*>(buf.get()) + size_t(to) * per,
                                     static_cast<char*>(buf.get()) + size_t(from) * per, per, cudaMemcpyDeviceToDevice);
    LZ_CHECK(e == cudaSuccess, "copying a batch slot on the GPU failed: {}", cudaGetErrorString(e));
  };
  for (auto& l : bi.layers)
    for (DeviceBuffer* d : {&l.k_cache, &l.v_cache, &l.s, &l.z, &l.ring_k, &l.ring_v}) copy(*d);
  bi.n_past[size_t(to)] = bi.n_past[size_t(from)];
}

std::vector<float> CudaModel::decode(CudaBatch& b, const int32_t* tokens, const bool* active) {
  CudaBatch::Impl& bi = impl_->check_batch(b);
  std::vector<float> out(size_t(bi.slots) * size_t(impl_->V));
  impl_->decode(bi, tokens, active, out.data());
  return out;
}

std::vector<float> CudaModel::all_logits(const int32_t* tokens, int64_t n) {
  std::vector<float> out(size_t(std::max<int64_t>(n, 0)) * size_t(impl_->V));
  impl_->run_prompt(tokens, n, nullptr, 0, true, out.data());
  return out;
}

void device_memory(size_t& free_bytes, size_t& total_bytes) {
  free_bytes = total_bytes = 0;
  const cudaError_t e = cudaMemGetInfo(&free_bytes, &total_bytes);
  LZ_CHECK(e == cudaSuccess, "cudaMemGetInfo failed: {}", cudaGetErrorString(e));
}

std::string device_name() {
  int dev = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
    cudaGetLastError();
    return "unknown GPU";
  }
  return p.name;
}

}  // namespace lizard::cuda

#else  // no CUDA: every entry point says so

namespace lizard::cuda {

namespace {
[[noreturn]] void no_cuda() { fail("--device cuda: this lizard was built without CUDA (configure with -DLIZARD_CUDA=ON)"); }
}  // namespace

struct CudaBatch::Impl {};
CudaBatch::CudaBatch() = default;
CudaBatch::~CudaBatch() = default;
CudaBatch::CudaBatch(CudaBatch&&) noexcept = default;
CudaBatch& CudaBatch::operator=(CudaBatch&&) noexcept = default;
int CudaBatch::slots() const { return 0; }
int64_t CudaBatch::context() const { return 0; }
int64_t CudaBatch::n_past(int) const { no_cuda(); }
size_t CudaBatch::bytes() const { return 0; }

struct CudaModel::Impl {};
CudaModel::CudaModel(const LoadedModel&, const CudaModelOptions&) { no_cuda(); }
CudaModel::CudaModel(const Checkpoint&, const LizardCheckpoint*, const CudaModelOptions&) { no_cuda(); }
CudaModel::~CudaModel() = default;
const ModelConfig& CudaModel::config() const { no_cuda(); }
int CudaModel::vocab_size() const { no_cuda(); }
size_t CudaModel::weight_bytes() const { no_cuda(); }
size_t CudaModel::scratch_bytes() const { no_cuda(); }
void CudaModel::release_scratch() {}
bool CudaModel::has_softmax_layers() const { no_cuda(); }
CudaBatch CudaModel::new_batch(int, int64_t) const { no_cuda(); }
std::vector<float> CudaModel::prefill(CudaBatch&, int, const int32_t*, int64_t) { no_cuda(); }
void CudaModel::copy_slot(CudaBatch&, int, int) { no_cuda(); }
std::vector<float> CudaModel::decode(CudaBatch&, const int32_t*, const bool*) { no_cuda(); }
std::vector<float> CudaModel::all_logits(const int32_t*, int64_t) { no_cuda(); }
void device_memory(size_t&, size_t&) { no_cuda(); }
std::string device_name() { no_cuda(); }

}  // namespace lizard::cuda

#endif
