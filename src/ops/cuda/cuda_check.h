// Error helpers for the CUDA sources. nvcc's host pass cannot compile fmt's headers (consteval
// format checks), so .cu files never include util/error.h: they build the one-line message with
// a stream and throw the same lizard::Error through cuda_error.cpp.
#pragma once
#include <mutex>
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

namespace lizard::cuda {

// Makes the current device's default memory pool keep freed memory (release threshold = max), once
// per device: the kernels' per-call cudaMallocAsync workspaces then reuse one block instead of going
// back to the driver at every synchronisation.
inline void keep_pool_memory() {
  constexpr int kMaxDev = 64;
  static std::once_flag once[kMaxDev];
  int dev = 0;
  LZ_CUDA_OK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= kMaxDev) return;
  std::call_once(once[dev], [dev] {
    cudaMemPool_t pool;
    LZ_CUDA_OK(cudaDeviceGetDefaultMemPool(&pool, dev));
    uint64_t keep = UINT64_MAX;
    LZ_CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  });
}

}  // namespace lizard::cuda
