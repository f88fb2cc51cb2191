// SwiGLU gate of the Llama MLP: out = silu(gate) * up, silu(g) = g * sigmoid(g).
#pragma once
#include <cstdint>

namespace lizard {

// Elementwise over n values; out may alias gate or up. Multi-threaded for large n.
void swiglu(const float* gate, const float* up, float* out, int64_t n);

}  // namespace lizard
