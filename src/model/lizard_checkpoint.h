// Lizard checkpoint: the trained Lizard parameters of every Lizard layer, in one safetensors file
// whose __metadata__ holds the LizardConfig (JSON), the teacher's shape and a record of the teacher
// it applies to (path, size, fingerprint). Loading checks the teacher and throws Error on mismatch.
//
// Tensors (F32): blk.N.lizard.feat_q {H, D, F}, .feat_k {H, D, F}, .gate_w {G, d_model}, .gate_b {G},
//   .meta {Hm, m}, .alpha {H or 1}, .lolcats_f {H}, for each Lizard layer N (LizardConfig::lizard_layers).
// __metadata__: "format" = "lizard-checkpoint/1", "lizard_config" = JSON, "shape" = JSON
//   {d_model, n_heads, n_kv_heads, head_dim, n_layers}, "teacher" = JSON {path, size, fingerprint, method}.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/lizard_config.h"

namespace lizard {

// What identifies the teacher. fingerprint = SHA-256 over, for each file (the file itself, or the
// *.safetensors, *.json and *.gguf files of a directory but lizard.safetensors, sorted by name): name (directories only),
// size, the first MiB and the last MiB (the whole file when <= 2 MiB). Cheap on multi-GB files and changes with any re-quantisation or re-export.
struct TeacherRecord {
  std::string path;
  uint64_t size = 0;  // total bytes of the fingerprinted files
  std::string fingerprint;  // hex
  std::string method = "sha256(name if dir, size, first MiB, last MiB per file)/1";
};
TeacherRecord fingerprint_teacher(const std::string& path);  // throws Error if missing

// LoRA adapters of stage 2 (train/lora.h), stored beside the Lizard tensors as F32
// blk.N.lora.T.a {rank, in} and blk.N.lora.T.b {out, rank} for T in targets ("q", "k", "v"), with
// __metadata__ "lora" = JSON {rank, alpha, targets, layers}. The delta is (alpha / rank) B A.
struct LoraAdapter {
  std::vector<float> a, b;
};
struct LoraSet {
  int rank = 0;  // 0: no LoRA
  double alpha = 0;
  std::vector<std::string> targets;
  std::map<int, std::map<std::string, LoraAdapter>> layers;  // layer -> target -> adapter
  bool empty() const { return rank == 0 || layers.empty(); }
  double scale() const { return rank > 0 ? alpha / rank : 0.0; }
};

// Merges an adapter into rows [row0, row0 + nrows) of a dequantized weight w (nrows x cols, row-major):
// w += scale * (B A)[row0 + i, j], each dot product summed in double. The one merge export and the GPU
// weight upload share, so both give the same weights.
void add_lora_rows(const LoraAdapter& ad, int rank, float scale, int64_t row0, int64_t nrows, int64_t cols, float* w);

struct LizardCheckpoint {
  LizardConfig config;
  LizardShape shape;
  int n_layers = 0;                    // teacher layers (Lizard and softmax)
  std::map<int, LizardParams> layers;  // one entry per Lizard layer
  TeacherRecord teacher;
  LoraSet lora;                        // stage 2's adapters (empty after stage 1)
};

// Builds an empty-teacher checkpoint with init_lizard_params for every Lizard layer.
LizardCheckpoint init_lizard_checkpoint(const LizardConfig& c, const ModelConfig& teacher, uint64_t seed);

// Written to path + ".tmp", then renamed. Checks every layer's parameter sizes first.
void save_lizard_checkpoint(const std::string& path, const LizardCheckpoint& ck);
// Reads and validates the file (format, config, every tensor's presence and shape). No teacher check.
LizardCheckpoint load_lizard_checkpoint(const std::string& path);
// Throws Error unless teacher_path exists and has the recorded fingerprint.
void check_lizard_teacher(const LizardCheckpoint& ck, const std::string& teacher_path);
// Throws Error unless the teacher's architecture matches the checkpoint's shape.
void check_lizard_teacher_shape(const LizardCheckpoint& ck, const ModelConfig& teacher);
// Load + check_lizard_teacher (teacher_path empty: the recorded path).
LizardCheckpoint load_lizard_checkpoint(const std::string& path, const std::string& teacher_path);

// A few lines for `lizard info`.
std::string describe_lizard_checkpoint(const LizardCheckpoint& ck);

// SHA-256 of a byte string (hex), exposed for tests.
std::string sha256_hex(const void* data, size_t n);

}  // namespace lizard
