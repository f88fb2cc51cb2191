// Generation on the GPU (model/cuda/cuda_model.h): host orchestration of the CUDA kernels.
#include "model/cuda/cuda_model.h"

#include "model/load_model.h"
#include "util/error.h"

#ifdef LIZARD_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <utility>

#include <cuda_runtime.h>

#include "model/lizard_mixer.h"
#include "model/llama.h"
#include "util/half.h"

#include "model/cuda/cuda_model_kernels.h"
#include "model/cuda/device_weights.h"
#include "ops/cuda/attention_decode.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/fused_ops.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/lizard_attention.h"
#include "ops/cuda/lizard_gate.h"
#include "ops/cuda/lolcats_attention.h"

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
    DeviceBuffer ring_kf, ring_lg;  // gate_skips_window: feature keys [slots, Hkv, w, D] bf16, log gammas [slots, H, w] fp32
    std::vector<DeviceBuffer*> all() { return {&k_cache, &v_cache, &s, &z, &ring_k, &ring_v, &ring_kf, &ring_lg}; }
  };
  std::vector<Layer> layers;
  // Decode scratch, one row per slot.
  DeviceBuffer x, xn, q, k, v, y, gate, up, log_gamma, logits, workspace;
  DeviceBuffer qf, kf;  // two q/k sets: the feature maps' q, k of the step
  // int32 [3, slots]: tokens, positions, lengths (position + 1; 0 for an inactive slot): one upload a step.
  DeviceBuffer step;
  const int32_t* tokens() const { return step.as<int32_t>(); }
  const int* pos() const { return step.as<int>() + slots; }
  const int* lens() const { return step.as<int>() + 2 * slots; }

  size_t bytes() {
    size_t n = 0;
    for (auto& l : layers)
      for (const DeviceBuffer* d : l.all()) n += d->bytes();
    for (const DeviceBuffer* d : {&x, &xn, &q, &k, &v, &y, &gate, &up, &log_gamma, &logits, &step, &workspace, &qf, &kf})
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
  bool lolcats = false;                              // LoLCATs layers: all_logits only (no generation kernels)
  bool skips_window = false;                         // gate_skips_window: rings of feature keys and log gammas
  bool sep_qk = false;                               // feature_on_rope != window_rope: two q/k sets
  LolcatsAttnArgs lolcats_args;                      // their options and sizes (B, L set per call)
  int64_t d = 0, H = 0, Hkv = 0, D = 0, F = 0, V = 0, qd = 0, kvd = 0, G = 1;
  // Prefill scratch: whole-prompt tensors and piece-sized ones. A continuation (pos0 > 0) also uses
  // positions (pos0 .. pos0+n-1, then pos0+n) and attn_ws (attention_decode's workspace of one piece).
  DeviceBuffer x, q, k, v, y, log_gamma, tokens, zero, xn, gate, up, logits, positions, attn_ws;
  DeviceBuffer qf, kf;  // sep_qk: the feature maps' q, k

  void init(const Checkpoint& teacher, const LizardCheckpoint* lizard) {
    const LoraSet* lora = lizard && !lizard->lora.empty() ? &lizard->lora : nullptr;
    init(teacher.config, lizard, [&] { return std::make_unique<TeacherWeights>(teacher, lora); });
  }
  // make_weights uploads (or makes) the teacher weights once the Lizard layers are checked.
  template <class MakeWeights>
  void init(const ModelConfig& config, const LizardCheckpoint* lizard, MakeWeights make_weights) {
    cfg = config;
    lizard_of.assign(size_t(cfg.n_layers), nullptr);
    lz_args.resize(size_t(cfg.n_layers));
    if (lizard) {
      LZ_CHECK(lizard->n_layers == cfg.n_layers && lizard->shape.d_model == cfg.d_model &&
                   lizard->shape.n_heads == cfg.n_heads && lizard->shape.n_kv_heads == cfg.n_kv_heads &&
                   lizard->shape.head_dim == cfg.head_dim,
               "the Lizard checkpoint does not fit this teacher's shape");
      lolcats = lizard->config.combine == LizardConfig::Combine::Lolcats;
      skips_window = lizard->config.gate_skips_window;
      sep_qk = !lolcats && lizard->config.feature_on_rope != lizard->config.window_rope;
      for (const auto& [layer, p] : lizard->layers) {
        LZ_CHECK(layer >= 0 && layer < cfg.n_layers, "Lizard layer {} does not exist (the teacher has {})", layer,
                 cfg.n_layers);
        if (lolcats) lolcats_args = lolcats_cuda_args(lizard->config, lizard->shape, 1, 1);  // refuses what it can't do
        else lz_args[size_t(layer)] = lizard_cuda_args(lizard->config, lizard->shape, 1, 1);
      }
    }
    w = make_weights();
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

  // RoPE on the window's q, k (in place, before the kernel); with two q/k sets the feature maps' copies are
  // taken first (RoPE'd where feature_on_rope).
  bool rope_lizard(const DeviceLizardLayer& l) const { return l.cfg.window_rope; }

  // Two q/k sets: copies of `rows` rows of q, k into qf_, kf_ (the feature maps' inputs), RoPE'd where
  // feature_on_rope: at positions pos0.. (pos null) or at pos[r] per row. Call before the window's RoPE.
  void feature_qk(const DeviceLizardLayer& l, const void* q_, const void* k_, DeviceBuffer& qf_, DeviceBuffer& kf_,
                  int64_t rows, int64_t pos0, const int* pos) {
    qf_.resize(size_t(rows * qd) * 2), kf_.resize(size_t(rows * kvd) * 2);
    LZ_CHECK(cudaMemcpy(qf_.get(), q_, size_t(rows * qd) * 2, cudaMemcpyDeviceToDevice) == cudaSuccess &&
                 cudaMemcpy(kf_.get(), k_, size_t(rows * kvd) * 2, cudaMemcpyDeviceToDevice) == cudaSuccess,
             "cudaMemcpy failed");
    if (!l.cfg.feature_on_rope) return;
    if (pos) {
      rope_rows(qf_.get(), rows, qd, int(H), int(D), pos, w->rope_inv_freq());
      rope_rows(kf_.get(), rows, kvd, int(Hkv), int(D), pos, w->rope_inv_freq());
    } else {
      rope_apply(kBF16, qf_.get(), rows, qd, int(H), int(D), pos0, w->rope_inv_freq(), false);
      rope_apply(kBF16, kf_.get(), rows, kvd, int(Hkv), int(D), pos0, w->rope_inv_freq(), false);
    }
  }

  // A slot's Lizard state (S, z) of one layer (slot s0 onwards) into a.
  void point_at_state(LizardAttnArgs& a, CudaBatch::Impl::Layer& bl, int64_t s0) const {
    const int64_t F2 = 2 * int64_t(a.F);
    a.state_s = bl.s.as<float>() + s0 * H * F2 * D;
    a.state_z = bl.z.as<float>() + s0 * H * F2;
  }

  // A slot's decode rings of one layer (slot s0 onwards).
  LizardDecodeRings rings_of(CudaBatch::Impl::Layer& bl, const DeviceLizardLayer& l, int64_t s0) const {
    const int64_t w_ = l.cfg.window;
    LizardDecodeRings r;
    r.k = bf(bl.ring_k.get(), s0 * Hkv * w_ * D);
    r.v = bf(bl.ring_v.get(), s0 * Hkv * w_ * D);
    if (l.cfg.gate_skips_window) {
      r.kf = bf(bl.ring_kf.get(), s0 * Hkv * w_ * D);
      r.lg = bl.ring_lg.as<float>() + s0 * H * w_;
    }
    return r;
  }
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

  // Queries per attention_decode call of a continuation: bounds its workspace (it grows with n x ctx).
  static constexpr int64_t kContinuePiece = 64;

  // Runs tokens[0..n) at positions pos0.. . With a batch: writes slot's KV caches / Lizard states; pos0 > 0
  // continues what the slot holds (pos0 == its n_past). Logits of the last token (all = false) or of every
  // token (all = true) into out (host).
  void run_prompt(const int32_t* ids, int64_t n, CudaBatch::Impl* b, int slot, int64_t pos0, bool all, float* out) {
    LZ_CHECK(n > 0, "nothing to run: no tokens given");
    LZ_CHECK(n <= INT32_MAX && pos0 >= 0 && pos0 + n <= INT32_MAX, "prompt of {} tokens is too long", pos0 + n);
    LZ_CHECK(pos0 == 0 || (b && pos0 == b->n_past[size_t(slot)]), "a continuation starts where its slot stopped");
    const bool cont = pos0 > 0;
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
    if (cont) {
      // Lizard layers step token by token at positions[i]; softmax layers read positions[0] (where the
      // cache writes start) and the running lengths positions[i + 1].
      std::vector<int32_t> p(size_t(n) + 1);
      for (int64_t i = 0; i <= n; ++i) p[size_t(i)] = int32_t(pos0 + i);
      positions.resize(p.size() * sizeof(int32_t));
      to_device(positions.get(), p.data(), p.size() * sizeof(int32_t));
      if (n_softmax > 0) {
        const int m = int(std::min(kContinuePiece, n));
        attn_ws.resize(std::max<size_t>(attention_decode_workspace_bytes(1, m, int(H), int(D), int(b->ctx)), 4));
      }
    }
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
        if (lzl && !lolcats) {
          const int g = gates_of(*lzl);
          lizard_gate_fwd(xn.get(), lzl->gate_w, lzl->gate_b, log_gamma.as<float>() + r0 * g, p, int(d), g);
        }
      }
      if (!lzl) {
        rope_apply(kBF16, q.get(), n, qd, int(H), int(D), pos0, w->rope_inv_freq(), false);
        rope_apply(kBF16, k.get(), n, kvd, int(Hkv), int(D), pos0, w->rope_inv_freq(), false);
        if (b) {
          auto& bl = b->layers[size_t(li)];
          const int64_t slot_off = int64_t(slot) * Hkv * b->ctx * D;
          const int* start = cont ? positions.as<int>() : zero.as<int>();
          kv_cache_write(k.get(), bf(bl.k_cache.get(), slot_off), 1, int(n), int(Hkv), int(D), int(b->ctx), start);
          kv_cache_write(v.get(), bf(bl.v_cache.get(), slot_off), 1, int(n), int(Hkv), int(D), int(b->ctx), start);
          if (cont) {
            // The new queries against the whole cache, in pieces: query j0+j of a piece of m sits at
            // position pos0+j0+j = lens - m + j, with lens = positions[j0 + m].
            for (int64_t j0 = 0; j0 < n; j0 += kContinuePiece) {
              const int m = int(std::min(kContinuePiece, n - j0));
              AttentionDecodeArgs a;
              a.B = 1, a.n = m, a.H = int(H), a.Hkv = int(Hkv), a.D = int(D), a.max_ctx = int(b->ctx);
              a.q = bf(q.get(), j0 * qd);
              a.k_cache = bf(bl.k_cache.get(), slot_off), a.v_cache = bf(bl.v_cache.get(), slot_off);
              a.lens = positions.as<int>() + j0 + m;
              a.out = bf(y.get(), j0 * qd);
              a.workspace = attn_ws.as<float>();
              attention_decode(a);
            }
          }
        }
        if (!cont) {
          FlashArgs fa;
          fa.B = 1, fa.L = int(n), fa.H = int(H), fa.Hkv = int(Hkv), fa.D = int(D);
          fa.q = q.get(), fa.k = k.get(), fa.v = v.get(), fa.out = y.get();
          flash_attention_fwd(fa);
        }
      } else if (lolcats) {
        LZ_CHECK(!b && !cont, "LoLCATs layers run on the GPU for all_logits only (no generation kernels)");
        rope_apply(kBF16, q.get(), n, qd, int(H), int(D), 0, w->rope_inv_freq(), false);
        rope_apply(kBF16, k.get(), n, kvd, int(Hkv), int(D), 0, w->rope_inv_freq(), false);
        LolcatsAttnArgs a = lolcats_args;
        a.B = 1;
        a.L = int(n);
        a.q = q.get(), a.k = k.get(), a.v = v.get(), a.y = y.get();
        a.wq = lzl->feat_q, a.wk = lzl->feat_k, a.lolcats_f = lzl->lolcats_f;
        lolcats_attention_forward(a);
      } else if (cont) {
        // The chunked kernel starts from an empty state: a continuation steps through its tokens
        // with the decode kernel (exact, one launch per token), reading and updating the slot's state.
        if (sep_qk) feature_qk(*lzl, q.get(), k.get(), qf, kf, n, pos0, nullptr);
        if (rope_lizard(*lzl)) {
          rope_apply(kBF16, q.get(), n, qd, int(H), int(D), pos0, w->rope_inv_freq(), false);
          rope_apply(kBF16, k.get(), n, kvd, int(Hkv), int(D), pos0, w->rope_inv_freq(), false);
        }
        auto& bl = b->layers[size_t(li)];
        const int g = gates_of(*lzl);
        for (int64_t i = 0; i < n; ++i) {
          LizardAttnArgs a = lizard_args(li, 1, 1);
          a.q = bf(q.get(), i * qd), a.k = bf(k.get(), i * kvd), a.v = bf(v.get(), i * kvd);
          if (sep_qk) a.qf = bf(qf.get(), i * qd), a.kf = bf(kf.get(), i * kvd);
          a.y = bf(y.get(), i * qd);
          a.log_gamma = log_gamma.as<float>() + i * g;
          point_at_state(a, bl, slot);
          lizard_attention_decode(a, /*fp32=*/false, positions.as<int>() + i, rings_of(bl, *lzl, slot));
        }
      } else {
        if (sep_qk) feature_qk(*lzl, q.get(), k.get(), qf, kf, n, 0, nullptr);
        if (rope_lizard(*lzl)) {
          rope_apply(kBF16, q.get(), n, qd, int(H), int(D), 0, w->rope_inv_freq(), false);
          rope_apply(kBF16, k.get(), n, kvd, int(Hkv), int(D), 0, w->rope_inv_freq(), false);
        }
        LizardAttnArgs a = lizard_args(li, 1, int(n));
        a.q = q.get(), a.k = k.get(), a.v = v.get(), a.y = y.get(), a.log_gamma = log_gamma.as<float>();
        if (sep_qk) a.qf = qf.get(), a.kf = kf.get();
        // The state a decode continues from: the chunked forward hands on its own, except with the gated
        // branch lagging the window or on a second q/k set (then lizard_attention_prompt_state makes it).
        const bool own_state = !skips_window && !sep_qk;
        if (b && own_state) point_at_state(a, b->layers[size_t(li)], slot);
        lizard_attention_forward_bf16(a);
        if (b && !own_state) {
          auto& bl = b->layers[size_t(li)];
          point_at_state(a, bl, slot);
          lizard_attention_prompt_state(a, rings_of(bl, *lzl, slot));
        }
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
    if (b) b->n_past[size_t(slot)] = pos0 + n;
  }

  void decode(CudaBatch::Impl& b, const int32_t* ids, const bool* active, float* out) {
    const int B = b.slots;
    std::vector<int32_t> step(3 * size_t(B), 0);  // b.step's layout
    int32_t* tok = step.data();
    int32_t* pos = tok + B;
    int32_t* lens = pos + B;
    bool any = false;
    for (int s = 0; s < B; ++s) {
      if (!active[s]) continue;
      any = true;
      LZ_CHECK(ids[s] >= 0 && ids[s] < V, "token id {} of slot {} is out of range (vocabulary of {})", ids[s], s, V);
      // Only KV caches are bounded by the batch's context; Lizard states hold any length.
      LZ_CHECK((n_softmax == 0 || b.n_past[size_t(s)] < b.ctx) && b.n_past[size_t(s)] < INT32_MAX,
               "slot {} is full: it holds {} positions, the context is {}", s, b.n_past[size_t(s)], b.ctx);
      tok[s] = ids[s];
      pos[s] = int32_t(b.n_past[size_t(s)]);
      lens[s] = pos[s] + 1;
    }
    LZ_CHECK(any, "decode: no active slot");
    to_device(b.step.get(), step.data(), step.size() * sizeof(int32_t));
    embedding_fwd(kBF16, w->embedding(), b.tokens(), b.x.get(), B, int(d));
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
        rope_rows(b.q.get(), B, qd, int(H), int(D), b.pos(), inv_freq);
        rope_rows(b.k.get(), B, kvd, int(Hkv), int(D), b.pos(), inv_freq);
        // Inactive slots are not written: their cache may be full.
        for_active_runs(active, B, [&](int s0, int ns) {
          const int64_t off = int64_t(s0) * Hkv * b.ctx * D;
          kv_cache_write(bf(b.k.get(), s0 * kvd), bf(bl.k_cache.get(), off), ns, 1, int(Hkv), int(D), int(b.ctx),
                         b.pos() + s0);
          kv_cache_write(bf(b.v.get(), s0 * kvd), bf(bl.v_cache.get(), off), ns, 1, int(Hkv), int(D), int(b.ctx),
                         b.pos() + s0);
        });
        AttentionDecodeArgs a;
        a.B = B, a.n = 1, a.H = int(H), a.Hkv = int(Hkv), a.D = int(D), a.max_ctx = int(b.ctx);
        a.q = b.q.get(), a.k_cache = bl.k_cache.get(), a.v_cache = bl.v_cache.get();
        a.lens = b.lens();  // 0 for inactive slots: skipped
        a.out = b.y.get();
        a.workspace = b.workspace.as<float>();
        attention_decode(a);
      } else {
        const int g = gates_of(*lzl);
        lizard_gate_fwd(b.xn.get(), lzl->gate_w, lzl->gate_b, b.log_gamma.as<float>(), B, int(d), g);
        if (sep_qk) feature_qk(*lzl, b.q.get(), b.k.get(), b.qf, b.kf, B, 0, b.pos());
        if (rope_lizard(*lzl)) {
          rope_rows(b.q.get(), B, qd, int(H), int(D), b.pos(), inv_freq);
          rope_rows(b.k.get(), B, kvd, int(Hkv), int(D), b.pos(), inv_freq);
        }
        // The decode kernel updates every slot it is given: only active runs go in.
        for_active_runs(active, B, [&](int s0, int ns) {
          LizardAttnArgs a = lizard_args(li, ns, 1);
          a.q = bf(b.q.get(), s0 * qd), a.k = bf(b.k.get(), s0 * kvd), a.v = bf(b.v.get(), s0 * kvd);
          if (sep_qk) a.qf = bf(b.qf.get(), s0 * qd), a.kf = bf(b.kf.get(), s0 * kvd);
          a.y = bf(b.y.get(), s0 * qd);
          a.log_gamma = b.log_gamma.as<float>() + int64_t(s0) * g;
          point_at_state(a, bl, s0);
          lizard_attention_decode(a, /*fp32=*/false, b.pos() + s0, rings_of(bl, *lzl, s0));
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
    LZ_CHECK(!lolcats, "a LoLCATs model has no GPU generation kernels (all_logits only): use --device cpu");
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
      if (l->cfg.gate_skips_window) {
        bl.ring_kf.resize(bl.ring_k.bytes());
        bl.ring_lg.resize(S * size_t(H) * size_t(l->cfg.window) * sizeof(float));
      }
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
    b.step.resize(3 * S * sizeof(int32_t));
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

CudaModel::CudaModel(const ModelConfig& cfg, uint64_t seed, const LizardCheckpoint* lizard, const CudaModelOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  impl_->opt = opt;
  LZ_CHECK(!lizard || lizard->lora.empty(), "a synthetic model takes no LoRA");
  impl_->init(cfg, lizard, [&] { return std::make_unique<TeacherWeights>(cfg, seed); });
}

CudaModel::~CudaModel() = default;
const ModelConfig& CudaModel::config() const { return impl_->cfg; }
int CudaModel::vocab_size() const { return impl_->cfg.vocab_size; }
size_t CudaModel::weight_bytes() const { return impl_->w->bytes() + impl_->lz.bytes(); }
bool CudaModel::has_softmax_layers() const { return impl_->n_softmax > 0; }
bool CudaModel::can_generate() const { return !impl_->lolcats; }

void CudaModel::release_scratch() {
  Impl& m = *impl_;
  for (DeviceBuffer* b : {&m.x, &m.q, &m.k, &m.v, &m.y, &m.log_gamma, &m.tokens, &m.xn, &m.gate, &m.up, &m.logits,
                          &m.positions, &m.attn_ws, &m.qf, &m.kf})
    b->release();
}

CudaBatch CudaModel::new_batch(int slots, int64_t ctx) const { return impl_->new_batch(slots, ctx); }

std::vector<float> CudaModel::prefill(CudaBatch& b, int slot, const int32_t* tokens, int64_t n) {
  CudaBatch::Impl& bi = impl_->check_batch(b);
  LZ_CHECK(slot >= 0 && slot < bi.slots, "slot {} does not exist (the batch has {})", slot, bi.slots);
  if (impl_->n_softmax > 0)
    LZ_CHECK(n <= bi.ctx, "prompt has {} tokens, the batch's context is {}", n, bi.ctx);
  std::vector<float> out(size_t(impl_->V));
  impl_->run_prompt(tokens, n, &bi, slot, 0, false, out.data());
  return out;
}

std::vector<float> CudaModel::extend(CudaBatch& b, int slot, const int32_t* tokens, int64_t n) {
  CudaBatch::Impl& bi = impl_->check_batch(b);
  LZ_CHECK(slot >= 0 && slot < bi.slots, "slot {} does not exist (the batch has {})", slot, bi.slots);
  const int64_t pos0 = bi.n_past[size_t(slot)];
  if (impl_->n_softmax > 0)
    LZ_CHECK(pos0 + n <= bi.ctx, "slot {} holds {} positions: {} more exceed the batch's context of {}", slot, pos0,
             n, bi.ctx);
  std::vector<float> out(size_t(impl_->V));
  impl_->run_prompt(tokens, n, &bi, slot, pos0, false, out.data());
  return out;
}

// ---- a slot's state <-> the CPU model's LlamaState (generate/state_io.h saves and loads the latter) ----
//
// Softmax layers: the GPU cache [slots, Hkv, ctx, D] bf16 <-> the CPU KVCacheState's serialized form
// {i64 len, i64 width = Hkv*D, k [len, width], v [len, width]} (fp32, keys RoPE'd on both sides).
// Lizard layers: S, z fp32 as they are (the CPU's true state is exp(log_scale) * S: log_scale 0 going
// down, folded in going up); the rings [slots, Hkv, w, D] bf16 <-> LizardState's [w, Hkv, D] fp32, same
// slot order (position t in slot t % w on both sides, the keys as the window uses them).

namespace {

// Copies rows of `width` bytes, `height` of them, between pitched buffers (one direction per call).
void copy_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
             cudaMemcpyKind kind) {
  if (width == 0 || height == 0) return;
  const cudaError_t e = cudaMemcpy2D(dst, dpitch, src, spitch, width, height, kind);
  LZ_CHECK(e == cudaSuccess, "copying a sequence state between host and GPU failed: {}", cudaGetErrorString(e));
}

LizardMixerState& lizard_state_of(LlamaState& st, size_t layer) {
  auto* ls = dynamic_cast<LizardMixerState*>(&st.layer_state(layer));
  LZ_CHECK(ls != nullptr, "layer {} is a Lizard layer on the GPU but not in the CPU model's state", layer);
  return *ls;
}

}  // namespace

void CudaModel::download_slot(CudaBatch& b, int slot, LlamaState& st) const {
  const Impl& m = *impl_;
  CudaBatch::Impl& bi = m.check_batch(b);
  LZ_CHECK(slot >= 0 && slot < bi.slots, "slot {} does not exist (the batch has {})", slot, bi.slots);
  LZ_CHECK(st.n_layers() == size_t(m.cfg.n_layers), "the CPU state has {} layers, the GPU model {}", st.n_layers(),
           m.cfg.n_layers);
  const int64_t n = bi.n_past[size_t(slot)];
  const int64_t Hkv = m.Hkv, H = m.H, D = m.D;
  st.reset();
  for (size_t li = 0; li < st.n_layers(); ++li) {
    auto& bl = bi.layers[li];
    const DeviceLizardLayer* lzl = m.lizard_of[li];
    if (!lzl) {
      LZ_CHECK(dynamic_cast<LizardMixerState*>(&st.layer_state(li)) == nullptr,
               "layer {} is softmax attention on the GPU but a Lizard layer in the CPU model", li);
      const int64_t width = Hkv * D;
      std::vector<uint16_t> dev(size_t(Hkv * n * D));  // [Hkv, n, D]
      std::vector<float> host(size_t(n * width));      // [n, Hkv, D]
      std::ostringstream bytes;
      const int64_t hdr[2] = {n, width};
      bytes.write(reinterpret_cast<const char*>(hdr), sizeof hdr);
      for (DeviceBuffer* cache : {&bl.k_cache, &bl.v_cache}) {
        const void* base = bf(cache->get(), int64_t(slot) * Hkv * bi.ctx * D);
        copy_2d(dev.data(), size_t(n * D) * 2, base, size_t(bi.ctx * D) * 2, size_t(n * D) * 2, size_t(Hkv),
                cudaMemcpyDeviceToHost);
        for (int64_t g = 0; g < Hkv; ++g)
          for (int64_t t = 0; t < n; ++t)
            for (int64_t e = 0; e < D; ++e)
              host[size_t((t * Hkv + g) * D + e)] = bf16_to_f32(dev[size_t((g * n + t) * D + e)]);
        bytes.write(reinterpret_cast<const char*>(host.data()), std::streamsize(host.size() * sizeof(float)));
      }
      std::istringstream in(std::move(bytes).str());
      st.layer_state(li).deserialize(in);
      continue;
    }
    LizardMixerState& ls = lizard_state_of(st, li);
    const int64_t F2 = 2 * int64_t(lzl->cfg.feature_dim), w = lzl->cfg.window;
    LZ_CHECK(ls.cfg.feature_dim == lzl->cfg.feature_dim && ls.cfg.window == lzl->cfg.window &&
                 ls.s.S.size() == size_t(H * F2 * D) && ls.s.z.size() == size_t(H * F2) &&
                 ls.s.ring_k.size() == size_t(w * Hkv * D) &&
                 ls.s.ring_kf.size() == (lzl->cfg.gate_skips_window ? size_t(w * Hkv * D) : 0) &&
                 ls.s.ring_lg.size() == (lzl->cfg.gate_skips_window ? size_t(w * H) : 0),
             "layer {}: the CPU model's Lizard layer has another shape than the GPU's", li);
    to_host(ls.s.S.data(), bl.s.as<float>() + int64_t(slot) * H * F2 * D, ls.s.S.size() * sizeof(float));
    to_host(ls.s.z.data(), bl.z.as<float>() + int64_t(slot) * H * F2, ls.s.z.size() * sizeof(float));
    std::fill(ls.s.log_scale.begin(), ls.s.log_scale.end(), 0.0f);
    std::vector<uint16_t> ring(size_t(Hkv * w * D));  // [Hkv, w, D]
    const int64_t held = std::min(n, w);              // slots holding a token; the rest stay 0 as on the CPU
    for (auto [dev, cpu] : {std::pair{&bl.ring_k, &ls.s.ring_k}, std::pair{&bl.ring_v, &ls.s.ring_v},
                            std::pair{&bl.ring_kf, &ls.s.ring_kf}}) {
      if (dev->bytes() == 0) continue;  // ring_kf: gate_skips_window only
      to_host(ring.data(), bf(dev->get(), int64_t(slot) * Hkv * w * D), ring.size() * 2);
      std::fill(cpu->begin(), cpu->end(), 0.0f);
      for (int64_t g = 0; g < Hkv; ++g)
        for (int64_t t = 0; t < held; ++t)
          for (int64_t e = 0; e < D; ++e)
            (*cpu)[size_t((t * Hkv + g) * D + e)] = bf16_to_f32(ring[size_t((g * w + t) * D + e)]);
    }
    if (bl.ring_lg.bytes() > 0) {  // [H, w] on the GPU, [w, H] on the CPU
      std::vector<float> lg(size_t(H * w));
      to_host(lg.data(), bl.ring_lg.as<float>() + int64_t(slot) * H * w, lg.size() * sizeof(float));
      std::fill(ls.s.ring_lg.begin(), ls.s.ring_lg.end(), 0.0f);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < held; ++t) ls.s.ring_lg[size_t(t * H + h)] = lg[size_t(h * w + t)];
    }
    ls.s.n_tokens = n;
  }
  st.set_restored_n_past(n);
}

void CudaModel::upload_slot(CudaBatch& b, int slot, const LlamaState& st) {
  Impl& m = *impl_;
  CudaBatch::Impl& bi = m.check_batch(b);
  LZ_CHECK(slot >= 0 && slot < bi.slots, "slot {} does not exist (the batch has {})", slot, bi.slots);
  LZ_CHECK(st.n_layers() == size_t(m.cfg.n_layers), "the CPU state has {} layers, the GPU model {}", st.n_layers(),
           m.cfg.n_layers);
  const int64_t n = st.n_past();
  LZ_CHECK(n <= INT32_MAX && (m.n_softmax == 0 || n <= bi.ctx),
           "the saved sequence holds {} positions, the GPU batch's context is {}", n, bi.ctx);
  const int64_t Hkv = m.Hkv, H = m.H, D = m.D;
  bi.n_past[size_t(slot)] = 0;  // until every layer is in
  for (size_t li = 0; li < st.n_layers(); ++li) {
    auto& bl = bi.layers[li];
    const DeviceLizardLayer* lzl = m.lizard_of[li];
    const auto* ls = dynamic_cast<const LizardMixerState*>(&st.layer_state(li));
    if (!lzl) {
      LZ_CHECK(ls == nullptr, "layer {} is softmax attention on the GPU but a Lizard layer in the CPU model", li);
      std::ostringstream out;
      st.layer_state(li).serialize(out);
      const std::string bytes = std::move(out).str();
      const int64_t width = Hkv * D;
      int64_t hdr[2] = {0, 0};
      LZ_CHECK(bytes.size() >= sizeof hdr, "layer {}: the CPU attention cache could not be read", li);
      std::memcpy(hdr, bytes.data(), sizeof hdr);
      LZ_CHECK(hdr[0] == n && hdr[1] == width &&
                   bytes.size() == sizeof hdr + size_t(2 * n * width) * sizeof(float),
               "layer {}: the CPU attention cache holds {} positions of {} values, expected {} of {}", li, hdr[0],
               hdr[1], n, width);
      std::vector<uint16_t> dev(size_t(Hkv * n * D));  // [Hkv, n, D]
      for (int half = 0; half < 2; ++half) {
        const char* src = bytes.data() + sizeof hdr + size_t(half * n * width) * sizeof(float);
        for (int64_t t = 0; t < n; ++t)
          for (int64_t g = 0; g < Hkv; ++g)
            for (int64_t e = 0; e < D; ++e) {
              float x;
              std::memcpy(&x, src + size_t((t * Hkv + g) * D + e) * sizeof(float), sizeof x);
              dev[size_t((g * n + t) * D + e)] = f32_to_bf16(x);
            }
        DeviceBuffer& cache = half == 0 ? bl.k_cache : bl.v_cache;
        copy_2d(bf(cache.get(), int64_t(slot) * Hkv * bi.ctx * D), size_t(bi.ctx * D) * 2, dev.data(),
                size_t(n * D) * 2, size_t(n * D) * 2, size_t(Hkv), cudaMemcpyHostToDevice);
      }
      continue;
    }
    LZ_CHECK(ls != nullptr, "layer {} is a Lizard layer on the GPU but not in the CPU model's state", li);
    const int64_t F2 = 2 * int64_t(lzl->cfg.feature_dim), w = lzl->cfg.window;
    LZ_CHECK(ls->cfg.feature_dim == lzl->cfg.feature_dim && ls->cfg.window == lzl->cfg.window &&
                 ls->s.S.size() == size_t(H * F2 * D) && ls->s.z.size() == size_t(H * F2) &&
                 ls->s.log_scale.size() == size_t(H) && ls->s.ring_k.size() == size_t(w * Hkv * D) &&
                 ls->s.ring_kf.size() == (lzl->cfg.gate_skips_window ? size_t(w * Hkv * D) : 0) &&
                 ls->s.ring_lg.size() == (lzl->cfg.gate_skips_window ? size_t(w * H) : 0) && ls->s.n_tokens == n,
             "layer {}: the CPU model's Lizard layer has another shape than the GPU's", li);
    // The GPU keeps the true state: fold in the CPU's pending decay.
    std::vector<float> S(ls->s.S), z(ls->s.z);
    for (int64_t h = 0; h < H; ++h) {
      const float e = std::exp(ls->s.log_scale[size_t(h)]);
      if (e == 1.0f) continue;
      for (int64_t j = 0; j < F2 * D; ++j) S[size_t(h * F2 * D + j)] *= e;
      for (int64_t j = 0; j < F2; ++j) z[size_t(h * F2 + j)] *= e;
    }
    to_device(bl.s.as<float>() + int64_t(slot) * H * F2 * D, S.data(), S.size() * sizeof(float));
    to_device(bl.z.as<float>() + int64_t(slot) * H * F2, z.data(), z.size() * sizeof(float));
    std::vector<uint16_t> ring(size_t(Hkv * w * D));  // [Hkv, w, D]
    for (auto [dev, cpu] : {std::pair{&bl.ring_k, &ls->s.ring_k}, std::pair{&bl.ring_v, &ls->s.ring_v},
                            std::pair{&bl.ring_kf, &ls->s.ring_kf}}) {
      if (dev->bytes() == 0) continue;  // ring_kf: gate_skips_window only
      for (int64_t t = 0; t < w; ++t)
        for (int64_t g = 0; g < Hkv; ++g)
          for (int64_t e = 0; e < D; ++e)
            ring[size_t((g * w + t) * D + e)] = f32_to_bf16((*cpu)[size_t((t * Hkv + g) * D + e)]);
      to_device(bf(dev->get(), int64_t(slot) * Hkv * w * D), ring.data(), ring.size() * 2);
    }
    if (bl.ring_lg.bytes() > 0) {  // [w, H] on the CPU, [H, w] on the GPU
      std::vector<float> lg(size_t(H * w));
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < w; ++t) lg[size_t(h * w + t)] = ls->s.ring_lg[size_t(t * H + h)];
      to_device(bl.ring_lg.as<float>() + int64_t(slot) * H * w, lg.data(), lg.size() * sizeof(float));
    }
  }
  bi.n_past[size_t(slot)] = n;
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
    for (DeviceBuffer* d : l.all()) copy(*d);
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
  impl_->run_prompt(tokens, n, nullptr, 0, 0, true, out.data());
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
CudaModel::CudaModel(const ModelConfig&, uint64_t, const LizardCheckpoint*, const CudaModelOptions&) { no_cuda(); }
CudaModel::CudaModel(const Checkpoint&, const LizardCheckpoint*, const CudaModelOptions&) { no_cuda(); }
CudaModel::~CudaModel() = default;
const ModelConfig& CudaModel::config() const { no_cuda(); }
int CudaModel::vocab_size() const { no_cuda(); }
size_t CudaModel::weight_bytes() const { no_cuda(); }
void CudaModel::release_scratch() {}
bool CudaModel::has_softmax_layers() const { no_cuda(); }
bool CudaModel::can_generate() const { no_cuda(); }
CudaBatch CudaModel::new_batch(int, int64_t) const { no_cuda(); }
std::vector<float> CudaModel::prefill(CudaBatch&, int, const int32_t*, int64_t) { no_cuda(); }
std::vector<float> CudaModel::extend(CudaBatch&, int, const int32_t*, int64_t) { no_cuda(); }
void CudaModel::download_slot(CudaBatch&, int, LlamaState&) const { no_cuda(); }
void CudaModel::upload_slot(CudaBatch&, int, const LlamaState&) { no_cuda(); }
void CudaModel::copy_slot(CudaBatch&, int, int) { no_cuda(); }
std::vector<float> CudaModel::decode(CudaBatch&, const int32_t*, const bool*) { no_cuda(); }
std::vector<float> CudaModel::all_logits(const int32_t*, int64_t) { no_cuda(); }
void device_memory(size_t&, size_t&) { no_cuda(); }
std::string device_name() { no_cuda(); }

}  // namespace lizard::cuda

#endif
