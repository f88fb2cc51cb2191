// Stage 1 on the GPU (train/cuda/stage1_cuda.h): host orchestration of the teacher's forward and the
// Lizard layers' loss, forward and backward.
//
// Streams: the teacher runs on one stream. At each Lizard layer it copies what the layer needs (its
// normed input, q, k, v and the teacher's attention output) into one of `slots` buffer sets and goes on
// with the next layers while that layer's forward and backward run on the slot's own stream. A slot is
// reused only after its previous layer finished (event), so at most `slots` Lizard layers run at once
// beside the teacher. Only the teacher's stream runs cuBLASLt (its workspace is shared per device).
#ifdef LIZARD_HAVE_CUDA
#include "train/cuda/stage1_cuda.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>

#include <cuda_runtime.h>

#include "model/cuda/device_weights.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/fused_ops.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/lizard_attention.h"
#include "ops/cuda/lizard_gate.h"
#include "ops/cuda/lolcats_attention.h"
#include "train/cuda/stage1_loss.h"
#include "util/error.h"

namespace lizard {

namespace {

using cuda::DeviceBuffer;
using Dt = cuda::DType;  // lizard::DType is the file formats' type

enum Part { Teacher = 0, Wait, LizardFwd, LizardBwd, Idle, kParts };

// GPU time per part of a step on one stream, from CUDA events: mark(p) starts part p (ending the
// previous one); once the stream is synchronised, add_seconds() adds up the intervals per part.
class PartTimer {
 public:
  PartTimer() = default;
  PartTimer(const PartTimer&) = delete;
  PartTimer& operator=(const PartTimer&) = delete;
  ~PartTimer() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  void reset() { used_ = 0; }
  void mark(Part p, cudaStream_t s) {
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      LZ_CUDA_OK(cudaEventCreate(&e));
      events_.push_back(e);
      parts_.push_back(p);
    }
    parts_[used_] = p;
    LZ_CUDA_OK(cudaEventRecord(events_[used_], s));
    ++used_;
  }
  void add_seconds(std::array<double, kParts>& s) const {
    for (size_t i = 0; i + 1 < used_; ++i) {
      float ms = 0;
      LZ_CUDA_OK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]));
      s[parts_[i]] += ms * 1e-3;
    }
  }
  double span_seconds() const {  // first mark to last
    if (used_ < 2) return 0;
    float ms = 0;
    LZ_CUDA_OK(cudaEventElapsedTime(&ms, events_[0], events_[used_ - 1]));
    return ms * 1e-3;
  }

 private:
  std::vector<cudaEvent_t> events_;
  std::vector<Part> parts_;
  size_t used_ = 0;
};

cudaStream_t new_stream() {
  cudaStream_t s = nullptr;
  // Non-blocking: no implicit synchronisation with the legacy default stream (see upload_and_sync).
  LZ_CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

cudaEvent_t new_event() {
  cudaEvent_t e = nullptr;
  LZ_CUDA_OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

// Where one Lizard layer's gradients go in the packed device gradient buffer (null: not trained).
struct LayerGrads {
  float* feat_q = nullptr;
  float* feat_k = nullptr;
  float* gate_w = nullptr;
  float* gate_b = nullptr;
  float* meta = nullptr;
  float* alpha = nullptr;
  float* lolcats_f = nullptr;
};

// One Lizard layer's work on one batch: device pointers, [B, L] rows, all on `stream`.
struct LayerIo {
  const cuda::DeviceLizardLayer* p = nullptr;
  const LayerGrads* g = nullptr;  // null: loss only
  int B = 0, L = 0;
  const void* xn = nullptr;       // [B*L, d_model] bf16, the gate's input
  const void *q = nullptr, *k = nullptr, *v = nullptr;  // as the layer reads them (RoPE'd or not), bf16
  const void *qf = nullptr, *kf = nullptr;  // feature_on_rope != window_rope: the feature maps' q, k
  float *dqf = nullptr, *dkf = nullptr;     // and their gradient scratch
  const void* y_teacher = nullptr;  // [B*L, H*D] bf16
  void *y = nullptr, *dy = nullptr;  // [B*L, H*D] bf16
  float *lg = nullptr, *dlg = nullptr;  // log gamma and its gradient, [B*L, G]
  float *dq = nullptr, *dk = nullptr, *dv = nullptr;  // fp32 input-gradient scratch (Lizard only)
  float* win_lse = nullptr;
  void* win_out = nullptr;  // bf16; with win_lse: the forward's window statistics for the backward (training)
  double* sum_sq = nullptr;       // += sum of squared errors
  float dy_scale = 0;             // dy = dy_scale * (y - y_teacher)
  PartTimer* timer = nullptr;
  cudaStream_t stream = nullptr;
};

void lizard_layer(const LizardConfig& cfg, const LizardShape& shape, const LayerIo& io) {
  const int64_t T = int64_t(io.B) * io.L;
  const int G = cfg.gate == LizardConfig::Gate::PerHead ? shape.n_heads : 1;
  const cudaStream_t s = io.stream;
  io.timer->mark(LizardFwd, s);
  cuda::lizard_gate_fwd(io.xn, io.p->gate_w, io.p->gate_b, io.lg, T, shape.d_model, G, s);
  cuda::LizardAttnArgs a = cuda::lizard_cuda_args(cfg, shape, io.B, io.L);
  a.q = io.q, a.k = io.k, a.v = io.v;
  a.qf = io.qf, a.kf = io.kf;
  a.log_gamma = io.lg;
  a.wq = io.p->feat_q, a.wk = io.p->feat_k;
  a.meta = cfg.meta_tokens > 0 ? io.p->meta : nullptr;
  a.alpha = io.p->alpha;
  a.y = io.y;
  a.win_lse = io.win_lse, a.win_out = io.win_out;  // null for a loss-only pass
  cuda::lizard_attention_forward_bf16(a, s);
  cuda::mse_loss_grad_bf16(io.y, io.y_teacher, T * shape.n_heads * shape.head_dim, io.dy_scale, io.g ? io.dy : nullptr,
                           io.sum_sq, s);
  if (!io.g) return;
  io.timer->mark(LizardBwd, s);
  cuda::LizardAttnGrads gr;
  gr.dq = io.dq, gr.dk = io.dk, gr.dv = io.dv;  // required by the kernel; not needed here
  gr.dqf = io.dqf, gr.dkf = io.dkf;
  gr.dwq = io.g->feat_q, gr.dwk = io.g->feat_k;
  gr.dlog_gamma = io.dlg;
  gr.dmeta = cfg.meta_tokens > 0 ? io.g->meta : nullptr;
  gr.dalpha = io.g->alpha;
  cuda::lizard_attention_backward_chunked(a, /*fp32=*/false, io.dy, gr, s);
  cuda::lizard_gate_bwd(io.xn, io.p->gate_w, io.p->gate_b, io.dlg, io.g->gate_w, io.g->gate_b, nullptr, T,
                        shape.d_model, G, s);
}

// The LoLCATs baseline (combine = lolcats): no gate, meta or alpha; trains feat_q, feat_k, lolcats_f.
void lolcats_layer(const LizardConfig& cfg, const LizardShape& shape, const LayerIo& io) {
  const int64_t T = int64_t(io.B) * io.L;
  const cudaStream_t s = io.stream;
  io.timer->mark(LizardFwd, s);
  cuda::LolcatsAttnArgs a = cuda::lolcats_cuda_args(cfg, shape, io.B, io.L);
  a.q = io.q, a.k = io.k, a.v = io.v;
  a.wq = io.p->feat_q, a.wk = io.p->feat_k;
  a.lolcats_f = io.p->lolcats_f;
  a.y = io.y;
  cuda::lolcats_attention_forward(a, s);
  cuda::mse_loss_grad_bf16(io.y, io.y_teacher, T * shape.n_heads * shape.head_dim, io.dy_scale, io.g ? io.dy : nullptr,
                           io.sum_sq, s);
  if (!io.g) return;
  io.timer->mark(LizardBwd, s);
  cuda::LolcatsAttnGrads gr;  // input gradients not needed: q, k, v are the frozen teacher's
  gr.dwq = io.g->feat_q, gr.dwk = io.g->feat_k;
  gr.dlolcats_f = io.g->lolcats_f;
  cuda::lolcats_attention_backward(a, io.dy, gr, s);
}

// A Lizard layer's own copies of its inputs, its scratch, and its stream.
struct Slot {
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr;  // recorded on the teacher's stream once the inputs are copied in
  cudaEvent_t done = nullptr;   // recorded on `stream` once the layer finished
  DeviceBuffer xn, q, k, v, y_teacher, y, dy, lg, dlg, dq, dk, dv;
  DeviceBuffer qf, kf, dqf, dkf;  // feature_on_rope != window_rope: the feature maps' q, k (and scratch)
  DeviceBuffer win_lse, win_out;  // the forward's window statistics (Lizard, training)
  PartTimer timer;

  Slot() : stream(new_stream()), ready(new_event()), done(new_event()) {}
  Slot(const Slot&) = delete;
  Slot& operator=(const Slot&) = delete;
  ~Slot() {
    cudaEventDestroy(ready);
    cudaEventDestroy(done);
    cudaStreamDestroy(stream);
  }
};

}  // namespace

struct Stage1Cuda::Device {
  cuda::TeacherWeights teacher;
  cuda::LizardWeights lizard;
  cudaStream_t stream = nullptr;  // the teacher's
  std::vector<DeviceBuffer> norms32;  // per layer: attn_norm, ffn_norm as fp32 (the fp32 RMSNorm takes them)
  // The teacher's activations, sized for the largest batch seen (DeviceBuffer only grows).
  DeviceBuffer ids, x32, xn32, xn, q, k, v, qr, kr, att, gate, up, act;
  std::vector<std::unique_ptr<Slot>> slots;
  DeviceBuffer grads;   // every trainable gradient, packed in params() order (fp32)
  DeviceBuffer sums;    // per Lizard layer: sum of squared errors (fp64)
  std::vector<size_t> grad_offset;  // per params() entry, in floats
  std::vector<LayerGrads> layer_grads;
  std::vector<float> grads_host;
  PartTimer timer;
  std::string card;

  explicit Device(const Checkpoint& ck) : teacher(ck), stream(new_stream()) {}
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device() {
    cudaDeviceSynchronize();  // nothing may still use the buffers freed after this
    slots.clear();
    cudaStreamDestroy(stream);
  }
};

Stage1Cuda::Stage1Cuda(std::shared_ptr<const Checkpoint> teacher, const Stage1Options& opt, int slots)
    : host_(teacher, opt) {
  const LizardCheckpoint& lk = host_.checkpoint();
  const bool lolcats = lk.config.combine == LizardConfig::Combine::Lolcats;
  LZ_CHECK(slots >= 1 && slots <= 64, "stage 1 (cuda): {} concurrent Lizard layers, expected 1 to 64", slots);
  // Refuses options the kernels lack, before anything goes to the GPU.
  if (lolcats)
    (void)cuda::lolcats_cuda_args(lk.config, lk.shape, 1, 1);
  else
    (void)cuda::lizard_cuda_args(lk.config, lk.shape, 1, 1);
  const ModelConfig& mc = teacher->config;
  dev_ = std::make_unique<Device>(*teacher);
  Device& d = *dev_;
  const int n_slots = std::min<int>(slots, static_cast<int>(host_.layers().size()));
  for (int i = 0; i < n_slots; ++i) d.slots.push_back(std::make_unique<Slot>());

  int id = 0;
  cudaDeviceProp prop{};
  LZ_CUDA_OK(cudaGetDevice(&id));
  LZ_CUDA_OK(cudaGetDeviceProperties(&prop, id));
  d.card = fmt::format("{} ({:.1f} GiB)", prop.name, double(prop.totalGlobalMem) / double(1 << 30));

  // fp32 norm weights, so that the residual stream stays fp32 through the RMSNorms.
  const int dm = mc.d_model;
  for (int l = 0; l < mc.n_layers; ++l)
    for (const void* w : {d.teacher.layer(l).attn_norm, d.teacher.layer(l).ffn_norm}) {
      DeviceBuffer b(size_t(dm) * sizeof(float));
      cuda::convert(Dt::BF16, w, Dt::F32, b.get(), dm, d.stream);
      d.norms32.push_back(std::move(b));
    }

  // Packed gradients: each params() tensor at its offset; each layer's tensors found by name.
  const std::vector<ParamTensor> ps = host_.params();
  size_t total = 0;
  for (const ParamTensor& p : ps) {
    d.grad_offset.push_back(total);
    total += p.grad->size();
  }
  d.grads.resize(std::max<size_t>(total, 1) * sizeof(float));
  d.grads_host.resize(total);
  auto find = [&](int layer, const char* name) -> float* {
    const std::string full = fmt::format("blk.{}.lizard.{}", layer, name);
    for (size_t i = 0; i < ps.size(); ++i)
      if (ps[i].name == full) return d.grads.as<float>() + d.grad_offset[i];
    return nullptr;
  };
  for (int l : host_.layers()) {
    LayerGrads g;
    g.feat_q = find(l, "feat_q");
    g.feat_k = find(l, "feat_k");
    g.gate_w = find(l, "gate_w");
    g.gate_b = find(l, "gate_b");
    g.meta = find(l, "meta");
    g.alpha = find(l, "alpha");
    g.lolcats_f = find(l, "lolcats_f");
    const bool complete = lolcats ? g.feat_q && g.feat_k && g.lolcats_f
                                  : g.feat_q && g.feat_k && g.gate_w && g.gate_b && g.alpha &&
                                        (g.meta || lk.config.meta_tokens == 0);
    LZ_CHECK(complete, "stage 1 (cuda): layer {} lacks a trainable tensor the GPU path writes", l);
    d.layer_grads.push_back(g);
  }
  d.sums.resize(host_.layers().size() * sizeof(double));
  LZ_CUDA_OK(cudaDeviceSynchronize());
}

Stage1Cuda::~Stage1Cuda() = default;

std::string Stage1Cuda::device_description() const {
  return fmt::format("{}, teacher weights {} MiB on the GPU, up to {} Lizard layer(s) at once beside the teacher",
                     dev_->card, dev_->teacher.bytes() >> 20, dev_->slots.size());
}

LossResult Stage1Cuda::forward_backward(const std::vector<const int32_t*>& seqs, int seq_len) {
  return run(seqs, seq_len, true);
}

LossResult Stage1Cuda::evaluate(const std::vector<const int32_t*>& seqs, int seq_len) {
  return run(seqs, seq_len, false);
}

LossResult Stage1Cuda::run(const std::vector<const int32_t*>& seqs, int seq_len, bool grads) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  LZ_CHECK(!seqs.empty(), "stage 1: empty batch");
  LZ_CHECK(seq_len >= 1, "stage 1: a sequence of {} tokens", seq_len);
  Device& d = *dev_;
  const LizardCheckpoint& lk = host_.checkpoint();
  const LizardConfig& cfg = lk.config;
  const ModelConfig& mc = d.teacher.config();
  const std::vector<int>& layers = host_.layers();
  const int B = static_cast<int>(seqs.size()), L = seq_len;
  const int64_t T = int64_t(B) * L;
  const int dm = mc.d_model, H = mc.n_heads, Hkv = mc.n_kv_heads, D = mc.head_dim, ff = mc.d_ff;
  const int qd = H * D, kvd = Hkv * D;
  const int G = cfg.gate == LizardConfig::Gate::PerHead ? H : 1;
  const bool lolcats = cfg.combine == LizardConfig::Combine::Lolcats;
  // Lolcats always reads RoPE'd q, k (its window does; lolcats_cuda_args wants feature_on_rope); Lizard's
  // window when window_rope, its feature maps when feature_on_rope (a second pair where the two differ).
  const bool rope_window = lolcats || cfg.window_rope;
  const bool sep = !lolcats && cfg.feature_on_rope != cfg.window_rope;
  const cudaStream_t st = d.stream;

  // Tokens (inputs only: each sequence holds seq_len + 1 ids, the last one a target).
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (int b = 0; b < B; ++b) {
    for (int i = 0; i < L; ++i) {
      const int32_t t = seqs[b][i];
      LZ_CHECK(t >= 0 && t < mc.vocab_size, "token id {} is out of range (vocabulary of {})", t, mc.vocab_size);
      ids[size_t(b) * L + i] = t;
    }
  }

  auto bf = [](int64_t n) { return size_t(n) * 2; };
  auto f32 = [](int64_t n) { return size_t(n) * 4; };
  d.ids.resize(size_t(T) * sizeof(int32_t));
  d.x32.resize(f32(T * dm));
  d.xn32.resize(f32(T * dm));
  d.xn.resize(bf(T * dm));
  d.q.resize(bf(T * qd));
  d.qr.resize(bf(T * qd));
  d.att.resize(bf(T * qd));
  d.k.resize(bf(T * kvd));
  d.v.resize(bf(T * kvd));
  d.kr.resize(bf(T * kvd));
  d.gate.resize(bf(T * ff));
  d.up.resize(bf(T * ff));
  d.act.resize(bf(T * ff));
  for (auto& s : d.slots) {
    s->xn.resize(bf(T * dm));
    s->q.resize(bf(T * qd));
    s->k.resize(bf(T * kvd));
    s->v.resize(bf(T * kvd));
    s->y_teacher.resize(bf(T * qd));
    s->y.resize(bf(T * qd));
    s->lg.resize(f32(T * G));
    if (sep) {
      s->qf.resize(bf(T * qd));
      s->kf.resize(bf(T * kvd));
      if (grads) s->dqf.resize(f32(T * qd)), s->dkf.resize(f32(T * kvd));
    }
    if (grads) {
      s->dy.resize(bf(T * qd));
      s->dlg.resize(f32(T * G));
      if (!lolcats) {  // scratch the Lizard backward requires; the lolcats one skips input gradients
        s->dq.resize(f32(T * qd));
        s->dk.resize(f32(T * kvd));
        s->dv.resize(f32(T * kvd));
        s->win_lse.resize(f32(T * H));
        s->win_out.resize(bf(T * qd));
      }
    }
  }

  // The optimizer stepped the host values: upload them (feature maps rounded to bf16 here), and the
  // tokens. These copies run on the legacy default stream, which the non-blocking streams do not wait
  // for: finish them before any kernel reads them.
  for (int l : layers) d.lizard.upload(l, cfg, lk.shape, lk.layers.at(l));
  LZ_CUDA_OK(cudaMemcpy(d.ids.get(), ids.data(), ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  LZ_CUDA_OK(cudaDeviceSynchronize());

  LZ_CUDA_OK(cudaMemsetAsync(d.sums.get(), 0, layers.size() * sizeof(double), st));
  if (grads) LZ_CUDA_OK(cudaMemsetAsync(d.grads.get(), 0, d.grads.bytes(), st));
  const double n_out = double(T) * qd;  // elements the per-layer mean runs over
  const float dy_scale = static_cast<float>(2.0 / n_out);
  d.timer.reset();
  for (auto& s : d.slots) s->timer.reset();
  d.timer.mark(Teacher, st);
  cuda::embedding_fwd(Dt::BF16, d.teacher.embedding(), d.ids.as<int32_t>(), d.xn.get(), T, dm, st);
  cuda::convert(Dt::BF16, d.xn.get(), Dt::F32, d.x32.get(), T * dm, st);

  auto copy = [&](DeviceBuffer& dst, const DeviceBuffer& src, size_t bytes) {
    LZ_CUDA_OK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, st));
  };
  const int last = layers.back();
  size_t li = 0;  // index into layers of the next Lizard layer
  for (int l = 0; l <= last; ++l) {
    const cuda::DeviceLayer& w = d.teacher.layer(l);
    cuda::rmsnorm_fwd(Dt::F32, d.x32.get(), d.norms32[2 * l].get(), d.xn32.get(), nullptr, T, dm, mc.rms_eps, st);
    cuda::convert(Dt::F32, d.xn32.get(), Dt::BF16, d.xn.get(), T * dm, st);
    cuda::linear_fwd(d.xn.get(), w.q.w, w.q.bias, d.q.get(), Dt::BF16, T, dm, qd, false, st);
    cuda::linear_fwd(d.xn.get(), w.k.w, w.k.bias, d.k.get(), Dt::BF16, T, dm, kvd, false, st);
    cuda::linear_fwd(d.xn.get(), w.v.w, w.v.bias, d.v.get(), Dt::BF16, T, dm, kvd, false, st);
    // RoPE on copies: a Lizard layer without RoPE options reads the pre-RoPE q, k.
    copy(d.qr, d.q, bf(T * qd));
    copy(d.kr, d.k, bf(T * kvd));
    for (int b = 0; b < B; ++b) {
      cuda::rope_apply(Dt::BF16, d.qr.as<uint16_t>() + int64_t(b) * L * qd, L, qd, H, D, 0,
                       d.teacher.rope_inv_freq(), false, st);
      cuda::rope_apply(Dt::BF16, d.kr.as<uint16_t>() + int64_t(b) * L * kvd, L, kvd, Hkv, D, 0,
                       d.teacher.rope_inv_freq(), false, st);
    }
    cuda::FlashArgs fa;
    fa.B = B, fa.L = L, fa.H = H, fa.Hkv = Hkv, fa.D = D;
    fa.q = d.qr.get(), fa.k = d.kr.get(), fa.v = d.v.get(), fa.out = d.att.get();
    cuda::flash_attention_fwd(fa, st);

    if (li < layers.size() && layers[li] == l) {
      // Hand the layer to a slot: wait until its previous layer is done, copy the inputs in, go on.
      Slot& s = *d.slots[li % d.slots.size()];
      d.timer.mark(Wait, st);
      LZ_CUDA_OK(cudaStreamWaitEvent(st, s.done, 0));
      d.timer.mark(Teacher, st);
      copy(s.xn, d.xn, bf(T * dm));
      copy(s.q, rope_window ? d.qr : d.q, bf(T * qd));
      copy(s.k, rope_window ? d.kr : d.k, bf(T * kvd));
      if (sep) {
        copy(s.qf, cfg.feature_on_rope ? d.qr : d.q, bf(T * qd));
        copy(s.kf, cfg.feature_on_rope ? d.kr : d.k, bf(T * kvd));
      }
      copy(s.v, d.v, bf(T * kvd));
      copy(s.y_teacher, d.att, bf(T * qd));
      LZ_CUDA_OK(cudaEventRecord(s.ready, st));
      LZ_CUDA_OK(cudaStreamWaitEvent(s.stream, s.ready, 0));

      LayerIo io;
      io.p = d.lizard.find(l);
      LZ_CHECK(io.p != nullptr, "stage 1 (cuda): layer {} has no parameters on the GPU", l);
      io.g = grads ? &d.layer_grads[li] : nullptr;
      io.B = B, io.L = L;
      io.xn = s.xn.get(), io.q = s.q.get(), io.k = s.k.get(), io.v = s.v.get();
      io.y_teacher = s.y_teacher.get();
      io.y = s.y.get(), io.dy = s.dy.get();
      io.lg = s.lg.as<float>(), io.dlg = s.dlg.as<float>();
      io.dq = s.dq.as<float>(), io.dk = s.dk.as<float>(), io.dv = s.dv.as<float>();
      if (grads && !lolcats) io.win_lse = s.win_lse.as<float>(), io.win_out = s.win_out.get();
      if (sep) {
        io.qf = s.qf.get(), io.kf = s.kf.get();
        io.dqf = s.dqf.as<float>(), io.dkf = s.dkf.as<float>();
      }
      io.sum_sq = d.sums.as<double>() + li;
      io.dy_scale = dy_scale;
      io.timer = &s.timer;
      io.stream = s.stream;
      if (lolcats)
        lolcats_layer(cfg, lk.shape, io);
      else
        lizard_layer(cfg, lk.shape, io);
      s.timer.mark(Idle, s.stream);
      LZ_CUDA_OK(cudaEventRecord(s.done, s.stream));
      ++li;
    }
    if (l == last) break;  // nothing after the last Lizard layer matters here

    // The teacher goes on with its own attention output: x += att W_o^T, then the MLP.
    cuda::linear_fwd(d.att.get(), w.o.w, w.o.bias, d.x32.get(), Dt::F32, T, qd, dm, /*accumulate=*/true, st);
    cuda::rmsnorm_fwd(Dt::F32, d.x32.get(), d.norms32[2 * l + 1].get(), d.xn32.get(), nullptr, T, dm, mc.rms_eps, st);
    cuda::convert(Dt::F32, d.xn32.get(), Dt::BF16, d.xn.get(), T * dm, st);
    cuda::linear_fwd(d.xn.get(), w.gate.w, w.gate.bias, d.gate.get(), Dt::BF16, T, dm, ff, false, st);
    cuda::linear_fwd(d.xn.get(), w.up.w, w.up.bias, d.up.get(), Dt::BF16, T, dm, ff, false, st);
    cuda::swiglu_fwd(Dt::BF16, d.gate.get(), d.up.get(), d.act.get(), T * ff, st);
    cuda::linear_fwd(d.act.get(), w.down.w, w.down.bias, d.x32.get(), Dt::F32, T, ff, dm, /*accumulate=*/true, st);
  }
  d.timer.mark(Wait, st);
  for (auto& s : d.slots) LZ_CUDA_OK(cudaStreamWaitEvent(st, s->done, 0));
  d.timer.mark(Idle, st);  // end of the step's GPU work

  std::vector<double> sums(layers.size());
  LZ_CUDA_OK(cudaMemcpyAsync(sums.data(), d.sums.get(), sums.size() * sizeof(double), cudaMemcpyDeviceToHost, st));
  if (grads)
    LZ_CUDA_OK(cudaMemcpyAsync(d.grads_host.data(), d.grads.get(), d.grads_host.size() * sizeof(float),
                               cudaMemcpyDeviceToHost, st));
  LZ_CUDA_OK(cudaStreamSynchronize(st));
  LZ_CUDA_OK(cudaDeviceSynchronize());  // every slot stream too (they finished before st's last wait)
  if (grads) {
    const std::vector<ParamTensor> ps = host_.params();
    for (size_t i = 0; i < ps.size(); ++i)
      std::memcpy(ps[i].grad->data(), d.grads_host.data() + d.grad_offset[i], ps[i].grad->size() * sizeof(float));
  }

  LossResult r;
  for (double s : sums) {
    r.parts.push_back(s / n_out);
    r.total += s / n_out;
  }
  std::array<double, kParts> sec{};
  d.timer.add_seconds(sec);
  for (auto& s : d.slots) s->timer.add_seconds(sec);
  const double gpu = d.timer.span_seconds();
  const double wall = std::chrono::duration<double>(clock::now() - t_start).count();
  // teacher and wait: the teacher's stream (wait = stalled on a busy slot); lizard_*: summed over the
  // slots' streams, which overlap the teacher and each other.
  r.seconds = {{"gpu", gpu},
               {"teacher", sec[Teacher]},
               {"wait", sec[Wait]},
               {"lizard_fwd", sec[LizardFwd]},
               {"lizard_bwd", sec[LizardBwd]},
               {"host", std::max(0.0, wall - gpu)}};  // uploads, copies back, launch gaps
  return r;
}

}  // namespace lizard
#endif  // LIZARD_HAVE_CUDA
