// safetensors reader (F32/F16/BF16; other dtypes are rejected by name) and an atomic writer.
// Sharded checkpoints (model.safetensors.index.json) are read as one set of tensors.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "util/mapped_file.h"

namespace lizard {

class SafeTensorsFile {
 public:
  explicit SafeTensorsFile(const std::string& path);  // throws Error on any inconsistency
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find_tensor(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::unique_ptr<uint8_t[]>> copies_;  // misaligned tensors, copied once
};

// All tensors of a HF model directory: model.safetensors, or the shards named by
// model.safetensors.index.json (each shard mapped once), or every *.safetensors in the folder.
class SafeTensorsSet {
 public:
  explicit SafeTensorsSet(const std::string& dir);
  const TensorView* find_tensor(const std::string& name) const;
  std::vector<const TensorView*> tensors() const;

 private:
  std::vector<std::unique_ptr<SafeTensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

// A tensor to write: data in `type` (F32, F16 or BF16), row-major `shape`.
struct TensorToWrite {
  std::string name;
  DType type = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};

// Writes to path + ".tmp" then renames, so a crash never leaves a valid-looking partial file.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace lizard
