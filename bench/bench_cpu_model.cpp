// CPU speed of the teacher: prefill tokens/s (prompts of 128 and 512 tokens) and decode tokens/s
// (128 tokens after a short prompt), with 1 thread and with all cores.
//   bench_cpu_model [MODEL] [--threads N,M,...] [--fp32-cache MiB] [--reps R] [--exact]
// On a machine shared with other busy processes, OpenMP's spinning threads lose their cores at
// every barrier; the load average is printed so such figures can be told apart
// (OMP_WAIT_POLICY=passive helps there, and hurts on an idle machine). The "1 (cpu)" row divides
// by the process's CPU time instead of wall time: the one-core speed without the contention.
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/llama.h"
#include "util/error.h"

using namespace lizard;
using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// CPU time of the process: with one thread, tokens per CPU-second is what an idle core would give
// (time spent descheduled by other processes does not count).
double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct Rate {
  double wall = 0, cpu = 0;  // tokens per second of wall time / of CPU time
};

std::vector<int32_t> random_prompt(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = std::uniform_int_distribution<int32_t>(0, vocab - 1)(rng);
  return t;
}

Rate prefill_rate(const LlamaModel& m, int n, int reps) {
  auto prompt = random_prompt(n, m.vocab_size(), 7);
  LlamaState st = m.new_state();
  double best = 1e30, best_cpu = 1e30;
  for (int r = 0; r < reps; ++r) {
    st.reset();
    auto t0 = Clock::now();
    const double c0 = cpu_now();
    m.forward(prompt, 0, st);
    best = std::min(best, secs(t0));
    best_cpu = std::min(best_cpu, cpu_now() - c0);
  }
  return {n / best, n / best_cpu};
}

Rate decode_rate(const LlamaModel& m, int n, int reps) {
  auto prompt = random_prompt(16, m.vocab_size(), 11);
  LlamaState st = m.new_state();
  double best = 1e30, best_cpu = 1e30;
  for (int r = 0; r < reps; ++r) {
    st.reset();
    auto logits = m.forward(prompt, 0, st);
    int64_t pos = static_cast<int64_t>(prompt.size());
    auto t0 = Clock::now();
    const double c0 = cpu_now();
    for (int i = 0; i < n; ++i) {
      const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      logits = m.forward(&next, 1, pos++, st);
    }
    best = std::min(best, secs(t0));
    best_cpu = std::min(best_cpu, cpu_now() - c0);
  }
  return {n / best, n / best_cpu};
}

}  // namespace

int main(int argc, char** argv) try {
  std::string path;
  std::vector<int> threads;
  size_t cache_mib = 0;
  int reps = 3;
  bool exact = false, json = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      for (char* tok = std::strtok(argv[++i], ","); tok; tok = std::strtok(nullptr, ",")) threads.push_back(std::atoi(tok));
    } else if (a == "--fp32-cache" && i + 1 < argc) {
      cache_mib = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--json") {  // one JSON object {pp128, pp512, tg128} (tokens/s) for the last thread count
      json = true;
    } else if (a == "--exact") {
      exact = true;
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else {
      path = a;
    }
  }
  if (path.empty()) path = default_model_path();
  const int all = omp_get_num_procs();
  if (threads.empty()) threads = all > 1 ? std::vector<int>{1, all} : std::vector<int>{1};

  auto t0 = Clock::now();
  auto ck = std::make_shared<const Checkpoint>(open_checkpoint(path));
  ModelOptions opt;
  opt.fp32_cache_bytes = cache_mib << 20;
  opt.exact = exact;
  LlamaModel model(ck, opt);
  const auto& c = model.config();
  std::FILE* info = json ? stderr : stdout;
  fmt::print(info, "model {} ({}, {} layers, d {}, {} params), loaded in {:.2f} s, fp32 cache {:.0f} MiB\n", path, c.arch,
             c.n_layers, c.d_model, c.param_count(), secs(t0), model.fp32_cached_bytes() / 1048576.0);
  double load = 0;
  std::ifstream("/proc/loadavg") >> load;
  fmt::print(info, "best of {} runs; {} cores; load average {:.1f} at start{}{}\n\n", reps, all, load,
             load > all ? " (busy machine: figures are contended)" : "", exact ? "; exact (fp32) decode" : "");
  if (!json) fmt::print("{:>8} | {:>16} | {:>16} | {:>16}\n", "threads", "prefill 128 t/s", "prefill 512 t/s", "decode 128 t/s");
  if (!json) fmt::print("{:->8}-+-{:->16}-+-{:->16}-+-{:->16}\n", "", "", "", "");
  for (int t : threads) {
    model.set_threads(t);
    decode_rate(model, 8, 1);  // warm-up: thread pools, page cache, scratch
    const Rate p128 = prefill_rate(model, 128, reps);
    const Rate p512 = prefill_rate(model, 512, reps);
    const Rate dec = decode_rate(model, 128, reps);
    if (json) {
      if (t == threads.back()) fmt::print("{{\"pp128\": {:.2f}, \"pp512\": {:.2f}, \"tg128\": {:.2f}}}\n", p128.wall, p512.wall, dec.wall);
      continue;
    }
    fmt::print("{:>8} | {:>16.1f} | {:>16.1f} | {:>16.1f}\n", t, p128.wall, p512.wall, dec.wall);
    if (t == 1)
      fmt::print("{:>8} | {:>16.1f} | {:>16.1f} | {:>16.1f}\n", "1 (cpu)", p128.cpu, p512.cpu, dec.cpu);
    std::fflush(stdout);
  }
  return 0;
} catch (const Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 1;
}
