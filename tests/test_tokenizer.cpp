// Tokenizer parity with Hugging Face `tokenizers`: fixtures from scripts/make_tokenizer_fixtures.py
// hold HF's ids and decodes for a few hundred varied texts per tokenizer.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <random>

#include "formats/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

using namespace lizard;
namespace fs = std::filesystem;

namespace {

struct Case {
  std::string text, decoded, decoded_skip;
  std::vector<int32_t> ids, ids_bos;
};

std::vector<Case> load_cases(const std::string& name) {
  std::ifstream f(std::string(LIZARD_SOURCE_DIR) + "/tests/fixtures/tokenizer/" + name + ".jsonl");
  EXPECT_TRUE(f) << "missing fixture " << name;
  std::vector<Case> cases;
  std::string line;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    cases.push_back({j["text"], j["decoded"], j["decoded_skip"], j["ids"], j["ids_bos"]});
  }
  return cases;
}

std::string hf_dir() {
  const char* e = std::getenv("LIZARD_TOKENIZERS_DIR");
  return e ? e : "/work/shared/data/tokenizers";
}

std::string ids_str(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// Compares every fixture; reports the count and the first few mismatches.
void check_parity(const Tokenizer& t, const std::string& name) {
  auto cases = load_cases(name);
  ASSERT_FALSE(cases.empty());
  int ok_ids = 0, ok_bos = 0, ok_dec = 0, ok_skip = 0, shown = 0;
  for (const Case& c : cases) {
    auto ids = t.encode(c.text);
    auto ids_bos = t.encode(c.text, true);
    std::string dec = t.decode(c.ids), skip = t.decode(c.ids, true);
    ok_ids += ids == c.ids;
    ok_bos += ids_bos == c.ids_bos;
    ok_dec += dec == c.decoded;
    ok_skip += skip == c.decoded_skip;
    if ((ids != c.ids || ids_bos != c.ids_bos || dec != c.decoded || skip != c.decoded_skip) && shown++ < 5)
      ADD_FAILURE() << name << " text " << nlohmann::json(c.text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n  HF ids " << ids_str(c.ids)
                    << "\n  ours   " << ids_str(ids) << "\n  HF decoded " << nlohmann::json(c.decoded).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                    << "\n  ours       " << nlohmann::json(dec).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  size_t n = cases.size();
  std::printf("[%s] ids %d/%zu, ids+bos %d/%zu, decode %d/%zu, decode(skip_special) %d/%zu\n", name.c_str(), ok_ids, n,
              ok_bos, n, ok_dec, n, ok_skip, n);
  EXPECT_EQ(ok_ids, static_cast<int>(n));
  EXPECT_EQ(ok_bos, static_cast<int>(n));
  EXPECT_EQ(ok_dec, static_cast<int>(n));
  EXPECT_EQ(ok_skip, static_cast<int>(n));
}

std::optional<Tokenizer> hf_tokenizer(const std::string& name) {
  std::string p = hf_dir() + "/" + name + "/tokenizer.json";
  if (!fs::exists(p)) return std::nullopt;
  return Tokenizer::from_json_file(p);
}

// Random valid UTF-8 from a mix of scripts, whitespace and emoji.
std::string random_text(std::mt19937& rng, bool allow_specials) {
  static const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x20, 0x7E},     {0x20, 0x7E},     {0x9, 0xD},       {0xA0, 0x17F},   {0x300, 0x36F}, {0x391, 0x3C9},
      {0x410, 0x44F},   {0x5D0, 0x5EA},   {0x620, 0x64A},   {0x900, 0x97F},  {0xE01, 0xE5B}, {0x1100, 0x11FF},
      {0x2000, 0x206F}, {0x3040, 0x30FF}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3}, {0xFF01, 0xFF5E},
      {0x1F300, 0x1F6FF}, {0x1F900, 0x1F9FF}, {0x10000, 0x1007F}, {0x20000, 0x2A6DF}, {0xE000, 0xF8FF}};
  std::uniform_int_distribution<int> len(0, 60), pick(0, static_cast<int>(ranges.size()) - 1);
  std::string s;
  int n = len(rng);
  for (int i = 0; i < n; ++i) {
    auto [lo, hi] = ranges[pick(rng)];
    uint32_t cp = std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
    if (!allow_specials && (cp == '<' || cp == 0x2581)) continue;
    uni::append_utf8(s, cp);
  }
  return s;
}

}  // namespace

TEST(TokenizerHF, Llama2) {
  auto t = hf_tokenizer("llama2");
  if (!t) GTEST_SKIP() << "no " << hf_dir() << "/llama2";
  EXPECT_EQ(t->kind(), "SentencePiece BPE");
  EXPECT_TRUE(t->adds_bos());
  check_parity(*t, "llama2");
}

TEST(TokenizerHF, Llama3) {
  auto t = hf_tokenizer("llama3");
  if (!t) GTEST_SKIP() << "no " << hf_dir() << "/llama3";
  EXPECT_EQ(t->kind(), "byte-level BPE");
  EXPECT_EQ(t->token_text(*t->bos_id()), "<|begin_of_text|>");
  check_parity(*t, "llama3");
}

TEST(TokenizerHF, Qwen3) {
  auto t = hf_tokenizer("qwen3");
  if (!t) GTEST_SKIP() << "no " << hf_dir() << "/qwen3";
  EXPECT_FALSE(t->adds_bos());
  EXPECT_EQ(t->token_text(*t->eos_id()), "<|im_end|>");
  check_parity(*t, "qwen3");
}

TEST(TokenizerHF, RoundTripRandomUtf8) {
  uint32_t seed = std::random_device{}();
  std::mt19937 rng(seed);
  for (const char* name : {"llama3", "qwen3", "llama2"}) {
    auto t = hf_tokenizer(name);
    if (!t) continue;
    bool sp = std::string(name) == "llama2", qwen = std::string(name) == "qwen3";
    for (int i = 0; i < 300; ++i) {
      std::string s = random_text(rng, !sp);
      std::string want = qwen ? uni::nfc(s) : s;
      ASSERT_EQ(t->decode(t->encode(s)), want) << name << " seed " << seed << " text " << nlohmann::json(s).dump();
      // streaming: token_bytes concatenated give the same bytes (byte-level)
      if (!sp) {
        std::string cat;
        for (int32_t id : t->encode(s)) cat += t->token_bytes(id);
        ASSERT_EQ(cat, want) << name << " seed " << seed;
      }
    }
  }
}

TEST(TokenizerHF, SpecialTokensAndTokenBytes) {
  auto t = hf_tokenizer("llama2");
  if (!t) GTEST_SKIP();
  auto ids = t->encode("<s>Hi</s>");
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_TRUE(t->is_special(1));
  EXPECT_EQ(t->decode(ids, true), "Hi");
  EXPECT_EQ(t->token_bytes(*t->token_id("<0x0A>")), "\n");
  EXPECT_EQ(t->token_bytes(*t->token_id("\xE2\x96\x81Hello")), " Hello");
}

TEST(TokenizerUnicode, NfcAndLossy) {
  EXPECT_EQ(uni::nfc("e\xCC\x81"), "\xC3\xA9");                  // e + acute -> é
  EXPECT_EQ(uni::nfc("\xE2\x84\xAB"), "\xC3\x85");               // Angstrom sign -> Å
  EXPECT_EQ(uni::nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // jamo -> 각
  EXPECT_EQ(uni::nfc("q\xCC\x87\xCC\xA3"), "q\xCC\xA3\xCC\x87");  // reordered by combining class
  EXPECT_EQ(uni::utf8_lossy("a\xF0\x9F\x98"), "a\xEF\xBF\xBD");   // truncated sequence: one U+FFFD
  EXPECT_EQ(uni::utf8_lossy("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(uni::utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
}

TEST(TokenizerErrors, UnsupportedComponentIsNamed) {
  auto dir = fs::temp_directory_path() / ("lizard_tok_" + std::to_string(std::random_device{}()));
  fs::create_directories(dir);
  auto p = (dir / "tokenizer.json").string();
  std::ofstream(p) << R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"normalizer":{"type":"NFKD"}})";
  try {
    Tokenizer::from_json_file(p);
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NFKD"), std::string::npos) << e.what();
  }
  std::ofstream(p) << R"({"model":{"type":"Unigram","vocab":[]}})";
  EXPECT_THROW(Tokenizer::from_json_file(p), Error);
  fs::remove_all(dir);
}

// ---- GGUF ------------------------------------------------------------------------------------

TEST(TokenizerGGUF, SmolLM2MatchesHF) {
  std::string path = std::string(LIZARD_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << "no " << path << " (scripts/fetch_model.sh)";
  GGUFFile f(path);
  Tokenizer t = Tokenizer::from_gguf(f);
  EXPECT_EQ(t.kind(), "byte-level BPE");
  EXPECT_EQ(t.vocab_size(), 49152);
  // This GGUF says bos 1 (<|im_start|>), eos 2 (<|im_end|>), add_bos_token false: HF's SmolLM2
  // tokenizer adds no BOS either.
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_FALSE(t.adds_bos());
  EXPECT_TRUE(t.is_special(0) && t.is_special(1) && t.is_special(2));
  EXPECT_EQ(t.token_text(2), "<|im_end|>");
  check_parity(t, "smollm2");
}

namespace {
// A minimal GGUF v3 writer (metadata only) for synthetic tokenizers.
struct GGUFWriter {
  std::string kv;
  uint64_t n = 0;
  template <typename T>
  void raw(std::string& o, T v) {
    o.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void str(std::string& o, const std::string& s) {
    raw<uint64_t>(o, s.size());
    o += s;
  }
  void key(const std::string& k, uint32_t type) {
    str(kv, k);
    raw<uint32_t>(kv, type);
    ++n;
  }
  void put(const std::string& k, const std::string& v) { key(k, 8), str(kv, v); }
  void put_u32(const std::string& k, uint32_t v) { key(k, 4), raw(kv, v); }
  void put_bool(const std::string& k, bool v) { key(k, 7), raw<uint8_t>(kv, v); }
  void put(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9), raw<uint32_t>(kv, 8), raw<uint64_t>(kv, v.size());
    for (auto& s : v) str(kv, s);
  }
  void put(const std::string& k, const std::vector<float>& v) {
    key(k, 9), raw<uint32_t>(kv, 6), raw<uint64_t>(kv, v.size());
    for (float x : v) raw(kv, x);
  }
  void put(const std::string& k, const std::vector<int32_t>& v) {
    key(k, 9), raw<uint32_t>(kv, 5), raw<uint64_t>(kv, v.size());
    for (int32_t x : v) raw(kv, x);
  }
  void write(const std::string& path) {
    std::string o = "GGUF";
    raw<uint32_t>(o, 3);
    raw<uint64_t>(o, 0);
    raw<uint64_t>(o, n);
    o += kv;
    o.resize((o.size() + 31) / 32 * 32, '\0');
    std::ofstream(path, std::ios::binary) << o;
  }
};
}  // namespace

// A SentencePiece ("llama") GGUF has tokens and scores but no merges: BPE by score must give HF's
// merge-rank result. Built from the Llama-2-style tokenizer.json; each token's score is minus the
// rank of its first merge (HF's converter ranks merges by the merged piece's score), tokens no
// merge makes score lowest.
TEST(TokenizerGGUF, LlamaScoresMatchHF) {
  std::string p = hf_dir() + "/llama2/tokenizer.json";
  if (!fs::exists(p)) GTEST_SKIP() << "no " << p;
  std::ifstream in(p);
  auto j = nlohmann::json::parse(in);
  std::vector<std::string> tokens(j["model"]["vocab"].size());
  for (auto& [tok, id] : j["model"]["vocab"].items()) tokens[id.get<int>()] = tok;
  std::vector<float> scores(tokens.size(), -1e9f);
  std::vector<int32_t> types(tokens.size(), 1);
  int rank = 0;
  for (auto& m : j["model"]["merges"]) {
    std::string s = m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>();
    int id = j["model"]["vocab"][s.substr(0, s.find(' ')) + s.substr(s.find(' ') + 1)].get<int>();
    scores[id] = std::max(scores[id], -static_cast<float>(rank++));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i].size() == 6 && tokens[i].rfind("<0x", 0) == 0) types[i] = 6;
  }
  types[0] = 2, types[1] = 3, types[2] = 3;
  GGUFWriter w;
  w.put("general.architecture", std::string("llama"));
  w.put("tokenizer.ggml.model", std::string("llama"));
  w.put("tokenizer.ggml.tokens", tokens);
  w.put("tokenizer.ggml.scores", scores);
  w.put("tokenizer.ggml.token_type", types);
  w.put_u32("tokenizer.ggml.bos_token_id", 1);
  w.put_u32("tokenizer.ggml.eos_token_id", 2);
  w.put_u32("tokenizer.ggml.unknown_token_id", 0);
  w.put_bool("tokenizer.ggml.add_bos_token", true);
  auto path = (fs::temp_directory_path() / ("lizard_tok_" + std::to_string(std::random_device{}()) + ".gguf")).string();
  w.write(path);
  Tokenizer t = Tokenizer::from_gguf(GGUFFile(path));
  fs::remove(path);
  EXPECT_EQ(t.kind(), "SentencePiece BPE");
  EXPECT_TRUE(t.adds_bos());
  check_parity(t, "llama2");
}

TEST(TokenizerGGUF, UnsupportedPreIsNamed) {
  GGUFWriter w;
  w.put("tokenizer.ggml.model", std::string("gpt2"));
  w.put("tokenizer.ggml.pre", std::string("deepseek-coder"));
  w.put("tokenizer.ggml.tokens", std::vector<std::string>{"a", "b", "ab"});
  w.put("tokenizer.ggml.merges", std::vector<std::string>{"a b"});
  auto path = (fs::temp_directory_path() / ("lizard_tok_" + std::to_string(std::random_device{}()) + ".gguf")).string();
  w.write(path);
  try {
    Tokenizer::from_gguf(GGUFFile(path));
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deepseek-coder"), std::string::npos) << e.what();
  }
  fs::remove(path);
}

// GGUF gpt2 tokenizers named by tokenizer.ggml.pre: the vocab and merges of Llama-3's and Qwen3's
// tokenizer.json written as GGUF metadata must tokenize exactly as HF does from the JSON.
TEST(TokenizerGGUF, ByteLevelPresetsMatchHF) {
  for (auto [name, pre] : {std::pair{"llama3", "llama-bpe"}, std::pair{"qwen3", "qwen2"}}) {
    std::string p = hf_dir() + "/" + name + "/tokenizer.json";
    if (!fs::exists(p)) continue;
    std::ifstream in(p);
    auto j = nlohmann::json::parse(in);
    size_t n = j["model"]["vocab"].size();
    for (auto& a : j["added_tokens"]) n = std::max<size_t>(n, a["id"].get<size_t>() + 1);
    std::vector<std::string> tokens(n);
    std::vector<int32_t> types(n, 1);
    for (auto& [tok, id] : j["model"]["vocab"].items()) tokens[id.get<int>()] = tok;
    for (auto& a : j["added_tokens"]) {
      tokens[a["id"].get<int>()] = a["content"];
      types[a["id"].get<int>()] = a["special"].get<bool>() ? 3 : 4;
    }
    std::vector<std::string> merges;
    for (auto& m : j["model"]["merges"])
      merges.push_back(m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>());
    GGUFWriter w;
    w.put("tokenizer.ggml.model", std::string("gpt2"));
    w.put("tokenizer.ggml.pre", std::string(pre));
    w.put("tokenizer.ggml.tokens", tokens);
    w.put("tokenizer.ggml.token_type", types);
    w.put("tokenizer.ggml.merges", merges);
    auto path = (fs::temp_directory_path() / ("lizard_tok_" + std::to_string(std::random_device{}()) + ".gguf")).string();
    w.write(path);
    Tokenizer t = Tokenizer::from_gguf(GGUFFile(path));
    fs::remove(path);
    EXPECT_FALSE(t.adds_bos());
    check_parity(t, name);
  }
}

// Small BPEs trained by the fixture script, with the components the real tokenizers don't use:
// Split behaviours (MergedWithNext/Previous, Removed, Contiguous, inverted), Digits contiguous,
// ByteLevel add_prefix_space, Replace/NFC normalizers, lstrip/rstrip/single_word/normalized tokens.
TEST(TokenizerHF, SyntheticComponents) {
  for (const char* name : {"synth_a", "synth_b"}) {
    Tokenizer t = Tokenizer::from_json_file(std::string(LIZARD_SOURCE_DIR) + "/tests/fixtures/tokenizer/" + name + ".json");
    check_parity(t, name);
  }
}
