#include "generate/bench_generate.h"

#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <span>
#include <sstream>

#include "model/checkpoint.h"
#include "model/lizard_checkpoint.h"
#include "model/load_model.h"
#include "train/plot.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace lizard {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A "VmXXX:  N kB" line of /proc/self/status, in bytes (0 if absent).
uint64_t proc_status_bytes(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(in, line))
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':')
      return std::strtoull(line.c_str() + n + 1, nullptr, 10) * 1024;
  return 0;
}

// Sets the peak RSS to the current RSS, so that what the forked child inherited from its parent's
// history does not count (Linux >= 4.0). False where unsupported.
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return out.good();
}

bool write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t w = ::write(fd, s.data() + off, s.size() - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    off += static_cast<size_t>(w);
  }
  return true;
}

std::string context_label(int64_t L) {
  if (L >= 1024 && L % 1024 == 0) return fmt::format("{}K", L / 1024);
  return std::to_string(L);
}

}  // namespace

// ---- one measurement ------------------------------------------------------------------------------

BenchRun measure_generate(const BenchSubject& s, int64_t context, const BenchGenerateOptions& opt) {
  LZ_CHECK(context >= 1, "context lengths must be positive, got {}", context);
  LZ_CHECK(opt.decode >= 1, "--decode must be at least 1");
  BenchRun r;
  r.model = s.name;
  r.context = context;
  r.decode = opt.decode;
  reset_peak_rss();  // in a forked child: the parent's history does not count
  const auto t0 = Clock::now();
  std::shared_ptr<LlamaModel> model = s.make();
  const int64_t need = context + opt.decode;
  r.trained_context = model->context_length() >= (int64_t{1} << 40) ? 0 : model->context_length();
  if (model->context_length() < need) {
    // Beyond what the model was made for: positions past its training are only timed here.
    model->set_context(need);
    r.note = fmt::format("context raised from {} to {}", r.trained_context, need);
  }
  r.run_context = model->context_length() >= (int64_t{1} << 40) ? 0 : model->context_length();
  r.load_s = seconds_since(t0);
  r.rss_after_load = proc_status_bytes("VmRSS");

  const int V = model->vocab_size();
  std::vector<int32_t> tokens(static_cast<size_t>(context));
  if (!opt.prompt.empty()) {
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = opt.prompt[i % opt.prompt.size()];
  } else {
    std::mt19937_64 rng(opt.seed);
    std::uniform_int_distribution<int32_t> pick(0, V - 1);
    for (auto& t : tokens) t = pick(rng);
  }
  for (int32_t t : tokens) LZ_CHECK(t >= 0 && t < V, "prompt token {} is out of the vocabulary ({})", t, V);

  LlamaState st = model->new_state();
  auto t1 = Clock::now();
  std::span<const float> logits = model->forward(tokens, 0, st);
  r.prefill_s = seconds_since(t1);
  r.state_bytes = st.cache_bytes();
  tokens = {};  // not part of what a generator holds

  // Greedy decode: each step feeds back the argmax, as generation would.
  t1 = Clock::now();
  for (int i = 0; i < opt.decode; ++i) {
    const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    logits = model->forward(&next, 1, st.n_past(), st);
  }
  r.decode_s = seconds_since(t1);
  r.state_bytes_end = st.cache_bytes();
  r.prefill_tok_s = static_cast<double>(context) / std::max(r.prefill_s, 1e-9);
  r.decode_tok_s = opt.decode / std::max(r.decode_s, 1e-9);
  r.peak_rss = proc_status_bytes("VmHWM");
  if (r.peak_rss == 0) {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    r.peak_rss = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  }
  r.wall_s = seconds_since(t0);
  r.status = "ok";
  return r;
}

// ---- child processes ------------------------------------------------------------------------------

ChildResult run_in_child(const std::function<std::string()>& fn, double time_limit_s) {
  ChildResult res;
  int fds[2];
  LZ_CHECK(::pipe(fds) == 0, "cannot create a pipe: {}", std::strerror(errno));
  std::fflush(nullptr);
  const auto t0 = Clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    fail("cannot fork: {}", std::strerror(errno));
  }
  if (pid == 0) {
    ::close(fds[0]);
    std::string out;
    int code = 0;
    try {
      out = fn();
    } catch (const std::bad_alloc&) {
      out = "error: out of memory", code = 3;
    } catch (const std::exception& e) {
      out = std::string("error: ") + e.what(), code = 3;
    }
    write_all(fds[1], out);
    ::close(fds[1]);
    ::_exit(code);  // no atexit handlers or stdio flushes of the parent's copies
  }
  ::close(fds[1]);
  // Read until EOF or the deadline; the child may write more than a pipe buffer holds.
  const double limit_ms = std::max(0.0, time_limit_s) * 1000.0;
  char buf[65536];
  for (;;) {
    const double left = limit_ms - seconds_since(t0) * 1000.0;
    if (left <= 0) {
      res.timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int k = ::poll(&p, 1, static_cast<int>(std::min(left, 1e9)) + 1);
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) continue;  // the loop's deadline check decides
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    res.output.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  if (res.timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  res.wall_s = seconds_since(t0);
  if (res.timed_out) {
    res.failure = fmt::format("killed at the time limit of {:.0f} s", time_limit_s);
  } else if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    res.failure = fmt::format("killed by signal {} ({}){}", sig, strsignal(sig),
                              sig == SIGKILL ? ", out of memory?" : "");
  } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    res.finished = true;
  } else {
    res.failure = res.output.rfind("error: ", 0) == 0 ? res.output.substr(7)
                                                      : fmt::format("exit status {}", WEXITSTATUS(status));
  }
  return res;
}

std::vector<BenchRun> run_bench_generate(const std::vector<BenchSubject>& subjects, const BenchGenerateOptions& opt) {
  std::vector<int64_t> contexts = opt.contexts;
  std::sort(contexts.begin(), contexts.end());
  contexts.erase(std::unique(contexts.begin(), contexts.end()), contexts.end());
  LZ_CHECK(!contexts.empty(), "no context lengths to measure");
  std::vector<BenchRun> runs;
  for (const auto& s : subjects) {
    std::string stop;  // set once a context did not finish: the longer ones are skipped
    const BenchRun* last = nullptr;
    for (int64_t L : contexts) {
      BenchRun r;
      r.model = s.name;
      r.context = L;
      r.decode = opt.decode;
      if (!stop.empty()) {
        r.status = "skipped";
        r.note = stop;
      } else if (opt.predict_skip && last && last->ok()) {
        // KV-cache models: prefill attention grows with L^2; constant-state ones with L.
        const double ratio = static_cast<double>(L) / static_cast<double>(last->context);
        const bool kv = last->state_bytes_end > last->state_bytes;
        const double predicted = last->wall_s * (kv ? ratio * ratio : ratio);
        if (predicted > 2 * opt.time_limit_s) {
          r.status = "skipped";
          r.note = fmt::format("predicted {:.0f} s from {} tokens (x{}^{}) exceeds twice the {:.0f} s limit",
                               predicted, last->context, ratio, kv ? 2 : 1, opt.time_limit_s);
          stop = fmt::format("a shorter context was skipped");
        }
      }
      if (r.status.empty()) {
        const ChildResult c = run_in_child(
            [&] { return bench_run_to_json(measure_generate(s, L, opt)).dump(); }, opt.time_limit_s);
        if (c.finished) {
          try {
            r = bench_run_from_json(nlohmann::json::parse(c.output));
          } catch (const std::exception& e) {
            r.status = "error";
            r.note = fmt::format("unreadable result from the child: {}", e.what());
          }
        } else {
          r.status = c.timed_out ? "did not finish" : "error";
          r.note = c.failure;
          r.wall_s = c.wall_s;
          stop = fmt::format("{} tokens did not finish", L);
          if (!c.timed_out) stop = fmt::format("{} tokens failed", L);
        }
      }
      runs.push_back(r);
      last = &runs.back();
      if (opt.on_run) opt.on_run(r);
    }
  }
  return runs;
}

// ---- results --------------------------------------------------------------------------------------

nlohmann::json bench_run_to_json(const BenchRun& r) {
  nlohmann::json j = {{"model", r.model},
                      {"context", r.context},
                      {"status", r.status},
                      {"note", r.note},
                      {"trained_context", r.trained_context},
                      {"run_context", r.run_context},
                      {"context_raised", r.note.rfind("context raised", 0) == 0},
                      {"decode_tokens", r.decode},
                      {"wall_s", r.wall_s}};
  if (r.ok()) {
    j["load_s"] = r.load_s;
    j["prefill_s"] = r.prefill_s;
    j["decode_s"] = r.decode_s;
    j["prefill_tokens_per_s"] = r.prefill_tok_s;
    j["decode_tokens_per_s"] = r.decode_tok_s;
    j["state_bytes"] = r.state_bytes;
    j["state_bytes_after_decode"] = r.state_bytes_end;
    j["rss_after_load_bytes"] = r.rss_after_load;
    j["peak_rss_bytes"] = r.peak_rss;
    if (r.gpu_used_bytes > 0) {
      j["batch"] = r.batch;
      j["gpu_used_bytes"] = r.gpu_used_bytes;
      j["gpu_weight_bytes"] = r.gpu_weight_bytes;
    }
  }
  return j;
}

BenchRun bench_run_from_json(const nlohmann::json& j) {
  BenchRun r;
  r.model = j.at("model").get<std::string>();
  r.context = j.at("context").get<int64_t>();
  r.status = j.at("status").get<std::string>();
  r.note = j.value("note", "");
  r.trained_context = j.value("trained_context", int64_t{0});
  r.run_context = j.value("run_context", int64_t{0});
  r.decode = j.value("decode_tokens", 0);
  r.wall_s = j.value("wall_s", 0.0);
  r.load_s = j.value("load_s", 0.0);
  r.prefill_s = j.value("prefill_s", 0.0);
  r.decode_s = j.value("decode_s", 0.0);
  r.prefill_tok_s = j.value("prefill_tokens_per_s", 0.0);
  r.decode_tok_s = j.value("decode_tokens_per_s", 0.0);
  r.state_bytes = j.value("state_bytes", uint64_t{0});
  r.state_bytes_end = j.value("state_bytes_after_decode", uint64_t{0});
  r.rss_after_load = j.value("rss_after_load_bytes", uint64_t{0});
  r.peak_rss = j.value("peak_rss_bytes", uint64_t{0});
  r.batch = j.value("batch", 1);
  r.gpu_used_bytes = j.value("gpu_used_bytes", uint64_t{0});
  r.gpu_weight_bytes = j.value("gpu_weight_bytes", uint64_t{0});
  return r;
}

nlohmann::json bench_generate_json(const std::vector<BenchRun>& runs, const nlohmann::json& meta) {
  nlohmann::json j = {{"bench", "generate"}, {"meta", meta}, {"runs", nlohmann::json::array()}};
  for (const auto& r : runs) j["runs"].push_back(bench_run_to_json(r));
  return j;
}

std::string bench_generate_markdown(const std::vector<BenchRun>& runs) {
  // GPU runs report device memory (and their batch) where CPU runs report RSS.
  const bool gpu = std::any_of(runs.begin(), runs.end(), [](const BenchRun& r) { return r.gpu_used_bytes > 0; });
  std::string s =
      gpu ? "| model | context | batch | prefill tok/s | decode tok/s | state MiB | peak GPU MiB | weights MiB | note |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---|\n"
          : "| model | context | prefill tok/s | decode tok/s | state MiB | peak RSS MiB | RSS after load MiB | note |\n"
            "|---|---:|---:|---:|---:|---:|---:|---|\n";
  for (const auto& r : runs) {
    if (r.ok() && gpu)
      s += fmt::format("| {} | {} | {} | {:.1f} | {:.2f} | {} | {} | {} | {} |\n", r.model, r.context, r.batch,
                       r.prefill_tok_s, r.decode_tok_s, bench_mib(r.state_bytes_end), bench_mib(r.gpu_used_bytes),
                       bench_mib(r.gpu_weight_bytes), r.note);
    else if (r.ok())
      s += fmt::format("| {} | {} | {:.1f} | {:.2f} | {} | {} | {} | {} |\n", r.model, r.context, r.prefill_tok_s,
                       r.decode_tok_s, bench_mib(r.state_bytes_end), bench_mib(r.peak_rss),
                       bench_mib(r.rss_after_load), r.note);
    else if (gpu)
      s += fmt::format("| {} | {} | | {} | | | | | {} |\n", r.model, r.context, r.status, r.note);
    else
      s += fmt::format("| {} | {} | {} | | | | | {} |\n", r.model, r.context, r.status, r.note);
  }
  // Per model, shortest against longest finished context: is the state flat, the decode constant?
  std::vector<std::string> names;
  for (const auto& r : runs)
    if (std::find(names.begin(), names.end(), r.model) == names.end()) names.push_back(r.model);
  std::string summary;
  for (const auto& name : names) {
    const BenchRun *a = nullptr, *b = nullptr;
    for (const auto& r : runs)
      if (r.model == name && r.ok()) {
        if (!a) a = &r;
        b = &r;
      }
    if (!a || !b || a == b) continue;
    const double grow = static_cast<double>(b->state_bytes_end) / static_cast<double>(std::max<uint64_t>(a->state_bytes_end, 1));
    summary += fmt::format(
        "- {}: from {} to {} tokens ({:.0f}x), state {} -> {} MiB ({}), decode {:.2f} -> {:.2f} tok/s ({:+.0f}%)\n", name,
        a->context, b->context, static_cast<double>(b->context) / static_cast<double>(a->context),
        bench_mib(a->state_bytes_end), bench_mib(b->state_bytes_end), grow == 1.0 ? "flat" : fmt::format("x{:.1f}", grow),
        a->decode_tok_s, b->decode_tok_s, 100.0 * (b->decode_tok_s / std::max(a->decode_tok_s, 1e-12) - 1.0));
  }
  if (!summary.empty()) s += "\n" + summary;
  return s;
}

Raster plot_bench_generate(const std::vector<BenchRun>& runs, const std::string& title) {
  std::vector<std::string> names;
  std::vector<int64_t> contexts;
  for (const auto& r : runs) {
    if (std::find(names.begin(), names.end(), r.model) == names.end()) names.push_back(r.model);
    contexts.push_back(r.context);
  }
  std::sort(contexts.begin(), contexts.end());
  contexts.erase(std::unique(contexts.begin(), contexts.end()), contexts.end());
  const Rgb palette[] = {{220, 60, 40}, {30, 90, 200}, {40, 150, 60}, {150, 60, 180}, {230, 140, 20}};
  LinePanel mem, dec;
  mem.title = "sequence state memory (cache_bytes)";
  mem.y_label = "MiB";
  mem.log_y = true;
  const int batch = runs.empty() ? 1 : runs.front().batch;
  dec.title = batch > 1 ? fmt::format("decode speed ({} steps of a batch of {}, tokens/s summed)",
                                      runs.front().decode, batch)
                        : fmt::format("decode speed ({} single-token steps)", runs.empty() ? 0 : runs.front().decode);
  dec.y_label = "tokens/s";
  dec.y_from_zero = true;
  for (LinePanel* p : {&mem, &dec}) {
    p->x_label = "context: tokens prefilled";
    p->log_x = true;
    for (int64_t L : contexts) p->x_ticks.push_back(static_cast<double>(L)), p->x_tick_labels.push_back(context_label(L));
  }
  for (size_t i = 0; i < names.size(); ++i) {
    Series sm{names[i], palette[i % 5], {}, {}}, sd = sm;
    for (const auto& r : runs) {
      if (r.model != names[i]) continue;
      const double x = static_cast<double>(r.context), nan = std::nan("");
      sm.x.push_back(x), sd.x.push_back(x);
      sm.y.push_back(r.ok() ? static_cast<double>(r.state_bytes_end) / 1048576.0 : nan);
      sd.y.push_back(r.ok() ? r.decode_tok_s : nan);
    }
    mem.series.push_back(std::move(sm));
    dec.series.push_back(std::move(sd));
  }
  return plot_line_panels(title, {mem, dec});
}

void write_bench_generate(const std::string& dir, const std::vector<BenchRun>& runs, const nlohmann::json& meta,
                          const std::string& title) {
  fs::create_directories(dir);
  write_file_atomic((fs::path(dir) / "bench_generate.json").string(), bench_generate_json(runs, meta).dump(2) + "\n");
  write_file_atomic((fs::path(dir) / "bench_generate.md").string(), "# " + title + "\n\n" + bench_generate_markdown(runs));
  write_png((fs::path(dir) / "bench_generate.png").string(), plot_bench_generate(runs, title));
}

std::string bench_mib(uint64_t bytes) { return fmt::format("{:.1f}", static_cast<double>(bytes) / 1048576.0); }

std::string bench_date() {
  char when[64] = {};
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S%z", std::localtime(&now));
  return when;
}

// ---- the CLI --------------------------------------------------------------------------------------

namespace {

std::string first_line_of(const char* path, const std::string& key = {}) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (key.empty() || line.rfind(key, 0) == 0) {
      const auto c = line.find(':');
      return key.empty() || c == std::string::npos ? line : line.substr(c + 2);
    }
  return {};
}

// A temporary directory removed on scope exit.
struct TempDir {
  fs::path p;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "lizard-bench-XXXXXX").string();
    LZ_CHECK(::mkdtemp(tmpl.data()) != nullptr, "cannot create a temporary directory: {}", std::strerror(errno));
    p = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(p, ec);
  }
};

}  // namespace

int run_bench_generate_cli(const BenchGenerateArgs& a) {
  LZ_CHECK(a.device == "cpu" || a.device == "cuda", "--device must be cpu or cuda, got '{}'", a.device);
  if (a.device == "cuda") return run_bench_generate_cuda(a);
  LZ_CHECK(a.batch == 1, "--batch is for --device cuda (the CPU bench runs one sequence)");
  LZ_CHECK(a.shape.empty(), "--shape (a synthetic model made on the GPU) is for --device cuda");
  // The parent stays small and never runs the model (nor OpenMP): every load and forward happens
  // in children, so their peak RSS is their own.
  const std::string teacher = fs::absolute(a.model.empty() ? default_model_path() : a.model).lexically_normal().string();
  LZ_CHECK(fs::exists(teacher), "teacher '{}' not found", teacher);
  std::optional<TempDir> tmp;
  std::string lizard_dir = a.lizard;
  if (lizard_dir.empty()) {
    // Untrained all-layer Lizard: speed and memory do not depend on training.
    tmp.emplace();
    lizard_dir = tmp->p.string();
    const ChildResult c = run_in_child(
        [&] {
          const Checkpoint ck = open_checkpoint(teacher);
          LizardCheckpoint lz = init_lizard_checkpoint(LizardConfig{}, ck.config, a.seed);
          lz.teacher = fingerprint_teacher(teacher);
          save_lizard_dir(lizard_dir, lz);
          return std::string("ok");
        },
        std::max(600.0, a.time_limit));
    LZ_CHECK(c.finished, "cannot make the untrained Lizard checkpoint: {}", c.failure);
  } else {
    LZ_CHECK(!find_lizard_checkpoint(lizard_dir).empty(), "'{}' is not a Lizard checkpoint", lizard_dir);
  }
  ModelOptions mo;
  mo.n_threads = a.threads;
  std::vector<BenchSubject> subjects = {
      {"teacher", [&] { return load_model(teacher, mo).model; }},
      {a.lizard.empty() ? "lizard (untrained)" : "lizard", [&] { return load_model(lizard_dir, mo, a.teacher).model; }},
  };
  BenchGenerateOptions o;
  o.contexts = a.contexts;
  o.decode = a.decode;
  o.time_limit_s = a.time_limit;
  o.seed = a.seed;
  if (!a.quiet)
    o.on_run = [](const BenchRun& r) {
      if (r.ok())
        std::fprintf(stderr, "[%s @ %lld: prefill %.1f tok/s, decode %.2f tok/s, state %s MiB, peak RSS %s MiB%s%s]\n",
                     r.model.c_str(), static_cast<long long>(r.context), r.prefill_tok_s, r.decode_tok_s,
                     bench_mib(r.state_bytes_end).c_str(), bench_mib(r.peak_rss).c_str(), r.note.empty() ? "" : "; ",
                     r.note.c_str());
      else
        std::fprintf(stderr, "[%s @ %lld: %s: %s]\n", r.model.c_str(), static_cast<long long>(r.context),
                     r.status.c_str(), r.note.c_str());
    };
  const std::string load_before = first_line_of("/proc/loadavg");
  const std::vector<BenchRun> runs = run_bench_generate(subjects, o);
  const std::string load_after = first_line_of("/proc/loadavg");

  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  const nlohmann::json meta = {
      {"teacher", teacher},
      {"lizard", a.lizard.empty() ? "untrained all-layer Lizard (LizardConfig defaults), made in a temp dir"
                                  : fs::absolute(a.lizard).string()},
      {"contexts", a.contexts},
      {"decode_tokens", a.decode},
      {"prompt", "random token ids"},
      {"time_limit_s", a.time_limit},
      {"threads", a.threads},
      {"omp_wait_policy", wait_policy ? wait_policy : ""},
      {"cpu", first_line_of("/proc/cpuinfo", "model name")},
      {"cores", static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN))},
      {"loadavg_before", load_before},
      {"loadavg_after", load_after},
      {"date", bench_date()},
      {"peak_rss", "VmHWM of a fresh child per run (reset at its start), model file pages included"},
  };
  const std::string title = fmt::format("lizard bench generate: {} vs Lizard, CPU", fs::path(teacher).filename().string());
  write_bench_generate(a.out, runs, meta, title);
  std::printf("%s\n", bench_generate_markdown(runs).c_str());
  std::printf("CPU: %s, %d cores, load average %s (before) / %s (after)\n", meta["cpu"].get<std::string>().c_str(),
              meta["cores"].get<int>(), load_before.c_str(), load_after.c_str());
  std::printf("wrote %s/bench_generate.{json,md,png}\n", a.out.c_str());
  return 0;
}

}  // namespace lizard
