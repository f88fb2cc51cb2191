#include "model/load_model.h"

#include <filesystem>

#include "formats/safetensors.h"
#include "model/lizard_mixer.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace lizard {

std::string find_lizard_checkpoint(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path f = fs::path(path) / kLizardCheckpointFile;
    return fs::is_regular_file(f, ec) ? f.string() : std::string();
  }
  if (fs::path(path).extension() != ".safetensors" || !fs::is_regular_file(path, ec)) return {};
  SafeTensorsFile f(path);
  const auto it = f.metadata().find("format");
  return it != f.metadata().end() && it->second.rfind("lizard-checkpoint/", 0) == 0 ? path : std::string();
}

void apply_lizard(LlamaModel& model, const LizardCheckpoint& ck) {
  check_lizard_teacher_shape(ck, model.config());
  for (const auto& [layer, params] : ck.layers)
    model.set_mixer(layer, std::make_shared<const LizardMixer>(ck.config, model.config(), params));
}

void save_lizard_dir(const std::string& dir, const LizardCheckpoint& ck) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  LZ_CHECK(!ec, "cannot create '{}': {}", dir, ec.message());
  save_lizard_checkpoint((fs::path(dir) / kLizardCheckpointFile).string(), ck);
}

LoadedModel load_model(const std::string& path_arg, const ModelOptions& opt, const std::string& teacher) {
  LoadedModel m;
  m.path = path_arg.empty() ? default_model_path() : path_arg;
  std::error_code ec;
  LZ_CHECK(fs::exists(m.path, ec), "model '{}' does not exist", m.path);
  m.lizard_file = find_lizard_checkpoint(m.path);
  std::string teacher_path = m.path;
  if (!m.lizard_file.empty()) {
    m.lizard = load_lizard_checkpoint(m.lizard_file);
    teacher_path = teacher.empty() ? m.lizard->teacher.path : teacher;
    // A relative recorded path that is not found from here may be relative to the checkpoint.
    if (teacher.empty() && fs::path(teacher_path).is_relative() && !fs::exists(teacher_path, ec)) {
      const fs::path alt = fs::path(m.lizard_file).parent_path() / teacher_path;
      if (fs::exists(alt, ec)) teacher_path = alt.string();
    }
    try {
      check_lizard_teacher(*m.lizard, teacher_path);
    } catch (const Error& e) {
      fail("Lizard checkpoint '{}': {}{}", m.path, e.what(), teacher.empty() ? " (give the teacher with --teacher)" : "");
    }
  }
  m.teacher = std::make_shared<const Checkpoint>(open_checkpoint(teacher_path));
  m.model = std::make_shared<LlamaModel>(m.teacher, opt);
  if (m.lizard) apply_lizard(*m.model, *m.lizard);
  return m;
}

}  // namespace lizard
