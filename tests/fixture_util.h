// Test helpers for the format and checkpoint tests: a temp dir and a small GGUF builder.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <stdexcept>
#include <fstream>
#include <string>
#include <variant>
#include <vector>

#include "formats/dtype.h"
#include "formats/gguf.h"

namespace lizard::fixtures {

class GGUFWriter {
 public:
  enum : uint32_t { U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 };

  uint32_t version = 3;
  size_t alignment = 32;  // used for layout; write general.alignment yourself to change it in the file

  template <typename T>
  static void put(std::string& b, T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  static void put_str(std::string& b, const std::string& s) {
    put<uint64_t>(b, s.size());
    b += s;
  }

  // Raw key/value: type id then already-encoded value bytes.
  void kv_raw(const std::string& key, uint32_t type, const std::string& value) {
    std::string b;
    put_str(b, key);
    put<uint32_t>(b, type);
    b += value;
    kvs_.push_back(b);
  }
  template <typename T>
  void kv(const std::string& key, uint32_t type, T v) {
    std::string b;
    put<T>(b, v);
    kv_raw(key, type, b);
  }
  void kv_u32(const std::string& k, uint32_t v) { kv(k, U32, v); }
  void kv_f32(const std::string& k, float v) { kv(k, F32, v); }
  void kv_str(const std::string& k, const std::string& v) {
    std::string b;
    put_str(b, v);
    kv_raw(k, STRING, b);
  }
  void kv_strs(const std::string& k, const std::vector<std::string>& v) {
    std::string b;
    put<uint32_t>(b, STRING);
    put<uint64_t>(b, v.size());
    for (auto& s : v) put_str(b, s);
    kv_raw(k, ARRAY, b);
  }
  // Any value as read by GGUFFile (so metadata can be copied from a real file).
  void kv_value(const std::string& k, const GGUFValue& v) {
    std::string b;
    uint32_t type = 0;
    std::visit([&](const auto& x) {
      using V = std::decay_t<decltype(x)>;
      if constexpr (std::is_same_v<V, int64_t>) type = I64, put<int64_t>(b, x);
      else if constexpr (std::is_same_v<V, uint64_t>) type = U64, put<uint64_t>(b, x);
      else if constexpr (std::is_same_v<V, double>) type = F64, put<double>(b, x);
      else if constexpr (std::is_same_v<V, bool>) type = BOOL, put<uint8_t>(b, x);
      else if constexpr (std::is_same_v<V, std::string>) type = STRING, put_str(b, x);
      else {
        type = ARRAY;
        using E = typename V::value_type;
        uint32_t et = std::is_same_v<E, int64_t> ? I32 : std::is_same_v<E, double> ? F32
                      : std::is_same_v<E, bool> ? BOOL : STRING;
        put<uint32_t>(b, et);
        put<uint64_t>(b, x.size());
        for (const auto& e : x) {
          if constexpr (std::is_same_v<E, int64_t>) put<int32_t>(b, int32_t(e));
          else if constexpr (std::is_same_v<E, double>) put<float>(b, float(e));
          else if constexpr (std::is_same_v<E, bool>) put<uint8_t>(b, e ? 1 : 0);
          else put_str(b, e);
        }
      }
    }, v);
    kv_raw(k, type, b);
  }

  // shape is row-major outermost first (as TensorView); written innermost first as ggml does.
  void tensor(const std::string& name, DType type, std::vector<int64_t> shape, std::string bytes) {
    tensors_.push_back({name, static_cast<uint32_t>(type), std::move(shape), std::move(bytes)});
  }

  std::string build() const {
    std::string b = "GGUF";
    put<uint32_t>(b, version);
    put<uint64_t>(b, tensors_.size());
    put<uint64_t>(b, kvs_.size());
    for (auto& k : kvs_) b += k;
    uint64_t off = 0;
    std::vector<uint64_t> offs;
    for (auto& t : tensors_) {
      put_str(b, t.name);
      put<uint32_t>(b, static_cast<uint32_t>(t.shape.size()));
      for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put<uint64_t>(b, static_cast<uint64_t>(*it));
      put<uint32_t>(b, t.type);
      put<uint64_t>(b, off);
      offs.push_back(off);
      off += (t.bytes.size() + alignment - 1) / alignment * alignment;
    }
    b.resize((b.size() + alignment - 1) / alignment * alignment, '\0');
    const size_t data = b.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      b.resize(data + offs[i], '\0');
      b += tensors_[i].bytes;
    }
    return b;
  }

  void write(const std::string& path) const {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    std::string b = build();
    f.write(b.data(), static_cast<std::streamsize>(b.size()));
  }

 private:
  struct T {
    std::string name;
    uint32_t type;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::vector<std::string> kvs_;
  std::vector<T> tensors_;
};

// A fresh directory under $TMPDIR, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string t = (std::filesystem::temp_directory_path() / "lizard-test-XXXXXX").string();
    if (!::mkdtemp(t.data())) throw std::runtime_error("mkdtemp failed");
    path_ = t;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace lizard::fixtures
