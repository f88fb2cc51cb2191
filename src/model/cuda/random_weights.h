// Random bf16 tensors made directly on the GPU, for synthetic models of a given shape (speed and memory
// benchmarks without a checkpoint: bench generate --shape). Plain C++ header.
#pragma once
#include <cstdint>

namespace lizard::cuda {

// dst[i] = bf16(uniform in [-scale, scale]) from a counter hash of (seed, i): the same for any launch.
void fill_uniform_bf16(void* dst, int64_t n, float scale, uint64_t seed);
// dst[i] = bf16(value).
void fill_const_bf16(void* dst, int64_t n, float value);

}  // namespace lizard::cuda
