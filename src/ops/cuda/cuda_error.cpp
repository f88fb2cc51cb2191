// The CUDA sources cannot include fmt (see cuda_check.h); they throw lizard::Error through here.
// Plain C++ with no CUDA dependency, so it builds on machines without nvcc too.
#include <string>

#include "util/error.h"

namespace lizard::cuda {

[[noreturn]] void throw_error(const std::string& msg) { throw Error(msg); }

}  // namespace lizard::cuda
