// matvec speed per weight type at the default model's shapes (SmolLM-135M: hidden 576, ffn 1536,
// vocab 49152), single- and multi-threaded. "hot": the same matrix again and again (cache-resident
// when small); "cold": cycling through enough copies to overflow the caches, as a real decode step
// does when it walks all layers. Then Exact vs Q8 activation precision (1 thread). Also dequantize_rows throughput (prefill path).
// Usage: bench_quant [min_seconds_per_case=0.3] [type filter, e.g. Q4_1, or "" for all] [precision: only
// the Exact vs Q8 table]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/quant.h"
#include "util/half.h"

using namespace lizard;
using Clock = std::chrono::steady_clock;

namespace {

struct Shape {
  int64_t rows, n;
};

// Random but valid weights: small fp16 scales so nothing is inf/NaN.
std::vector<uint8_t> make_weights(DType t, int64_t rows, int64_t n, std::mt19937& rng) {
  size_t rb = dtype_row_bytes(t, n);
  std::vector<uint8_t> w(rb * rows);
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  const DTypeInfo& info = dtype_info(t);
  if (info.block_size > 1) {
    uint16_t h = f32_to_f16(0.01f);
    size_t nblocks = w.size() / info.block_bytes;
    for (size_t i = 0; i < nblocks; ++i) {
      uint8_t* b = w.data() + i * info.block_bytes;
      size_t at = t == DType::Q6_K ? 208 : 0;
      std::memcpy(b + at, &h, 2);
      if (t == DType::Q4_1 || t == DType::Q4_K) std::memcpy(b + 2, &h, 2);
    }
  } else if (t == DType::F32) {
    for (size_t i = 0; i < w.size() / 4; ++i) {
      float f = static_cast<float>(rng() % 1000) * 1e-3f;
      std::memcpy(w.data() + 4 * i, &f, 4);
    }
  } else {
    for (size_t i = 0; i < w.size() / 2; ++i) {
      uint16_t h = t == DType::F16 ? f32_to_f16((rng() % 1000) * 1e-3f) : f32_to_bf16((rng() % 1000) * 1e-3f);
      std::memcpy(w.data() + 2 * i, &h, 2);
    }
  }
  return w;
}

// Seconds per call: the best of many short batches (~1 ms), so that a machine shared with other
// work still shows the undisturbed speed.
template <typename F>
double time_it(F&& f, double min_s) {
  f();
  double best = 1e30, total = 0;
  int64_t reps = 1;
  while (total < min_s) {
    auto t0 = Clock::now();
    for (int64_t r = 0; r < reps; ++r) f();
    double s = std::chrono::duration<double>(Clock::now() - t0).count();
    total += s;
    best = std::min(best, s / reps);
    if (s < 1e-3) reps *= 2;
  }
  return best;
}

// Plain streaming read bandwidth of this machine, for scale.
double read_bandwidth(int threads, double min_s) {
  const size_t n = size_t(256) << 20 >> 3;  // 256 MiB of uint64
  std::vector<uint64_t> buf(n, 1);
  volatile uint64_t sink = 0;
  omp_set_num_threads(threads);
  double s = time_it(
      [&] {
        uint64_t acc = 0;
#pragma omp parallel for reduction(+ : acc) schedule(static)
        for (size_t i = 0; i < n; ++i) acc += buf[i];
        sink = sink + acc;
      },
      min_s);
  return n * 8 / s / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  double min_s = argc > 1 ? std::atof(argv[1]) : 0.3;
  std::string filter = argc > 2 ? argv[2] : "";
  const bool only_precision = argc > 3 && std::string(argv[3]) == "precision";
  std::mt19937 rng(1234);
  const DType types[] = {DType::Q4_1, DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K,
                         DType::F16, DType::BF16, DType::F32};
  // {rows, n}: attention q/k/v/o, ffn gate/up, ffn down, output head
  const Shape shapes[] = {{576, 576}, {1536, 576}, {576, 1536}, {49152, 576}};
  int max_threads = omp_get_max_threads();
  std::vector<int> thread_counts = {1};
  if (max_threads >= 2) thread_counts.push_back(2);
  if (max_threads > 2) thread_counts.push_back(max_threads);

  if (!only_precision) {
  for (int th : thread_counts)
    std::printf("streaming read bandwidth, %d thread(s): %.1f GB/s\n", th, read_bandwidth(th, min_s));
  std::printf("\n%-5s %-12s %3s %12s %10s %10s %12s %10s\n", "type", "rows x n", "thr", "hot us/call", "hot GB/s",
              "hot ns/row", "cold us/call", "cold GB/s");

  for (DType t : types) {
    if (!filter.empty() && filter != dtype_name(t)) continue;
    int64_t bs = dtype_info(t).block_size;
    for (Shape sh : shapes) {
      // K-quants need n % 256 == 0: 576 becomes 768 (the nearest such width) for them.
      int64_t n = (sh.n + bs - 1) / bs * bs;
      size_t bytes = dtype_row_bytes(t, n) * sh.rows;
      int copies = static_cast<int>(std::clamp<size_t>((size_t(192) << 20) / bytes + 1, 1, 64));
      std::vector<std::vector<uint8_t>> ws;
      for (int c = 0; c < copies; ++c) ws.push_back(make_weights(t, sh.rows, n, rng));
      std::vector<float> x(n), y(sh.rows);
      std::normal_distribution<float> g;
      for (auto& v : x) v = g(rng);
      for (int th : thread_counts) {
        omp_set_num_threads(th);
        double hot = time_it([&] { matvec(t, ws[0].data(), sh.rows, n, x.data(), y.data()); }, min_s);
        int c = 0;
        double cold = copies > 1 ? time_it(
                                       [&] {
                                         matvec(t, ws[c].data(), sh.rows, n, x.data(), y.data());
                                         c = (c + 1) % copies;
                                       },
                                       min_s)
                                 : hot;
        char shape[32];
        std::snprintf(shape, sizeof shape, "%lldx%lld", static_cast<long long>(sh.rows), static_cast<long long>(n));
        std::printf("%-5s %-12s %3d %12.2f %10.2f %10.2f %12.2f %10.2f\n", dtype_name(t), shape, th, hot * 1e6,
                    bytes / hot / 1e9, hot * 1e9 / sh.rows, cold * 1e6, bytes / cold / 1e9);
        std::fflush(stdout);
      }
    }
  }

  }  // !only_precision

  // Decode precision: the exact (fp32-activation) kernels against the int8-activation ones, 1 thread.
  // "exact avx2": the AVX2 kernels, for builds without AVX-512 (0 when not compiled in).
  omp_set_num_threads(1);
  std::printf("\n1 thread, GB/s of weights: %-5s %-12s %10s %10s %10s %10s %10s %12s\n", "type", "rows x n", "Q8 hot",
              "Exact hot", "Q8 cold", "Exact cold", "Exact/Q8", "exact avx2 h");
  for (DType t : types) {
    if (!filter.empty() && filter != dtype_name(t)) continue;
    if (dtype_info(t).block_size == 1) continue;  // float weights: one path
    int64_t bs = dtype_info(t).block_size;
    for (Shape sh : shapes) {
      int64_t n = (sh.n + bs - 1) / bs * bs;
      size_t bytes = dtype_row_bytes(t, n) * sh.rows;
      int copies = static_cast<int>(std::clamp<size_t>((size_t(192) << 20) / bytes + 1, 1, 64));
      std::vector<std::vector<uint8_t>> ws;
      for (int c = 0; c < copies; ++c) ws.push_back(make_weights(t, sh.rows, n, rng));
      std::vector<float> x(n), y(sh.rows);
      std::normal_distribution<float> g;
      for (auto& v : x) v = g(rng);
      auto gbs = [&](MatvecPrecision p, bool cold) {
        int c = 0;
        double s = time_it(
            [&] {
              matvec(t, ws[c].data(), sh.rows, n, x.data(), y.data(), p);
              if (cold) c = (c + 1) % copies;
            },
            min_s);
        return bytes / s / 1e9;
      };
      double q8h = gbs(MatvecPrecision::Q8, false), exh = gbs(MatvecPrecision::Exact, false);
      double q8c = gbs(MatvecPrecision::Q8, true), exc = gbs(MatvecPrecision::Exact, true);
      double avx2 = 0;
      if (matvec_exact_isa(1, t, ws[0].data(), sh.rows, n, x.data(), y.data()))
        avx2 = bytes / time_it([&] { matvec_exact_isa(1, t, ws[0].data(), sh.rows, n, x.data(), y.data()); }, min_s) / 1e9;
      char shape[32];
      std::snprintf(shape, sizeof shape, "%lldx%lld", static_cast<long long>(sh.rows), static_cast<long long>(n));
      std::printf("%27s %-5s %-12s %10.2f %10.2f %10.2f %10.2f %10.2f %12.2f\n", "", dtype_name(t), shape, q8h, exh,
                  q8c, exc, exh / q8h, avx2);
      std::fflush(stdout);
    }
  }

  if (only_precision) return 0;
  // Prefill: dequantize a tile of 256 rows x 1536 to fp32.
  std::printf("\n%-5s %-24s %3s %12s %14s\n", "type", "dequantize_rows", "thr", "us/tile", "Gelem/s");
  for (DType t : types) {
    if (!filter.empty() && filter != dtype_name(t)) continue;
    const int64_t rows = 256, n = 1536;
    auto w = make_weights(t, rows, n, rng);
    std::vector<float> dst(rows * n);
    for (int th : thread_counts) {
      omp_set_num_threads(th);
      double s = time_it([&] { dequantize_rows(t, w.data(), 0, rows, n, dst.data()); }, min_s);
      std::printf("%-5s %-24s %3d %12.2f %14.2f\n", dtype_name(t), "256x1536", th, s * 1e6, rows * n / s / 1e9);
    }
  }
  return 0;
}
