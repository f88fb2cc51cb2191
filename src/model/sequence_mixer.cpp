#include "model/sequence_mixer.h"

#include <cmath>
#include <cstring>
#include <istream>
#include <ostream>

#include "ops/cpu/rope.h"
#include "util/error.h"

namespace lizard {

namespace {

struct KVCacheState : MixerState {
  int64_t capacity = 0, width = 0, len = 0;  // width = Hkv * D floats per position
  // Uninitialised on purpose: pages are committed only as the sequence grows.
  std::unique_ptr<float[]> k, v;
  std::vector<float> q_rope;  // scratch for the roped queries of one chunk

  KVCacheState(int64_t cap, int64_t w)
      : capacity(cap), width(w), k(std::make_unique_for_overwrite<float[]>(cap * w)),
        v(std::make_unique_for_overwrite<float[]>(cap * w)) {}
  void reset() override { len = 0; }
  bool truncate(int64_t n_keep) override {
    if (n_keep > len) return false;
    len = n_keep;
    return true;
  }
  size_t bytes() const override { return static_cast<size_t>(2 * len * width) * sizeof(float); }
  // Positions < len only: {int64 len, int64 width, k [len, width], v [len, width]} (fp32, RoPE'd k).
  void serialize(std::ostream& out) const override {
    const int64_t hdr[2] = {len, width};
    out.write(reinterpret_cast<const char*>(hdr), sizeof hdr);
    out.write(reinterpret_cast<const char*>(k.get()), static_cast<std::streamsize>(len * width * sizeof(float)));
    out.write(reinterpret_cast<const char*>(v.get()), static_cast<std::streamsize>(len * width * sizeof(float)));
  }
  void deserialize(std::istream& in) override {
    int64_t hdr[2] = {0, 0};
    in.read(reinterpret_cast<char*>(hdr), sizeof hdr);
    LZ_CHECK(in.good(), "saved attention cache is truncated");
    LZ_CHECK(hdr[1] == width, "saved attention cache has {} floats per position, this model {}", hdr[1], width);
    LZ_CHECK(hdr[0] >= 0 && hdr[0] <= capacity, "saved attention cache holds {} positions, the context is {}",
             hdr[0], capacity);
    len = 0;
    const auto n = static_cast<std::streamsize>(hdr[0] * width * sizeof(float));
    in.read(reinterpret_cast<char*>(k.get()), n);
    in.read(reinterpret_cast<char*>(v.get()), n);
    LZ_CHECK(in.good(), "saved attention cache is truncated");
    len = hdr[0];
  }
};

}  // namespace

void MixerState::serialize(std::ostream&) const { fail("this mixer's state cannot be saved"); }
void MixerState::deserialize(std::istream&) { fail("this mixer's state cannot be saved"); }

SoftmaxMixer::SoftmaxMixer(const ModelConfig& cfg, int64_t window)
    : dims_{cfg.n_heads, cfg.n_kv_heads, cfg.head_dim},
      inv_freq_(rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)),
      scale_(1.0f / std::sqrt(static_cast<float>(cfg.head_dim))),
      window_(window) {
  LZ_CHECK(cfg.n_heads > 0 && cfg.n_kv_heads > 0 && cfg.n_heads % cfg.n_kv_heads == 0,
           "{} query heads can not be grouped over {} key/value heads", cfg.n_heads, cfg.n_kv_heads);
}

std::unique_ptr<MixerState> SoftmaxMixer::make_state(int64_t max_ctx) const {
  return std::make_unique<KVCacheState>(max_ctx, static_cast<int64_t>(dims_.n_kv_heads) * dims_.head_dim);
}

void SoftmaxMixer::forward(const float* /*x_normed*/, const float* q, const float* k, const float* v, int64_t n,
                           int64_t pos0, MixerState& base, float* y) const {
  auto& st = dynamic_cast<KVCacheState&>(base);
  LZ_CHECK(pos0 == st.len, "attention cache holds {} positions, the chunk starts at {}", st.len, pos0);
  LZ_CHECK(pos0 + n <= st.capacity, "sequence of {} tokens exceeds the context of {}", pos0 + n, st.capacity);
  const int H = dims_.n_heads, Hkv = dims_.n_kv_heads, D = dims_.head_dim;
  const int64_t qw = static_cast<int64_t>(H) * D, kw = st.width;
  if (static_cast<int64_t>(st.q_rope.size()) < n * qw) st.q_rope.resize(n * qw);
  std::memcpy(st.q_rope.data(), q, sizeof(float) * n * qw);
  std::memcpy(st.k.get() + pos0 * kw, k, sizeof(float) * n * kw);
  std::memcpy(st.v.get() + pos0 * kw, v, sizeof(float) * n * kw);
  rope_apply(st.q_rope.data(), n, qw, H, D, pos0, inv_freq_.data());
  rope_apply(st.k.get() + pos0 * kw, n, kw, Hkv, D, pos0, inv_freq_.data());
  st.len = pos0 + n;
  softmax_attention(st.q_rope.data(), n, pos0, st.k.get(), st.v.get(), kw, dims_, scale_, y, window_);
}

}  // namespace lizard
