#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "fixture_util.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/checkpoint.h"
#include "util/error.h"

using namespace lizard;
using namespace lizard::fixtures;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::string kDefaultModel = std::string(LIZARD_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const std::string kTokenizers = "/work/shared/data/tokenizers";

std::string need_default_model() {
  if (!fs::exists(kDefaultModel))
    throw std::runtime_error(kDefaultModel + " is missing: run scripts/fetch_model.sh");
  return kDefaultModel;
}

// A tokenizer.json for HF fixtures: the shared Llama-2 one if present (32000 tokens).
std::string llama2_tokenizer_dir() {
  const std::string d = kTokenizers + "/llama2";
  if (!fs::exists(d + "/tokenizer.json")) throw std::runtime_error(d + "/tokenizer.json is missing");
  return d;
}

struct Tensor {
  DType type = DType::F32;
  std::vector<int64_t> shape;
  std::string bytes;
};

// A tiny random model under canonical names, in HF row order.
struct Tiny {
  std::string arch = "llama";
  int vocab = 49152, d = 32, layers = 2, heads = 4, kv_heads = 2, head_dim = 8, ff = 48;
  bool tied = false, bias = false;
  std::map<std::string, Tensor> t;

  void fill(std::mt19937& rng) {
    t.clear();
    auto add = [&](const std::string& n, std::vector<int64_t> shape) {
      Tensor x;
      x.shape = shape;
      int64_t numel = 1;
      for (auto s : shape) numel *= s;
      std::vector<float> v(numel);
      std::uniform_real_distribution<float> u(-1.f, 1.f);
      for (auto& f : v) f = u(rng);
      x.bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * 4);
      t[n] = std::move(x);
    };
    const int64_t q = int64_t(heads) * head_dim, kv = int64_t(kv_heads) * head_dim;
    add("token_embd.weight", {vocab, d});
    add("output_norm.weight", {d});
    if (!tied) add("output.weight", {vocab, d});
    for (int l = 0; l < layers; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      add(b + "attn_norm.weight", {d});
      add(b + "ffn_norm.weight", {d});
      add(b + "attn_q.weight", {q, d});
      add(b + "attn_k.weight", {kv, d});
      add(b + "attn_v.weight", {kv, d});
      add(b + "attn_output.weight", {d, q});
      add(b + "ffn_gate.weight", {ff, d});
      add(b + "ffn_up.weight", {ff, d});
      add(b + "ffn_down.weight", {d, ff});
      if (bias) {
        add(b + "attn_q.bias", {q});
        add(b + "attn_k.bias", {kv});
        add(b + "attn_v.bias", {kv});
      }
    }
  }
};

std::string hf_of(const std::string& c) {
  if (c == "token_embd.weight") return "model.embed_tokens.weight";
  if (c == "output_norm.weight") return "model.norm.weight";
  if (c == "output.weight") return "lm_head.weight";
  const size_t dot = c.find('.', 4);
  const std::string l = c.substr(4, dot - 4), r = c.substr(dot + 1);
  const std::map<std::string, std::string> m = {
      {"attn_norm.weight", "input_layernorm.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},   {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},   {"attn_output.weight", "self_attn.o_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},       {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.bias", "self_attn.v_proj.bias"},       {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},        {"ffn_down.weight", "mlp.down_proj.weight"}};
  return "model.layers." + l + "." + m.at(r);
}

json hf_config(const Tiny& m) {
  const std::map<std::string, std::string> archs = {
      {"llama", "LlamaForCausalLM"}, {"mistral", "MistralForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"}};
  return {{"architectures", {archs.at(m.arch)}},
          {"model_type", m.arch},
          {"hidden_size", m.d},
          {"intermediate_size", m.ff},
          {"num_hidden_layers", m.layers},
          {"num_attention_heads", m.heads},
          {"num_key_value_heads", m.kv_heads},
          {"head_dim", m.head_dim},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 100000.0},
          {"max_position_embeddings", 4096},
          {"tie_word_embeddings", m.tied},
          {"vocab_size", m.vocab},
          {"hidden_act", "silu"}};
}

// Writes config.json, model.safetensors (or two shards), tokenizer files.
void write_hf(const std::string& dir, const Tiny& m, const json& cfg, bool sharded = false) {
  fs::create_directories(dir);
  write_file(dir + "/config.json", cfg.dump(2));
  std::vector<TensorToWrite> a, b;
  json idx;
  int i = 0;
  for (auto& [n, x] : m.t) {
    const std::string hn = hf_of(n);
    TensorToWrite w{hn, x.type, x.shape, x.bytes.data(), x.bytes.size()};
    const bool second = sharded && (i++ % 2);
    (second ? b : a).push_back(w);
    idx["weight_map"][hn] = second ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  }
  if (sharded) {
    write_safetensors(dir + "/model-00001-of-00002.safetensors", a);
    write_safetensors(dir + "/model-00002-of-00002.safetensors", b);
    write_file(dir + "/model.safetensors.index.json", idx.dump());
  } else {
    write_safetensors(dir + "/model.safetensors", a, {{"format", "pt"}});
  }
  fs::create_symlink(llama2_tokenizer_dir() + "/tokenizer.json", dir + "/tokenizer.json");
  json tc = {{"chat_template", json::array({{{"name", "tool_use"}, {"template", "tools!"}},
                                            {{"name", "default"}, {"template", "{{ '<|im_start|>' }}"}}})}};
  write_file(dir + "/tokenizer_config.json", tc.dump());
}

// numpy's w.reshape(n_head, 2, D/2, cols).swapaxes(1, 2).reshape(rows, cols), as llama.cpp's converter
// applies to Q and K of llama models.
std::string permute_like_converter(const std::string& bytes, int64_t rows, int n_head) {
  const int64_t half = rows / n_head / 2;
  const size_t rb = bytes.size() / size_t(rows);
  std::string out(bytes.size(), '\0');
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t a = 0; a < half; ++a)      // new axis 1 (was axis 2)
      for (int64_t b = 0; b < 2; ++b) {     // new axis 2 (was axis 1)
        const int64_t out_row = (h * half + a) * 2 + b;
        const int64_t in_row = (h * 2 + b) * half + a;
        std::memcpy(out.data() + out_row * rb, bytes.data() + in_row * rb, rb);
      }
  return out;
}

// A GGUF of the model as llama.cpp would write it; the tokenizer metadata comes from the default model.
GGUFWriter gguf_of(const Tiny& m, bool permute) {
  GGUFWriter w;
  const std::string a = m.arch == "mistral" ? "llama" : m.arch;
  w.kv_str("general.architecture", a);
  w.kv_str("general.name", "Tiny Test");
  w.kv_u32(a + ".block_count", m.layers);
  w.kv_u32(a + ".context_length", 4096);
  w.kv_u32(a + ".embedding_length", m.d);
  w.kv_u32(a + ".feed_forward_length", m.ff);
  w.kv_u32(a + ".attention.head_count", m.heads);
  w.kv_u32(a + ".attention.head_count_kv", m.kv_heads);
  w.kv_u32(a + ".attention.key_length", m.head_dim);
  w.kv_u32(a + ".rope.dimension_count", m.head_dim);
  w.kv_f32(a + ".rope.freq_base", 100000.f);
  w.kv_f32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  GGUFFile real(need_default_model());
  for (auto& [k, v] : real.metadata())
    if (k.rfind("tokenizer.", 0) == 0) w.kv_value(k, v);
  for (auto& [n, x] : m.t) {
    std::string bytes = x.bytes;
    const bool q = n.find("attn_q.weight") != std::string::npos, k = n.find("attn_k.weight") != std::string::npos;
    if (permute && (q || k)) bytes = permute_like_converter(bytes, x.shape[0], q ? m.heads : m.kv_heads);
    w.tensor(n, x.type, x.shape, bytes);
  }
  return w;
}

void expect_weights(const Checkpoint& ck, const Tiny& m) {
  EXPECT_EQ(ck.tensors.size(), m.t.size());
  for (auto& [n, x] : m.t) {
    const TensorView* v = ck.find(n);
    ASSERT_TRUE(v) << n;
    EXPECT_EQ(v->type, x.type) << n;
    EXPECT_EQ(v->shape, x.shape) << n;
    ASSERT_EQ(v->nbytes, x.bytes.size()) << n;
    EXPECT_TRUE(std::memcmp(v->data, x.bytes.data(), v->nbytes) == 0) << n << " differs";
  }
}

std::string error_of(const std::string& path) {
  try {
    open_checkpoint(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Checkpoint, OpensDefaultModel) {
  Checkpoint ck = open_checkpoint(need_default_model());
  const ModelConfig& c = ck.config;
  EXPECT_EQ(ck.format, "gguf");
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.d_model, 576);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.d_ff, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.max_seq_len, 8192);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.f);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-5f);
  EXPECT_NE(c.name.find("135M"), std::string::npos) << c.name;  // general.name
  EXPECT_EQ(c.param_count(), 134515008);
  EXPECT_EQ(ck.tensors.size(), 30u * 9 + 2);
  EXPECT_EQ(ck.tensor("token_embd.weight").type, DType::Q8_0);
  EXPECT_EQ(ck.tensor("blk.0.attn_q.weight").type, DType::Q4_1);
  EXPECT_EQ(ck.tensor("blk.29.attn_k.weight").shape, (std::vector<int64_t>{192, 576}));
  EXPECT_EQ(ck.tensor("output_norm.weight").type, DType::F32);
  EXPECT_EQ(ck.find("output.weight"), nullptr);
  EXPECT_THROW(ck.tensor("output.weight"), Error);
  ASSERT_TRUE(ck.tokenizer);
  EXPECT_EQ(ck.tokenizer->vocab_size(), 49152);
  EXPECT_NE(ck.chat_template_source.find("<|im_start|>"), std::string::npos);
  // Q is re-laid out (owned copy), V is a view into the map
  GGUFFile raw(need_default_model());
  const TensorView* rq = raw.find_tensor("blk.5.attn_q.weight");
  const TensorView& q = ck.tensor("blk.5.attn_q.weight");
  EXPECT_NE(q.data, ck.tensor("blk.5.attn_v.weight").data);
  const size_t rb = rq->nbytes / 576;
  // head 2, GGUF row 2*i+j == HF row i + j*32
  for (int i : {0, 7, 31})
    for (int j : {0, 1})
      EXPECT_EQ(std::memcmp(static_cast<const uint8_t*>(q.data) + (2 * 64 + i + j * 32) * rb,
                            static_cast<const uint8_t*>(rq->data) + (2 * 64 + 2 * i + j) * rb, rb),
                0);
}

TEST(Checkpoint, GgufAndHfGiveTheSameCanonicalWeights) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  TempDir dir;
  Tiny m;
  m.fill(rng);
  write_hf(dir / "tiny-llama", m, hf_config(m));
  gguf_of(m, /*permute=*/true).write(dir / "tiny.gguf");

  Checkpoint hf = open_checkpoint(dir / "tiny-llama");
  EXPECT_EQ(hf.format, "safetensors");
  EXPECT_EQ(hf.config.name, "tiny-llama");
  EXPECT_EQ(hf.config.arch, "llama");
  EXPECT_EQ(hf.config.n_kv_heads, 2);
  EXPECT_FALSE(hf.config.tied_embeddings);
  EXPECT_EQ(hf.config.max_seq_len, 4096);
  EXPECT_FLOAT_EQ(hf.config.rope_theta, 100000.f);
  EXPECT_EQ(hf.chat_template_source, "{{ '<|im_start|>' }}");
  ASSERT_TRUE(hf.tokenizer);
  expect_weights(hf, m);

  Checkpoint gg = open_checkpoint(dir / "tiny.gguf");
  EXPECT_EQ(gg.config.name, "Tiny Test");
  EXPECT_EQ(gg.config.vocab_size, 49152);
  EXPECT_EQ(gg.config.head_dim, 8);
  EXPECT_FALSE(gg.config.tied_embeddings);
  expect_weights(gg, m);
}

TEST(Checkpoint, UnpermuteMovesWholeQuantizedRows) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  TempDir dir;
  Tiny m;
  m.heads = 2;
  m.kv_heads = 1;
  m.head_dim = 16;
  m.tied = true;
  m.fill(rng);
  for (auto& [n, x] : m.t)
    if (x.shape.size() == 2 && x.shape[1] % 32 == 0 && n != "token_embd.weight") {  // Q8_0 rows
      x.type = DType::Q8_0;
      x.bytes.resize(size_t(x.shape[0]) * (x.shape[1] / 32) * 34);
      for (auto& c : x.bytes) c = static_cast<char>(rng());
    }
  gguf_of(m, true).write(dir / "q8.gguf");
  Checkpoint ck = open_checkpoint(dir / "q8.gguf");
  EXPECT_TRUE(ck.config.tied_embeddings);
  expect_weights(ck, m);
}

TEST(Checkpoint, Qwen2KeepsRowOrderAndBiases) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  TempDir dir;
  Tiny m;
  m.arch = "qwen2";
  m.bias = true;
  m.tied = true;
  m.fill(rng);
  json cfg = hf_config(m);
  cfg["sliding_window"] = 4096;
  cfg["use_sliding_window"] = false;
  write_hf(dir / "qwen", m, cfg, /*sharded=*/true);
  gguf_of(m, /*permute=*/false).write(dir / "qwen.gguf");
  for (const std::string& p : {dir / "qwen", dir / "qwen.gguf"}) {
    Checkpoint ck = open_checkpoint(p);
    EXPECT_EQ(ck.config.arch, "qwen2") << p;
    EXPECT_TRUE(ck.config.qkv_bias) << p;
    EXPECT_TRUE(ck.config.tied_embeddings) << p;
    EXPECT_EQ(ck.config.sliding_window, 0) << p;
    expect_weights(ck, m);
  }
}

TEST(Checkpoint, HfConfigDefaultsAndRopeScaling) {
  std::mt19937 rng(std::random_device{}());
  TempDir dir;
  Tiny m;
  m.arch = "mistral";
  m.kv_heads = m.heads;
  m.fill(rng);
  json cfg = hf_config(m);
  cfg.erase("num_key_value_heads");
  cfg.erase("head_dim");
  cfg["rms_norm_eps"] = 1e-6;
  cfg["sliding_window"] = 2048;
  cfg["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", 32.0},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 8192}};
  write_hf(dir / "m", m, cfg);
  Checkpoint ck = open_checkpoint(dir / "m/");
  const ModelConfig& c = ck.config;
  EXPECT_EQ(c.arch, "mistral");
  EXPECT_EQ(c.name, "m");
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-6f);
  EXPECT_EQ(c.sliding_window, 2048);
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::Llama3);
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 32.f);
  EXPECT_EQ(c.rope_scaling.original_max_position, 8192);
  EXPECT_FALSE(c.qkv_bias);

  cfg["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  write_file(dir / "m/config.json", cfg.dump());
  EXPECT_EQ(open_checkpoint(dir / "m").config.rope_scaling.kind, RopeScaling::Kind::Linear);
  cfg["rope_scaling"] = {{"type", "yarn"}, {"factor", 2.0}};
  write_file(dir / "m/config.json", cfg.dump());
  EXPECT_NE(error_of(dir / "m").find("'yarn'"), std::string::npos);
}

TEST(Checkpoint, RejectsBadModelsWithOneClearLine) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  TempDir dir;
  Tiny m;
  m.tied = true;
  m.fill(rng);
  const std::string hf = dir / "hf";
  write_hf(hf, m, hf_config(m));
  auto expect_err = [&](const std::string& path, const std::string& want) {
    const std::string e = error_of(path);
    EXPECT_NE(e.find(want), std::string::npos) << "got: " << e << "\nwant: " << want;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  };
  // unknown architecture
  json cfg = hf_config(m);
  cfg["architectures"] = {"GPT2LMHeadModel"};
  write_file(hf + "/config.json", cfg.dump());
  expect_err(hf, "unknown architecture 'GPT2LMHeadModel' (lizard supports llama, mistral, qwen2)");
  // missing required field
  cfg = hf_config(m);
  cfg.erase("hidden_size");
  write_file(hf + "/config.json", cfg.dump());
  expect_err(hf, "'hidden_size' is missing");
  // config disagrees with the weights
  cfg = hf_config(m);
  cfg["num_key_value_heads"] = 1;
  write_file(hf + "/config.json", cfg.dump());
  expect_err(hf, "tensor 'model.layers.0.self_attn.k_proj.weight' has shape {16, 32}, expected {8, 32}");
  cfg = hf_config(m);
  cfg["tie_word_embeddings"] = false;
  write_file(hf + "/config.json", cfg.dump());
  expect_err(hf, "tensor 'lm_head.weight' is missing");
  write_file(hf + "/config.json", "{not json");
  expect_err(hf, "not valid JSON");
  write_file(hf + "/config.json", hf_config(m).dump());
  EXPECT_NO_THROW(open_checkpoint(hf));
  // a tensor of a dtype lizard does not read
  {
    const std::string d2 = dir / "i64";
    write_hf(d2, m, hf_config(m));
    std::vector<TensorToWrite> ws;
    for (auto& [n, x] : m.t) ws.push_back({hf_of(n), x.type, x.shape, x.bytes.data(), x.bytes.size()});
    write_safetensors(d2 + "/model.safetensors", ws);
    std::string b = read_file(d2 + "/model.safetensors");
    const size_t at = b.find("\"model.norm.weight\":{\"data_offsets\"");
    ASSERT_NE(at, std::string::npos);
    const size_t dt = b.find("\"F32\"", at);
    b.replace(dt, 5, "\"I32\"");
    write_file(d2 + "/model.safetensors", b);
    expect_err(d2, "tensor 'model.norm.weight' has dtype I32, lizard reads F32, F16, BF16");
  }
  // GGUF: wrong shape, missing tensor, quantized norm, unknown arch
  {
    Tiny g = m;
    g.t["blk.1.attn_k.weight"].shape = {8, 64};
    gguf_of(g, true).write(dir / "shape.gguf");
    expect_err(dir / "shape.gguf", "tensor 'blk.1.attn_k.weight' has shape {8, 64}, expected {16, 32}");
    g = m;
    g.t.erase("blk.0.ffn_up.weight");
    gguf_of(g, true).write(dir / "missing.gguf");
    expect_err(dir / "missing.gguf", "tensor 'blk.0.ffn_up.weight' is missing");
    g = m;
    g.t["blk.0.ffn_norm.weight"].type = DType::Q8_0;
    g.t["blk.0.ffn_norm.weight"].bytes.resize(34);
    gguf_of(g, true).write(dir / "qnorm.gguf");
    expect_err(dir / "qnorm.gguf", "tensor 'blk.0.ffn_norm.weight' has type Q8_0");
    g = m;
    g.arch = "gpt2";
    gguf_of(g, false).write(dir / "gpt2.gguf");
    expect_err(dir / "gpt2.gguf", "unknown architecture 'gpt2'");
  }
  expect_err(dir / "nope.gguf", "does not exist");
}

TEST(Checkpoint, CorruptGgufNeverCrashes) {
  const uint32_t seed = std::random_device{}();
  std::mt19937 rng(seed);
  TempDir dir;
  Tiny m;
  m.vocab = 64;  // no tokenizer needed: corruption is caught before it, or the tokenizer fails cleanly
  m.fill(rng);
  const std::string full = gguf_of(m, true).build();
  const std::string p = dir / "c.gguf";
  auto attempt = [&](const std::string& bytes, const std::string& what) {
    write_file(p, bytes);
    try {
      open_checkpoint(p);
    } catch (const Error&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "seed " << seed << " " << what << ": non-lizard exception " << e.what();
    }
  };
  for (int i = 0; i < 150; ++i) {
    const size_t cut = rng() % full.size();
    attempt(full.substr(0, cut), "cut at " + std::to_string(cut));
  }
  // the header (metadata and tensor infos) is where flips matter most
  const size_t header = full.size() - [&] {
    size_t n = 0;
    for (auto& [k, x] : m.t) n += x.bytes.size();
    return n;
  }();
  for (int i = 0; i < 150; ++i) {
    std::string b = full;
    const size_t at = rng() % std::min(header, b.size());
    b[at] = static_cast<char>(rng());
    attempt(b, "byte " + std::to_string(at));
  }
}

TEST(Checkpoint, DefaultModelPath) {
  const char* old = std::getenv("LIZARD_MODEL");
  const std::string saved = old ? old : "";
  ::setenv("LIZARD_MODEL", "/some/where.gguf", 1);
  EXPECT_EQ(default_model_path(), "/some/where.gguf");
  ::unsetenv("LIZARD_MODEL");
  need_default_model();
  const std::string p = default_model_path();
  EXPECT_TRUE(fs::exists(p)) << p;
  EXPECT_EQ(fs::path(p).filename(), "SmolLM2-135M-Instruct.Q4_1.gguf");
  if (old) ::setenv("LIZARD_MODEL", saved.c_str(), 1);
}
