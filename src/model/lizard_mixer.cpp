#include "model/lizard_mixer.h"

#include <cstring>
#include <istream>
#include <ostream>

#include "model/lizard_checkpoint.h"
#include "util/error.h"

namespace lizard {

namespace {
constexpr uint32_t kMixerMagic = 0x584d5a4c;  // "LZMX"
}

bool LizardMixerState::truncate(int64_t n_keep) {
  if (n_keep == s.n_tokens) return true;
  if (n_keep != 0) return false;
  reset();
  return true;
}

void LizardMixerState::serialize(std::ostream& out) const {
  const std::vector<uint8_t> b = s.save();
  const uint32_t magic = kMixerMagic;
  const uint64_t n = b.size();
  out.write(reinterpret_cast<const char*>(&magic), sizeof magic);
  out.write(reinterpret_cast<const char*>(&n), sizeof n);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(n));
}

void LizardMixerState::deserialize(std::istream& in) {
  uint32_t magic = 0;
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&magic), sizeof magic);
  in.read(reinterpret_cast<char*>(&n), sizeof n);
  LZ_CHECK(in.good(), "saved Lizard state is truncated");
  LZ_CHECK(magic == kMixerMagic, "saved layer state is not a Lizard state");
  LizardState<float> want;
  want.reset(cfg, shape);
  // save() adds a small header and a length per array; anything much larger is not ours.
  LZ_CHECK(n <= want.bytes() + 256, "saved Lizard state has {} bytes, this layer's holds {}", n, want.bytes());
  std::vector<uint8_t> b(n);
  in.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(n));
  LZ_CHECK(in.good() || (n == 0 && !in.bad()), "saved Lizard state is truncated");
  s.load(b, cfg, shape);  // throws on a shape mismatch and leaves s as it was
}

LizardMixer::LizardMixer(const LizardConfig& c, const ModelConfig& t, LizardParams params)
    : cfg_(c), shape_{t.d_model, t.n_heads, t.n_kv_heads, t.head_dim}, p_(std::move(params)) {
  cfg_.validate();
  shape_.validate();
  p_.check(cfg_, shape_);
  rope_ = LizardRope::make(t.head_dim, t.rope_theta, t.rope_scaling);
  std::string bytes = lizard_config_to_string(cfg_);
  for (auto& e : p_.entries(cfg_, shape_))
    bytes.append(reinterpret_cast<const char*>(e.data->data()), e.data->size() * sizeof(float));
  name_ = "lizard-" + sha256_hex(bytes.data(), bytes.size()).substr(0, 12);
}

std::unique_ptr<MixerState> LizardMixer::make_state(int64_t /*max_ctx: constant size*/) const {
  return std::make_unique<LizardMixerState>(cfg_, shape_);
}

void LizardMixer::forward(const float* x_normed, const float* q, const float* k, const float* v, int64_t n,
                          int64_t pos0, MixerState& base, float* y) const {
  auto& st = dynamic_cast<LizardMixerState&>(base);
  LZ_CHECK(pos0 == st.s.n_tokens, "Lizard state holds {} positions, the chunk starts at {}", st.s.n_tokens, pos0);
  if (n <= 0) return;
  const int64_t qw = int64_t(shape_.n_heads) * shape_.head_dim, kw = int64_t(shape_.n_kv_heads) * shape_.head_dim;
  if (n == 1) {
    lizard_step(cfg_, shape_, p_, &rope_, st.s, x_normed, q, k, v, pos0, y);
    return;
  }
  const bool fresh = st.s.n_tokens == 0;
  // LoLCATs and gate_skips_window: their chunked forms do not continue a sequence; token by token instead
  if (!fresh && (cfg_.combine == LizardConfig::Combine::Lolcats || cfg_.gate_skips_window)) {
    for (int64_t i = 0; i < n; ++i)
      lizard_step(cfg_, shape_, p_, &rope_, st.s, x_normed + i * shape_.d_model, q + i * qw, k + i * kw, v + i * kw,
                  pos0 + i, y + i * qw);
    return;
  }
  st.pos.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) st.pos[i] = static_cast<int32_t>(pos0 + i);
  LizardInput<float> in;
  in.L = n;
  in.x = x_normed;
  in.q = q;
  in.k = k;
  in.v = v;
  in.pos = st.pos.data();
  lizard_forward_chunked(cfg_, shape_, p_, &rope_, in, y, &st.s, fresh ? nullptr : &st.s);
}

}  // namespace lizard
