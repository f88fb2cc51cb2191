// Lizard checkpoint: round trip, teacher record checks, clear errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "model/lizard_checkpoint.h"
#include "util/error.h"

using namespace lizard;
namespace fs = std::filesystem;

namespace {

struct TmpDir {
  fs::path dir;
  TmpDir() {
    dir = fs::temp_directory_path() / fmt::format("lizard_ckpt_{}_{}", ::getpid(), std::random_device{}());
    fs::create_directories(dir);
  }
  ~TmpDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

void write_bytes(const std::string& path, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<char> b(n);
  for (auto& c : b) c = char(rng());
  std::ofstream(path, std::ios::binary).write(b.data(), std::streamsize(n));
}

ModelConfig tiny_teacher() {
  ModelConfig t;
  t.arch = "llama";
  t.d_model = 32;
  t.n_layers = 3;
  t.n_heads = 4;
  t.n_kv_heads = 2;
  t.head_dim = 8;
  return t;
}

}  // namespace

TEST(LizardCheckpoint, Sha256KnownVectors) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha256_hex(two.data(), two.size()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(LizardCheckpoint, RoundTripAndTeacherChecks) {
  TmpDir tmp;
  const std::string teacher = tmp / "teacher.gguf";
  write_bytes(teacher, (3 << 20) + 123, 1);  // > 2 MiB: first and last MiB are hashed
  LizardConfig c;
  c.feature_dim = 4;
  c.gate = LizardConfig::Gate::PerHead;
  c.meta_per_head = true;
  c.lizard_layers = {0, 2};  // hybrid: layer 1 stays softmax
  auto ck = init_lizard_checkpoint(c, tiny_teacher(), 5);
  ASSERT_EQ(ck.layers.size(), 2u);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> N;
  for (auto& [l, p] : ck.layers)
    for (auto& e : p.entries(c, ck.shape))
      for (auto& x : *e.data) x = N(rng);
  ck.teacher = fingerprint_teacher(teacher);
  EXPECT_EQ(ck.teacher.fingerprint.size(), 64u);
  const std::string path = tmp / "lizard.safetensors";
  save_lizard_checkpoint(path, ck);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  auto back = load_lizard_checkpoint(path, teacher);
  EXPECT_EQ(lizard_config_to_json(back.config), lizard_config_to_json(c));
  EXPECT_EQ(back.n_layers, 3);
  EXPECT_EQ(back.shape.n_kv_heads, 2);
  EXPECT_EQ(back.teacher.fingerprint, ck.teacher.fingerprint);
  ASSERT_EQ(back.layers.size(), 2u);
  for (int l : {0, 2}) {
    EXPECT_EQ(back.layers[l].feat_q, ck.layers[l].feat_q);
    EXPECT_EQ(back.layers[l].gate_w, ck.layers[l].gate_w);
    EXPECT_EQ(back.layers[l].meta, ck.layers[l].meta);
    EXPECT_EQ(back.layers[l].lolcats_f, ck.layers[l].lolcats_f);
  }
  EXPECT_NO_THROW(check_lizard_teacher_shape(back, tiny_teacher()));
  EXPECT_NE(describe_lizard_checkpoint(back).find("0,2"), std::string::npos);

  // missing teacher, moved teacher (same bytes: accepted), changed teacher, wrong shape
  EXPECT_THROW(load_lizard_checkpoint(path, tmp / "nope.gguf"), Error);
  fs::copy_file(teacher, tmp / "moved.gguf");
  EXPECT_NO_THROW(load_lizard_checkpoint(path, tmp / "moved.gguf"));
  {
    std::fstream f(teacher, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-5, std::ios::end);
    f.put('x');
  }
  try {
    load_lizard_checkpoint(path, teacher);
    ADD_FAILURE() << "mismatched teacher accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not the one"), std::string::npos) << e.what();
  }
  auto other = tiny_teacher();
  other.n_layers = 4;
  EXPECT_THROW(check_lizard_teacher_shape(back, other), Error);
}

TEST(LizardCheckpoint, DirectoryTeacherAndBrokenFiles) {
  TmpDir tmp;
  fs::create_directories(tmp.dir / "hf");
  write_bytes(tmp / "hf/model.safetensors", 5000, 2);
  write_bytes(tmp / "hf/config.json", 100, 3);
  write_bytes(tmp / "hf/README.md", 100, 4);
  auto r1 = fingerprint_teacher(tmp / "hf");
  write_bytes(tmp / "hf/README.md", 200, 5);  // not a model file: ignored
  EXPECT_EQ(fingerprint_teacher(tmp / "hf").fingerprint, r1.fingerprint);
  write_bytes(tmp / "hf/config.json", 100, 6);
  EXPECT_NE(fingerprint_teacher(tmp / "hf").fingerprint, r1.fingerprint);

  LizardConfig c;
  c.feature_dim = 4;
  auto ck = init_lizard_checkpoint(c, tiny_teacher(), 1);
  ck.teacher = fingerprint_teacher(tmp / "hf");
  // parameters that do not fit the config are refused before writing
  auto bad = ck;
  bad.layers[1].alpha.pop_back();
  EXPECT_THROW(save_lizard_checkpoint(tmp / "bad.safetensors", bad), Error);
  EXPECT_FALSE(fs::exists(tmp / "bad.safetensors"));
  // a plain safetensors file is not a Lizard checkpoint
  float one = 1;
  write_safetensors(tmp / "plain.safetensors", {{"w", DType::F32, {1}, &one, 4}});
  EXPECT_THROW(load_lizard_checkpoint(tmp / "plain.safetensors"), Error);
  // truncated file
  save_lizard_checkpoint(tmp / "ok.safetensors", ck);
  EXPECT_NO_THROW(load_lizard_checkpoint(tmp / "ok.safetensors", tmp / "hf"));
  fs::resize_file(tmp / "ok.safetensors", fs::file_size(tmp / "ok.safetensors") - 7);
  EXPECT_THROW(load_lizard_checkpoint(tmp / "ok.safetensors"), Error);
}
