// Fuzz helper: the parsers open paths, so each input goes into one memfd reused across runs.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace lizard::fuzz {

inline const std::string& input_path(const uint8_t* data, size_t size) {
  static int fd = [] {
    int f = ::memfd_create("lizard-fuzz", MFD_CLOEXEC);
    if (f < 0) std::abort();
    return f;
  }();
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (::ftruncate(fd, 0) != 0) std::abort();
  size_t done = 0;
  while (done < size) {
    ssize_t k = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (k <= 0) std::abort();
    done += static_cast<size_t>(k);
  }
  return path;
}

// Reads every byte a view claims, so an out-of-range view faults or trips ASan.
inline uint8_t touch(const void* p, size_t n) {
  uint8_t s = 0;
  for (size_t i = 0; i < n; ++i) s ^= static_cast<const uint8_t*>(p)[i];
  return s;
}

}  // namespace lizard::fuzz
