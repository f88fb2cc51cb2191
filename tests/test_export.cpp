// lizard export --merge-lora (src/model/export.h): a tiny random Lizard model with LoRA, over an HF
// teacher and over a quantized GGUF teacher, exports to a directory whose load_model logits match
// the checkpoint's with the adapters applied; the GGUF's tokenizer written as tokenizer.json encodes
// like the GGUF (and like HF on the SmolLM2 fixtures); missing input and existing output are errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "fixture_util.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "llama_fixture.h"
#include "teacher_file_fixture.h"
#include "model/export.h"
#include "model/lizard_checkpoint.h"
#include "model/load_model.h"
#include "tokenizer/tokenizer_impl.h"
#include "train/lora.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace lizard;
using lizard::testing::error_of;
using lizard::testing::Seeded;
using lizard::testing::TinyModel;
using lizard::testing::TinySpec;
using lizard::testing::write_gguf_teacher;

namespace {

struct TmpDir {
  fs::path p;
  explicit TmpDir(const std::string& tag) {
    p = fs::temp_directory_path() / ("lizard_export_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
  }
  ~TmpDir() { fs::remove_all(p); }
};

ModelOptions opts() {
  ModelOptions o;
  o.n_threads = 1;
  o.exact = true;
  o.context = 256;
  return o;
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return den > 0 ? num / den : num;
}

std::vector<float> logits(const LoadedModel& m, const std::vector<int32_t>& t) {
  auto st = m.model->new_state();
  auto l = m.model->forward(t, 0, st, true);
  return {l.begin(), l.end()};
}

void write_hf_teacher(const std::string& dir, const TinyModel& tm) {
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << hf_config_json(tm.ck->config, DType::F32);
  std::vector<TensorToWrite> ts;
  for (auto& [n, b] : tm.blobs) ts.push_back({hf_tensor_name(n), b->type, b->shape, b->bytes.data(), b->bytes.size()});
  write_safetensors(dir + "/model.safetensors", ts, {{"format", "pt"}});
  fs::copy_file(std::string(LIZARD_SOURCE_DIR) + "/tests/fixtures/tokenizer/synth_a.json", dir + "/tokenizer.json");
  std::ofstream(dir + "/tokenizer_config.json") << R"({"chat_template": "{{ messages[0]['content'] }}"})";
}


// A hybrid Lizard checkpoint (layers 0 and 2 linear) with random, non-zero LoRA on q, k, v.
LizardCheckpoint lizard_with_lora(const ModelConfig& mc, const std::string& teacher, Seeded& rs) {
  LizardConfig c;
  c.feature_dim = 8;
  c.window = 4;
  c.chunk = 4;
  c.meta_tokens = 2;
  c.lizard_layers = {0, 2};
  LizardCheckpoint ck = init_lizard_checkpoint(c, mc, rs.rng());
  ck.lora = init_lora({}, mc, rs.rng());
  for (auto& [l, m] : ck.lora.layers)
    for (auto& [t, ad] : m)
      for (auto& x : ad.b) x = rs.uniform(-0.05f, 0.05f);
  ck.teacher = fingerprint_teacher(teacher);
  return ck;
}

void expect_export_matches(const std::string& dir, const std::string& out, const TinySpec& sp, Seeded& rs) {
  export_merged(dir, out);
  EXPECT_FALSE(fs::exists(out + ".tmp"));
  for (const char* f : {"config.json", "model.safetensors", "lizard.safetensors", "tokenizer.json"})
    EXPECT_TRUE(fs::exists(fs::path(out) / f)) << f;
  const LizardCheckpoint lz = load_lizard_checkpoint(out + "/lizard.safetensors");
  EXPECT_TRUE(lz.lora.empty());
  EXPECT_EQ(lz.teacher.path, ".");
  LoadedModel ref = load_model(dir, opts());
  ASSERT_FALSE(ref.lizard->lora.empty());
  LoadedModel got = load_model(out, opts());
  ASSERT_TRUE(got.is_lizard());
  EXPECT_EQ(got.checkpoint().path, out);
  EXPECT_EQ(got.checkpoint().chat_template_source, ref.checkpoint().chat_template_source);
  for (int l = 0; l < sp.layers; ++l) EXPECT_EQ(got.model->mixer(l).name(), ref.model->mixer(l).name());
  std::vector<int32_t> tok(37);
  for (auto& t : tok) t = int32_t(rs.rng() % uint64_t(sp.vocab));
  const auto a = logits(got, tok), b = logits(ref, tok);
  EXPECT_LT(rel_err(a, b), 1e-5);
  // The adapters matter: without them the logits differ.
  LoadedModel bare = load_model(dir, opts());
  LizardCheckpoint nolora = *bare.lizard;
  nolora.lora = {};
  LlamaModel m0(bare.teacher, opts());
  apply_lizard(m0, nolora);
  auto st = m0.new_state();
  auto l0 = m0.forward(tok, 0, st, true);
  EXPECT_GT(rel_err({l0.begin(), l0.end()}, b), 1e-4);
  // Texts encode the same.
  for (const char* s : {"the thin hen", "  in the\n<|endoftext|> 123", "hello world, <|im_end|>!"})
    EXPECT_EQ(got.tokenizer()->encode(s, true), ref.tokenizer()->encode(s, true)) << s;
}

}  // namespace

TEST(Export, HfTeacherMergedLoraGivesTheSameLogits) {
  Seeded rs;
  SCOPED_TRACE(rs.trace());
  for (bool qwen : {false, true}) {
    TinySpec sp;
    sp.vocab = 720;  // synth_a has 704 tokens
    sp.layers = 3;
    sp.ctx = 256;
    if (qwen) sp.arch = "qwen2", sp.qkv_bias = true, sp.tied = true;
    TinyModel tm = lizard::testing::make_tiny(rs, sp);
    TmpDir tmp(qwen ? "hfq" : "hf");
    const std::string teacher = (tmp.p / "teacher").string(), dir = (tmp.p / "student").string(),
                      out = (tmp.p / "merged").string();
    write_hf_teacher(teacher, tm);
    save_lizard_dir(dir, lizard_with_lora(tm.ck->config, teacher, rs));
    expect_export_matches(dir, out, sp, rs);
    EXPECT_TRUE(fs::exists(out + "/tokenizer_config.json"));

    // Standalone: the teacher gone and the export moved, it still opens.
    fs::remove_all(teacher);
    const std::string moved = (tmp.p / "moved").string();
    fs::rename(out, moved);
    EXPECT_TRUE(load_model(moved, opts()).is_lizard());
    EXPECT_EQ(load_model(moved, opts()).checkpoint().config.arch, sp.arch);
  }
}

TEST(Export, QuantizedGgufTeacherWithTokenizer) {
  Seeded rs;
  SCOPED_TRACE(rs.trace());
  TinySpec sp;
  sp.vocab = 270;  // the tokenizer has 264
  sp.layers = 3;
  sp.ctx = 256;
  sp.weight_type = DType::Q8_0;
  sp.embd_type = DType::Q4_1;
  TinyModel tm = lizard::testing::make_tiny(rs, sp);
  TmpDir tmp("gguf");
  const std::string teacher = (tmp.p / "tiny.gguf").string(), dir = (tmp.p / "student").string(),
                    out = (tmp.p / "merged").string();
  write_gguf_teacher(teacher, tm);
  save_lizard_dir(dir, lizard_with_lora(open_checkpoint(teacher).config, teacher, rs));
  expect_export_matches(dir, out, sp, rs);
  const LoadedModel got = load_model(out, opts());
  EXPECT_TRUE(got.tokenizer()->adds_bos());
  EXPECT_EQ(got.tokenizer()->bos_id(), 263);
  EXPECT_EQ(got.tokenizer()->eos_id(), 262);
  EXPECT_TRUE(got.tokenizer()->is_special(263));
  EXPECT_FALSE(got.checkpoint().chat_template_source.empty());
  std::ifstream cf(out + "/config.json");
  const auto cfg = nlohmann::json::parse(cf);
  EXPECT_EQ(cfg["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(cfg["torch_dtype"], "float32");
}

TEST(Export, Bf16WeightsAreClose) {
  Seeded rs;
  SCOPED_TRACE(rs.trace());
  TinySpec sp;
  sp.vocab = 720;
  sp.layers = 3;
  sp.ctx = 256;
  TinyModel tm = lizard::testing::make_tiny(rs, sp);
  TmpDir tmp("bf16");
  const std::string teacher = (tmp.p / "teacher").string(), dir = (tmp.p / "student").string(),
                    out = (tmp.p / "merged").string();
  write_hf_teacher(teacher, tm);
  save_lizard_dir(dir, lizard_with_lora(tm.ck->config, teacher, rs));
  ExportOptions o;
  o.dtype = DType::BF16;
  export_merged(dir, out, o);
  const LoadedModel got = load_model(out, opts()), ref = load_model(dir, opts());
  EXPECT_EQ(got.checkpoint().tensor("blk.0.attn_q.weight").type, DType::BF16);
  std::vector<int32_t> tok(20);
  for (auto& t : tok) t = int32_t(rs.rng() % 700);
  EXPECT_LT(rel_err(logits(got, tok), logits(ref, tok)), 0.05);
}

TEST(Export, MissingInputAndExistingOutputAreErrors) {
  Seeded rs;
  TinySpec sp;
  sp.vocab = 720;
  sp.layers = 3;
  TinyModel tm = lizard::testing::make_tiny(rs, sp);
  TmpDir tmp("err");
  const std::string teacher = (tmp.p / "teacher").string(), dir = (tmp.p / "student").string();
  write_hf_teacher(teacher, tm);
  save_lizard_dir(dir, lizard_with_lora(tm.ck->config, teacher, rs));
  const std::string e1 = error_of([&] { export_merged((tmp.p / "nope").string(), (tmp.p / "o1").string()); });
  EXPECT_NE(e1.find("does not exist"), std::string::npos) << e1;
  const std::string e2 = error_of([&] { export_merged(teacher, (tmp.p / "o2").string()); });
  EXPECT_NE(e2.find("not a Lizard checkpoint"), std::string::npos) << e2;
  fs::create_directories(tmp.p / "taken");
  const std::string e3 = error_of([&] { export_merged(dir, (tmp.p / "taken").string()); });
  EXPECT_NE(e3.find("already exists"), std::string::npos) << e3;
  EXPECT_TRUE(fs::is_empty(tmp.p / "taken"));
  // A failure part-way (teacher moved away) leaves neither OUT nor OUT.tmp.
  fs::rename(teacher, tmp.p / "elsewhere");
  const std::string e4 = error_of([&] { export_merged(dir, (tmp.p / "o4").string()); });
  EXPECT_NE(e4.find("--teacher"), std::string::npos) << e4;
  EXPECT_FALSE(fs::exists(tmp.p / "o4") || fs::exists(tmp.p / "o4.tmp"));
  ExportOptions o;
  o.teacher = (tmp.p / "elsewhere").string();
  EXPECT_NO_THROW(export_merged(dir, (tmp.p / "o4").string(), o));
}

// The default teacher's tokenizer, written as tokenizer.json, encodes the HF fixtures identically.
TEST(Export, SmolLM2TokenizerJsonMatchesTheGguf) {
  const std::string path = std::string(LIZARD_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << "no " << path;
  TmpDir tmp("smol");
  GGUFFile g(path);
  write_gguf_tokenizer(g, tmp.p.string(), g.find_string("tokenizer.chat_template").value_or(""));
  const Tokenizer a = Tokenizer::from_gguf(g);
  const Tokenizer b = Tokenizer::from_json_file((tmp.p / "tokenizer.json").string());
  EXPECT_EQ(b.vocab_size(), a.vocab_size());
  EXPECT_EQ(b.bos_id(), a.bos_id());
  EXPECT_EQ(b.eos_id(), a.eos_id());
  EXPECT_EQ(b.adds_bos(), a.adds_bos());
  for (int32_t id = 0; id < a.vocab_size(); ++id) ASSERT_EQ(a.is_special(id), b.is_special(id)) << id;
  std::ifstream in(std::string(LIZARD_SOURCE_DIR) + "/tests/fixtures/tokenizer/smollm2.jsonl");
  std::string line;
  int n = 0;
  for (; n < 100 && std::getline(in, line); ++n) {
    const auto j = nlohmann::json::parse(line);
    const std::string text = j["text"].get<std::string>();
    const auto ids = j["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(b.encode(text), ids) << "line " << n + 1 << ": " << text;
    EXPECT_EQ(b.encode(text, true), j["ids_bos"].get<std::vector<int32_t>>()) << "line " << n + 1;
    EXPECT_EQ(b.decode(ids), j["decoded"].get<std::string>()) << "line " << n + 1;
    EXPECT_EQ(b.decode(ids, true), j["decoded_skip"].get<std::string>()) << "line " << n + 1;
  }
  EXPECT_EQ(n, 100);
  std::ifstream cf(tmp.p / "tokenizer_config.json");
  EXPECT_FALSE(nlohmann::json::parse(cf).value("chat_template", "").empty());
}

TEST(Export, SentencePieceGgufTokenizerIsRefusedClearly) {
  TmpDir tmp("sp");
  fixtures::GGUFWriter w;
  w.kv_str("tokenizer.ggml.model", "llama");
  w.kv_strs("tokenizer.ggml.tokens", {"<unk>", "a"});
  std::ofstream(tmp.p / "t.gguf", std::ios::binary) << w.build();
  GGUFFile g((tmp.p / "t.gguf").string());
  const std::string e = error_of([&] { write_gguf_tokenizer(g, tmp.p.string(), ""); });
  EXPECT_NE(e.find("SentencePiece"), std::string::npos) << e;
}
