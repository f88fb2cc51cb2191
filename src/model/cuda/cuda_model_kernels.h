// Glue kernels of the CUDA model (model/cuda/cuda_model.h): RoPE at one position per row (a batch of
// sequences each at its own position) and the Lizard ring buffer filled from a prefill's keys/values.
// Device pointers, bf16 storage. Plain C++ can include this header.
#pragma once
#include <cstdint>

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace lizard::cuda {

// x [rows, stride] bf16; row r holds n_heads heads of head_dim at its start and is rotated to position
// pos[r] (device int32), with rope_apply's arithmetic (fp32 angle, cos/sin in double).
void rope_rows(void* x, int64_t rows, int64_t stride, int n_heads, int head_dim, const int* pos,
               const float* inv_freq, cudaStream_t s = nullptr);

// One sequence's keys and values of positions 0..n-1, k, v [n, Hkv, D] bf16, into its ring buffers
// ring_k, ring_v [Hkv, w, D] (lizard_attention_decode's layout): position t goes to slot t % w, for the
// last min(n, w) positions.
void lizard_ring_fill(const void* k, const void* v, void* ring_k, void* ring_v, int64_t n, int Hkv, int D, int w,
                      cudaStream_t s = nullptr);

}  // namespace lizard::cuda
