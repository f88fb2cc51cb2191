#include "ops/cpu/embedding.h"

#include "formats/quant.h"
#include "util/error.h"

namespace lizard {

void embedding_lookup(const TensorView& table, const int32_t* ids, int64_t n, float* out) {
  LZ_CHECK(table.shape.size() == 2, "embedding table '{}' must be 2-D, has shape {}", table.name,
           table.shape_str());
  const int64_t vocab = table.shape[0], d = table.shape[1];
  for (int64_t i = 0; i < n; ++i)
    LZ_CHECK(ids[i] >= 0 && ids[i] < vocab, "token id {} is out of range (vocabulary of {})", ids[i], vocab);
  const size_t row_bytes = dtype_row_bytes(table.type, d);
  const auto* base = static_cast<const uint8_t*>(table.data);
#pragma omp parallel for schedule(static) if (n > 16)
  for (int64_t i = 0; i < n; ++i)
    dequantize_row(table.type, base + static_cast<size_t>(ids[i]) * row_bytes, out + i * d, d);
}

}  // namespace lizard
