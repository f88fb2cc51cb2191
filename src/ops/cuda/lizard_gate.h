// The Lizard gate on the GPU (LIZARD.md section 2): z = x_n . w_g + b_g per token (G = 1 for the
// scalar gate, G = H per head), log gamma = logsigmoid(z) <= 0, the form the Lizard kernels take.
//   x_n [T, d] bf16 (the layer input after the attention RMSNorm), w_g [G, d] fp32, b_g [G] fp32,
//   log_gamma [T, G] fp32 (G = 1: [T], which is LizardAttnArgs' [B, L] layout with T = B * L).
#pragma once
#include <cstdint>

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace lizard::cuda {

void lizard_gate_fwd(const void* xn, const float* w_g, const float* b_g, float* log_gamma, int64_t T, int d, int G,
                     cudaStream_t s = nullptr);

// Gradients for an upstream dlog_gamma [T, G]: dz = dlog_gamma * sigmoid(-z) (z recomputed from x_n).
// dw_g [G, d] and db_g [G] fp32 OVERWRITTEN (summed over tokens); dxn [T, d] bf16, optional (null to
// skip): dxn += dz w_g (accumulated into what is there).
void lizard_gate_bwd(const void* xn, const float* w_g, const float* b_g, const float* dlog_gamma, float* dw_g,
                     float* db_g, void* dxn, int64_t T, int d, int G, cudaStream_t s = nullptr);

}  // namespace lizard::cuda
