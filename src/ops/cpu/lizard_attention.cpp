// Lizard layer: RoPE, the recurrent state, the parallel (reference) and recurrent forms.
// The chunked form and the backward are in lizard_chunked.cpp.
#include "ops/cpu/lizard_attention.h"

#include <cstring>

#include "ops/cpu/lizard_common.h"
#include "ops/cpu/rope.h"

namespace lizard {

using namespace lz;

// ---- RoPE ---------------------------------------------------------------------------------------

LizardRope LizardRope::make(int head_dim, double theta, const RopeScaling& sc) {
  LizardRope r;
  r.inv_freq = rope_inv_freq_f64(head_dim, theta, sc);
  return r;
}

template <typename T>
void LizardRope::apply(T* x, int64_t p, bool inverse) const {
  const int half = int(inv_freq.size());
  for (int j = 0; j < half; ++j) {
    const double ang = double(p) * inv_freq[j];
    const T cs = T(std::cos(ang)), sn = T(inverse ? -std::sin(ang) : std::sin(ang));
    const T a = x[j], b = x[j + half];
    x[j] = a * cs - b * sn;
    x[j + half] = b * cs + a * sn;
  }
}
template void LizardRope::apply<float>(float*, int64_t, bool) const;
template void LizardRope::apply<double>(double*, int64_t, bool) const;

// ---- state --------------------------------------------------------------------------------------

template <typename T>
void LizardState<T>::reset(const LizardConfig& c, const LizardShape& s) {
  c.validate();
  s.validate();
  const size_t H = s.n_heads, F2 = 2 * size_t(c.feature_dim), D = s.head_dim;
  const size_t ring = size_t(c.window) * s.n_kv_heads * D;
  n_tokens = 0;
  S.assign(H * F2 * D, T(0));
  z.assign(H * F2, T(0));
  log_scale.assign(H, T(0));
  ring_k.assign(ring, T(0));
  ring_v.assign(ring, T(0));
  if (c.combine == LizardConfig::Combine::Lolcats || c.gate_skips_window)
    ring_kf.assign(ring, T(0));
  else
    ring_kf.clear();
  if (c.gate_skips_window)
    ring_lg.assign(size_t(c.window) * H, T(0));
  else
    ring_lg.clear();
}

namespace {
constexpr uint32_t kStateMagic = 0x54535a4c;  // "LZST"
}

template <typename T>
std::vector<uint8_t> LizardState<T>::save() const {
  std::vector<uint8_t> out;
  auto put = [&](const void* d, size_t n) {
    const size_t o = out.size();
    out.resize(o + n);
    if (n) std::memcpy(out.data() + o, d, n);
  };
  uint32_t hdr[2] = {kStateMagic, uint32_t(sizeof(T))};
  put(hdr, sizeof hdr);
  put(&n_tokens, sizeof n_tokens);
  for (const auto* v : {&S, &z, &log_scale, &ring_k, &ring_v, &ring_kf}) {
    uint64_t n = v->size();
    put(&n, sizeof n);
    put(v->data(), n * sizeof(T));
  }
  if (!ring_lg.empty()) {  // gate_skips_window only: the snapshots of every other config are unchanged
    uint64_t n = ring_lg.size();
    put(&n, sizeof n);
    put(ring_lg.data(), n * sizeof(T));
  }
  return out;
}

template <typename T>
void LizardState<T>::load(const std::vector<uint8_t>& bytes, const LizardConfig& c, const LizardShape& s) {
  LizardState<T> fresh;
  fresh.reset(c, s);
  size_t off = 0;
  auto get = [&](void* d, size_t n) {
    LZ_CHECK(off + n <= bytes.size(), "lizard state: snapshot truncated");
    std::memcpy(d, bytes.data() + off, n);
    off += n;
  };
  uint32_t hdr[2];
  get(hdr, sizeof hdr);
  LZ_CHECK(hdr[0] == kStateMagic, "lizard state: not a Lizard state snapshot");
  LZ_CHECK(hdr[1] == sizeof(T), "lizard state: snapshot holds {}-byte values, expected {}", hdr[1], sizeof(T));
  get(&fresh.n_tokens, sizeof fresh.n_tokens);
  for (auto* v : {&fresh.S, &fresh.z, &fresh.log_scale, &fresh.ring_k, &fresh.ring_v, &fresh.ring_kf, &fresh.ring_lg}) {
    if (v == &fresh.ring_lg && v->empty()) break;  // written only for gate_skips_window
    uint64_t n;
    get(&n, sizeof n);
    LZ_CHECK(n == v->size(), "lizard state: snapshot does not match this config/shape ({} vs {} values)", n,
             v->size());
    get(v->data(), n * sizeof(T));
  }
  LZ_CHECK(off == bytes.size(), "lizard state: trailing bytes in snapshot");
  *this = std::move(fresh);
}

template <typename T>
size_t LizardState<T>::bytes() const {
  return sizeof(T) * (S.size() + z.size() + log_scale.size() + ring_k.size() + ring_v.size() + ring_kf.size() +
                      ring_lg.size());
}

template struct LizardState<float>;
template struct LizardState<double>;

// ---- parallel form (plain reference) ------------------------------------------------------------

template <typename T>
void lizard_forward_parallel(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p,
                             const LizardRope* rope, const LizardInput<T>& in, T* y) {
  Prepared<T> pr;
  prepare(c, s, p, rope, in, pr);
  const int64_t L = in.L;
  const int H = pr.H, Hkv = pr.Hkv, D = pr.D, F = pr.F, F2 = 2 * F, G = pr.G, w = c.window;
  const T scale = T(1) / std::sqrt(T(D));
  const T eps = T(c.eps);
  // phi for every token and query head
  std::vector<T> phq(size_t(L) * H * F2), phk(size_t(L) * H * F2), u(F);
  for (int64_t i = 0; i < L; ++i)
    for (int h = 0; h < H; ++h) {
      const int g = s.kv_head(h);
      const T* Wq = p.feat_q.data() + size_t(h) * D * F;
      const T* Wk = p.feat_k.data() + size_t(h) * D * F;
      for (int f = 0; f < F; ++f) {
        T a = 0;
        for (int d = 0; d < D; ++d) a += pr.qf[(i * H + h) * D + d] * Wq[d * F + f];
        u[f] = a;
      }
      feature_map(c.feature_act, F, u.data(), &phq[(i * H + h) * F2]);
      for (int f = 0; f < F; ++f) {
        T a = 0;
        for (int d = 0; d < D; ++d) a += pr.kf[(i * Hkv + g) * D + d] * Wk[d * F + f];
        u[f] = a;
      }
      feature_map(c.feature_act, F, u.data(), &phk[(i * H + h) * F2]);
    }
  std::vector<T> num(D), wn(D), sc(w);
  for (int h = 0; h < H; ++h) {
    const int g = s.kv_head(h), gc = pr.gate_col(h);
    const T* mu = meta_row(c, p, h);
    for (int64_t i = 0; i < L; ++i) {
      const T* pq = &phq[(i * H + h) * F2];
      T* yi = y + (i * H + h) * D;
      const int64_t t0 = std::max<int64_t>(0, i - w + 1);
      // window scores
      T smax = -std::numeric_limits<T>::infinity();
      for (int64_t t = t0; t <= i; ++t) {
        sc[t - t0] = scale * dot(pr.qw + (i * H + h) * D, pr.kw + (t * Hkv + g) * D, D);
        smax = std::max(smax, sc[t - t0]);
      }
      if (c.combine == LizardConfig::Combine::Lizard) {
        // gate branch: decay walked down from i
        std::fill(num.begin(), num.end(), T(0));
        T den = 0, dsum = 0;
        for (int64_t t = i; t >= 0; --t) {
          const T decay = std::exp(dsum);
          if (decay == T(0)) break;
          if (!c.gate_skips_window || t <= i - w) {
            const T kk = decay * dot(pq, &phk[(t * H + h) * F2], F2);
            const T* vt = in.v + (t * Hkv + g) * D;
            for (int d = 0; d < D; ++d) num[d] += kk * vt[d];
            den += kk;
          }
          dsum += pr.lg[t * G + gc];
        }
        // window with meta sinks
        T M = smax;
        for (int j = 0; j < c.meta_tokens; ++j) M = std::max(M, mu[j]);
        T Z = 0;
        for (int j = 0; j < c.meta_tokens; ++j) Z += std::exp(mu[j] - M);
        std::fill(wn.begin(), wn.end(), T(0));
        for (int64_t t = t0; t <= i; ++t) {
          const T e = std::exp(sc[t - t0] - M);
          Z += e;
          const T* vt = in.v + (t * Hkv + g) * D;
          for (int d = 0; d < D; ++d) wn[d] += e * vt[d];
        }
        const T al = alpha_of(c, p, h);
        T E = 0;  // the sinks' mass
        for (int j = 0; j < c.meta_tokens; ++j) E += std::exp(mu[j] - M);
        if (c.shared_normaliser) {  // one normaliser: (E N + al wn) / (E (den + eps) + window mass)
          const T q = E * (den + eps) + (Z - E);
          for (int d = 0; d < D; ++d) yi[d] = (E * num[d] + al * wn[d]) / q;
          continue;
        }
        const T pm = c.meta_weights_gate ? E / Z : T(1);  // weight of the gated branch
        for (int d = 0; d < D; ++d) yi[d] = pm * num[d] / (den + eps) + al * wn[d] / Z;
      } else {
        const T sg = sigmoid(p.lolcats_f[h]);
        const T M = std::max(T(0), smax), e = std::exp(-M);
        T wd = 0, ld = 0;
        std::fill(wn.begin(), wn.end(), T(0));
        std::fill(num.begin(), num.end(), T(0));
        for (int64_t t = t0; t <= i; ++t) {
          const T ex = std::exp(sc[t - t0] - M);
          wd += ex;
          const T* vt = in.v + (t * Hkv + g) * D;
          for (int d = 0; d < D; ++d) wn[d] += ex * vt[d];
        }
        for (int64_t t = 0; t <= i - w; ++t) {
          const T kk = dot(pq, &phk[(t * H + h) * F2], F2);
          const T* vt = in.v + (t * Hkv + g) * D;
          for (int d = 0; d < D; ++d) num[d] += kk * vt[d];
          ld += kk;
        }
        const T den = sg * wd + (T(1) - sg) * e * ld + eps * e;
        for (int d = 0; d < D; ++d) yi[d] = (sg * wn[d] + (T(1) - sg) * e * num[d]) / den;
      }
    }
  }
}

// ---- recurrent form -----------------------------------------------------------------------------

template <typename T>
void lizard_step(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p, const LizardRope* rope,
                 LizardState<T>& st, const T* x, const T* q, const T* k, const T* v, int64_t pos, T* y) {
  const int H = s.n_heads, Hkv = s.n_kv_heads, D = s.head_dim, F = c.feature_dim, F2 = 2 * F, w = c.window;
  const bool lol = c.combine == LizardConfig::Combine::Lolcats;
  const bool skip = c.gate_skips_window;
  LZ_CHECK(st.S.size() == size_t(H) * F2 * D && st.ring_k.size() == size_t(w) * Hkv * D &&
               st.ring_kf.size() == (lol || skip ? size_t(w) * Hkv * D : 0) &&
               st.ring_lg.size() == (skip ? size_t(w) * H : 0),
           "lizard_step: state does not match the config (call reset)");
  LZ_CHECK(!needs_rope(c) || rope, "lizard: the options need RoPE but no rope was given");
  LZ_CHECK(lol || x, "lizard_step: missing x (the gate input)");
  const T scale = T(1) / std::sqrt(T(D)), eps = T(c.eps);
  const int64_t n = st.n_tokens;
  const size_t slot = size_t(n % w);
  // per-thread scratch: a decode step allocates nothing
  thread_local std::vector<T> qr, kr, u, phq, phk, sc, wn, num;
  if (needs_rope(c)) {
    qr.assign(q, q + size_t(H) * D);
    kr.assign(k, k + size_t(Hkv) * D);
    for (int h = 0; h < H; ++h) rope->apply(&qr[size_t(h) * D], pos);
    for (int g = 0; g < Hkv; ++g) rope->apply(&kr[size_t(g) * D], pos);
  }
  const T* qf = c.feature_on_rope ? qr.data() : q;
  const T* kf = c.feature_on_rope ? kr.data() : k;
  const T* qw = window_uses_rope(c) ? qr.data() : q;
  const T* kw = window_uses_rope(c) ? kr.data() : k;
  u.resize(F);
  phq.resize(F2);
  phk.resize(F2);
  auto fmap = [&](const T* xin, const T* W, T* phi) {
    std::fill(u.begin(), u.end(), T(0));
    for (int d = 0; d < D; ++d) {
      const T xd = xin[d];
      const T* Wd = W + size_t(d) * F;
      for (int f = 0; f < F; ++f) u[f] += xd * Wd[f];
    }
    feature_map(c.feature_act, F, u.data(), phi);
  };
  const size_t rs = size_t(Hkv) * D;  // ring slot stride
  if (lol && n >= w) {  // token n-w leaves the window: fold it into the (undecayed) state
    for (int h = 0; h < H; ++h) {
      const int g = s.kv_head(h);
      fmap(&st.ring_kf[slot * rs + g * D], p.feat_k.data() + size_t(h) * D * F, phk.data());
      ger(F2, D, T(1), phk.data(), &st.ring_v[slot * rs + g * D], &st.S[size_t(h) * F2 * D], D);
      for (int f = 0; f < F2; ++f) st.z[size_t(h) * F2 + f] += phk[f];
    }
  }
  if (skip && n >= w) {  // gate_skips_window: token n-w joins the state, decayed by tokens n-w+1 .. n-1's gammas
    for (int h = 0; h < H; ++h) {
      const int g = s.kv_head(h);
      T lgsum = 0;
      for (int j = 0; j < w; ++j)
        if (size_t(j) != slot) lgsum += st.ring_lg[size_t(j) * H + h];
      fmap(&st.ring_kf[slot * rs + g * D], p.feat_k.data() + size_t(h) * D * F, phk.data());
      const T wgt = std::exp(lgsum - st.log_scale[h]);  // into the scaled S (true = e^{log_scale} S)
      ger(F2, D, wgt, phk.data(), &st.ring_v[slot * rs + g * D], &st.S[size_t(h) * F2 * D], D);
      for (int f = 0; f < F2; ++f) st.z[size_t(h) * F2 + f] += wgt * phk[f];
    }
  }
  std::copy(kw, kw + rs, &st.ring_k[slot * rs]);
  std::copy(v, v + rs, &st.ring_v[slot * rs]);
  if (lol || skip) std::copy(kf, kf + rs, &st.ring_kf[slot * rs]);

  // ring slots [0, nv) hold exactly the window tokens (in ring order; order does not matter)
  const int nv = int(std::min<int64_t>(n + 1, w));
  sc.resize(nv);
  wn.resize(D);
  num.resize(D);
  for (int h = 0; h < H; ++h) {
    const int g = s.kv_head(h);
    T* S = &st.S[size_t(h) * F2 * D];
    T* z = &st.z[size_t(h) * F2];
    fmap(qf + size_t(h) * D, p.feat_q.data() + size_t(h) * D * F, phq.data());
    gemv(false, nv, D, scale, &st.ring_k[size_t(g) * D], int(rs), qw + size_t(h) * D, T(0), sc.data());
    T smax = -std::numeric_limits<T>::infinity();
    for (int t = 0; t < nv; ++t) smax = std::max(smax, sc[t]);
    T* yh = y + size_t(h) * D;
    if (!lol) {
      const int gc = c.gate == LizardConfig::Gate::PerHead ? h : 0;
      const T a = p.gate_b[gc] + dot(x, p.gate_w.data() + size_t(gc) * s.d_model, s.d_model);
      T ls = st.log_scale[h] + log_sigmoid(a);
      if (ls < T(-1)) {  // apply the pending decay once it is no longer close to 1
        const T e = std::exp(ls);
        for (size_t j = 0; j < size_t(F2) * D; ++j) S[j] *= e;
        for (int f = 0; f < F2; ++f) z[f] *= e;
        ls = 0;
      }
      st.log_scale[h] = ls;
      if (skip) {
        st.ring_lg[slot * H + h] = log_sigmoid(a);  // this token joins the state w steps later
      } else {
        fmap(kf + size_t(g) * D, p.feat_k.data() + size_t(h) * D * F, phk.data());
        const T inv = std::exp(-ls);  // <= e
        ger(F2, D, inv, phk.data(), v + size_t(g) * D, S, D);
        for (int f = 0; f < F2; ++f) z[f] += inv * phk[f];
      }
      gemv(true, F2, D, T(1), S, D, phq.data(), T(0), num.data());
      const T den = dot(phq.data(), z, F2);
      const T es = std::exp(ls);
      const T* mu = meta_row(c, p, h);
      T M = smax;
      for (int j = 0; j < c.meta_tokens; ++j) M = std::max(M, mu[j]);
      T Z = 0;
      for (int j = 0; j < c.meta_tokens; ++j) Z += std::exp(mu[j] - M);
      const T E = Z;  // the sinks' mass
      for (int t = 0; t < nv; ++t) Z += (sc[t] = std::exp(sc[t] - M));
      gemv(true, nv, D, T(1), &st.ring_v[size_t(g) * D], int(rs), sc.data(), T(0), wn.data());
      const T al = alpha_of(c, p, h);
      if (c.shared_normaliser) {
        const T q = E * (es * den + eps) + (Z - E);
        for (int d = 0; d < D; ++d) yh[d] = (E * es * num[d] + al * wn[d]) / q;
      } else {
        const T wg = c.meta_weights_gate ? E / Z : T(1);
        for (int d = 0; d < D; ++d) yh[d] = wg * es * num[d] / (es * den + eps) + al * wn[d] / Z;
      }
    } else {
      const T sg = sigmoid(p.lolcats_f[h]);
      const T M = std::max(T(0), smax), e = std::exp(-M);
      T wd = 0;
      for (int t = 0; t < nv; ++t) wd += (sc[t] = std::exp(sc[t] - M));
      gemv(true, nv, D, T(1), &st.ring_v[size_t(g) * D], int(rs), sc.data(), T(0), wn.data());
      gemv(true, F2, D, T(1), S, D, phq.data(), T(0), num.data());
      const T ld = dot(phq.data(), z, F2);
      const T den = sg * wd + (T(1) - sg) * e * ld + eps * e;
      for (int d = 0; d < D; ++d) yh[d] = (sg * wn[d] + (T(1) - sg) * e * num[d]) / den;
    }
  }
  st.n_tokens = n + 1;
}

template <typename T>
void lizard_forward_recurrent(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p,
                              const LizardRope* rope, const LizardInput<T>& in, T* y, LizardState<T>* final_state) {
  c.validate();
  s.validate();
  p.check(c, s);
  LizardState<T> st;
  st.reset(c, s);
  const int H = s.n_heads, Hkv = s.n_kv_heads, D = s.head_dim;
  for (int64_t i = 0; i < in.L; ++i)
    lizard_step(c, s, p, rope, st, in.x ? in.x + i * s.d_model : nullptr, in.q + i * H * D, in.k + i * Hkv * D,
                in.v + i * Hkv * D, position(in.pos, i), y + i * H * D);
  if (final_state) *final_state = std::move(st);
}

#define LZ_INST(T)                                                                                          \
  template void lizard_forward_parallel<T>(const LizardConfig&, const LizardShape&, const LizardParamsT<T>&,   \
                                           const LizardRope*, const LizardInput<T>&, T*);                      \
  template void lizard_step<T>(const LizardConfig&, const LizardShape&, const LizardParamsT<T>&,               \
                               const LizardRope*, LizardState<T>&, const T*, const T*, const T*, const T*,     \
                               int64_t, T*);                                                                   \
  template void lizard_forward_recurrent<T>(const LizardConfig&, const LizardShape&, const LizardParamsT<T>&,  \
                                            const LizardRope*, const LizardInput<T>&, T*, LizardState<T>*);
LZ_INST(float)
LZ_INST(double)
#undef LZ_INST

}  // namespace lizard
