#include "formats/gguf.h"

#include <fmt/format.h>

#include <cstring>
#include <limits>
#include <utility>

#include "util/error.h"

namespace lizard {

namespace {

enum GGUFType : uint32_t {
  T_U8 = 0,
  T_I8 = 1,
  T_U16 = 2,
  T_I16 = 3,
  T_U32 = 4,
  T_I32 = 5,
  T_F32 = 6,
  T_BOOL = 7,
  T_STRING = 8,
  T_ARRAY = 9,
  T_U64 = 10,
  T_I64 = 11,
  T_F64 = 12,
};

constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 8;

// Smallest encoding of one value of a type, to bound counts by the bytes left.
size_t min_size(uint32_t t) {
  switch (t) {
    case T_U8: case T_I8: case T_BOOL: return 1;
    case T_U16: case T_I16: return 2;
    case T_U32: case T_I32: case T_F32: return 4;
    case T_U64: case T_I64: case T_F64: case T_STRING: return 8;
    case T_ARRAY: return 12;
    default: return 0;
  }
}

const char* value_kind(const GGUFValue& v) {
  switch (v.index()) {
    case 0: return "signed integer";
    case 1: return "unsigned integer";
    case 2: return "float";
    case 3: return "bool";
    case 4: return "string";
    case 5: return "integer array";
    case 6: return "float array";
    case 7: return "string array";
    case 8: return "bool array";
  }
  return "?";
}

// Bounds-checked little-endian cursor over the mapped bytes.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& path) : p_(data), n_(size), path_(path) {}

  template <typename... A>
  [[noreturn]] void err(fmt::format_string<A...> f, A&&... a) const {
    throw Error(fmt::format("{}: {}", path_, fmt::format(f, std::forward<A>(a)...)));
  }

  size_t pos() const { return pos_; }
  size_t left() const { return n_ - pos_; }

  void need(size_t k, const char* what) const {
    if (k > left()) err("truncated file: {} needs {} bytes at offset {}, {} left", what, k, pos_, left());
  }
  template <typename T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    uint64_t len = get<uint64_t>(what);
    if (len > left()) err("truncated file: {} of {} bytes at offset {}, {} left", what, len, pos_, left());
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

  GGUFValue value(uint32_t type, const std::string& key, int depth);
  GGUFValue array(const std::string& key, int depth);

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& path_;
};

GGUFValue Reader::value(uint32_t type, const std::string& key, int depth) {
  switch (type) {
    case T_U8: return int64_t(get<uint8_t>("value"));
    case T_I8: return int64_t(get<int8_t>("value"));
    case T_U16: return int64_t(get<uint16_t>("value"));
    case T_I16: return int64_t(get<int16_t>("value"));
    case T_U32: return int64_t(get<uint32_t>("value"));
    case T_I32: return int64_t(get<int32_t>("value"));
    case T_U64: return get<uint64_t>("value");
    case T_I64: return get<int64_t>("value");
    case T_F32: return double(get<float>("value"));
    case T_F64: return get<double>("value");
    case T_BOOL: return get<uint8_t>("value") != 0;
    case T_STRING: return str("string value");
    case T_ARRAY: return array(key, depth + 1);
  }
  err("metadata key '{}' has unknown value type {}", key, type);
}

// Arrays become the vector alternative of their element kind. Arrays of arrays are flattened
// (GGUFValue has no nested form); their inner arrays must share one element kind.
GGUFValue Reader::array(const std::string& key, int depth) {
  if (depth > kMaxArrayDepth) err("metadata key '{}' nests arrays deeper than {}", key, kMaxArrayDepth);
  uint32_t et = get<uint32_t>("array type");
  uint64_t count = get<uint64_t>("array length");
  size_t ms = min_size(et);
  if (ms == 0) err("metadata key '{}' is an array of unknown type {}", key, et);
  if (count > left() / ms)
    err("metadata key '{}': array of {} elements does not fit in the {} bytes left", key, count, left());
  const size_t n = static_cast<size_t>(count);
  switch (et) {
    case T_STRING: {
      std::vector<std::string> v;
      v.reserve(n);
      for (size_t i = 0; i < n; ++i) v.push_back(str("string array element"));
      return v;
    }
    case T_F32: case T_F64: {
      std::vector<double> v(n);
      for (size_t i = 0; i < n; ++i) v[i] = et == T_F32 ? double(get<float>("array")) : get<double>("array");
      return v;
    }
    case T_BOOL: {
      std::vector<bool> v(n);
      for (size_t i = 0; i < n; ++i) v[i] = get<uint8_t>("array") != 0;
      return v;
    }
    case T_ARRAY: {
      GGUFValue out = std::vector<int64_t>{};
      bool typed = false;
      for (size_t i = 0; i < n; ++i) {
        GGUFValue inner = array(key, depth + 1);
        bool empty = std::visit([](const auto& x) -> bool {
          if constexpr (requires { x.empty(); }) return x.empty(); else return true;
        }, inner);
        if (empty) continue;
        if (!typed) {
          out = std::move(inner);
          typed = true;
          continue;
        }
        if (inner.index() != out.index()) err("metadata key '{}' mixes element types in nested arrays", key);
        std::visit([&](auto& dst) {
          using V = std::decay_t<decltype(dst)>;
          if constexpr (requires { dst.insert(dst.end(), dst.begin(), dst.end()); }) {
            auto& src = std::get<V>(inner);
            dst.insert(dst.end(), src.begin(), src.end());
          }
        }, out);
      }
      return out;
    }
    default: {  // integers
      std::vector<int64_t> v(n);
      for (size_t i = 0; i < n; ++i) {
        switch (et) {
          case T_U8: v[i] = get<uint8_t>("array"); break;
          case T_I8: v[i] = get<int8_t>("array"); break;
          case T_U16: v[i] = get<uint16_t>("array"); break;
          case T_I16: v[i] = get<int16_t>("array"); break;
          case T_U32: v[i] = get<uint32_t>("array"); break;
          case T_I32: v[i] = get<int32_t>("array"); break;
          case T_I64: v[i] = get<int64_t>("array"); break;
          case T_U64: {
            uint64_t u = get<uint64_t>("array");
            if (u > uint64_t(std::numeric_limits<int64_t>::max()))
              err("metadata key '{}' holds an unsigned value {} too large for lizard", key, u);
            v[i] = int64_t(u);
            break;
          }
        }
      }
      return v;
    }
  }
}

}  // namespace

GGUFFile::GGUFFile(const std::string& path) : file_(path) {
  const uint8_t* base = file_.data();
  const size_t size = file_.size();
  Reader r(base, size, file_.path());

  if (size < 4 || std::memcmp(base, "GGUF", 4) != 0) r.err("not a GGUF file (bad magic)");
  r.get<uint32_t>("magic");
  version_ = r.get<uint32_t>("version");
  if (version_ == 1) r.err("GGUF version 1 is not supported (re-convert the model)");
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xffff) == 0 && version_ != 0) r.err("big-endian GGUF files are not supported");
    r.err("unsupported GGUF version {} (lizard reads 2 and 3)", version_);
  }
  const uint64_t n_tensors = r.get<uint64_t>("tensor count");
  const uint64_t n_kv = r.get<uint64_t>("metadata count");
  // A tensor info takes at least 24 bytes and a key/value at least 13: bounds both counts.
  if (n_tensors > r.left() / 24) r.err("tensor count {} is impossible for a file of {} bytes", n_tensors, size);
  if (n_kv > r.left() / 13) r.err("metadata count {} is impossible for a file of {} bytes", n_kv, size);

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.str("metadata key");
    uint32_t type = r.get<uint32_t>("metadata type");
    GGUFValue v = r.value(type, key, 0);
    if (!kv_.emplace(key, std::move(v)).second) r.err("duplicate metadata key '{}'", key);
  }

  if (auto it = kv_.find("general.alignment"); it != kv_.end()) {
    int64_t a = -1;
    if (auto* p = std::get_if<int64_t>(&it->second)) a = *p;
    if (auto* p = std::get_if<uint64_t>(&it->second)) a = *p > (1u << 30) ? -1 : int64_t(*p);
    if (a <= 0 || a > (int64_t(1) << 30) || (a & (a - 1)) != 0)
      r.err("general.alignment must be a power of two (up to 2^30), got {}",
            a > 0 ? fmt::format("{}", a) : std::string("a ") + value_kind(it->second));
    alignment_ = static_cast<size_t>(a);
  }

  struct Info {
    std::string name;
    std::vector<uint64_t> dims;  // ggml order, innermost first
    uint32_t type;
    uint64_t offset;
  };
  std::vector<Info> infos;
  infos.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Info t;
    t.name = r.str("tensor name");
    uint32_t nd = r.get<uint32_t>("tensor dims");
    if (nd == 0 || nd > kMaxDims) r.err("tensor '{}' has {} dimensions (1 to {} allowed)", t.name, nd, kMaxDims);
    for (uint32_t d = 0; d < nd; ++d) t.dims.push_back(r.get<uint64_t>("tensor shape"));
    t.type = r.get<uint32_t>("tensor type");
    t.offset = r.get<uint64_t>("tensor offset");
    if (!dtype_known(t.type))
      r.err("tensor '{}' has type id {}, which lizard does not read (F32, F16, BF16, Q4_0, Q4_1, Q8_0, "
            "Q4_K, Q6_K)", t.name, t.type);
    infos.push_back(std::move(t));
  }

  // Tensor data starts at the next multiple of the alignment.
  const size_t info_end = r.pos();
  const size_t data_start = (info_end + alignment_ - 1) / alignment_ * alignment_;
  if (!infos.empty() && data_start > size)
    r.err("truncated file: tensor data would start at offset {} beyond the end ({} bytes)", data_start, size);
  const size_t data_size = data_start <= size ? size - data_start : 0;

  tensors_.reserve(infos.size());
  for (auto& t : infos) {
    const DTypeInfo& ti = dtype_info(static_cast<DType>(t.type));
    TensorView v;
    v.name = t.name;
    v.type = static_cast<DType>(t.type);
    uint64_t numel = 1;
    for (uint64_t d : t.dims) {
      if (d > uint64_t(std::numeric_limits<int64_t>::max()) || (d != 0 && numel > uint64_t(INT64_MAX) / d))
        r.err("tensor '{}' has an impossibly large shape", t.name);
      numel *= d;
    }
    for (auto it = t.dims.rbegin(); it != t.dims.rend(); ++it) v.shape.push_back(static_cast<int64_t>(*it));
    if (t.dims[0] % uint64_t(ti.block_size) != 0)
      r.err("tensor '{}' of type {} has rows of {} elements, not a multiple of the block size {}", t.name,
            ti.name, t.dims[0], ti.block_size);
    const uint64_t blocks = numel / uint64_t(ti.block_size);
    if (blocks > data_size / uint64_t(ti.block_bytes))
      r.err("tensor '{}' ({} {}) needs more bytes than the file's data section holds ({})", t.name, ti.name,
            v.shape_str(), data_size);
    const size_t nbytes = static_cast<size_t>(blocks) * size_t(ti.block_bytes);
    if (t.offset % alignment_ != 0)
      r.err("tensor '{}' has offset {}, not a multiple of the alignment {}", t.name, t.offset, alignment_);
    if (t.offset > data_size || nbytes > data_size - t.offset)
      r.err("tensor '{}' ({} bytes at data offset {}) runs past the end of the file (data section is {} bytes)",
            t.name, nbytes, t.offset, data_size);
    v.data = base + data_start + static_cast<size_t>(t.offset);
    v.nbytes = nbytes;
    if (!tensor_index_.emplace(v.name, tensors_.size()).second) r.err("duplicate tensor name '{}'", v.name);
    tensors_.push_back(std::move(v));
  }
}

const GGUFValue* GGUFFile::get(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const TensorView* GGUFFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

[[noreturn]] void wrong_type(const std::string& path, const std::string& key, const GGUFValue& v,
                             const char* want) {
  fail("{}: metadata key '{}' is a {}, expected {}", path, key, value_kind(v), want);
}

}  // namespace

std::optional<std::string> GGUFFile::find_string(const std::string& key) const {
  const GGUFValue* v = get(key);
  if (!v) return std::nullopt;
  if (auto* s = std::get_if<std::string>(v)) return *s;
  wrong_type(path(), key, *v, "a string");
}

std::optional<int64_t> GGUFFile::find_int(const std::string& key) const {
  const GGUFValue* v = get(key);
  if (!v) return std::nullopt;
  if (auto* i = std::get_if<int64_t>(v)) return *i;
  if (auto* u = std::get_if<uint64_t>(v)) {
    if (*u > uint64_t(std::numeric_limits<int64_t>::max()))
      fail("{}: metadata key '{}' = {} is out of range", path(), key, *u);
    return int64_t(*u);
  }
  wrong_type(path(), key, *v, "an integer");
}

std::optional<double> GGUFFile::find_float(const std::string& key) const {
  const GGUFValue* v = get(key);
  if (!v) return std::nullopt;
  if (auto* d = std::get_if<double>(v)) return *d;
  if (auto* i = std::get_if<int64_t>(v)) return double(*i);
  if (auto* u = std::get_if<uint64_t>(v)) return double(*u);
  wrong_type(path(), key, *v, "a number");
}

std::optional<bool> GGUFFile::find_bool(const std::string& key) const {
  const GGUFValue* v = get(key);
  if (!v) return std::nullopt;
  if (auto* b = std::get_if<bool>(v)) return *b;
  wrong_type(path(), key, *v, "a bool");
}

namespace {
template <typename T>
T required(const std::optional<T>& v, const std::string& path, const std::string& key) {
  if (!v) fail("{}: metadata key '{}' is missing", path, key);
  return *v;
}
}  // namespace

std::string GGUFFile::get_string(const std::string& key) const { return required(find_string(key), path(), key); }
int64_t GGUFFile::get_int(const std::string& key) const { return required(find_int(key), path(), key); }
double GGUFFile::get_float(const std::string& key) const { return required(find_float(key), path(), key); }
bool GGUFFile::get_bool(const std::string& key) const { return required(find_bool(key), path(), key); }

std::vector<std::string> GGUFFile::get_strings(const std::string& key) const {
  const GGUFValue* v = get(key);
  if (!v) fail("{}: metadata key '{}' is missing", path(), key);
  if (auto* s = std::get_if<std::vector<std::string>>(v)) return *s;
  wrong_type(path(), key, *v, "a string array");
}

std::vector<int64_t> GGUFFile::get_ints(const std::string& key) const {
  const GGUFValue* v = get(key);
  if (!v) fail("{}: metadata key '{}' is missing", path(), key);
  if (auto* s = std::get_if<std::vector<int64_t>>(v)) return *s;
  wrong_type(path(), key, *v, "an integer array");
}

std::vector<double> GGUFFile::get_floats(const std::string& key) const {
  const GGUFValue* v = get(key);
  if (!v) fail("{}: metadata key '{}' is missing", path(), key);
  if (auto* s = std::get_if<std::vector<double>>(v)) return *s;
  if (auto* s = std::get_if<std::vector<int64_t>>(v)) return std::vector<double>(s->begin(), s->end());
  wrong_type(path(), key, *v, "a float array");
}

}  // namespace lizard
