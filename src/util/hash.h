// FNV-1a, 64 bit: a fast fingerprint of bytes (to tell data sets, models and corrupt files apart;
// not a cryptographic check — model/lizard_checkpoint.h has SHA-256 for that).
#pragma once
#include <cstddef>
#include <cstdint>

namespace lizard {

inline constexpr uint64_t kFnvOffset = 1469598103934665603ull;

inline uint64_t fnv1a(const void* data, size_t n, uint64_t h = kFnvOffset) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

}  // namespace lizard
