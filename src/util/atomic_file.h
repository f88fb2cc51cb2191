// Writing a whole file so that a crash never leaves a half-written one looking valid:
// the bytes go to PATH.tmp, are synced, then renamed over PATH.
#pragma once
#include <string>
#include <string_view>

namespace lizard {

void write_file_atomic(const std::string& path, std::string_view bytes);  // throws Error

}  // namespace lizard
