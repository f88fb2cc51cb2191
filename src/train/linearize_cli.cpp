#include "train/linearize_cli.h"

#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "model/checkpoint.h"
#include "model/lizard_checkpoint.h"
#include "train/data.h"
#include "train/stage1.h"
#include "train/trainer.h"
#include "util/error.h"

namespace lizard {

namespace {

std::atomic<bool> g_stop{false};

// First Ctrl-C: finish the step, save, exit 130. A second one ends the process at once.
extern "C" void on_sigint(int) {
  g_stop.store(true);
  static const char msg[] = "\nlizard: stopping after this step (Ctrl-C again to quit without saving)\n";
  [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
  std::signal(SIGINT, SIG_DFL);
}

struct SigintScope {
  using Handler = void (*)(int);
  Handler prev;
  SigintScope() : prev(std::signal(SIGINT, on_sigint)) { g_stop.store(false); }
  ~SigintScope() { std::signal(SIGINT, prev == SIG_ERR ? SIG_DFL : prev); }
};

}  // namespace

int run_linearize(const LinearizeArgs& a) {
  LZ_CHECK(a.stage == "1", "--stage {}: only stage 1 (attention transfer) is implemented so far", a.stage);
  LZ_CHECK(a.device == "cpu", "--device {}: only cpu is implemented for training so far", a.device);
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
  const std::string teacher_path =
      std::filesystem::absolute(a.teacher.empty() ? default_model_path() : a.teacher).lexically_normal().string();
  auto ck = std::make_shared<Checkpoint>(open_checkpoint(teacher_path));
  LZ_CHECK(ck->tokenizer != nullptr, "teacher '{}' has no tokenizer", teacher_path);
  cfg.validate(ck->config.n_layers);

  DataOptions dopt;
  dopt.paths = a.data;
  dopt.seq_len = a.seq_len;
  dopt.val_fraction = a.val_fraction;
  dopt.seed = a.seed;
  dopt.max_tokens = a.max_data_tokens;
  if (!a.quiet) std::fprintf(stderr, "reading and tokenizing the data...\n");
  const Dataset data = load_dataset(dopt, *ck->tokenizer, ck->chat_template);
  if (!a.quiet) std::fprintf(stderr, "data: %s\n", data.describe().c_str());

  Stage1Options so;
  so.config = cfg;
  so.init_seed = a.seed;
  so.teacher = fingerprint_teacher(teacher_path);
  so.seq_len = a.seq_len;
  so.threads = a.threads;
  Stage1 stage(ck, so);

  TrainOptions to;
  to.out_dir = a.out;
  to.steps = steps;
  to.batch = a.batch;
  to.seq_len = a.seq_len;
  to.lr = a.lr;
  to.warmup_frac = a.warmup;
  to.final_lr_frac = a.final_lr;
  to.adam.weight_decay = a.weight_decay;
  to.clip = a.clip;
  to.save_every = a.save_every;
  to.eval_every = a.eval_every;
  to.val_seqs = a.val_seqs;
  to.eval_tokens = a.eval_tokens;
  to.seed = a.seed;
  to.resume = a.resume;
  to.quiet = a.quiet;
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
  SigintScope sig;
  to.stop = &g_stop;
  const TrainResult r = train(stage, data, to);
  if (r.interrupted) return 130;
  if (!a.quiet)
    std::fprintf(stderr, "done: %lld steps, %.0f tokens/s; model in %s\n", static_cast<long long>(r.steps_done),
                 r.tokens_per_s, a.out.c_str());
  return 0;
}

}  // namespace lizard
