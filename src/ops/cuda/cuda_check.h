// Error helpers for the CUDA sources. nvcc's host pass cannot compile fmt's headers (consteval
// format checks), so .cu files never include util/error.h: they build the one-line message with
// a stream and throw the same lizard::Error through cuda_error.cpp.
#pragma once
#include <sstream>
#include <string>

#include <cuda_runtime.h>

namespace lizard::cuda {

[[noreturn]] void throw_error(const std::string& msg);  // throws lizard::Error(msg)

template <typename... Args>
[[noreturn]] inline void fail_cat(const Args&... args) {
  std::ostringstream s;
  (s << ... << args);
  throw_error(s.str());
}

// After a kernel launch: a launch error (bad configuration, too much shared memory) as a lizard::Error.
inline void launched(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail_cat(what, ": kernel launch failed: ", cudaGetErrorString(e));
}

}  // namespace lizard::cuda

#define LZ_CUDA_CHECK(cond, ...)                        \
  do {                                                  \
    if (!(cond)) ::lizard::cuda::fail_cat(__VA_ARGS__); \
  } while (0)

#define LZ_CUDA_OK(call)                                                                            \
  do {                                                                                              \
    cudaError_t e_ = (call);                                                                        \
    if (e_ != cudaSuccess)                                                                          \
      ::lizard::cuda::fail_cat(__FILE__, ":", __LINE__, ": ", #call, ": ", cudaGetErrorString(e_)); \
  } while (0)
