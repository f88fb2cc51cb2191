#include "formats/dtype.h"

#include <fmt/format.h>

#include <cstdint>

#include "util/error.h"

namespace lizard {

namespace {

// Indexed by ggml type id; name == nullptr marks ids lizard does not read.
struct Entry {
  uint32_t id;
  DTypeInfo info;
};
constexpr Entry kTypes[] = {
    {0, {"F32", 1, 4}},        {1, {"F16", 1, 2}},         {2, {"Q4_0", 32, 18}},
    {3, {"Q4_1", 32, 20}},     {8, {"Q8_0", 32, 34}},      {12, {"Q4_K", 256, 144}},
    {14, {"Q6_K", 256, 210}},  {30, {"BF16", 1, 2}},
};

const DTypeInfo* lookup(uint32_t id) {
  for (const auto& e : kTypes)
    if (e.id == id) return &e.info;
  return nullptr;
}

}  // namespace

bool dtype_known(uint32_t id) { return lookup(id) != nullptr; }

const DTypeInfo& dtype_info(DType t) {
  const DTypeInfo* i = lookup(static_cast<uint32_t>(t));
  if (!i) fail("unsupported tensor type id {}", static_cast<uint32_t>(t));
  return *i;
}

const char* dtype_name(DType t) {
  const DTypeInfo* i = lookup(static_cast<uint32_t>(t));
  return i ? i->name : "unknown";
}

size_t dtype_row_bytes(DType t, int64_t n) {
  const DTypeInfo& i = dtype_info(t);
  LZ_CHECK(n >= 0, "negative row length {} for type {}", n, i.name);
  LZ_CHECK(n % i.block_size == 0, "row of {} elements is not a multiple of the {} block size {}", n,
           i.name, i.block_size);
  const uint64_t blocks = static_cast<uint64_t>(n / i.block_size);
  LZ_CHECK(blocks <= SIZE_MAX / static_cast<uint64_t>(i.block_bytes), "row of {} {} elements is too large", n,
           i.name);
  return static_cast<size_t>(blocks) * static_cast<size_t>(i.block_bytes);
}

std::string TensorView::shape_str() const {
  std::string s = "{";
  for (size_t i = 0; i < shape.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", shape[i]);
  return s + "}";
}

}  // namespace lizard
