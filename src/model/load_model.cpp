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

std::string lizard_teacher_path(const LizardCheckpoint& ck, const std::string& lizard_file,
                                const std::string& teacher) {
  std::error_code ec;
  std::string path = teacher.empty() ? ck.teacher.path : teacher;
  // "." records a teacher in the checkpoint's own directory (lizard export), wherever it is now.
  if (teacher.empty() && path == ".") {
    const fs::path dir = fs::path(lizard_file).parent_path();
    path = dir.empty() ? std::string(".") : dir.string();
  }
  if (teacher.empty() && fs::path(path).is_relative() && !fs::exists(path, ec)) {
    const fs::path alt = fs::path(lizard_file).parent_path() / path;
    if (fs::exists(alt, ec)) path = alt.string();
  }
  try {
    check_lizard_teacher(ck, path);
  } catch (const Error& e) {
    fail("Lizard checkpoint '{}': {}{}", lizard_file, e.what(), teacher.empty() ? " (give it with --teacher)" : "");
  }
  return path;
}

void apply_lizard(LlamaModel& model, const LizardCheckpoint& ck) {
  check_lizard_teacher_shape(ck, model.config());
  for (const auto& [layer, params] : ck.layers)
    model.set_mixer(layer, std::make_shared<const LizardMixer>(ck.config, model.config(), params));
  apply_lora(model, ck.lora);
}

void apply_lora(LlamaModel& model, const LoraSet& lora) {
  if (lora.empty()) return;
  for (const auto& [layer, m] : lora.layers)
    for (const auto& [t, ad] : m) {
      auto d = std::make_shared<LoraDelta>();
      d->rank = lora.rank;
      d->scale = static_cast<float>(lora.scale());
      d->a = ad.a;
      d->b = ad.b;
      LZ_CHECK(t.size() == 1, "LoRA target '{}' is not supported (q, k, v)", t);
      model.set_lora(layer, t[0], std::move(d));
    }
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
    teacher_path = lizard_teacher_path(*m.lizard, m.lizard_file, teacher);
  }
  m.teacher = std::make_shared<const Checkpoint>(open_checkpoint(teacher_path));
  m.model = std::make_shared<LlamaModel>(m.teacher, opt);
  if (m.lizard) {
    apply_lizard(*m.model, *m.lizard);
    // With no softmax layer left nothing grows with the sequence: no context limit unless asked.
    if (opt.context == 0 && static_cast<int>(m.lizard->layers.size()) == m.model->config().n_layers)
      m.model->set_context(int64_t{1} << 40);
  }
  return m;
}

}  // namespace lizard
