// `lizard bench generate --device cuda` (generate/bench_generate.h): prefill and batched decode speed
// and device memory against the context length on the GPU, teacher vs Lizard. Plain C++: the GPU model's
// entry points throw "built without CUDA" where CUDA is off.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <random>

#include "generate/bench_generate.h"
#include "model/checkpoint.h"
#include "model/cuda/cuda_model.h"
#include "model/lizard_checkpoint.h"
#include "model/load_model.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace lizard {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

uint64_t gpu_used() {
  size_t free_b = 0, total_b = 0;
  cuda::device_memory(free_b, total_b);
  return total_b - free_b;
}

// One context on a loaded GPU model: a batch of B slots, one prefill copied to every slot, then
// `decode` batched greedy steps. Throws Error (out of memory included).
BenchRun measure_cuda(cuda::CudaModel& m, const std::string& name, int64_t context, int batch, int decode,
                      uint64_t seed) {
  BenchRun r;
  r.model = name;
  r.context = context;
  r.decode = decode;
  r.batch = batch;
  r.gpu_weight_bytes = m.weight_bytes();
  const int V = m.vocab_size();
  std::vector<int32_t> tokens(static_cast<size_t>(context));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, V - 1);
  for (auto& t : tokens) t = pick(rng);

  const auto t0 = Clock::now();
  cuda::CudaBatch b = m.new_batch(batch, context + decode);
  r.state_bytes = b.bytes();
  auto t1 = Clock::now();
  std::vector<float> logits = m.prefill(b, 0, tokens.data(), context);  // returns once the GPU is done
  r.prefill_s = seconds_since(t1);
  for (int s = 1; s < batch; ++s) m.copy_slot(b, 0, s);
  r.gpu_used_bytes = gpu_used();

  // Greedy: slot s feeds back the argmax of its own row (all rows equal the prefill's at first).
  const auto argmax = [&](const float* row) {
    return static_cast<int32_t>(std::max_element(row, row + V) - row);
  };
  std::vector<int32_t> next(static_cast<size_t>(batch), argmax(logits.data()));
  std::unique_ptr<bool[]> active(new bool[static_cast<size_t>(batch)]);
  std::fill(active.get(), active.get() + batch, true);
  t1 = Clock::now();
  for (int i = 0; i < decode; ++i) {
    logits = m.decode(b, next.data(), active.get());
    for (int s = 0; s < batch; ++s) next[static_cast<size_t>(s)] = argmax(logits.data() + static_cast<size_t>(s) * V);
  }
  r.decode_s = seconds_since(t1);
  r.gpu_used_bytes = std::max(r.gpu_used_bytes, gpu_used());
  r.state_bytes_end = b.bytes();
  r.prefill_tok_s = static_cast<double>(context) / std::max(r.prefill_s, 1e-9);
  r.decode_tok_s = static_cast<double>(decode) * batch / std::max(r.decode_s, 1e-9);
  r.wall_s = seconds_since(t0);
  r.status = "ok";
  const int64_t trained = m.config().max_seq_len;
  r.trained_context = m.has_softmax_layers() ? trained : 0;
  r.run_context = context + decode;
  if (m.has_softmax_layers() && trained > 0 && context + decode > trained)
    r.note = fmt::format("beyond the trained context of {} (timed only)", trained);
  return r;
}

}  // namespace

ModelConfig synthetic_model_config(const std::string& shape) {
  ModelConfig c;
  c.arch = "llama";
  c.rms_eps = 1e-5f;
  if (shape == "smollm2") {  // SmolLM2-135M (config.json)
    c.name = "synthetic SmolLM2-135M shape";
    c.vocab_size = 49152, c.d_model = 576, c.n_layers = 30, c.n_heads = 9, c.n_kv_heads = 3, c.head_dim = 64;
    c.d_ff = 1536, c.max_seq_len = 8192, c.rope_theta = 100000.0f, c.tied_embeddings = true;
  } else if (shape == "llama3-8b") {  // Llama-3.1-8B (config.json)
    c.name = "synthetic Llama-3.1-8B shape";
    c.vocab_size = 128256, c.d_model = 4096, c.n_layers = 32, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 128;
    c.d_ff = 14336, c.max_seq_len = 131072, c.rope_theta = 500000.0f;
    c.rope_scaling.kind = RopeScaling::Kind::Llama3;
    c.rope_scaling.factor = 8.0f;
    c.rope_scaling.low_freq_factor = 1.0f;
    c.rope_scaling.high_freq_factor = 4.0f;
    c.rope_scaling.original_max_position = 8192;
  } else {
    fail("unknown --shape '{}' (expected smollm2 or llama3-8b)", shape);
  }
  return c;
}

int run_bench_generate_cuda(const BenchGenerateArgs& a) {
  LZ_CHECK(a.batch >= 1, "--batch must be at least 1");
  LZ_CHECK(a.decode >= 1, "--decode must be at least 1");
  const bool synthetic = !a.shape.empty();
  std::optional<ModelConfig> shape;
  if (synthetic) {
    LZ_CHECK(a.model.empty() && a.lizard.empty(), "--shape makes a synthetic model: give no -m or --lizard with it");
    shape = synthetic_model_config(a.shape);
  }
  const std::string teacher =
      synthetic ? shape->name
                : fs::absolute(a.model.empty() ? default_model_path() : a.model).lexically_normal().string();
  LZ_CHECK(synthetic || fs::exists(teacher), "teacher '{}' not found", teacher);
  std::vector<int64_t> contexts = a.contexts;
  std::sort(contexts.begin(), contexts.end());
  contexts.erase(std::unique(contexts.begin(), contexts.end()), contexts.end());
  LZ_CHECK(!contexts.empty(), "no context lengths to measure");

  const std::string lizard_name = a.lizard.empty() ? "lizard (untrained)" : "lizard";
  std::vector<BenchRun> runs;
  auto progress = [&](const BenchRun& r) {
    runs.push_back(r);
    if (a.quiet) return;
    if (r.ok())
      std::fprintf(stderr, "[%s @ %lld x %d: prefill %.1f tok/s, decode %.1f tok/s, state %s MiB, GPU %s MiB]\n",
                   r.model.c_str(), static_cast<long long>(r.context), r.batch, r.prefill_tok_s, r.decode_tok_s,
                   bench_mib(r.state_bytes_end).c_str(), bench_mib(r.gpu_used_bytes).c_str());
    else
      std::fprintf(stderr, "[%s @ %lld: %s: %s]\n", r.model.c_str(), static_cast<long long>(r.context),
                   r.status.c_str(), r.note.c_str());
  };

  for (int which = 0; which < 2; ++which) {
    const std::string name = which == 0 ? "teacher" : lizard_name;
    std::optional<cuda::CudaModel> m;
    {
      // The GPU model keeps no reference to the host weights: they go out of scope here.
      if (synthetic) {
        // Random bf16 weights of the shape, made on the GPU: the speed and memory of that architecture.
        if (which == 0) {
          m.emplace(*shape, a.seed, nullptr);
        } else {
          const LizardCheckpoint lz = init_lizard_checkpoint(LizardConfig{}, *shape, a.seed);
          m.emplace(*shape, a.seed, &lz);
        }
      } else if (which == 0) {
        const Checkpoint ck = open_checkpoint(teacher);
        m.emplace(ck, nullptr);
      } else if (a.lizard.empty()) {
        // Untrained all-layer Lizard: speed and memory do not depend on training.
        const Checkpoint ck = open_checkpoint(teacher);
        const LizardCheckpoint lz = init_lizard_checkpoint(LizardConfig{}, ck.config, a.seed);
        m.emplace(ck, &lz);
      } else {
        LZ_CHECK(!find_lizard_checkpoint(a.lizard).empty(), "'{}' is not a Lizard checkpoint", a.lizard);
        ModelOptions mo;
        mo.n_threads = a.threads;
        const LoadedModel lm = load_model(a.lizard, mo, a.teacher);
        m.emplace(lm);
      }
    }
    std::string stop;  // set once a context did not fit: the longer ones are skipped
    for (int64_t L : contexts) {
      BenchRun r;
      r.model = name;
      r.context = L;
      r.decode = a.decode;
      r.batch = a.batch;
      if (!stop.empty()) {
        r.status = "skipped";
        r.note = stop;
        progress(r);
        continue;
      }
      try {
        r = measure_cuda(*m, name, L, a.batch, a.decode, a.seed);
      } catch (const Error& e) {
        const std::string what = e.what();
        const bool oom = what.find("out of GPU memory") != std::string::npos ||
                         what.find("out of memory") != std::string::npos;
        r.status = oom ? "out of memory" : "error";
        r.note = oom ? fmt::format("out of memory at {} tokens x {} sequences: {}", L, a.batch, what) : what;
        stop = oom ? fmt::format("out of memory at {}", L) : fmt::format("{} tokens failed", L);
      }
      m->release_scratch();
      progress(r);
    }
  }

  const std::string gpu = cuda::device_name();
  const nlohmann::json meta = {
      {"device", "cuda"},
      {"gpu", gpu},
      {"teacher", teacher},
      {"weights", synthetic ? "random bf16 (synthetic shape, made on the GPU): speed and memory only" : "checkpoint"},
      {"lizard", a.lizard.empty() ? "untrained all-layer Lizard (LizardConfig defaults), in memory"
                                  : fs::absolute(a.lizard).string()},
      {"contexts", contexts},
      {"batch", a.batch},
      {"decode_steps", a.decode},
      {"prompt", "random token ids, prefilled once (slot 0) and copied to every slot"},
      {"precision", "bf16 weights and activations, fp32 accumulation"},
      {"gpu_used", "cudaMemGetInfo total - free after prefill and after decode (max), CUDA context included"},
      {"date", bench_date()},
  };
  const std::string title =
      fmt::format("lizard bench generate: {} vs Lizard, {}, batch {}",
                  synthetic ? teacher : fs::path(teacher).filename().string(), gpu, a.batch);
  write_bench_generate(a.out, runs, meta, title);
  std::printf("%s\n", bench_generate_markdown(runs).c_str());
  std::printf("GPU: %s; batch %d, %d decode steps\n", gpu.c_str(), a.batch, a.decode);
  std::printf("wrote %s/bench_generate.{json,md,png}\n", a.out.c_str());
  return 0;
}

}  // namespace lizard
