#include "train/linearize_cli.h"

#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "model/checkpoint.h"
#include "model/lizard_checkpoint.h"
#include "train/cuda/stage2_cuda.h"
#include "train/data.h"
#include "train/distributed.h"
#include "model/load_model.h"
#include "train/lora.h"
#include "train/stage1.h"
#include "train/stage2.h"
#include "train/trainer.h"
#include "util/error.h"
#ifdef LIZARD_HAVE_CUDA
#include "train/cuda/stage1_cuda.h"
#endif

namespace lizard {

namespace {

std::atomic<bool> g_stop{false};
std::atomic<int64_t> g_first_stop_ns{0};

int64_t monotonic_ns() {  // clock_gettime is async-signal-safe
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

// First SIGINT or SIGTERM (Ctrl-C, `timeout`, SLURM's time limit, torchrun passing one on): finish the
// step, save, exit 130. Another one more than 0.3 s later ends the process at once. Copies of the first
// arriving together do not count: `timeout` signals the child and then its process group, torchrun
// forwards the terminal's Ctrl-C to workers that got it already, and in a process with many threads
// (CUDA, OpenMP) each copy can reach a different thread while the first handler still runs.
extern "C" void on_stop_signal(int) {
  const int64_t now = monotonic_ns();
  int64_t first = 0;
  if (g_first_stop_ns.compare_exchange_strong(first, now)) {
    g_stop.store(true);
    static const char msg[] = "\nlizard: stopping after this step (Ctrl-C again to quit without saving)\n";
    [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
  } else if (now - first > 300000000) {
    static const char msg[] = "\nlizard: quitting without saving\n";
    [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
    ::_exit(130);
  }
}

struct StopSignalScope {
  struct sigaction old_int {}, old_term {};
  StopSignalScope() {
    g_stop.store(false);
    g_first_stop_ns.store(0);
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
  }
  ~StopSignalScope() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  }
};

// With several processes (torchrun, mpirun) the communicator makes this rank's GPU current: make it
// before a stage puts anything on the GPU. A no-op for one process. Same directory as the trainer's.
void select_gpu(const std::string& out) {
  process_communicator(train_rendezvous(out));
}

}  // namespace

int run_linearize(const LinearizeArgs& a) {
  LZ_CHECK(a.stage == "1" || a.stage == "2" || a.stage == "both", "--stage {}: expected 1, 2 or both", a.stage);
  LZ_CHECK(a.device == "cpu" || a.device == "cuda", "--device {}: expected cpu or cuda", a.device);
#ifndef LIZARD_HAVE_CUDA
  LZ_CHECK(a.device == "cpu", "--device cuda: this lizard was built without CUDA (configure with -DLIZARD_CUDA=ON)");
#endif
  LZ_CHECK(!a.out.empty(), "no output directory given (--out DIR)");
  LZ_CHECK(!a.data.empty(), "no training data given (--data PATH...)");
  LZ_CHECK(a.seq_len >= 2 && a.batch >= 1, "--seq-len must be at least 2 and --batch at least 1");
  LZ_CHECK(!(a.steps > 0 && a.tokens > 0), "give --steps or --tokens, not both");
  const int64_t per_step = int64_t(a.batch) * a.seq_len;
  // Paper: 20M tokens per stage.
  const int64_t steps = a.steps > 0 ? a.steps : (std::max<int64_t>(a.tokens > 0 ? a.tokens : 20000000, 1) + per_step - 1) / per_step;

  LizardConfig cfg;
  if (!a.config.empty()) {
    std::ifstream in(a.config);
    LZ_CHECK(in.good(), "cannot read --config '{}'", a.config);
    cfg = lizard_config_from_string(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()));
  }
  // Absolute, so that the checkpoint finds its teacher from any working directory.
  std::string teacher_path =
      std::filesystem::absolute(a.teacher.empty() ? default_model_path() : a.teacher).lexically_normal().string();
  // --stage 2 from a Lizard model (stage 1's output): its layers, and its teacher.
  std::optional<LizardCheckpoint> from;
  if (const std::string lf = find_lizard_checkpoint(teacher_path); !lf.empty()) {
    LZ_CHECK(a.stage == "2", "--teacher '{}' is a Lizard model: only --stage 2 starts from one", teacher_path);
    LZ_CHECK(a.config.empty(), "--config: the Lizard model '{}' has its own", teacher_path);
    from = load_lizard_checkpoint(lf);
    teacher_path = std::filesystem::absolute(lizard_teacher_path(*from, lf)).lexically_normal().string();
    from->lora = {};
    cfg = from->config;
  }
  auto ck = std::make_shared<Checkpoint>(open_checkpoint(teacher_path));
  LZ_CHECK(ck->tokenizer != nullptr, "teacher '{}' has no tokenizer", teacher_path);
  cfg.validate(ck->config.n_layers);
  // "lizard_layers": "none": the teacher itself, LoRA only (stage 2's yardstick). Refused before the data is read.
  const bool no_lizard = !cfg.any_lizard_layer(ck->config.n_layers);
  if (a.stage != "2") require_lizard_layers(cfg, ck->config.n_layers, fmt::format("--stage {}: stage 1", a.stage));
  LZ_CHECK(!no_lizard || !a.train_lizard, "--train-lizard: the config has no Lizard layer to train");

  DataOptions dopt;
  dopt.paths = a.data;
  dopt.seq_len = a.seq_len;
  dopt.val_fraction = a.val_fraction;
  dopt.seed = a.seed;
  dopt.max_tokens = a.max_data_tokens;
  if (!a.quiet) std::fprintf(stderr, "reading and tokenizing the data...\n");
  const Dataset data = load_dataset(dopt, *ck->tokenizer, ck->chat_template);
  if (!a.quiet) std::fprintf(stderr, "data: %s\n", data.describe().c_str());

  const TeacherRecord teacher_rec = fingerprint_teacher(teacher_path);
  namespace fs = std::filesystem;
  const bool both = a.stage == "both";
  const std::string out1 = both ? (fs::path(a.out) / "stage1").string() : a.out;
  auto base_options = [&](const std::string& out, double lr, bool resume) {
    TrainOptions to;
    to.out_dir = out;
    to.steps = steps;
    to.batch = a.batch;
    to.seq_len = a.seq_len;
    to.lr = lr;
    to.warmup_frac = a.warmup;
    to.final_lr_frac = a.final_lr;
    to.adam.weight_decay = a.weight_decay;
    to.clip = a.clip;
    to.save_every = a.save_every;
    to.eval_every = a.eval_every;
    to.val_seqs = a.val_seqs;
    to.eval_tokens = a.eval_tokens;
    to.eval_on_gpu = a.device == "cuda";
    to.seed = a.seed;
    to.resume = resume;
    to.quiet = a.quiet;
    return to;
  };
  StopSignalScope sig;
  if (a.stage == "2" || both) {
    LizardCheckpoint start;
    if (both) {
      // Stage 1 first, unless a resumed run finished it already.
      const bool done1 = fs::exists(fs::path(out1) / "report.json");
      if (!(a.resume && done1)) {
        LinearizeArgs a1 = a;
        a1.stage = "1";
        a1.out = out1;
        a1.teacher = teacher_path;
        a1.resume = a.resume && fs::exists(fs::path(out1) / kTrainStateFile);
        const int rc = run_linearize(a1);
        if (rc != 0) return rc;
      }
      start = load_lizard_checkpoint((fs::path(out1) / kLizardCheckpointFile).string());
    } else if (from) {
      start = *from;
    } else {
      start = init_lizard_checkpoint(cfg, ck->config, a.seed);
      start.teacher = teacher_rec;
    }
    Stage2Options o2;
    o2.lora.rank = a.lora_rank;
    o2.lora.alpha = a.lora_alpha;
    o2.lora.targets = parse_lora_targets(a.lora_targets);
    o2.init_seed = a.seed;
    o2.train_lizard = a.train_lizard;
    o2.recompute = a.recompute;
    o2.seq_len = a.seq_len;
    o2.threads = a.threads;
    std::unique_ptr<Stage> stage2_ptr;
    if (a.device == "cuda") {
      select_gpu(a.out);
      stage2_ptr = make_stage2_cuda(ck, start, o2);
      if (!a.quiet) std::fprintf(stderr, "device: cuda (stage 2)\n");
    } else {
      stage2_ptr = std::make_unique<Stage2>(ck, start, o2);
      if (!a.quiet) std::fprintf(stderr, "device: cpu (%d threads)\n", stage2_ptr->teacher().n_threads());
    }
    Stage& stage2 = *stage2_ptr;
    TrainOptions to = base_options(a.out, a.lr2, a.resume && (!both || fs::exists(fs::path(a.out) / kTrainStateFile)));
    to.args = {{"teacher", teacher_path}, {"data", a.data}, {"lizard_config", lizard_config_to_json(start.config)},
               {"stage", "2"},
               {"from", both ? out1
                             : from ? a.teacher
                                    : std::string(no_lizard ? "(the teacher: no Lizard layers)" : "(fresh Lizard layers)")},
               {"device", a.device}, {"steps", steps}, {"seq_len", a.seq_len}, {"batch", a.batch}, {"lr", a.lr2},
               {"lora_rank", a.lora_rank}, {"lora_alpha", a.lora_alpha}, {"lora_targets", a.lora_targets},
               {"train_lizard", a.train_lizard}, {"recompute", a.recompute}, {"weight_decay", a.weight_decay},
               {"clip", a.clip}, {"warmup", a.warmup}, {"final_lr", a.final_lr}, {"seed", a.seed},
               {"threads", stage2.teacher().n_threads()}};
    to.stop = &g_stop;
    const TrainResult r = train(stage2, data, to);
    if (r.interrupted) return 130;
    if (!a.quiet)
      std::fprintf(stderr, "stage 2 done: %lld steps, %.0f tokens/s; model in %s\n",
                   static_cast<long long>(r.steps_done), r.tokens_per_s, a.out.c_str());
    return 0;
  }

  Stage1Options so;
  so.config = cfg;
  so.init_seed = a.seed;
  so.teacher = teacher_rec;
  so.seq_len = a.seq_len;
  so.threads = a.threads;
  std::unique_ptr<Stage> stage_ptr;
  if (a.device == "cuda") {
#ifdef LIZARD_HAVE_CUDA
    select_gpu(a.out);
    auto gpu = std::make_unique<Stage1Cuda>(ck, so);
    if (!a.quiet) std::fprintf(stderr, "device: cuda (%s)\n", gpu->device_description().c_str());
    stage_ptr = std::move(gpu);
#endif
  } else {
    stage_ptr = std::make_unique<Stage1>(ck, so);
    if (!a.quiet) std::fprintf(stderr, "device: cpu (%d threads)\n", stage_ptr->teacher().n_threads());
  }
  Stage& stage = *stage_ptr;

  TrainOptions to = base_options(a.out, a.lr, a.resume);
  to.args = {{"teacher", teacher_path},
             {"data", a.data},
             {"lizard_config", lizard_config_to_json(cfg)},
             {"stage", a.stage},
             {"device", a.device},
             {"steps", steps},
             {"seq_len", a.seq_len},
             {"batch", a.batch},
             {"lr", a.lr},
             {"weight_decay", a.weight_decay},
             {"clip", a.clip},
             {"warmup", a.warmup},
             {"final_lr", a.final_lr},
             {"seed", a.seed},
             {"threads", stage.teacher().n_threads()}};
  to.stop = &g_stop;
  const TrainResult r = train(stage, data, to);
  if (r.interrupted) return 130;
  if (!a.quiet)
    std::fprintf(stderr, "done: %lld steps, %.0f tokens/s; model in %s\n", static_cast<long long>(r.steps_done),
                 r.tokens_per_s, a.out.c_str());
  return 0;
}

}  // namespace lizard
