// A read-only memory map of a whole file. Checkpoints are mapped, never copied.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace lizard {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws Error if missing/unreadable
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace lizard
