// Tensor element types. Values equal ggml's type ids so GGUF files map directly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lizard {

enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q8_0 = 8,
  Q4_K = 12,
  Q6_K = 14,
  BF16 = 30,
};

struct DTypeInfo {
  const char* name;
  int block_size;   // elements per block (1 for plain floats)
  int block_bytes;  // bytes per block
};

// Throws Error for a type id lizard does not support (names it in the message).
const DTypeInfo& dtype_info(DType t);
bool dtype_known(uint32_t id);
const char* dtype_name(DType t);
// Bytes of a row of n elements; throws if n is not a multiple of the block size.
size_t dtype_row_bytes(DType t, int64_t n);

// A read-only view of one tensor inside a mapped file (or any buffer that outlives it).
// shape is row-major, outermost first (PyTorch order): a linear weight is {out_features, in_features}.
struct TensorView {
  std::string name;
  DType type = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  int64_t rows() const { return shape.empty() ? 1 : numel() / shape.back(); }
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  std::string shape_str() const;
};

}  // namespace lizard
