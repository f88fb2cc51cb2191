// `lizard eval`: what the CLI subcommand runs (flags are parsed in tools/lizard.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lizard {

struct EvalArgs {
  std::string task;                 // ppl, kl, passkey, mqar, mc
  std::string model;                // teacher (default: the bundled one)
  std::string student;              // second model: kl's student; for other tasks evaluated too
  std::string name, student_name;   // labels in reports (default: file names)
  std::string teacher;              // teacher of Lizard checkpoints, when moved from its recorded path
  std::vector<std::string> data;    // text files/folders (ppl, kl) or the JSONL file (mc)
  std::vector<std::string> compare; // result files to print side by side (no task then)
  std::string out_dir = "eval_out";
  int threads = 0;
  std::string device = "cpu";       // cpu | cuda (GPU logits; LoLCATs students fall back to the CPU)
  bool quiet = false;
  uint64_t seed = 1234;
  // ppl, kl
  int64_t ctx = 0, stride = 0, max_tokens = 0;  // 0: min(2048, model context), ctx / 2, all
  // passkey
  std::vector<int64_t> lengths{2048, 4096, 8192};
  std::vector<int> depths{0, 25, 50, 75, 100};
  int samples = 5;
  // mqar
  std::vector<int> pairs{8, 16, 32};
  std::vector<int64_t> seq_lens{0};
  int queries = 0;
  std::string keys = "letters";
  // mc
  std::string task_format;
  std::string fewshot_file;
  int shots = 0;
  int64_t limit = 0;
  bool bos = false;
};

// Runs one evaluation (or a comparison), prints the markdown tables, writes the result files.
void run_eval(const EvalArgs& a);

}  // namespace lizard
