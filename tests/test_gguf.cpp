#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "fixture_util.h"
#include "formats/gguf.h"
#include "util/error.h"

using namespace lizard;
using namespace lizard::fixtures;

namespace {

std::string random_bytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

// A small valid file with a few tensor types and metadata of several kinds.
GGUFWriter small_file(std::mt19937& rng) {
  GGUFWriter w;
  w.kv_str("general.architecture", "llama");
  w.kv_u32("llama.block_count", 2);
  w.kv_strs("tokenizer.ggml.tokens", {"a", "b", "<s>"});
  w.tensor("f32", DType::F32, {3, 5}, random_bytes(rng, 3 * 5 * 4));
  w.tensor("q8", DType::Q8_0, {2, 64}, random_bytes(rng, 2 * 2 * 34));
  w.tensor("q4k", DType::Q4_K, {1, 256}, random_bytes(rng, 144));
  return w;
}

// Expects the file to open or to throw lizard::Error; anything else fails the test.
void expect_error_or_ok(const std::string& path, uint32_t seed, const std::string& what) {
  try {
    GGUFFile f(path);
    for (auto& t : f.tensors()) {  // touch every byte the views claim
      uint8_t s = 0;
      auto* p = static_cast<const uint8_t*>(t.data);
      for (size_t i = 0; i < t.nbytes; ++i) s ^= p[i];
      volatile uint8_t sink = s;
      (void)sink;
    }
  } catch (const Error&) {
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << " seed " << seed << ": non-lizard exception " << e.what();
  }
}

}  // namespace

TEST(Gguf, ReadsMetadataOfEveryType) {
  TempDir dir;
  GGUFWriter w;
  std::string b;
  w.kv("u8", GGUFWriter::U8, uint8_t(200));
  w.kv("i8", GGUFWriter::I8, int8_t(-5));
  w.kv("u16", GGUFWriter::U16, uint16_t(60000));
  w.kv("i16", GGUFWriter::I16, int16_t(-3000));
  w.kv("u32", GGUFWriter::U32, uint32_t(4000000000u));
  w.kv("i32", GGUFWriter::I32, int32_t(-7));
  w.kv("u64", GGUFWriter::U64, uint64_t(1) << 40);
  w.kv("big", GGUFWriter::U64, ~uint64_t(0));
  w.kv("i64", GGUFWriter::I64, int64_t(-1) << 40);
  w.kv("f32", GGUFWriter::F32, 0.5f);
  w.kv("f64", GGUFWriter::F64, 1e-300);
  w.kv("bool", GGUFWriter::BOOL, uint8_t(1));
  w.kv_str("str", "héllo");
  w.kv_strs("strs", {"x", "", "zz"});
  // array of i16
  b.clear();
  GGUFWriter::put<uint32_t>(b, GGUFWriter::I16);
  GGUFWriter::put<uint64_t>(b, 3);
  for (int16_t v : {1, -2, 3}) GGUFWriter::put<int16_t>(b, v);
  w.kv_raw("ints", GGUFWriter::ARRAY, b);
  // array of f32
  b.clear();
  GGUFWriter::put<uint32_t>(b, GGUFWriter::F32);
  GGUFWriter::put<uint64_t>(b, 2);
  GGUFWriter::put<float>(b, 1.5f);
  GGUFWriter::put<float>(b, -2.f);
  w.kv_raw("floats", GGUFWriter::ARRAY, b);
  // array of bool
  b.clear();
  GGUFWriter::put<uint32_t>(b, GGUFWriter::BOOL);
  GGUFWriter::put<uint64_t>(b, 2);
  GGUFWriter::put<uint8_t>(b, 0);
  GGUFWriter::put<uint8_t>(b, 1);
  w.kv_raw("bools", GGUFWriter::ARRAY, b);
  // array of arrays of strings: flattened
  b.clear();
  GGUFWriter::put<uint32_t>(b, GGUFWriter::ARRAY);
  GGUFWriter::put<uint64_t>(b, 2);
  for (auto& group : std::vector<std::vector<std::string>>{{"a", "b"}, {"c"}}) {
    GGUFWriter::put<uint32_t>(b, GGUFWriter::STRING);
    GGUFWriter::put<uint64_t>(b, group.size());
    for (auto& s : group) GGUFWriter::put_str(b, s);
  }
  w.kv_raw("nested", GGUFWriter::ARRAY, b);
  w.write(dir / "m.gguf");

  GGUFFile f(dir / "m.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_int("u8"), 200);
  EXPECT_EQ(f.get_int("i8"), -5);
  EXPECT_EQ(f.get_int("u16"), 60000);
  EXPECT_EQ(f.get_int("i16"), -3000);
  EXPECT_EQ(f.get_int("u32"), 4000000000ll);
  EXPECT_EQ(f.get_int("i32"), -7);
  EXPECT_EQ(f.get_int("u64"), int64_t(1) << 40);
  EXPECT_THROW(f.get_int("big"), Error);
  EXPECT_EQ(f.get_int("i64"), int64_t(-1) << 40);
  EXPECT_EQ(f.get_float("f32"), 0.5);
  EXPECT_EQ(f.get_float("f64"), 1e-300);
  EXPECT_EQ(f.get_float("i32"), -7.0);
  EXPECT_TRUE(f.get_bool("bool"));
  EXPECT_EQ(f.get_string("str"), "héllo");
  EXPECT_EQ(f.get_strings("strs"), (std::vector<std::string>{"x", "", "zz"}));
  EXPECT_EQ(f.get_ints("ints"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f.get_floats("floats"), (std::vector<double>{1.5, -2.0}));
  EXPECT_EQ(f.get_floats("ints"), (std::vector<double>{1, -2, 3}));
  EXPECT_EQ(std::get<std::vector<bool>>(*f.get("bools")), (std::vector<bool>{false, true}));
  EXPECT_EQ(f.get_strings("nested"), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_FALSE(f.find_int("nope"));
  EXPECT_FALSE(f.has("nope"));
  try {
    f.get_int("str");
    ADD_FAILURE() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'str'"), std::string::npos) << e.what();
  }
  try {
    f.get_string("missing.key");
    ADD_FAILURE() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.key"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(dir.path()), std::string::npos) << e.what();
  }
}

TEST(Gguf, TensorShapesDataAndAlignment) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  TempDir dir;
  for (size_t align : {32, 64, 8}) {
    GGUFWriter w = small_file(rng);
    w.alignment = align;
    if (align != 32) w.kv_u32("general.alignment", static_cast<uint32_t>(align));
    const int rows = 1 + rng() % 7, cols = 1 + rng() % 9;
    std::string f16 = random_bytes(rng, size_t(rows) * cols * 2);
    w.tensor("odd.f16", DType::F16, {rows, 1, cols}, f16);
    std::string q41 = random_bytes(rng, 3 * 20);
    w.tensor("q41", DType::Q4_1, {3, 32}, q41);
    w.tensor("q6k", DType::Q6_K, {2, 256}, random_bytes(rng, 2 * 210));
    w.write(dir / "t.gguf");
    GGUFFile f(dir / "t.gguf");
    EXPECT_EQ(f.alignment(), align);
    ASSERT_EQ(f.tensors().size(), 6u);
    const TensorView* t = f.find_tensor("odd.f16");
    ASSERT_TRUE(t);
    EXPECT_EQ(t->shape, (std::vector<int64_t>{rows, 1, cols}));
    EXPECT_EQ(t->type, DType::F16);
    EXPECT_EQ(t->nbytes, f16.size());
    EXPECT_EQ(std::string(static_cast<const char*>(t->data), t->nbytes), f16);
    t = f.find_tensor("q41");
    ASSERT_TRUE(t);
    EXPECT_EQ(t->shape_str(), "{3, 32}");
    EXPECT_EQ(t->rows(), 3);
    EXPECT_EQ(t->cols(), 32);
    EXPECT_EQ(t->nbytes, 60u);
    EXPECT_EQ(std::string(static_cast<const char*>(t->data), t->nbytes), q41);
    EXPECT_EQ(f.find_tensor("q6k")->nbytes, 420u);
    for (auto& tv : f.tensors()) {
      const auto off = static_cast<const uint8_t*>(tv.data) - static_cast<const uint8_t*>(f.tensors()[0].data);
      EXPECT_EQ(off % static_cast<ptrdiff_t>(align), 0) << tv.name;
    }
    EXPECT_EQ(f.find_tensor("absent"), nullptr);
  }
}

TEST(Gguf, AcceptsVersion2) {
  std::mt19937 rng(std::random_device{}());
  TempDir dir;
  GGUFWriter w = small_file(rng);
  w.version = 2;
  w.write(dir / "v2.gguf");
  GGUFFile f(dir / "v2.gguf");
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.tensors().size(), 3u);
}

namespace {
std::string error_of(const std::string& path) {
  try {
    GGUFFile f(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST(Gguf, RejectsBadFilesWithClearMessages) {
  std::mt19937 rng(std::random_device{}());
  TempDir dir;
  const std::string p = dir / "bad.gguf";
  auto check = [&](const GGUFWriter& w, const std::string& want) {
    w.write(p);
    std::string e = error_of(p);
    EXPECT_NE(e.find(want), std::string::npos) << "got: " << e << "\nwant: " << want;
    EXPECT_NE(e.find(p), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  };
  {
    GGUFWriter w = small_file(rng);
    w.tensor("weird", static_cast<DType>(99), {4}, std::string(16, '\0'));
    check(w, "tensor 'weird' has type id 99");
  }
  {
    GGUFWriter w = small_file(rng);
    w.version = 4;
    check(w, "version 4");
  }
  {
    GGUFWriter w = small_file(rng);
    w.version = 1;
    check(w, "version 1");
  }
  {
    GGUFWriter w = small_file(rng);
    w.tensor("f32", DType::F32, {1}, std::string(4, '\0'));
    check(w, "duplicate tensor name 'f32'");
  }
  {
    GGUFWriter w = small_file(rng);
    w.kv_u32("llama.block_count", 3);
    check(w, "duplicate metadata key 'llama.block_count'");
  }
  {
    GGUFWriter w = small_file(rng);
    w.tensor("q8bad", DType::Q8_0, {2, 40}, std::string(2 * 34, '\0'));
    check(w, "not a multiple of the block size 32");
  }
  {
    GGUFWriter w = small_file(rng);
    w.kv_u32("general.alignment", 48);
    check(w, "general.alignment");
  }
  {
    GGUFWriter w = small_file(rng);
    w.tensor("five", DType::F32, {1, 1, 1, 1, 1}, std::string(4, '\0'));
    check(w, "5 dimensions");
  }
  {
    GGUFWriter w = small_file(rng);
    w.tensor("short", DType::F32, {100}, std::string(4, '\0'));  // claims 400 bytes, has 4
    check(w, "'short'");
  }
  {
    GGUFWriter w = small_file(rng);
    std::string b;
    GGUFWriter::put<uint32_t>(b, GGUFWriter::STRING);
    GGUFWriter::put<uint64_t>(b, uint64_t(1) << 60);
    w.kv_raw("huge", GGUFWriter::ARRAY, b);
    check(w, "'huge'");
  }
  {
    GGUFWriter w = small_file(rng);
    w.kv_raw("bad.type", 77, "");
    check(w, "unknown value type 77");
  }
  write_file(p, "GGML not a gguf file at all");
  EXPECT_NE(error_of(p).find("bad magic"), std::string::npos);
  write_file(p, "");
  EXPECT_NE(error_of(p).find("bad magic"), std::string::npos);
  EXPECT_NE(error_of(dir / "missing.gguf").find("missing.gguf"), std::string::npos);
}

TEST(Gguf, HugeCountsAndMisalignedOffsetsAreErrors) {
  TempDir dir;
  const std::string p = dir / "x.gguf";
  // tensor count 2^62 in a tiny file
  std::string b = "GGUF";
  GGUFWriter::put<uint32_t>(b, 3);
  GGUFWriter::put<uint64_t>(b, uint64_t(1) << 62);
  GGUFWriter::put<uint64_t>(b, 0);
  write_file(p, b + std::string(64, '\0'));
  EXPECT_NE(error_of(p).find("tensor count"), std::string::npos);
  // a tensor with offset not a multiple of the alignment, and a shape whose product overflows
  for (int variant = 0; variant < 3; ++variant) {
    b = "GGUF";
    GGUFWriter::put<uint32_t>(b, 3);
    GGUFWriter::put<uint64_t>(b, 1);
    GGUFWriter::put<uint64_t>(b, 0);
    GGUFWriter::put_str(b, "t");
    GGUFWriter::put<uint32_t>(b, 2);
    GGUFWriter::put<uint64_t>(b, variant == 1 ? uint64_t(1) << 40 : 4);
    GGUFWriter::put<uint64_t>(b, variant == 1 ? uint64_t(1) << 40 : variant == 2 ? ~uint64_t(0) : 1);
    GGUFWriter::put<uint32_t>(b, 0);
    GGUFWriter::put<uint64_t>(b, variant == 0 ? 4 : 0);
    b.resize(256, '\0');
    write_file(p, b);
    std::string e = error_of(p);
    EXPECT_NE(e.find("'t'"), std::string::npos) << variant << ": " << e;
  }
}

TEST(Gguf, TruncatedAtEveryCutPointIsAnError) {
  const uint32_t seed = std::random_device{}();
  std::mt19937 rng(seed);
  TempDir dir;
  const std::string full = small_file(rng).build();
  for (size_t cut = 0; cut < full.size(); ++cut) {
    write_file(dir / "cut.gguf", full.substr(0, cut));
    try {
      GGUFFile f(dir / "cut.gguf");
      ADD_FAILURE() << "seed " << seed << ": file cut at " << cut << " of " << full.size() << " opened";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cut.gguf"), std::string::npos) << e.what();
    }
  }
}

TEST(Gguf, CorruptedBytesNeverCrash) {
  const uint32_t seed = std::random_device{}();
  std::mt19937 rng(seed);
  TempDir dir;
  const std::string full = small_file(rng).build();
  for (int iter = 0; iter < 3000; ++iter) {
    std::string b = full;
    const int flips = 1 + rng() % 4;
    for (int k = 0; k < flips; ++k) {
      size_t at = rng() % b.size();
      if (rng() % 2) b[at] = static_cast<char>(rng() & 0xff);
      else b[at] ^= static_cast<char>(1u << (rng() % 8));
    }
    if (rng() % 4 == 0) b.resize(rng() % b.size());
    write_file(dir / "c.gguf", b);
    expect_error_or_ok(dir / "c.gguf", seed, "iteration " + std::to_string(iter));
  }
}

TEST(Gguf, ReadsDefaultModel) {
  const std::string path = std::string(LIZARD_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  ASSERT_TRUE(std::filesystem::exists(path)) << path << " missing: run scripts/fetch_model.sh";
  GGUFFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 30);
  EXPECT_EQ(f.get_int("llama.embedding_length"), 576);
  EXPECT_EQ(f.get_strings("tokenizer.ggml.tokens").size(), 49152u);
  const TensorView* e = f.find_tensor("token_embd.weight");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->type, DType::Q8_0);
  EXPECT_EQ(e->shape, (std::vector<int64_t>{49152, 576}));
  const TensorView* k = f.find_tensor("blk.3.attn_k.weight");
  ASSERT_TRUE(k);
  EXPECT_EQ(k->type, DType::Q4_1);
  EXPECT_EQ(k->shape, (std::vector<int64_t>{192, 576}));
  EXPECT_EQ(k->nbytes, 192u * 18 * 20);
}

TEST(Gguf, DTypeTable) {
  EXPECT_STREQ(dtype_name(DType::Q4_K), "Q4_K");
  EXPECT_EQ(dtype_row_bytes(DType::F32, 7), 28u);
  EXPECT_EQ(dtype_row_bytes(DType::BF16, 3), 6u);
  EXPECT_EQ(dtype_row_bytes(DType::Q8_0, 64), 68u);
  EXPECT_EQ(dtype_row_bytes(DType::Q4_0, 32), 18u);
  EXPECT_EQ(dtype_row_bytes(DType::Q6_K, 512), 420u);
  EXPECT_THROW(dtype_row_bytes(DType::Q4_1, 33), Error);
  EXPECT_THROW(dtype_info(static_cast<DType>(6)), Error);
  EXPECT_TRUE(dtype_known(14));
  EXPECT_FALSE(dtype_known(13));
  TensorView v;
  EXPECT_EQ(v.shape_str(), "{}");
}
