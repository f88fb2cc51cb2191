#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "fixture_util.h"
#include "formats/safetensors.h"
#include "util/error.h"

using namespace lizard;
using namespace lizard::fixtures;
namespace fs = std::filesystem;

namespace {

std::string random_bytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

// A safetensors file from a raw header text and data bytes.
std::string raw_st(const std::string& header, const std::string& data) {
  std::string b;
  GGUFWriter::put<uint64_t>(b, header.size());
  return b + header + data;
}

std::string error_of(const std::string& path) {
  try {
    SafeTensorsFile f(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

struct Owned {
  std::string name;
  DType type;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::vector<Owned> random_tensors(std::mt19937& rng, int n, const std::string& prefix = "t") {
  std::vector<Owned> v;
  const DType types[] = {DType::F32, DType::F16, DType::BF16};
  for (int i = 0; i < n; ++i) {
    Owned o;
    o.name = prefix + std::to_string(i);
    o.type = types[rng() % 3];
    const int nd = rng() % 4;
    int64_t numel = 1;
    for (int d = 0; d < nd; ++d) {
      o.shape.push_back(1 + rng() % 7);
      numel *= o.shape.back();
    }
    o.bytes = random_bytes(rng, numel * dtype_info(o.type).block_bytes);
    v.push_back(std::move(o));
  }
  return v;
}

std::vector<TensorToWrite> views(const std::vector<Owned>& v) {
  std::vector<TensorToWrite> w;
  for (auto& o : v) w.push_back({o.name, o.type, o.shape, o.bytes.data(), o.bytes.size()});
  return w;
}

void expect_same(const TensorView* t, const Owned& o) {
  ASSERT_TRUE(t) << o.name;
  EXPECT_EQ(t->type, o.type) << o.name;
  EXPECT_EQ(t->shape, o.shape) << o.name;
  ASSERT_EQ(t->nbytes, o.bytes.size()) << o.name;
  EXPECT_EQ(std::string(static_cast<const char*>(t->data), t->nbytes), o.bytes) << o.name;
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data) % dtype_info(t->type).block_bytes, 0u) << o.name;
}

}  // namespace

TEST(SafeTensors, WriteReadRoundTrip) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  TempDir dir;
  auto ts = random_tensors(rng, 1 + rng() % 9);
  const std::string p = dir / "a.safetensors";
  write_safetensors(p, views(ts), {{"format", "pt"}, {"note", "x y"}});
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  const std::string bytes = read_file(p);
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  EXPECT_EQ((8 + hlen) % 8, 0u);
  SafeTensorsFile f(p);
  EXPECT_EQ(f.tensors().size(), ts.size());
  for (auto& o : ts) expect_same(f.find_tensor(o.name), o);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "x y");
  EXPECT_EQ(f.find_tensor("nope"), nullptr);
  // overwriting an existing file replaces it
  write_safetensors(p, views({ts[0]}));
  EXPECT_EQ(SafeTensorsFile(p).tensors().size(), 1u);
}

TEST(SafeTensors, WriterRejectsBadInput) {
  TempDir dir;
  std::string d(8, '\0');
  EXPECT_THROW(write_safetensors(dir / "x", {{"a", DType::Q8_0, {32}, d.data(), 34}}), Error);
  EXPECT_THROW(write_safetensors(dir / "x", {{"a", DType::F32, {3}, d.data(), 8}}), Error);
  EXPECT_THROW(write_safetensors(dir / "x", {{"a", DType::F32, {1}, d.data(), 4}, {"a", DType::F32, {1}, d.data(), 4}}),
               Error);
  EXPECT_THROW(write_safetensors(dir / "no/such/dir/x", {{"a", DType::F32, {1}, d.data(), 4}}), Error);
  EXPECT_FALSE(fs::exists(dir / "x"));
}

TEST(SafeTensors, RejectsOtherDtypesByName) {
  TempDir dir;
  const std::string p = dir / "i64.safetensors";
  write_file(p, raw_st(R"({"x":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", std::string(16, '\0')));
  EXPECT_NE(error_of(p).find("tensor 'x' has dtype I64, lizard reads F32, F16, BF16"), std::string::npos)
      << error_of(p);
  EXPECT_NE(error_of(p).find(p), std::string::npos);
}

TEST(SafeTensors, RejectsBadHeaders) {
  TempDir dir;
  const std::string p = dir / "b.safetensors";
  const std::string data(64, '\0');
  const std::pair<std::string, std::string> cases[] = {
      {R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", "needs 12 bytes"},
      {R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[60,76]}})", "outside the data section"},
      {R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[8,4]}})", "outside the data section"},
      {R"({"x":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", "shape entry"},
      {R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", "data_offsets"},
      {R"({"x":{"dtype":"F32","data_offsets":[0,16]}})", "no shape"},
      {R"({"x":{"shape":[4],"data_offsets":[0,16]}})", "no dtype"},
      {R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})", "impossibly large"},
      {R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"y":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
       "overlap"},
      {R"({"x":[1,2]})", "not a JSON object"},
      {R"([1,2])", "not a JSON object"},
      {R"({"x":{"dtype":"F32",)", "not valid JSON"},
      {R"({"__metadata__":"nope"})", "__metadata__"},
      {R"({"__metadata__":{"a":[[1]]}})", "not a string"},
      {R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       "names 'x' twice"},
  };
  for (auto& [h, want] : cases) {
    write_file(p, raw_st(h, data));
    const std::string e = error_of(p);
    EXPECT_NE(e.find(want), std::string::npos) << h << "\n got: " << e;
  }
  write_file(p, "abc");
  EXPECT_NE(error_of(p).find("too short"), std::string::npos);
  std::string b;
  GGUFWriter::put<uint64_t>(b, 1000);
  write_file(p, b + "{}");
  EXPECT_NE(error_of(p).find("exceeds the file size"), std::string::npos);
}

TEST(SafeTensors, MisalignedDataIsCopiedAligned) {
  TempDir dir;
  const std::string p = dir / "m.safetensors";
  std::string data = std::string(1, '\0');
  float vals[3] = {1.5f, -2.f, 3.25f};
  data.append(reinterpret_cast<const char*>(vals), 12);
  write_file(p, raw_st(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[1,13]}} )", data));
  SafeTensorsFile f(p);
  const TensorView* t = f.find_tensor("x");
  ASSERT_TRUE(t);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data) % 4, 0u);
  EXPECT_EQ(static_cast<const float*>(t->data)[2], 3.25f);
}

TEST(SafeTensors, TruncatedAndCorruptedFilesAreErrors) {
  const uint32_t seed = std::random_device{}();
  std::mt19937 rng(seed);
  TempDir dir;
  auto ts = random_tensors(rng, 4);
  ts[0].shape = {3};
  ts[0].type = DType::F32;
  ts[0].bytes = random_bytes(rng, 12);
  write_safetensors(dir / "full.safetensors", views(ts), {{"k", "v"}});
  const std::string full = read_file(dir / "full.safetensors");
  const std::string p = dir / "cut.safetensors";
  for (size_t cut = 0; cut < full.size(); ++cut) {
    write_file(p, full.substr(0, cut));
    try {
      SafeTensorsFile f(p);
      ADD_FAILURE() << "seed " << seed << ": file cut at " << cut << " of " << full.size() << " opened";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  }
  for (int iter = 0; iter < 3000; ++iter) {
    std::string b = full;
    for (int k = 0; k < 1 + int(rng() % 3); ++k) b[rng() % b.size()] = static_cast<char>(rng() & 0xff);
    write_file(p, b);
    try {
      SafeTensorsFile f(p);
      for (auto& t : f.tensors()) {
        uint8_t s = 0;
        for (size_t i = 0; i < t.nbytes; ++i) s ^= static_cast<const uint8_t*>(t.data)[i];
        volatile uint8_t sink = s;
        (void)sink;
      }
    } catch (const Error&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "seed " << seed << " iteration " << iter << ": non-lizard exception " << e.what();
    }
  }
}

TEST(SafeTensors, SetReadsSingleFileShardsAndGlob) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  auto a = random_tensors(rng, 3, "a.");
  auto b = random_tensors(rng, 2, "b.");
  {  // single model.safetensors
    TempDir dir;
    write_safetensors(dir / "model.safetensors", views(a));
    write_safetensors(dir / "ignored.safetensors", views(b));
    SafeTensorsSet s(dir.path());
    EXPECT_EQ(s.tensors().size(), a.size());
    for (auto& o : a) expect_same(s.find_tensor(o.name), o);
  }
  {  // sharded with an index
    TempDir dir;
    write_safetensors(dir / "model-00001-of-00002.safetensors", views(a));
    write_safetensors(dir / "model-00002-of-00002.safetensors", views(b));
    nlohmann::json idx;
    idx["metadata"] = {{"total_size", 0}};
    for (auto& o : a) idx["weight_map"][o.name] = "model-00001-of-00002.safetensors";
    for (auto& o : b) idx["weight_map"][o.name] = "model-00002-of-00002.safetensors";
    write_file(dir / "model.safetensors.index.json", idx.dump(2));
    SafeTensorsSet s(dir.path());
    EXPECT_EQ(s.tensors().size(), a.size() + b.size());
    for (auto& o : a) expect_same(s.find_tensor(o.name), o);
    for (auto& o : b) expect_same(s.find_tensor(o.name), o);
    // an index naming a tensor its shard lacks
    idx["weight_map"]["ghost"] = "model-00001-of-00002.safetensors";
    write_file(dir / "model.safetensors.index.json", idx.dump());
    try {
      SafeTensorsSet bad(dir.path());
      ADD_FAILURE() << "expected Error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'ghost'"), std::string::npos) << e.what();
    }
    idx["weight_map"]["ghost"] = "../escape.safetensors";
    write_file(dir / "model.safetensors.index.json", idx.dump());
    EXPECT_THROW(SafeTensorsSet{dir.path()}, Error);
    idx["weight_map"].erase("ghost");
    idx["weight_map"][a[0].name] = "missing-shard.safetensors";
    write_file(dir / "model.safetensors.index.json", idx.dump());
    EXPECT_THROW(SafeTensorsSet{dir.path()}, Error);
  }
  {  // any *.safetensors; duplicates across files are an error
    TempDir dir;
    write_safetensors(dir / "x.safetensors", views(a));
    write_safetensors(dir / "y.safetensors", views(b));
    SafeTensorsSet s(dir.path());
    EXPECT_EQ(s.tensors().size(), a.size() + b.size());
    write_safetensors(dir / "z.safetensors", views(b));
    EXPECT_THROW(SafeTensorsSet{dir.path()}, Error);
  }
  {
    TempDir dir;
    EXPECT_THROW(SafeTensorsSet{dir.path()}, Error);
    EXPECT_THROW(SafeTensorsSet{dir / "nope"}, Error);
  }
}
