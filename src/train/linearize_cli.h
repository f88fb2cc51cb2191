// `lizard linearize`: what the CLI subcommand runs (flags are parsed in tools/lizard.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lizard {

struct LinearizeArgs {
  std::string teacher;                // GGUF file or HF directory (default: the bundled teacher)
  std::vector<std::string> data;      // text / JSONL files or folders
  std::string out;                    // output directory (a Lizard model + training state)
  std::string config;                 // LizardConfig JSON file (default: LIZARD.md's defaults)
                                      // "lizard_layers": "none" (configs/teacher_lora.json): no Lizard layer; only
                                      // --stage 2 takes it: LoRA on the teacher itself, stage 2's yardstick
  // 1: attention transfer into OUT. 2: LoRA fine-tuning into OUT, starting from --teacher when it is a
  // Lizard model (stage 1's output), else from freshly initialised Lizard layers. both: stage 1 into
  // OUT/stage1, then stage 2 from it into OUT (a --resume skips a finished stage 1).
  std::string stage = "1";
  std::string device = "cpu";
  int64_t steps = 0, tokens = 0;      // steps, or tokens (steps = ceil(tokens / (batch * seq_len)))
  int seq_len = 2048, batch = 8;      // paper: sequences of 2048
  double lr = 1e-3, weight_decay = 0, clip = 1.0, warmup = 0.1, final_lr = 0.1;
  int64_t save_every = 0, eval_every = 0, eval_tokens = 8192, max_data_tokens = 0;
  int val_seqs = 8;
  double val_fraction = 0.02;
  uint64_t seed = 1234;
  int threads = 0;
  bool resume = false, quiet = false;
  // Stage 2 (paper: LoRA r 8, alpha 16 on q, k, v; peak lr 5e-4).
  int lora_rank = 8;
  double lora_alpha = 16, lr2 = 5e-4;
  std::string lora_targets = "q,k,v";
  bool recompute = false, train_lizard = false;
};

// Runs the chosen stage(s) end to end. Returns the process exit status: 0, or 130 after Ctrl-C (the state is
// saved first). Throws Error on bad input.
int run_linearize(const LinearizeArgs& a);

}  // namespace lizard
