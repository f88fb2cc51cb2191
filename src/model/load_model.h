// One way to open any model for inference: a teacher (GGUF file or Hugging Face directory) or a
// Lizard checkpoint, i.e. a directory holding lizard.safetensors (lizard_checkpoint.h's file, which
// names its teacher by path + fingerprint) or that .safetensors file itself. For a Lizard
// checkpoint the teacher is opened (its recorded path, or `teacher` when given, for moved files),
// its fingerprint and shape are checked (Error on mismatch or when missing), and the Lizard layers
// get LizardMixers; the other layers of a hybrid keep softmax attention.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "model/checkpoint.h"
#include "model/lizard_checkpoint.h"
#include "model/llama.h"

namespace lizard {

struct LoadedModel {
  std::string path;                          // what was opened (the Lizard checkpoint's, if any)
  std::shared_ptr<const Checkpoint> teacher; // weights, tokenizer and chat template
  std::shared_ptr<LlamaModel> model;
  std::optional<LizardCheckpoint> lizard;    // set for a Lizard checkpoint
  std::string lizard_file;                   // its .safetensors file

  bool is_lizard() const { return lizard.has_value(); }
  const Checkpoint& checkpoint() const { return *teacher; }
  const Tokenizer* tokenizer() const { return teacher->tokenizer.get(); }
  const ChatTemplate& chat_template() const { return teacher->chat_template; }
};

// path empty: the bundled teacher (default_model_path()). teacher: overrides the teacher path a
// Lizard checkpoint records (ignored for a teacher path).
LoadedModel load_model(const std::string& path, const ModelOptions& opt = {}, const std::string& teacher = {});

// The Lizard checkpoint file path stands for (path/lizard.safetensors, or path itself when it is a
// .safetensors file in the Lizard format), or "" when path is not a Lizard checkpoint.
std::string find_lizard_checkpoint(const std::string& path);

// The teacher of a Lizard checkpoint read from lizard_file: `teacher` when given, else the recorded
// path (a relative one is also tried beside the checkpoint; "." is the checkpoint's own directory, as
// lizard export writes). Checks its fingerprint; throws Error.
std::string lizard_teacher_path(const LizardCheckpoint& ck, const std::string& lizard_file,
                                const std::string& teacher = {});

// Gives every Lizard layer of ck a LizardMixer on `model` (checks the teacher's shape first), and
// its LoRA adapters (stage 2), if any, to the q/k/v projections.
void apply_lizard(LlamaModel& model, const LizardCheckpoint& ck);
void apply_lora(LlamaModel& model, const LoraSet& lora);

// Writes DIR/lizard.safetensors (creating DIR); the layout load_model opens.
void save_lizard_dir(const std::string& dir, const LizardCheckpoint& ck);
inline constexpr const char* kLizardCheckpointFile = "lizard.safetensors";

}  // namespace lizard
