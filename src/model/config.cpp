#include "model/config.h"

namespace lizard {

int64_t ModelConfig::param_count() const {
  const int64_t d = d_model, q = int64_t(n_heads) * head_dim, kv = int64_t(n_kv_heads) * head_dim;
  int64_t per_layer = 2 * d                 // two RMSNorm weights
                      + d * q + 2 * d * kv  // W_q, W_k, W_v
                      + q * d               // W_o
                      + 3 * d * d_ff;       // SwiGLU
  if (qkv_bias) per_layer += q + 2 * kv;
  int64_t n = per_layer * n_layers + int64_t(vocab_size) * d + d;  // + embeddings + final norm
  if (!tied_embeddings) n += int64_t(vocab_size) * d;
  return n;
}

}  // namespace lizard
