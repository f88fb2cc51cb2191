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
//
// Data parallel (train/distributed.h): with several processes, the global batch stays `batch`
// sequences per step; rank r trains on its equal share of the same sample order, the gradients
// (of each share's mean loss) are averaged with NCCL, which equals the one-process gradient of the
// global batch's mean loss, and every rank takes the same optimizer step. Rank 0 alone prints, writes
// the log, plot, checkpoints and model, reads a resumed state (then sends it to the others) and
// runs the held-out evaluation; the other ranks return after the last step.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/data.h"
#include "train/distributed.h"
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
  bool eval_on_gpu = false;     // that evaluation with CudaModel from the saved checkpoint (CPU if it can't)
  uint64_t seed = 1234;         // data order and the trainer's random state
  bool resume = false;
  bool quiet = false;
  const std::atomic<bool>* stop = nullptr;  // set (e.g. by SIGINT): finish the step, save, return
  // Called after every step (tests use it to request a stop at a given step).
  std::function<void(int64_t steps_done, const LossResult&)> on_step;
  nlohmann::json args = nlohmann::json::object();  // recorded in the log's start line
  // Processes: null means process_communicator() (from the launcher's environment; a no-op for a
  // single process). It selects the GPU, so call process_communicator() before a stage uses the GPU.
  Communicator* comm = nullptr;
  std::string dist_dir;         // rendezvous directory if this run makes it (default: out_dir/.dist)
};

struct TrainResult {
  int64_t start_step = 0;        // steps already done when this run began (resume)
  int64_t steps_done = 0;
  bool interrupted = false;
  std::vector<double> losses;    // training loss of each step run here, in order
  double tokens_per_s = 0;       // training throughput of this run, all processes together
  double tokens_per_s_per_gpu = 0;  // the same per process
  int world = 1;                 // processes that trained together
  nlohmann::json report;         // what report.json holds (when the run finished)
};

TrainResult train(Stage& stage, const Dataset& data, const TrainOptions& opt);

// This rank's samples of the next global batch; advances `order` by the whole batch, so that every
// rank's order stays the same and the shares together are the one-process batch.
std::vector<int64_t> next_batch(SampleOrder& order, int batch, const BatchShard& shard);

// The checkpoint file names (for tests and tools).
inline constexpr const char* kTrainStateFile = "train_state.safetensors";
inline constexpr const char* kTrainLogFile = "log.jsonl";

// Hash of the token streams (detects a resume on different data).
std::string dataset_fingerprint(const Dataset& d);

}  // namespace lizard
