// Token embedding lookup from a table of any supported dtype (one row dequantized per token).
#pragma once
#include <cstdint>

#include "formats/dtype.h"

namespace lizard {

// out[i, :] = table[ids[i], :] as fp32; table is {vocab, d}. Throws Error for an id out of range.
void embedding_lookup(const TensorView& table, const int32_t* ids, int64_t n, float* out);

}  // namespace lizard
