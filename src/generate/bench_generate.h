// `lizard bench generate`: prefill and decode speed, sequence-state memory and peak RSS against the
// context length, for a teacher (softmax KV cache) and a Lizard model (constant-size state).
// Each (model, context) runs in a fresh child process (fork), so that its peak RSS is its own and a
// run over the time limit can be killed. Results: a markdown table, JSON and a PNG plot.
//
// fork caveat: libgomp's thread pool does not survive fork (a child that starts a parallel region
// waits for the parent's pool threads forever). Call this from a process that has not run an
// OpenMP region with more than one thread (the CLI's parent never does), or run the models with one
// thread; the time limit catches a hang either way.
#pragma once
#include "model/config.h"
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/png.h"
#include "model/llama.h"

namespace lizard {

// A model under test. make() runs in the child and opens the model with its default context; the
// child raises the context to the sequence length where that is shorter (noted in the results).
struct BenchSubject {
  std::string name;  // "teacher", "lizard", ...
  std::function<std::shared_ptr<LlamaModel>()> make;
};

struct BenchRun;

struct BenchGenerateOptions {
  std::vector<int64_t> contexts = {1024, 4096, 16384, 65536};
  int decode = 64;             // single-token steps timed after the prefill
  double time_limit_s = 900;   // per (model, context) run, model loading included
  uint64_t seed = 1;           // of the random prompt tokens
  std::vector<int32_t> prompt; // tokens to prefill (repeated to length); empty: random ids
  // Skip a model's longer contexts once one did not finish, or when the last run's time scaled by
  // (L / L_prev)^2 (a KV-cache model) or L / L_prev (constant state) exceeds 2x the time limit.
  bool predict_skip = true;
  std::function<void(const BenchRun&)> on_run;  // progress, after each run
};

struct BenchRun {
  std::string model;
  int64_t context = 0;             // tokens prefilled
  std::string status;              // "ok" | "did not finish" | "skipped" | "error"
  std::string note;                // why not ok; or "context raised from N"
  int64_t trained_context = 0;     // the model's own context (0: none, all-Lizard)
  int64_t run_context = 0;         // the context it ran with
  int decode = 0;
  double wall_s = 0, load_s = 0, prefill_s = 0, decode_s = 0;
  double prefill_tok_s = 0, decode_tok_s = 0;
  uint64_t state_bytes = 0;        // LlamaState::cache_bytes() after the prefill
  uint64_t state_bytes_end = 0;    // ... and after the decode steps
  uint64_t rss_after_load = 0;     // VmRSS once the model is open
  uint64_t peak_rss = 0;           // VmHWM (reset at the child's start) or ru_maxrss
  // GPU runs (--device cuda): sequences decoded together, and device memory in use (cudaMemGetInfo:
  // total - free, CUDA context included) at its highest after prefill / decode; the weights' share.
  int batch = 1;
  uint64_t gpu_used_bytes = 0;
  uint64_t gpu_weight_bytes = 0;
  bool ok() const { return status == "ok"; }
};

// Measures one (model, context) in this process: what a child does. Throws Error.
BenchRun measure_generate(const BenchSubject& s, int64_t context, const BenchGenerateOptions& opt);

// Every subject at every context, each in a child process.
std::vector<BenchRun> run_bench_generate(const std::vector<BenchSubject>& subjects, const BenchGenerateOptions& opt);

nlohmann::json bench_run_to_json(const BenchRun& r);
BenchRun bench_run_from_json(const nlohmann::json& j);
// {"bench": "generate", "meta": meta, "runs": [...]}
nlohmann::json bench_generate_json(const std::vector<BenchRun>& runs, const nlohmann::json& meta);
std::string bench_generate_markdown(const std::vector<BenchRun>& runs);
// Two panels against the context (log x): state memory (MiB, log y) and decode tokens/s.
Raster plot_bench_generate(const std::vector<BenchRun>& runs, const std::string& title);
// Bytes as MiB with one decimal, and the local date-time ("%Y-%m-%dT%H:%M:%S%z"): both benches' reports.
std::string bench_mib(uint64_t bytes);
std::string bench_date();
// DIR/bench_generate.json, .md and .png (temporary names, then renamed).
void write_bench_generate(const std::string& dir, const std::vector<BenchRun>& runs, const nlohmann::json& meta,
                          const std::string& title);

// Runs fn in a forked child with a wall-clock limit; fn's string comes back through a pipe.
struct ChildResult {
  bool finished = false;   // exited normally within the limit
  bool timed_out = false;  // killed at the limit
  std::string output;      // what fn returned (or the error it threw, after "error: ")
  std::string failure;     // how it ended otherwise (signal, exit code)
  double wall_s = 0;
};
ChildResult run_in_child(const std::function<std::string()>& fn, double time_limit_s);

// The CLI: lizard bench generate.
struct BenchGenerateArgs {
  std::string model;    // teacher (default: the bundled one)
  std::string lizard;   // Lizard checkpoint (default: an untrained all-layer one in a temp dir)
  std::string teacher;  // teacher of --lizard, if moved
  std::vector<int64_t> contexts = {1024, 4096, 16384, 65536};
  int decode = 64;
  std::string out = "bench-generate";
  double time_limit = 900;
  int threads = 0;
  uint64_t seed = 1;
  bool quiet = false;
  std::string device = "cpu";  // cpu | cuda
  int batch = 1;               // cuda: sequences decoded together
  std::string shape;           // cuda: "" (the model's own) or a synthetic model (synthetic_model_config)
};
// The architecture of a named shape ("smollm2": SmolLM2-135M, "llama3-8b": Llama-3.1-8B), filled in by
// hand, for a synthetic model with random weights (bench generate --shape: speed and memory only).
ModelConfig synthetic_model_config(const std::string& shape);
int run_bench_generate_cli(const BenchGenerateArgs& a);
// --device cuda (bench_generate_cuda.cpp): in this process, one GPU model per subject, a batch of
// a.batch slots per context (one prefill copied to every slot, then a.decode batched steps). A context
// whose KV cache does not fit is recorded as "out of memory" and the model's longer ones are skipped.
int run_bench_generate_cuda(const BenchGenerateArgs& a);

}  // namespace lizard
