// GGUF v3 reader (v2 accepted): metadata key/values, tensor infos, alignment. Memory-mapped.
// Every offset and size is validated, so a truncated or corrupt file gives an Error, never a crash.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "formats/dtype.h"
#include "util/mapped_file.h"

namespace lizard {

// A metadata value. Arrays hold one of the vector alternatives. Integer scalars are int64_t except
// GGUF uint64 (uint64_t); integer arrays of any width are vector<int64_t>; float32/64 are double.
// Arrays of arrays are flattened into one vector (their inner arrays must share an element kind).
using GGUFValue = std::variant<int64_t, uint64_t, double, bool, std::string, std::vector<int64_t>,
                               std::vector<double>, std::vector<std::string>, std::vector<bool>>;

class GGUFFile {
 public:
  explicit GGUFFile(const std::string& path);  // throws Error

  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  const std::string& path() const { return file_.path(); }

  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const GGUFValue* get(const std::string& key) const;
  // Typed getters: throw Error naming the key if it is missing or of the wrong type.
  // Integer getters accept any integer type; float getters accept ints too.
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_strings(const std::string& key) const;
  std::vector<int64_t> get_ints(const std::string& key) const;
  std::vector<double> get_floats(const std::string& key) const;
  // Optional forms: nullopt when missing.
  std::optional<std::string> find_string(const std::string& key) const;
  std::optional<int64_t> find_int(const std::string& key) const;
  std::optional<double> find_float(const std::string& key) const;
  std::optional<bool> find_bool(const std::string& key) const;
  const std::map<std::string, GGUFValue>& metadata() const { return kv_; }

  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find_tensor(const std::string& name) const;  // nullptr if absent

 private:
  MappedFile file_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  std::map<std::string, GGUFValue> kv_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace lizard
