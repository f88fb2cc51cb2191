// The training loop shared by every stage: batches in a deterministic shuffled order, gradient
// clipping, AdamW with the warm-up + cosine schedule, progress lines, DIR/log.jsonl, DIR/loss.png,
// held-out loss, checkpoints (every N steps, at the end and on a stop request) and resume.
//
// Files in the output directory (each written to a temporary name, then renamed):
//   lizard.safetensors      the model as it stands (Stage::save_model)
//   train_state.safetensors trainable values, AdamW moments, step, data position, RNG state and the
//                           run's fingerprints (stage, data, batch shape); --resume reads it
//   log.jsonl               one JSON object per line: {"event": "start"|"resume"|"end"|...},
//                           {"step", "loss", "parts", "lr", "grad_norm", ...}, {"step", "val_loss", ...}
//   loss.png                loss curves;  report.json  final held-out loss, perplexity and KL
// A resumed run continues with the same values, moments, data position and random state, so its
// losses equal those of an uninterrupted run.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/data.h"
#include "train/optimizer.h"
#include "train/stage.h"

namespace lizard {

struct TrainOptions {
  std::string out_dir;
  int64_t steps = 100;          // optimizer steps in the whole run (the schedule's length)
  int batch = 8;                // sequences per step
  int seq_len = 256;            // tokens per sequence
  double lr = 1e-3;             // peak learning rate
  double warmup_frac = 0.1, final_lr_frac = 0.1;
  AdamWOptions adam;
  double clip = 1.0;            // global gradient-norm clip (0: off)
  int64_t save_every = 0;       // checkpoint every N steps (0: only at the end / on stop)
  int64_t eval_every = 0;       // held-out loss every N steps (0: only at the end)
  int val_seqs = 8;             // held-out sequences for the held-out loss
  int64_t eval_tokens = 8192;   // held-out tokens for the final perplexity / KL (0: skip)
  uint64_t seed = 1234;         // data order and the trainer's random state
  bool resume = false;
  bool quiet = false;
  const std::atomic<bool>* stop = nullptr;  // set (e.g. by SIGINT): finish the step, save, return
  // Called after every step (tests use it to request a stop at a given step).
  std::function<void(int64_t steps_done, const LossResult&)> on_step;
  nlohmann::json args = nlohmann::json::object();  // recorded in the log's start line
};

struct TrainResult {
  int64_t start_step = 0;        // steps already done when this run began (resume)
  int64_t steps_done = 0;
  bool interrupted = false;
  std::vector<double> losses;    // training loss of each step run here, in order
  double tokens_per_s = 0;       // training throughput of this run
  nlohmann::json report;         // what report.json holds (when the run finished)
};

TrainResult train(Stage& stage, const Dataset& data, const TrainOptions& opt);

// The checkpoint file names (for tests and tools).
inline constexpr const char* kTrainStateFile = "train_state.safetensors";
inline constexpr const char* kTrainLogFile = "log.jsonl";

// Hash of the token streams (detects a resume on different data).
std::string dataset_fingerprint(const Dataset& d);

}  // namespace lizard
