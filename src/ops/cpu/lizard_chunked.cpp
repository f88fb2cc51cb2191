// Lizard layer: the chunked (hardware-aware) forward and its hand-derived backward.
// The math is written down at the top of lizard_attention.h.
#include <omp.h>

#include <cstring>

#include "ops/cpu/lizard_attention.h"
#include "ops/cpu/lizard_common.h"

namespace lizard {

using namespace lz;

namespace {

// OpenBLAS (pthread build) would start its own threads inside each head's small products;
// with heads already spread over OpenMP threads that only oversubscribes the cores.
struct BlasSingleThread {
  int prev = 1;
  bool active = false;
  explicit BlasSingleThread(bool on) {
    if (!on) return;
    prev = openblas_get_num_threads();
    active = prev > 1;
    if (active) openblas_set_num_threads(1);
  }
  ~BlasSingleThread() {
    if (active) openblas_set_num_threads(prev);
  }
};

template <typename T>
struct HeadSave {
  std::vector<T> states;             // [N, 2F, D+1] state entering query chunk n
  std::vector<T> out, A, lse;        // lizard: [L, D+1] (N|den), [L, D], [L]
  std::vector<T> M, Den, Wd, Ld;     // lolcats: [L] shift, scaled denominator, window/linear sums
  std::vector<T> Wn, Ln;             // lolcats: [L, D]
};

template <typename T>
struct Ctx {
  const Cfg& c;
  const LizardShape& s;
  const LizardParamsT<T>& p;
  const Prepared<T>& pr;
  const LizardInput<T>& in;
  int C = 0, N = 0, nw = 0, F2 = 0, Dv = 0, ldq = 0, ldk = 0;
  T scale = 0;
  // Continuing a sequence (forward only): the P tokens before this input (relative indices
  // -P .. -1, [P, Hkv, D] as the window sees them) and the gate state entering the first chunk
  // ([H, 2F, D+1], pending decay applied). P = 0, S0 = null: a fresh sequence.
  const T* pre_kw = nullptr;
  const T* pre_v = nullptr;
  int64_t P = 0;
  const T* S0 = nullptr;

  Ctx(const Cfg& c_, const LizardShape& s_, const LizardParamsT<T>& p_, const Prepared<T>& pr_,
      const LizardInput<T>& in_)
      : c(c_), s(s_), p(p_), pr(pr_), in(in_) {
    C = c.chunk;
    N = int((pr.L + C - 1) / C);
    nw = (c.window + C - 1) / C;
    F2 = 2 * pr.F;
    Dv = pr.D + 1;
    ldq = pr.H * pr.D;
    ldk = pr.Hkv * pr.D;
    scale = T(1) / std::sqrt(T(pr.D));
  }
  int64_t start(int n) const { return int64_t(n) * C; }
  int len(int n) const { return int(std::min<int64_t>(C, pr.L - start(n))); }
  int first_key_chunk(int n) const { return std::max(0, n - nw); }

  // phi of rows [s0, s0+cn) for head h; u is scratch [cn, F]; phq or phk may be null.
  void features(int h, int64_t s0, int cn, T* u, T* phq, T* phk) const {
    const int D = pr.D, F = pr.F, g = s.kv_head(h);
    if (phq) {
      gemm(false, false, cn, F, D, T(1), pr.qf + s0 * ldq + h * D, ldq, p.feat_q.data() + size_t(h) * D * F, F,
           T(0), u, F);
      for (int r = 0; r < cn; ++r) feature_map(c.feature_act, F, u + size_t(r) * F, phq + size_t(r) * F2);
    }
    if (phk) {
      gemm(false, false, cn, F, D, T(1), pr.kf + s0 * ldk + g * D, ldk, p.feat_k.data() + size_t(h) * D * F, F,
           T(0), u, F);
      for (int r = 0; r < cn; ++r) feature_map(c.feature_act, F, u + size_t(r) * F, phk + size_t(r) * F2);
    }
  }
  // [v_t | 1] rows for kv head g.
  void vhat(int g, int64_t s0, int cn, T* Vh) const {
    const int D = pr.D;
    for (int r = 0; r < cn; ++r) {
      std::memcpy(Vh + size_t(r) * Dv, in.v + (s0 + r) * ldk + g * D, sizeof(T) * D);
      Vh[size_t(r) * Dv + D] = T(1);
    }
  }
  // Window scores of query chunk n against key chunk j: sc [cn, kc] = qw kw^T / sqrt(D).
  void scores(int h, int64_t s0, int cn, int64_t ks, int kc, T* sc) const {
    scores_at(h, s0, cn, pr.kw + ks * ldk, kc, sc);
  }
  // Same against kc key rows starting at kwb (row stride ldk).
  void scores_at(int h, int64_t s0, int cn, const T* kwb, int kc, T* sc) const {
    const int D = pr.D, g = s.kv_head(h);
    gemm(false, true, cn, kc, D, scale, pr.qw + s0 * ldq + h * D, ldq, kwb + g * D, ldk, T(0), sc, kc);
  }
  bool in_window(int64_t i, int64_t t) const { return t <= i && t > i - c.window; }
};

// ---- gate_skips_window: the gated branch over the keys t <= i - w only -----------------------------
// Query chunk n reads the state S_m entering chunk m = lag_chunk(n) (every key before chunk m is <= i - w for
// each of the chunk's rows) and key chunks m .. n under the mask t <= i - w (Bc: the head's cumulative log
// gamma, Bc_{-1} = 0):
//   [N|den]_i = e^{Bc_i - Bc_{mC-1}} phq_i S_m + sum_{j=m..n} sum_{t in j, t <= i-w} (phq_i.phk_t) e^{Bc_i - Bc_t} [v_t|1]
// Exact (no subtraction of the window's part from the full branch: that cancels to roundoff / eps while
// every key is still in the window).

template <typename T>
std::vector<T> cumulative_log_gamma(const Ctx<T>& X, int h) {
  std::vector<T> Bc(size_t(X.pr.L));
  T acc = 0;
  for (int64_t i = 0; i < X.pr.L; ++i) Bc[size_t(i)] = (acc += X.pr.lg[i * X.pr.G + X.pr.gate_col(h)]);
  return Bc;
}

template <typename T>
int lag_chunk(const Ctx<T>& X, int n) {
  const int64_t a = X.start(n) - X.c.window + 1;
  return a <= 0 ? 0 : int(a / X.C);
}

// e^{Bc_i - Bc_{mC-1}} for the rows of query chunk n, m = lag_chunk(n), into el [cn].
template <typename T>
void lag_row_decay(const Ctx<T>& X, int n, const T* Bc, T* el) {
  const int m = lag_chunk(X, n);
  const T base = m > 0 ? Bc[X.start(m) - 1] : T(0);
  for (int r = 0; r < X.len(n); ++r) el[r] = std::exp(Bc[X.start(n) + r] - base);
}

// Kl [cn, kc] = (phq phk_j^T) .* Ml with Ml = e^{Bc_i - Bc_t} [t <= i - w] (stored if given); phk_j [kc, F2]
// and Vh_j [kc, D+1] of key chunk j into the scratch given; false when no pair of the chunks qualifies.
template <typename T>
bool lag_kernel(const Ctx<T>& X, int h, int n, int j, const T* Bc, const T* phq, T* Kl, T* phkj, T* Vhj, T* u,
                T* Ml = nullptr) {
  const int64_t s0 = X.start(n), ks = X.start(j);
  const int cn = X.len(n), kc = X.len(j), w = X.c.window;
  if (ks > s0 + cn - 1 - w) return false;  // no key of chunk j is <= i - w for any row
  X.features(h, ks, kc, u, nullptr, phkj);
  X.vhat(X.s.kv_head(h), ks, kc, Vhj);
  gemm(false, true, cn, kc, X.F2, T(1), phq, X.F2, phkj, X.F2, T(0), Kl, kc);
  for (int r = 0; r < cn; ++r)
    for (int t = 0; t < kc; ++t) {
      const int64_t i = s0 + r, tt = ks + t;
      const T ml = tt <= i - w ? std::exp(Bc[i] - Bc[tt]) : T(0);
      Kl[size_t(r) * kc + t] *= ml;
      if (Ml) Ml[size_t(r) * kc + t] = ml;
    }
  return true;
}

// ---- lizard combine: forward of one head ---------------------------------------------------------

template <typename T>
void head_forward_lizard(const Ctx<T>& X, int h, T* y, HeadSave<T>* sv, T* Sfinal) {
  const auto& pr = X.pr;
  const int C = X.C, D = pr.D, F = pr.F, F2 = X.F2, Dv = X.Dv, H = pr.H, G = pr.G, gc = pr.gate_col(h);
  const int g = X.s.kv_head(h);
  const T eps = T(X.c.eps), al = alpha_of(X.c, X.p, h);
  const T* mu = meta_row(X.c, X.p, h);
  const int m = X.c.meta_tokens;
  const MetaSum<T> ms(mu, m);
  const T mu_max = ms.max, mu_sum = ms.sum;

  std::vector<T> u(size_t(C) * pr.F), phq(size_t(C) * F2), phk(size_t(C) * F2), Vh(size_t(C) * Dv),
      P(size_t(C) * C), out(size_t(C) * Dv), b(C), S(size_t(F2) * Dv, T(0));
  std::vector<T> A(size_t(C) * D), rm(C), rl(C);
  (void)F;
  if (X.S0) std::copy(X.S0 + size_t(h) * F2 * Dv, X.S0 + size_t(h + 1) * F2 * Dv, S.begin());
  // gate_skips_window: every chunk's entering state (sv->states when saving, else allS), Bc, the lag rows'
  // decays, one key chunk's scratch
  const bool skip = X.c.gate_skips_window;
  std::vector<T> allS, Bc, el, phkj, Vhj, uj;
  T* states = nullptr;
  if (skip) {
    if (!sv) allS.resize(size_t(X.N) * F2 * Dv);
    states = sv ? sv->states.data() : allS.data();
    Bc = cumulative_log_gamma(X, h), el.resize(C);
    phkj.resize(size_t(C) * F2), Vhj.resize(size_t(C) * Dv), uj.resize(size_t(C) * pr.F);
  }
  for (int n = 0; n < X.N; ++n) {
    const int64_t s0 = X.start(n);
    const int cn = X.len(n);
    X.features(h, s0, cn, u.data(), phq.data(), phk.data());
    X.vhat(g, s0, cn, Vh.data());
    T acc = 0;
    for (int r = 0; r < cn; ++r) b[r] = (acc += pr.lg[(s0 + r) * G + gc]);
    if (sv) std::copy(S.begin(), S.end(), sv->states.begin() + size_t(n) * F2 * Dv);
    if (skip) {  // gate_skips_window: S_m of the lag chunk, then key chunks m .. n masked (see lag_kernel)
      if (!sv) std::copy(S.begin(), S.end(), states + size_t(n) * F2 * Dv);  // (sv: stored just above)
      const int lm = lag_chunk(X, n);
      gemm(false, false, cn, Dv, F2, T(1), phq.data(), F2, states + size_t(lm) * F2 * Dv, Dv, T(0), out.data(), Dv);
      lag_row_decay(X, n, Bc.data(), el.data());
      for (int r = 0; r < cn; ++r)
        for (int d = 0; d < Dv; ++d) out[size_t(r) * Dv + d] *= el[r];
      for (int j = lm; j <= n; ++j)
        if (lag_kernel(X, h, n, j, Bc.data(), phq.data(), P.data(), phkj.data(), Vhj.data(), uj.data()))
          gemm(false, false, cn, Dv, X.len(j), T(1), P.data(), X.len(j), Vhj.data(), Dv, T(1), out.data(), Dv);
    } else {
      // inter-chunk: e^{b_i} phi_q S_n
      gemm(false, false, cn, Dv, F2, T(1), phq.data(), F2, S.data(), Dv, T(0), out.data(), Dv);
      for (int r = 0; r < cn; ++r) {
        const T e = std::exp(b[r]);
        for (int d = 0; d < Dv; ++d) out[size_t(r) * Dv + d] *= e;
      }
      // intra-chunk: (phi_q phi_k^T .* e^{b_i - b_t} .* causal) [V|1]
      gemm(false, true, cn, cn, F2, T(1), phq.data(), F2, phk.data(), F2, T(0), P.data(), cn);
      for (int r = 0; r < cn; ++r)
        for (int t = 0; t < cn; ++t) P[size_t(r) * cn + t] = t <= r ? P[size_t(r) * cn + t] * std::exp(b[r] - b[t]) : T(0);
      gemm(false, false, cn, Dv, cn, T(1), P.data(), cn, Vh.data(), Dv, T(1), out.data(), Dv);
    }
    // state: S_{n+1} = e^{b_C} S_n + (phi_k .* e^{b_C - b_t})^T [V|1]
    const T bl = b[cn - 1];
    for (int t = 0; t < cn; ++t) {
      const T e = std::exp(bl - b[t]);
      for (int f = 0; f < F2; ++f) phk[size_t(t) * F2 + f] *= e;
    }
    gemm(true, false, F2, Dv, cn, T(1), phk.data(), F2, Vh.data(), Dv, std::exp(bl), S.data(), Dv);

    // window: key chunks n-nw .. n, online max seeded with the meta sinks
    for (int r = 0; r < cn; ++r) rm[r] = mu_max, rl[r] = mu_sum;
    std::fill(A.begin(), A.begin() + size_t(cn) * D, T(0));
    // One block of kc keys at relative indices ks.. (rows kwb, vb of stride ldk).
    auto key_block = [&](int64_t ks, int kc, const T* kwb, const T* vb) {
      if (ks + kc - 1 <= s0 - X.c.window) return;  // entirely before every row's window
      X.scores_at(h, s0, cn, kwb, kc, P.data());
      for (int r = 0; r < cn; ++r) {
        const int64_t i = s0 + r;
        T* sc = &P[size_t(r) * kc];
        T bm = -std::numeric_limits<T>::infinity();
        for (int t = 0; t < kc; ++t)
          if (X.in_window(i, ks + t)) bm = std::max(bm, sc[t]);
        if (bm == -std::numeric_limits<T>::infinity()) {
          std::fill(sc, sc + kc, T(0));
          continue;
        }
        const T mnew = std::max(rm[r], bm);
        if (mnew > rm[r]) {
          const T corr = rm[r] == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(rm[r] - mnew);
          rl[r] *= corr;
          for (int d = 0; d < D; ++d) A[size_t(r) * D + d] *= corr;
          rm[r] = mnew;
        }
        T sum = 0;
        for (int t = 0; t < kc; ++t) {
          sc[t] = X.in_window(i, ks + t) ? std::exp(sc[t] - mnew) : T(0);
          sum += sc[t];
        }
        rl[r] += sum;
      }
      gemm(false, false, cn, D, kc, T(1), P.data(), kc, vb + g * D, X.ldk, T(1), A.data(), D);
    };
    for (int64_t ks = -X.P; ks < 0; ks += C) {  // tokens before this input (continuation)
      const int kc = int(std::min<int64_t>(C, -ks));
      key_block(ks, kc, X.pre_kw + (X.P + ks) * X.ldk, X.pre_v + (X.P + ks) * X.ldk);
    }
    for (int j = X.first_key_chunk(n); j <= n; ++j)
      key_block(X.start(j), X.len(j), pr.kw + X.start(j) * X.ldk, X.in.v + X.start(j) * X.ldk);
    for (int r = 0; r < cn; ++r) {
      const T inv_l = T(1) / rl[r];
      for (int d = 0; d < D; ++d) A[size_t(r) * D + d] *= inv_l;
      const T den = out[size_t(r) * Dv + D];
      // meta_weights_gate: the gated branch weighted by the sinks' share mu_sum e^{mu_max - rm} / rl
      const T pm = X.c.meta_weights_gate ? mu_sum * std::exp(mu_max - rm[r]) * inv_l : T(1);
      T* yr = y + ((s0 + r) * H + h) * D;
      if (X.c.shared_normaliser) {  // y = (pm N + al A) / (pm (den + eps) + 1 - pm)
        const T iq = T(1) / (pm * (den + eps) + (T(1) - pm));
        for (int d = 0; d < D; ++d) yr[d] = (pm * out[size_t(r) * Dv + d] + al * A[size_t(r) * D + d]) * iq;
      } else {
        for (int d = 0; d < D; ++d) yr[d] = pm * out[size_t(r) * Dv + d] / (den + eps) + al * A[size_t(r) * D + d];
      }
      if (sv) sv->lse[s0 + r] = rm[r] + std::log(rl[r]);
    }
    if (sv) {
      std::copy(out.begin(), out.begin() + size_t(cn) * Dv, sv->out.begin() + s0 * Dv);
      std::copy(A.begin(), A.begin() + size_t(cn) * D, sv->A.begin() + s0 * D);
    }
  }
  if (Sfinal && skip) {
    // gate_skips_window: the state after the last token covers t <= L-1-w (lizard_step's S):
    // e^{Bc_{L-1} - Bc_{mC-1}} S_m + sum_{t = mC .. L-1-w} e^{Bc_{L-1} - Bc_t} phk_t^T [v_t|1], mC <= L-w.
    const int64_t L = pr.L, last = L - 1 - X.c.window;
    std::fill(Sfinal, Sfinal + size_t(F2) * Dv, T(0));
    if (last >= 0) {
      const int m = int((L - X.c.window) / C);
      const T e0 = std::exp(Bc[L - 1] - (m > 0 ? Bc[X.start(m) - 1] : T(0)));
      for (size_t e = 0; e < size_t(F2) * Dv; ++e) Sfinal[e] = e0 * states[size_t(m) * F2 * Dv + e];
      for (int j = m; X.start(j) <= last; ++j) {
        const int64_t ks = X.start(j);
        const int kc = int(std::min<int64_t>(X.len(j), last - ks + 1));
        X.features(h, ks, kc, uj.data(), nullptr, phkj.data());
        X.vhat(g, ks, kc, Vhj.data());
        for (int t = 0; t < kc; ++t) {
          const T e = std::exp(Bc[L - 1] - Bc[ks + t]);
          for (int f = 0; f < F2; ++f) phkj[size_t(t) * F2 + f] *= e;
        }
        gemm(true, false, F2, Dv, kc, T(1), phkj.data(), F2, Vhj.data(), Dv, T(1), Sfinal, Dv);
      }
    }
  } else if (Sfinal) {
    std::copy(S.begin(), S.end(), Sfinal);
  }
}

// ---- lolcats combine: forward of one head --------------------------------------------------------

template <typename T>
void head_forward_lolcats(const Ctx<T>& X, int h, T* y, HeadSave<T>* sv, T* Sfinal) {
  const auto& pr = X.pr;
  const int64_t L = pr.L;
  const int C = X.C, D = pr.D, F2 = X.F2, Dv = X.Dv, H = pr.H, w = X.c.window;
  const int g = X.s.kv_head(h);
  const T eps = T(X.c.eps), sg = sigmoid(X.p.lolcats_f[h]);
  std::vector<T> u(size_t(C) * pr.F), phk_all(size_t(L) * F2), phq(size_t(C) * F2), Vh(size_t(C) * Dv),
      sc(size_t(C) * C), Pl(size_t(C) * C), lin(size_t(C) * Dv), acc(size_t(C) * D), rm(C), rl(C),
      S(size_t(F2) * Dv, T(0));
  for (int n = 0; n < X.N; ++n) X.features(h, X.start(n), X.len(n), u.data(), nullptr, &phk_all[X.start(n) * F2]);
  int folded = 0;  // key chunks already in S
  for (int n = 0; n < X.N; ++n) {
    const int64_t s0 = X.start(n);
    const int cn = X.len(n);
    for (; folded < n - X.nw; ++folded) {
      X.vhat(g, X.start(folded), X.len(folded), Vh.data());
      gemm(true, false, F2, Dv, X.len(folded), T(1), &phk_all[X.start(folded) * F2], F2, Vh.data(), Dv, T(1),
           S.data(), Dv);
    }
    if (sv) std::copy(S.begin(), S.end(), sv->states.begin() + size_t(n) * F2 * Dv);
    X.features(h, s0, cn, u.data(), phq.data(), nullptr);
    gemm(false, false, cn, Dv, F2, T(1), phq.data(), F2, S.data(), Dv, T(0), lin.data(), Dv);
    for (int r = 0; r < cn; ++r) rm[r] = 0, rl[r] = 0;  // shift M = max(0, max s)
    std::fill(acc.begin(), acc.begin() + size_t(cn) * D, T(0));
    for (int j = X.first_key_chunk(n); j <= n; ++j) {
      const int64_t ks = X.start(j);
      const int kc = X.len(j);
      X.scores(h, s0, cn, ks, kc, sc.data());
      gemm(false, true, cn, kc, F2, T(1), phq.data(), F2, &phk_all[ks * F2], F2, T(0), Pl.data(), kc);
      bool any_lin = false;
      for (int r = 0; r < cn; ++r) {
        const int64_t i = s0 + r;
        T* s = &sc[size_t(r) * kc];
        T* pl = &Pl[size_t(r) * kc];
        T bm = -std::numeric_limits<T>::infinity();
        for (int t = 0; t < kc; ++t) {
          const int64_t tt = ks + t;
          if (X.in_window(i, tt)) {
            bm = std::max(bm, s[t]);
            pl[t] = 0;
          } else if (tt > i - w) {  // future
            pl[t] = 0;
          } else {
            any_lin = true;
          }
        }
        if (bm > rm[r]) {
          const T corr = std::exp(rm[r] - bm);
          rl[r] *= corr;
          for (int d = 0; d < D; ++d) acc[size_t(r) * D + d] *= corr;
          rm[r] = bm;
        }
        T sum = 0;
        for (int t = 0; t < kc; ++t) {
          s[t] = X.in_window(i, ks + t) ? std::exp(s[t] - rm[r]) : T(0);
          sum += s[t];
        }
        rl[r] += sum;
      }
      gemm(false, false, cn, D, kc, T(1), sc.data(), kc, X.in.v + ks * X.ldk + g * D, X.ldk, T(1), acc.data(), D);
      if (any_lin) {
        X.vhat(g, ks, kc, Vh.data());
        gemm(false, false, cn, Dv, kc, T(1), Pl.data(), kc, Vh.data(), Dv, T(1), lin.data(), Dv);
      }
    }
    for (int r = 0; r < cn; ++r) {
      const T e = std::exp(-rm[r]);
      const T ld = lin[size_t(r) * Dv + D];
      const T den = sg * rl[r] + (T(1) - sg) * e * ld + eps * e;
      T* yr = y + ((s0 + r) * H + h) * D;
      for (int d = 0; d < D; ++d)
        yr[d] = (sg * acc[size_t(r) * D + d] + (T(1) - sg) * e * lin[size_t(r) * Dv + d]) / den;
      if (sv) {
        const int64_t i = s0 + r;
        sv->M[i] = rm[r];
        sv->Den[i] = den;
        sv->Wd[i] = rl[r];
        sv->Ld[i] = ld;
        std::copy(&acc[size_t(r) * D], &acc[size_t(r) * D] + D, &sv->Wn[i * D]);
        std::copy(&lin[size_t(r) * Dv], &lin[size_t(r) * Dv] + D, &sv->Ln[i * D]);
      }
    }
  }
  if (Sfinal) {  // tokens t <= L-1-w have left the window of the next token's predecessor
    for (int64_t t = int64_t(folded) * C; t <= L - 1 - w; ++t) {
      const T* vt = X.in.v + t * X.ldk + g * D;
      for (int f = 0; f < F2; ++f) {
        const T pk = phk_all[t * F2 + f];
        for (int d = 0; d < D; ++d) S[size_t(f) * Dv + d] += pk * vt[d];
        S[size_t(f) * Dv + D] += pk;
      }
    }
    std::copy(S.begin(), S.end(), Sfinal);
  }
}

template <typename T>
void head_forward(const Ctx<T>& X, int h, T* y, HeadSave<T>* sv, T* Sfinal) {
  if (sv) {
    const size_t L = size_t(X.pr.L), D = X.pr.D;
    sv->states.assign(size_t(X.N) * X.F2 * X.Dv, T(0));
    if (X.c.combine == Cfg::Combine::Lizard) {
      sv->out.assign(L * X.Dv, T(0));
      sv->A.assign(L * D, T(0));
      sv->lse.assign(L, T(0));
    } else {
      sv->M.assign(L, T(0));
      sv->Den.assign(L, T(0));
      sv->Wd.assign(L, T(0));
      sv->Ld.assign(L, T(0));
      sv->Wn.assign(L * D, T(0));
      sv->Ln.assign(L * D, T(0));
    }
  }
  if (X.c.combine == Cfg::Combine::Lizard)
    head_forward_lizard(X, h, y, sv, Sfinal);
  else
    head_forward_lolcats(X, h, y, sv, Sfinal);
}

// Gradient buffers shared by the heads; each head writes only its own slices.
template <typename T>
struct Grads {
  std::vector<T> dqf, dqw;        // [L, H, D]
  std::vector<T> dkf, dkw, dv;    // [H, L, D] per query head, reduced to kv heads at the end
  std::vector<T> da;              // [L, H] d(gate pre-activation) of head h's gate column
  std::vector<T> dmu, dal, df;    // [H, m], [H], [H]
  std::vector<T> dWq, dWk;        // [H, D, F]
};

// Softmax-window backward for one query chunk (lizard and lolcats share it):
//   p_it = coef_i * exp(s_it - shift_i) (window pairs only), d s_it = p_it (dA_i . v_t - delta_i),
//   dA rows at dA + r * ld_dA.
template <typename T>
void window_backward(const Ctx<T>& X, int h, int n, const T* coef, const T* shift, const T* delta, const T* dA,
                     int ld_dA, Grads<T>& gr, std::vector<T>& p, std::vector<T>& dP) {
  const int D = X.pr.D, H = X.pr.H, g = X.s.kv_head(h);
  const int64_t s0 = X.start(n), L = X.pr.L;
  const int cn = X.len(n);
  T* dkw = &gr.dkw[size_t(h) * L * D];
  T* dv = &gr.dv[size_t(h) * L * D];
  for (int j = X.first_key_chunk(n); j <= n; ++j) {
    const int64_t ks = X.start(j);
    const int kc = X.len(j);
    if (ks + kc - 1 <= s0 - X.c.window) continue;
    X.scores(h, s0, cn, ks, kc, p.data());
    for (int r = 0; r < cn; ++r)
      for (int t = 0; t < kc; ++t) {
        T& pv = p[size_t(r) * kc + t];
        pv = X.in_window(s0 + r, ks + t) ? coef[r] * std::exp(pv - shift[r]) : T(0);
      }
    gemm(false, true, cn, kc, D, T(1), dA, ld_dA, X.in.v + ks * X.ldk + g * D, X.ldk, T(0), dP.data(), kc);
    for (int r = 0; r < cn; ++r)
      for (int t = 0; t < kc; ++t) {
        T& d = dP[size_t(r) * kc + t];
        d = p[size_t(r) * kc + t] * (d - delta[r]) * X.scale;
      }
    gemm(false, false, cn, D, kc, T(1), dP.data(), kc, X.pr.kw + ks * X.ldk + g * D, X.ldk, T(1),
         &gr.dqw[(s0 * H + h) * D], X.ldq);
    gemm(true, false, kc, D, cn, T(1), dP.data(), kc, X.pr.qw + s0 * X.ldq + h * D, X.ldq, T(1), dkw + ks * D, D);
    gemm(true, false, kc, D, cn, T(1), p.data(), kc, dA, ld_dA, T(1), dv + ks * D, D);
  }
}

// Feature-map backward for rows [s0, s0+cn): weight gradient and input gradient (added).
template <typename T>
void features_backward(const Ctx<T>& X, int h, bool query, int64_t s0, int cn, const T* phi, const T* dphi, T* du,
                       Grads<T>& gr) {
  const int D = X.pr.D, F = X.pr.F, F2 = X.F2, g = X.s.kv_head(h);
  const int64_t L = X.pr.L;
  for (int r = 0; r < cn; ++r)
    feature_map_bwd(X.c.feature_act, F, phi + size_t(r) * F2, dphi + size_t(r) * F2, du + size_t(r) * F);
  if (query) {
    const T* W = X.p.feat_q.data() + size_t(h) * D * F;
    gemm(true, false, D, F, cn, T(1), X.pr.qf + s0 * X.ldq + h * D, X.ldq, du, F, T(1), &gr.dWq[size_t(h) * D * F], F);
    gemm(false, true, cn, D, F, T(1), du, F, W, F, T(1), &gr.dqf[(s0 * X.pr.H + h) * D], X.ldq);
  } else {
    const T* W = X.p.feat_k.data() + size_t(h) * D * F;
    gemm(true, false, D, F, cn, T(1), X.pr.kf + s0 * X.ldk + g * D, X.ldk, du, F, T(1), &gr.dWk[size_t(h) * D * F], F);
    gemm(false, true, cn, D, F, T(1), du, F, W, F, T(1), &gr.dkf[(size_t(h) * L + s0) * D], D);
  }
}

template <typename T>
void head_backward_lizard(const Ctx<T>& X, int h, const HeadSave<T>& sv, const T* dy, Grads<T>& gr) {
  const auto& pr = X.pr;
  const int64_t L = pr.L;
  const int C = X.C, D = pr.D, F2 = X.F2, Dv = X.Dv, H = pr.H, G = pr.G, gc = pr.gate_col(h), m = X.c.meta_tokens;
  const int g = X.s.kv_head(h);
  const T eps = T(X.c.eps), al = alpha_of(X.c, X.p, h);
  const T* mu = meta_row(X.c, X.p, h);
  std::vector<T> dOut(size_t(L) * Dv), dA(size_t(L) * D), dpm(X.c.meta_weights_gate ? L : 0), pm(dpm.size());
  const MetaSum<T> ms(mu, m);
  const T mu_max = ms.max, mu_sum = ms.sum;
  T dal = 0;
  for (int64_t i = 0; i < L; ++i) {
    const T* dyi = dy + (i * H + h) * D;
    const T* oi = &sv.out[i * Dv];
    const T inv = T(1) / (oi[D] + eps);
    // meta_weights_gate: y = pm y_gate + alpha A with pm = the sinks' share of the window softmax;
    // dy reaches the gated branch scaled by pm, and d pm = dy . y_gate goes to the window's softmax.
    const T w = X.c.meta_weights_gate ? (pm[i] = mu_sum * std::exp(mu_max - sv.lse[i])) : T(1);
    const T* Ai = &sv.A[i * D];
    if (X.c.shared_normaliser) {
      // y = (w N + al A) / Q with Q = w d + 1 - w, d = den + eps: dN = w dy / Q, d den = -w (dy . y) / Q,
      // dA = al dy / Q, d al = dy . A / Q, d w = (dy . N - (d - 1)(dy . y)) / Q.
      const T dd = oi[D] + eps, iq = T(1) / (w * dd + (T(1) - w));
      T gn = 0, ga = 0;
      for (int d = 0; d < D; ++d) {
        gn += dyi[d] * oi[d];
        ga += dyi[d] * Ai[d];
        dOut[i * Dv + d] = w * dyi[d] * iq;
        dA[i * D + d] = al * dyi[d] * iq;
      }
      const T gy = (w * gn + al * ga) * iq;  // dy . y
      dOut[i * Dv + D] = -w * gy * iq;
      dpm[i] = (gn - (dd - T(1)) * gy) * iq;
      dal += ga * iq;
      continue;
    }
    T gd = 0;
    for (int d = 0; d < D; ++d) {
      dOut[i * Dv + d] = w * dyi[d] * inv;
      gd += dyi[d] * oi[d];
      dA[i * D + d] = al * dyi[d];
    }
    dOut[i * Dv + D] = -w * gd * inv * inv;
    if (X.c.meta_weights_gate) dpm[i] = gd * inv;
    dal += dot(dyi, Ai, D);
  }
  gr.dal[h] += dal;
  // window branch
  std::vector<T> p(size_t(C) * C), dP(size_t(C) * C), delta(C), ones(C, T(1));
  for (int n = 0; n < X.N; ++n) {
    const int64_t s0 = X.start(n);
    const int cn = X.len(n);
    for (int r = 0; r < cn; ++r) {
      // The softmax over sinks and window keys: the window keys' outputs are v_t (seen through dA), the
      // sinks' is the scalar pm (seen through dpm); delta = sum over both of p * (its output's gradient).
      const T g = X.c.meta_weights_gate ? dpm[s0 + r] : T(0);
      delta[r] = dot(&dA[(s0 + r) * D], &sv.A[(s0 + r) * D], D) + (X.c.meta_weights_gate ? g * pm[s0 + r] : T(0));
      for (int j = 0; j < m; ++j) gr.dmu[size_t(h) * m + j] += std::exp(mu[j] - sv.lse[s0 + r]) * (g - delta[r]);
    }
    window_backward(X, h, n, ones.data(), &sv.lse[s0], delta.data(), &dA[s0 * D], D, gr, p, dP);
  }
  // gate branch, chunks in reverse with dS
  std::vector<T> u(size_t(C) * pr.F), phq(size_t(C) * F2), phk(size_t(C) * F2), Vh(size_t(C) * Dv),
      dphq(size_t(C) * F2), dphk(size_t(C) * F2), dVh(size_t(C) * Dv), Gm(size_t(C) * C), b(C), eb(C),
      dS(size_t(F2) * Dv, T(0)), dB(L), phqs(size_t(C) * F2);
  T* dv = &gr.dv[size_t(h) * L * D];
  // gate_skips_window (see lag_kernel): Bc, row decays, one key chunk's scratch, pending key gradients, and
  // the per-state gradients of the queries that read each state
  const bool skip = X.c.gate_skips_window;
  std::vector<T> Bc, el, Kl, Ml, Gl, phkj, Vhj, uj, dphk_pend, dVh_pend, pend;
  if (skip) {
    Bc = cumulative_log_gamma(X, h), el.resize(C);
    Kl.resize(size_t(C) * C), Ml.resize(size_t(C) * C), Gl.resize(size_t(C) * C);
    phkj.resize(size_t(C) * F2), Vhj.resize(size_t(C) * Dv), uj.resize(size_t(C) * pr.F);
    dphk_pend.assign(size_t(L) * F2, T(0)), dVh_pend.assign(size_t(L) * Dv, T(0));
    pend.assign(size_t(X.N) * F2 * Dv, T(0));
  }
  for (int n = X.N - 1; n >= 0; --n) {
    const int64_t s0 = X.start(n);
    const int cn = X.len(n);
    X.features(h, s0, cn, u.data(), phq.data(), phk.data());
    X.vhat(g, s0, cn, Vh.data());
    T acc = 0;
    for (int r = 0; r < cn; ++r) b[r] = (acc += pr.lg[(s0 + r) * G + gc]);
    const T bl = b[cn - 1];
    for (int t = 0; t < cn; ++t) eb[t] = std::exp(bl - b[t]);
    const int lm = skip ? lag_chunk(X, n) : n;  // the state this chunk's queries read
    const T* Sn = &sv.states[size_t(lm) * F2 * Dv];
    const T* dOc = &dOut[s0 * Dv];
    // inter-chunk terms (dS is the gradient of the state leaving this chunk)
    gemm(false, true, cn, F2, Dv, T(1), dOc, Dv, Sn, Dv, T(0), dphq.data(), F2);
    if (skip) lag_row_decay(X, n, Bc.data(), el.data());
    for (int r = 0; r < cn; ++r) {
      const T e = skip ? el[r] : std::exp(b[r]);
      for (int f = 0; f < F2; ++f) dphq[size_t(r) * F2 + f] *= e;
    }
    gemm(false, false, cn, Dv, F2, T(1), phk.data(), F2, dS.data(), Dv, T(0), dVh.data(), Dv);
    gemm(false, true, cn, F2, Dv, T(1), Vh.data(), Dv, dS.data(), Dv, T(0), dphk.data(), F2);
    for (int t = 0; t < cn; ++t) {
      for (int d = 0; d < Dv; ++d) dVh[size_t(t) * Dv + d] *= eb[t];
      for (int f = 0; f < F2; ++f) dphk[size_t(t) * F2 + f] *= eb[t];
    }
    if (skip) {
      // gate_skips_window: key chunks lm .. n under the lag mask (lag_kernel): Gl = (dOut Vh_j^T) .* Ml,
      // dphq += Gl phk_j, dphk_j += Gl^T phq, dVh_j += Kl^T dOut (chunks before n: pending until their turn);
      // the queries' state gradient goes to the lag chunk's state: pend_lm += (el .* phq)^T dOut.
      for (int j = lm; j <= n; ++j) {
        if (!lag_kernel(X, h, n, j, Bc.data(), phq.data(), Kl.data(), phkj.data(), Vhj.data(), uj.data(), Ml.data()))
          continue;
        const int64_t ks = X.start(j);
        const int kc = X.len(j);
        gemm(false, true, cn, kc, Dv, T(1), dOc, Dv, Vhj.data(), Dv, T(0), Gl.data(), kc);
        for (size_t e = 0; e < size_t(cn) * kc; ++e) Gl[e] *= Ml[e];
        gemm(false, false, cn, F2, kc, T(1), Gl.data(), kc, phkj.data(), F2, T(1), dphq.data(), F2);
        gemm(true, false, kc, F2, cn, T(1), Gl.data(), kc, phq.data(), F2, T(1), &dphk_pend[size_t(ks) * F2], F2);
        gemm(true, false, kc, Dv, cn, T(1), Kl.data(), kc, dOc, Dv, T(1), &dVh_pend[size_t(ks) * Dv], Dv);
      }
      for (size_t e = 0; e < size_t(cn) * F2; ++e) dphk[e] += dphk_pend[size_t(s0) * F2 + e];
      for (size_t e = 0; e < size_t(cn) * Dv; ++e) dVh[e] += dVh_pend[size_t(s0) * Dv + e];
      for (int r = 0; r < cn; ++r)
        for (int f = 0; f < F2; ++f) phqs[size_t(r) * F2 + f] = phq[size_t(r) * F2 + f] * el[r];
      gemm(true, false, F2, Dv, cn, T(1), phqs.data(), F2, dOc, Dv, T(1), &pend[size_t(lm) * F2 * Dv], Dv);
      // dS_n = e^{b_C} dS_{n+1} + pend_n
      const T ebl = std::exp(bl);
      for (size_t e = 0; e < dS.size(); ++e) dS[e] = ebl * dS[e] + pend[size_t(n) * F2 * Dv + e];
    } else {
      // intra-chunk: P = phq phk^T .* Dm, Gm = dOut Vh^T .* Dm
      gemm(false, true, cn, cn, F2, T(1), phq.data(), F2, phk.data(), F2, T(0), p.data(), cn);
      gemm(false, true, cn, cn, Dv, T(1), dOc, Dv, Vh.data(), Dv, T(0), Gm.data(), cn);
      for (int r = 0; r < cn; ++r)
        for (int t = 0; t < cn; ++t) {
          const T dm = t <= r ? std::exp(b[r] - b[t]) : T(0);
          p[size_t(r) * cn + t] *= dm;
          Gm[size_t(r) * cn + t] *= dm;
        }
      gemm(false, false, cn, F2, cn, T(1), Gm.data(), cn, phk.data(), F2, T(1), dphq.data(), F2);
      gemm(true, false, cn, F2, cn, T(1), Gm.data(), cn, phq.data(), F2, T(1), dphk.data(), F2);
      gemm(true, false, cn, Dv, cn, T(1), p.data(), cn, dOc, Dv, T(1), dVh.data(), Dv);
      // dS_n = e^{b_C} dS_{n+1} + (e^{b} .* phq)^T dOut
      for (int r = 0; r < cn; ++r) {
        const T e = std::exp(b[r]);
        for (int f = 0; f < F2; ++f) phqs[size_t(r) * F2 + f] = phq[size_t(r) * F2 + f] * e;
      }
      gemm(true, false, F2, Dv, cn, T(1), phqs.data(), F2, dOc, Dv, std::exp(bl), dS.data(), Dv);
    }
    for (int r = 0; r < cn; ++r)
      dB[s0 + r] = dot(dOc + size_t(r) * Dv, &sv.out[(s0 + r) * Dv], Dv) -
                   dot(&Vh[size_t(r) * Dv], &dVh[size_t(r) * Dv], Dv);
    features_backward(X, h, true, s0, cn, phq.data(), dphq.data(), u.data(), gr);
    features_backward(X, h, false, s0, cn, phk.data(), dphk.data(), u.data(), gr);
    for (int t = 0; t < cn; ++t)
      for (int d = 0; d < D; ++d) dv[(s0 + t) * D + d] += dVh[size_t(t) * Dv + d];
  }
  // d lg_l = sum_{i >= l} dB_i; d a = d lg * (1 - sigmoid(a))
  double acc = 0;  // long suffix sums: accumulate in double even for float
  for (int64_t i = L - 1; i >= 0; --i) {
    acc += double(dB[i]);
    gr.da[i * H + h] = T(acc) * sigmoid(-pr.a[i * G + gc]);
  }
}

template <typename T>
void head_backward_lolcats(const Ctx<T>& X, int h, const HeadSave<T>& sv, const T* dy, Grads<T>& gr) {
  const auto& pr = X.pr;
  const int64_t L = pr.L;
  const int C = X.C, D = pr.D, F2 = X.F2, Dv = X.Dv, H = pr.H, w = X.c.window;
  const int g = X.s.kv_head(h);
  const T sg = sigmoid(X.p.lolcats_f[h]);
  std::vector<T> u(size_t(C) * pr.F), phq(size_t(L) * F2), phk(size_t(L) * F2), dphq(size_t(L) * F2, T(0)),
      dphk(size_t(L) * F2, T(0)), dVh(size_t(L) * Dv, T(0)), dOutL(size_t(L) * Dv), coef(L), dyy(L),
      dSq(size_t(X.N) * F2 * Dv), Vh(size_t(C) * Dv), p(size_t(C) * C), dP(size_t(C) * C), dSacc(size_t(F2) * Dv, T(0));
  for (int n = 0; n < X.N; ++n) X.features(h, X.start(n), X.len(n), u.data(), &phq[X.start(n) * F2], &phk[X.start(n) * F2]);
  T dsg = 0;
  for (int64_t i = 0; i < L; ++i) {
    const T* dyi = dy + (i * H + h) * D;
    const T e = std::exp(-sv.M[i]), den = sv.Den[i];
    T yy = 0, dwn = 0, dln = 0;
    for (int d = 0; d < D; ++d) {
      const T yi = (sg * sv.Wn[i * D + d] + (T(1) - sg) * e * sv.Ln[i * D + d]) / den;
      yy += dyi[d] * yi;
      dwn += dyi[d] * sv.Wn[i * D + d];
      dln += dyi[d] * sv.Ln[i * D + d];
    }
    dyy[i] = yy;
    dsg += (dwn - e * dln - yy * (sv.Wd[i] - e * sv.Ld[i])) / den;
    coef[i] = sg / den;
    const T cl = (T(1) - sg) * e / den;
    for (int d = 0; d < D; ++d) dOutL[i * Dv + d] = cl * dyi[d];
    dOutL[i * Dv + D] = -cl * yy;
  }
  gr.df[h] += dsg * sg * (T(1) - sg);
  for (int n = 0; n < X.N; ++n) {
    const int64_t s0 = X.start(n);
    const int cn = X.len(n);
    // linear part through the state (key chunks < n - nw)
    const T* Sn = &sv.states[size_t(n) * F2 * Dv];
    gemm(false, true, cn, F2, Dv, T(1), &dOutL[s0 * Dv], Dv, Sn, Dv, T(1), &dphq[s0 * F2], F2);
    gemm(true, false, F2, Dv, cn, T(1), &phq[s0 * F2], F2, &dOutL[s0 * Dv], Dv, T(0), &dSq[size_t(n) * F2 * Dv], Dv);
    // window pairs (shared softmax backward)
    window_backward(X, h, n, &coef[s0], &sv.M[s0], &dyy[s0], dy + (s0 * H + h) * D, X.ldq, gr, p, dP);
    // linear pairs inside the window chunks (t <= i - w)
    for (int j = X.first_key_chunk(n); j <= n; ++j) {
      const int64_t ks = X.start(j);
      const int kc = X.len(j);
      if (ks > s0 + cn - 1 - w) continue;  // no linear pair
      X.vhat(g, ks, kc, Vh.data());
      gemm(false, true, cn, kc, F2, T(1), &phq[s0 * F2], F2, &phk[ks * F2], F2, T(0), p.data(), kc);
      gemm(false, true, cn, kc, Dv, T(1), &dOutL[s0 * Dv], Dv, Vh.data(), Dv, T(0), dP.data(), kc);
      for (int r = 0; r < cn; ++r)
        for (int t = 0; t < kc; ++t)
          if (ks + t > s0 + r - w) p[size_t(r) * kc + t] = 0, dP[size_t(r) * kc + t] = 0;
      gemm(false, false, cn, F2, kc, T(1), dP.data(), kc, &phk[ks * F2], F2, T(1), &dphq[s0 * F2], F2);
      gemm(true, false, kc, F2, cn, T(1), dP.data(), kc, &phq[s0 * F2], F2, T(1), &dphk[ks * F2], F2);
      gemm(true, false, kc, Dv, cn, T(1), p.data(), kc, &dOutL[s0 * Dv], Dv, T(1), &dVh[ks * Dv], Dv);
    }
  }
  // key side of the state: chunk j is in the state of query chunks n >= j + nw + 1
  for (int n = X.N - 1; n >= 0; --n) {
    const int src = n + X.nw + 1;
    if (src < X.N)
      for (size_t e = 0; e < dSacc.size(); ++e) dSacc[e] += dSq[size_t(src) * F2 * Dv + e];
    const int64_t ks = X.start(n);
    const int kc = X.len(n);
    X.vhat(g, ks, kc, Vh.data());
    gemm(false, true, kc, F2, Dv, T(1), Vh.data(), Dv, dSacc.data(), Dv, T(1), &dphk[ks * F2], F2);
    gemm(false, false, kc, Dv, F2, T(1), &phk[ks * F2], F2, dSacc.data(), Dv, T(1), &dVh[ks * Dv], Dv);
  }
  T* dv = &gr.dv[size_t(h) * L * D];
  for (int n = 0; n < X.N; ++n) {
    const int64_t s0 = X.start(n);
    const int cn = X.len(n);
    features_backward(X, h, true, s0, cn, &phq[s0 * F2], &dphq[s0 * F2], u.data(), gr);
    features_backward(X, h, false, s0, cn, &phk[s0 * F2], &dphk[s0 * F2], u.data(), gr);
  }
  for (int64_t t = 0; t < L; ++t)
    for (int d = 0; d < D; ++d) dv[t * D + d] += dVh[t * Dv + d];
}

}  // namespace

// ---- public entry points -------------------------------------------------------------------------

template <typename T>
void lizard_forward_chunked(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p,
                            const LizardRope* rope, const LizardInput<T>& in, T* y, LizardState<T>* final_state,
                            const LizardState<T>* initial_state) {
  LZ_CHECK(!c.gate_skips_window || !(initial_state && initial_state->n_tokens > 0),
           "lizard: a gate_skips_window chunked forward can not continue a sequence; use lizard_step");
  Prepared<T> pr;
  prepare(c, s, p, rope, in, pr);
  Ctx<T> X(c, s, p, pr, in);
  const int H = pr.H, Hkv = pr.Hkv, D = pr.D, F2 = X.F2, Dv = X.Dv, w = c.window;
  const size_t rs = size_t(Hkv) * D;
  // Continuation: copy what is needed out of initial_state first (it may be final_state).
  int64_t n0 = 0;
  std::vector<T> S0, pre_kw, pre_v, ring_k0, ring_v0;
  if (initial_state && initial_state->n_tokens > 0) {
    const auto& is = *initial_state;
    LZ_CHECK(c.combine == Cfg::Combine::Lizard,
             "lizard: a LoLCATs chunked forward can not continue a sequence; use lizard_step");
    LZ_CHECK(is.S.size() == size_t(H) * F2 * D && is.z.size() == size_t(H) * F2 && is.log_scale.size() == size_t(H) &&
                 is.ring_k.size() == size_t(w) * rs && is.ring_v.size() == size_t(w) * rs,
             "lizard: the initial state does not match the config/shape");
    n0 = is.n_tokens;
    S0.resize(size_t(H) * F2 * Dv);
    for (int h = 0; h < H; ++h) {
      const T e = std::exp(is.log_scale[h]);
      for (int f = 0; f < F2; ++f) {
        for (int d = 0; d < D; ++d) S0[(size_t(h) * F2 + f) * Dv + d] = e * is.S[(size_t(h) * F2 + f) * D + d];
        S0[(size_t(h) * F2 + f) * Dv + D] = e * is.z[size_t(h) * F2 + f];
      }
    }
    // the window of the first new token reaches back w-1 tokens
    const int64_t P = std::min<int64_t>(n0, w - 1);
    pre_kw.resize(size_t(P) * rs);
    pre_v.resize(size_t(P) * rs);
    for (int64_t j = 0; j < P; ++j) {
      const size_t slot = size_t((n0 - P + j) % w);
      std::copy(&is.ring_k[slot * rs], &is.ring_k[slot * rs] + rs, &pre_kw[size_t(j) * rs]);
      std::copy(&is.ring_v[slot * rs], &is.ring_v[slot * rs] + rs, &pre_v[size_t(j) * rs]);
    }
    ring_k0 = is.ring_k;
    ring_v0 = is.ring_v;
    X.P = P;
    X.pre_kw = pre_kw.data();
    X.pre_v = pre_v.data();
    X.S0 = S0.data();
  }
  std::vector<T> Sfin;
  if (final_state) {
    final_state->reset(c, s);
    Sfin.assign(size_t(H) * F2 * Dv, T(0));
  }
  if (in.L > 0) {
    const bool par = H > 1 && int64_t(in.L) * H >= 1024 && omp_get_max_threads() > 1;  // tiny: no fork
    BlasSingleThread guard(par);
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int h = 0; h < H; ++h)
      head_forward(X, h, y, static_cast<HeadSave<T>*>(nullptr), final_state ? &Sfin[size_t(h) * F2 * Dv] : nullptr);
  }
  if (final_state) {
    auto& st = *final_state;
    st.n_tokens = n0 + in.L;
    if (in.L == 0 && !S0.empty()) Sfin = S0;  // nothing ran: the state passes through
    for (int h = 0; h < H; ++h)
      for (int f = 0; f < F2; ++f) {
        for (int d = 0; d < D; ++d) st.S[(size_t(h) * F2 + f) * D + d] = Sfin[(size_t(h) * F2 + f) * Dv + d];
        st.z[size_t(h) * F2 + f] = Sfin[(size_t(h) * F2 + f) * Dv + D];
      }
    if (!ring_k0.empty()) {  // tokens of the earlier input still in the window keep their slots
      st.ring_k = std::move(ring_k0);
      st.ring_v = std::move(ring_v0);
    }
    for (int64_t t = std::max<int64_t>(0, in.L - w); t < in.L; ++t) {
      const size_t slot = size_t((n0 + t) % w);
      std::copy(pr.kw + t * rs, pr.kw + (t + 1) * rs, &st.ring_k[slot * rs]);
      std::copy(in.v + t * rs, in.v + (t + 1) * rs, &st.ring_v[slot * rs]);
      if (!st.ring_kf.empty()) std::copy(pr.kf + t * rs, pr.kf + (t + 1) * rs, &st.ring_kf[slot * rs]);
      for (size_t h = 0; h < st.ring_lg.size() / size_t(w); ++h)  // gate_skips_window
        st.ring_lg[slot * size_t(H) + h] = pr.lg[t * pr.G + pr.gate_col(int(h))];
    }
  }
}

template <typename T>
void lizard_backward_chunked(const LizardConfig& c, const LizardShape& s, const LizardParamsT<T>& p,
                             const LizardRope* rope, const LizardInput<T>& in, const T* dy, LizardParamsT<T>& dp,
                             T* dx, T* dq, T* dk, T* dv) {
  Prepared<T> pr;
  prepare(c, s, p, rope, in, pr);
  if (dp.numel() == 0) dp.resize(c, s);
  dp.check(c, s);
  Ctx<T> X(c, s, p, pr, in);
  const int64_t L = in.L;
  const int H = pr.H, Hkv = pr.Hkv, D = pr.D, F = pr.F, G = pr.G, m = c.meta_tokens, dm = s.d_model;
  const bool lol = c.combine == Cfg::Combine::Lolcats;
  Grads<T> gr;
  const size_t LHD = size_t(L) * H * D;
  gr.dqf.assign(LHD, T(0));
  gr.dqw.assign(LHD, T(0));
  gr.dkf.assign(LHD, T(0));
  gr.dkw.assign(LHD, T(0));
  gr.dv.assign(LHD, T(0));
  gr.da.assign(size_t(L) * H, T(0));
  gr.dmu.assign(size_t(H) * m, T(0));
  gr.dal.assign(H, T(0));
  gr.df.assign(H, T(0));
  gr.dWq.assign(size_t(H) * D * F, T(0));
  gr.dWk.assign(size_t(H) * D * F, T(0));
  if (L > 0) {
    std::vector<T> y(LHD);
    const bool par = H > 1 && int64_t(in.L) * H >= 1024 && omp_get_max_threads() > 1;  // tiny: no fork
    BlasSingleThread guard(par);
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int h = 0; h < H; ++h) {
      HeadSave<T> sv;
      head_forward(X, h, y.data(), &sv, static_cast<T*>(nullptr));
      if (lol)
        head_backward_lolcats(X, h, sv, dy, gr);
      else
        head_backward_lizard(X, h, sv, dy, gr);
    }
  }
  // parameters
  for (size_t e = 0; e < gr.dWq.size(); ++e) dp.feat_q[e] += gr.dWq[e], dp.feat_k[e] += gr.dWk[e];
  for (int h = 0; h < H; ++h) {
    for (int j = 0; j < m; ++j) dp.meta[size_t(c.meta_per_head ? h : 0) * m + j] += gr.dmu[size_t(h) * m + j];
    dp.alpha[c.alpha_per_layer ? 0 : h] += gr.dal[h];
    dp.lolcats_f[h] += gr.df[h];
  }
  if (dx) std::fill(dx, dx + L * dm, T(0));
  if (!lol) {
    std::vector<T> dag(G);
    for (int64_t i = 0; i < L; ++i) {
      std::fill(dag.begin(), dag.end(), T(0));
      for (int h = 0; h < H; ++h) dag[pr.gate_col(h)] += gr.da[i * H + h];
      for (int gg = 0; gg < G; ++gg) {
        const T d = dag[gg];
        dp.gate_b[gg] += d;
        T* gw = &dp.gate_w[size_t(gg) * dm];
        const T* xi = in.x + i * dm;
        for (int e = 0; e < dm; ++e) gw[e] += d * xi[e];
        if (dx)
          for (int e = 0; e < dm; ++e) dx[i * dm + e] += d * p.gate_w[size_t(gg) * dm + e];
      }
    }
  }
  // inputs: undo RoPE where a branch saw rotated q, k
  const bool rf = c.feature_on_rope, rw = window_uses_rope(c);
  if (dq) {
    for (int64_t i = 0; i < L; ++i) {
      const int64_t ps = position(in.pos, i);
      for (int h = 0; h < H; ++h) {
        T* a = &gr.dqf[(i * H + h) * D];
        T* b = &gr.dqw[(i * H + h) * D];
        if (rf) rope->apply(a, ps, true);
        if (rw) rope->apply(b, ps, true);
        for (int d = 0; d < D; ++d) dq[(i * H + h) * D + d] = a[d] + b[d];
      }
    }
  }
  if (dk) std::fill(dk, dk + L * Hkv * D, T(0));
  if (dv) std::fill(dv, dv + L * Hkv * D, T(0));
  for (int h = 0; h < H; ++h) {
    const int g = s.kv_head(h);
    for (int64_t t = 0; t < L; ++t) {
      const int64_t ps = position(in.pos, t);
      if (dk) {
        T* a = &gr.dkf[(size_t(h) * L + t) * D];
        T* b = &gr.dkw[(size_t(h) * L + t) * D];
        if (rf) rope->apply(a, ps, true);
        if (rw) rope->apply(b, ps, true);
        for (int d = 0; d < D; ++d) dk[(t * Hkv + g) * D + d] += a[d] + b[d];
      }
      if (dv)
        for (int d = 0; d < D; ++d) dv[(t * Hkv + g) * D + d] += gr.dv[(size_t(h) * L + t) * D + d];
    }
  }
}

#define LZ_INST(T)                                                                                          \
  template void lizard_forward_chunked<T>(const LizardConfig&, const LizardShape&, const LizardParamsT<T>&,    \
                                          const LizardRope*, const LizardInput<T>&, T*, LizardState<T>*,       \
                                          const LizardState<T>*);                                              \
  template void lizard_backward_chunked<T>(const LizardConfig&, const LizardShape&, const LizardParamsT<T>&,   \
                                           const LizardRope*, const LizardInput<T>&, const T*,                 \
                                           LizardParamsT<T>&, T*, T*, T*, T*);
LZ_INST(float)
LZ_INST(double)
#undef LZ_INST

}  // namespace lizard
