// One error type for everything a user can cause (bad file, bad flag, shape mismatch...).
// The CLI catches it and prints its message as one line, then exits non-zero.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace lizard {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] inline void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

// Check a condition that depends on user input; throws Error with the formatted message.
#define LZ_CHECK(cond, ...)                  \
  do {                                       \
    if (!(cond)) ::lizard::fail(__VA_ARGS__); \
  } while (0)

}  // namespace lizard
