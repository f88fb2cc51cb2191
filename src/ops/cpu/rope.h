// Rotary position embedding in Hugging Face "rotate-half" order: within each head, element j
// pairs with element j + D/2 and both rotate by the angle pos * inv_freq[j].
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace lizard {

// inv_freq[j] = theta^(-2j/D) for j < D/2, then the config's scaling (Llama-3 or linear).
std::vector<float> rope_inv_freq(int head_dim, float theta, const RopeScaling& scaling);
// The same in double (for the fp64 reference forms of the Lizard layer).
std::vector<double> rope_inv_freq_f64(int head_dim, double theta, const RopeScaling& scaling);

// Rotates n rows in place; row i holds n_heads heads of head_dim floats, starts at x + i*stride and
// sits at position pos0 + i. inv_freq has head_dim/2 entries.
void rope_apply(float* x, int64_t n, int64_t stride, int n_heads, int head_dim, int64_t pos0,
                const float* inv_freq);

}  // namespace lizard
