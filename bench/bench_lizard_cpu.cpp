// Lizard layer on the CPU at SmolLM2-135M's attention shape (H=9, Hkv=3, D=64, d_model=576, F=64,
// C=64, w=128, m=4): time per token of the chunked form (prefill) and of recurrent decoding after a
// chunked prefill, flat from 1K to 64K tokens, and of the parallel (quadratic) reference.
//   bench_lizard_cpu [max_len=65536] [parallel_max=4096] [threads=omp default]
// The gate starts at 0.999 so that the parallel form's decay (walked down from each token, stopped
// once it underflows) spans the whole sequence: the reference stays quadratic.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "model/lizard_config.h"
#include "ops/cpu/lizard_attention.h"

using namespace lizard;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Inputs {
  int64_t L;
  std::vector<float> x, q, k, v;
  LizardInput<float> in() const { return {L, x.data(), q.data(), k.data(), v.data(), nullptr}; }
};

Inputs make_inputs(const LizardShape& s, int64_t L) {
  Inputs I;
  I.L = L;
  std::mt19937 rng(7);
  std::normal_distribution<float> N(0.f, 1.f);
  I.x.resize(size_t(L) * s.d_model);
  I.q.resize(size_t(L) * s.n_heads * s.head_dim);
  I.k.resize(size_t(L) * s.n_kv_heads * s.head_dim);
  I.v.resize(size_t(L) * s.n_kv_heads * s.head_dim);
  for (auto* vec : {&I.x, &I.q, &I.k, &I.v})
    for (auto& e : *vec) e = N(rng);
  return I;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t max_len = argc > 1 ? std::atoll(argv[1]) : 65536;
  const int64_t par_max = argc > 2 ? std::atoll(argv[2]) : 4096;
  if (argc > 3) omp_set_num_threads(std::atoi(argv[3]));
  LizardShape s{576, 9, 3, 64};
  LizardConfig c;  // F = 64, C = 64, w = 128, m = 4
  c.gate_init = 0.999;
  auto p = init_lizard_params(c, s, 1);
  LizardRope rope = LizardRope::make(s.head_dim, 10000.0);
  std::printf("Lizard CPU layer, SmolLM2 shape H=%d Hkv=%d D=%d d_model=%d F=%d C=%d w=%d m=%d, %d OpenMP threads\n",
              s.n_heads, s.n_kv_heads, s.head_dim, s.d_model, c.feature_dim, c.chunk, c.window, c.meta_tokens,
              omp_get_max_threads());

  std::printf("\n%8s  %14s %8s  %16s %8s  %12s\n", "tokens", "chunked us/tok", "ratio", "decode us/tok", "ratio",
              "state bytes");
  double chunk_base = 0, dec_base = 0;
  for (int64_t L = 1024; L <= max_len; L *= 2) {
    Inputs I = make_inputs(s, L + 256);
    std::vector<float> y(size_t(L + 256) * s.n_heads * s.head_dim);
    LizardInput<float> pre = I.in();
    pre.L = L;
    double best = 1e30;
    const int reps = L <= 4096 ? 3 : 1;
    LizardState<float> st;
    for (int r = 0; r < reps; ++r) {
      auto t0 = Clock::now();
      lizard_forward_chunked(c, s, p, &rope, pre, y.data(), &st);
      best = std::min(best, seconds_since(t0));
    }
    const double chunk_us = best / double(L) * 1e6;
    // decode 256 tokens on from the prefill's final state
    const int steps = 256;
    const int H = s.n_heads, Hkv = s.n_kv_heads, D = s.head_dim;
    auto t0 = Clock::now();
    for (int64_t i = L; i < L + steps; ++i)
      lizard_step(c, s, p, &rope, st, &I.x[i * s.d_model], &I.q[i * H * D], &I.k[i * Hkv * D], &I.v[i * Hkv * D], i,
                  &y[i * H * D]);
    const double dec_us = seconds_since(t0) / steps * 1e6;
    if (L == 1024) chunk_base = chunk_us, dec_base = dec_us;
    std::printf("%8lld  %14.2f %8.2f  %16.2f %8.2f  %12zu\n", (long long)L, chunk_us, chunk_us / chunk_base, dec_us,
                dec_us / dec_base, st.bytes());
    std::fflush(stdout);
  }

  std::printf("\n%8s  %15s %8s  (quadratic: ratio ~ tokens/1024)\n", "tokens", "parallel us/tok", "ratio");
  double par_base = 0;
  for (int64_t L = 512; L <= par_max; L *= 2) {
    Inputs I = make_inputs(s, L);
    std::vector<float> y(size_t(L) * s.n_heads * s.head_dim);
    auto t0 = Clock::now();
    lizard_forward_parallel(c, s, p, &rope, I.in(), y.data());
    const double us = seconds_since(t0) / double(L) * 1e6;
    if (L == 1024) par_base = us;
    std::printf("%8lld  %15.2f %8s\n", (long long)L, us,
                par_base > 0 ? std::to_string(us / par_base).substr(0, 5).c_str() : "-");
    std::fflush(stdout);
  }
  return 0;
}
