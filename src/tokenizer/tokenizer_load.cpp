// Building a Tokenizer from tokenizer.json (+ tokenizer_config.json beside it) or from GGUF
// metadata. Only components that lizard implements exactly are accepted; anything else is an
// Error naming the component.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "formats/gguf.h"
#include "tokenizer/tokenizer_impl.h"
#include "util/error.h"

namespace lizard {

using json = nlohmann::json;

namespace {

std::string regex_escape(const std::string& s) {
  std::string r;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}-/#").find(c) != std::string_view::npos) r += '\\';
    r += c;
  }
  return r;
}

std::string pattern_name(const std::string& p) {
  if (p == kGpt2Pattern) return "gpt2 regex";
  if (p == kLlama3Pattern) return "llama3 regex";
  if (p == kQwen2Pattern) return "qwen2 regex";
  return "/" + p + "/";
}

const char* behavior_name(SplitBehavior b) {
  switch (b) {
    case SplitBehavior::Removed: return "Removed";
    case SplitBehavior::Isolated: return "Isolated";
    case SplitBehavior::MergedWithPrevious: return "MergedWithPrevious";
    case SplitBehavior::MergedWithNext: return "MergedWithNext";
    case SplitBehavior::Contiguous: return "Contiguous";
  }
  return "?";
}

std::string str_or(const json& j, const char* key, const std::string& dflt) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : dflt;
}
bool bool_or(const json& j, const char* key, bool dflt) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : dflt;
}

// A Split/Regex "pattern" object: {"String": s} or {"Regex": r}.
std::string pattern_of(const json& p, const char* what) {
  LZ_CHECK(p.is_object(), "tokenizer.json: {} has no pattern", what);
  if (p.contains("Regex")) return p["Regex"].get<std::string>();
  if (p.contains("String")) return regex_escape(p["String"].get<std::string>());
  fail("tokenizer.json: {} pattern is neither String nor Regex", what);
}

struct Loader {
  TokImpl& m;
  explicit Loader(TokImpl& impl) : m(impl) {}
  bool byte_level_seen = false;
  std::vector<std::string> desc;

  void add_split(const std::string& pattern, SplitBehavior b, bool invert, const std::string& d) {
    LZ_CHECK(!byte_level_seen, "tokenizer.json: a pre-tokenizer after ByteLevel is not supported");
    PreStep s;
    s.regex = std::make_shared<Regex>(pattern);
    s.behavior = b;
    s.invert = invert;
    m.pretokenizers.push_back(std::move(s));
    desc.push_back(d);
  }

  void normalizer(const json& j) {
    if (j.is_null()) return;
    std::string t = str_or(j, "type", "");
    if (t == "Sequence") {
      for (auto& n : j.at("normalizers")) normalizer(n);
    } else if (t == "NFC") {
      m.normalizers.emplace_back(NormStep::NFC, "");
    } else if (t == "Prepend") {
      m.normalizers.emplace_back(NormStep::Prepend, j.at("prepend").get<std::string>(), "");
    } else if (t == "Replace") {
      const json& p = j.at("pattern");
      LZ_CHECK(p.contains("String"), "tokenizer.json: unsupported normalizer Replace with a Regex pattern");
      m.normalizers.emplace_back(NormStep::Replace, p["String"].get<std::string>(), j.at("content").get<std::string>());
    } else {
      fail("tokenizer.json: unsupported normalizer '{}'", t);
    }
  }

  void pretokenizer(const json& j) {
    if (j.is_null()) return;
    std::string t = str_or(j, "type", "");
    if (t == "Sequence") {
      for (auto& p : j.at("pretokenizers")) pretokenizer(p);
    } else if (t == "Split") {
      std::string b = str_or(j, "behavior", "Isolated");
      SplitBehavior beh;
      if (b == "Removed") beh = SplitBehavior::Removed;
      else if (b == "Isolated") beh = SplitBehavior::Isolated;
      else if (b == "MergedWithPrevious") beh = SplitBehavior::MergedWithPrevious;
      else if (b == "MergedWithNext") beh = SplitBehavior::MergedWithNext;
      else if (b == "Contiguous") beh = SplitBehavior::Contiguous;
      else fail("tokenizer.json: unsupported Split behavior '{}'", b);
      std::string p = pattern_of(j.at("pattern"), "Split");
      bool inv = bool_or(j, "invert", false);
      add_split(p, beh, inv, fmt::format("Split({}, {}{})", pattern_name(p), behavior_name(beh), inv ? ", inverted" : ""));
    } else if (t == "Digits") {
      bool ind = bool_or(j, "individual_digits", false);
      // Rust's char::is_numeric is the N category
      add_split(R"(\p{N})", ind ? SplitBehavior::Isolated : SplitBehavior::Contiguous, false,
                ind ? "Digits(individual)" : "Digits");
    } else if (t == "ByteLevel") {
      if (bool_or(j, "add_prefix_space", false)) {
        m.prefix_space = true;
        m.prefix_space_at = m.pretokenizers.size();
      }
      if (bool_or(j, "use_regex", true)) {
        add_split(kGpt2Pattern, SplitBehavior::Isolated, false, "ByteLevel(gpt2 regex)");
        desc.pop_back();
        desc.push_back("ByteLevel(gpt2 regex)");
      } else {
        desc.push_back("ByteLevel");
      }
      byte_level_seen = true;
      m.byte_level = true;
    } else {
      fail("tokenizer.json: unsupported pre-tokenizer '{}'", t.empty() ? j.dump() : t);
    }
  }

  void decoder(const json& j) {
    if (j.is_null()) return;
    std::string t = str_or(j, "type", "");
    if (t == "Sequence") {
      for (auto& d : j.at("decoders")) decoder(d);
    } else if (t == "ByteLevel") {
      m.decoders.emplace_back(DecStep::ByteLevel);
    } else if (t == "Replace") {
      const json& p = j.at("pattern");
      LZ_CHECK(p.contains("String"), "tokenizer.json: unsupported decoder Replace with a Regex pattern");
      DecStep d(DecStep::Replace);
      d.a = p["String"].get<std::string>();
      d.b = j.at("content").get<std::string>();
      m.decoders.push_back(d);
    } else if (t == "ByteFallback") {
      m.decoders.emplace_back(DecStep::ByteFallback);
    } else if (t == "Fuse") {
      m.decoders.emplace_back(DecStep::Fuse);
    } else if (t == "Strip") {
      DecStep d(DecStep::Strip);
      d.a = j.at("content").get<std::string>();
      d.start = j.value("start", 0);
      d.stop = j.value("stop", 0);
      m.decoders.push_back(d);
    } else {
      fail("tokenizer.json: unsupported decoder '{}'", t);
    }
  }

  int32_t id_of(const std::string& tok, const char* what) {
    if (auto it = m.added_ids.find(tok); it != m.added_ids.end()) return it->second;
    if (auto it = m.model_ids.find(tok); it != m.model_ids.end()) return it->second;
    fail("tokenizer.json: {} token '{}' is not in the vocabulary", what, tok);
  }

  void post_processor(const json& j) {
    if (j.is_null()) return;
    std::string t = str_or(j, "type", "");
    if (t == "Sequence") {
      for (auto& p : j.at("processors")) post_processor(p);
    } else if (t == "ByteLevel") {
      // offsets only
    } else if (t == "TemplateProcessing") {
      bool after = false;
      for (auto& item : j.at("single")) {
        if (item.contains("Sequence")) {
          after = true;
        } else if (item.contains("SpecialToken")) {
          std::string id = item["SpecialToken"].at("id").get<std::string>();
          const json& st = j.at("special_tokens").at(id);
          for (auto& v : st.at("ids")) (after ? m.suffix : m.prefix).push_back(v.get<int32_t>());
        }
      }
    } else if (t == "RobertaProcessing" || t == "BertProcessing") {
      m.prefix.push_back(j.at("cls").at(1).get<int32_t>());
      m.suffix.push_back(j.at("sep").at(1).get<int32_t>());
    } else {
      fail("tokenizer.json: unsupported post-processor '{}'", t);
    }
  }
};

std::optional<std::string> config_token(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content")) return (*it)["content"].get<std::string>();
  return std::nullopt;
}

void set_bytes_sp(TokImpl& m) {
  for (int b = 0; b < 256; ++b) {
    auto it = m.model_ids.find(fmt::format("<0x{:02X}>", b));
    m.byte_token[b] = it == m.model_ids.end() ? -1 : it->second;
  }
}
void set_bytes_bl(TokImpl& m) {
  for (int b = 0; b < 256; ++b) {
    auto it = m.model_ids.find(byte_to_unicode(static_cast<uint8_t>(b)));
    m.byte_token[b] = it == m.model_ids.end() ? -1 : it->second;
  }
}

void add_merge(TokImpl& m, const std::string& a, const std::string& b, int32_t rank, const char* where) {
  auto ia = m.model_ids.find(a), ib = m.model_ids.find(b), ic = m.model_ids.find(a + b);
  LZ_CHECK(ia != m.model_ids.end() && ib != m.model_ids.end(), "{}: merge '{} {}' uses a token not in the vocabulary",
           where, a, b);
  LZ_CHECK(ic != m.model_ids.end(), "{}: merge '{} {}' makes a token not in the vocabulary", where, a, b);
  // a repeated pair keeps its last rank, as HF's map does
  m.merges.set(TokImpl::MergeTable::key_of(ia->second, ib->second), rank, ic->second);
}

}  // namespace

Tokenizer Tokenizer::from_json_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  LZ_CHECK(f, "cannot open tokenizer file '{}'", path);
  std::stringstream ss;
  ss << f.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const std::exception&) {
    fail("'{}' is not valid JSON", path);
  }
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  try {
    LZ_CHECK(j.contains("model") && j["model"].is_object(), "'{}' has no tokenizer model", path);
    const json& model = j["model"];
    std::string type = str_or(model, "type", model.contains("merges") ? "BPE" : "");
    LZ_CHECK(type == "BPE", "{}: unsupported tokenizer model '{}' (lizard supports BPE)", path, type);
    LZ_CHECK(str_or(model, "continuing_subword_prefix", "").empty() && str_or(model, "end_of_word_suffix", "").empty(),
             "{}: unsupported BPE option continuing_subword_prefix/end_of_word_suffix", path);
    LZ_CHECK(!model.contains("dropout") || model["dropout"].is_null() || model["dropout"].get<double>() == 0.0,
             "{}: unsupported BPE option dropout", path);
    int32_t n = 0;
    for (auto& [tok, id] : model.at("vocab").items()) {
      int32_t i = id.get<int32_t>();
      LZ_CHECK(i >= 0, "{}: negative token id", path);
      m.model_ids[tok] = i;
      n = std::max(n, i + 1);
    }
    if (j.contains("added_tokens"))
      for (auto& a : j["added_tokens"]) n = std::max(n, a.at("id").get<int32_t>() + 1);
    m.vocab.assign(n, std::string());
    for (auto& [tok, id] : m.model_ids) m.vocab[id] = tok;
    if (j.contains("added_tokens"))
      for (auto& a : j["added_tokens"]) {
        AddedToken t;
        t.id = a.at("id").get<int32_t>();
        t.content = a.at("content").get<std::string>();
        t.special = bool_or(a, "special", false);
        t.lstrip = bool_or(a, "lstrip", false);
        t.rstrip = bool_or(a, "rstrip", false);
        t.single_word = bool_or(a, "single_word", false);
        t.normalized = bool_or(a, "normalized", !t.special);
        m.vocab[t.id] = t.content;
        m.added.push_back(t);
      }
    int32_t rank = 0;
    for (auto& mg : model.at("merges")) {
      std::string a, b;
      if (mg.is_string()) {
        std::string s = mg.get<std::string>();
        size_t sp = s.find(' ');
        LZ_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, "{}: bad merge '{}'", path, s);
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        LZ_CHECK(mg.is_array() && mg.size() == 2, "{}: bad merge {}", path, mg.dump());
        a = mg[0].get<std::string>();
        b = mg[1].get<std::string>();
      }
      add_merge(m, a, b, rank++, path.c_str());
    }
    m.ignore_merges = bool_or(model, "ignore_merges", false);
    m.byte_fallback = bool_or(model, "byte_fallback", false);
    m.fuse_unk = bool_or(model, "fuse_unk", false);
    if (auto u = model.find("unk_token"); u != model.end() && u->is_string()) {
      auto it = m.model_ids.find(u->get<std::string>());
      LZ_CHECK(it != m.model_ids.end(), "{}: unk_token is not in the vocabulary", path);
      m.unk = it->second;
    }

    Loader L{m};
    L.normalizer(j.value("normalizer", json()));
    L.pretokenizer(j.value("pre_tokenizer", json()));
    L.decoder(j.value("decoder", json()));
    if (m.byte_level) set_bytes_bl(m);
    else set_bytes_sp(m);
    for (auto& t : m.added) m.added_ids[t.content] = t.id;
    L.post_processor(j.value("post_processor", json()));
    m.pre_desc = L.desc.empty() ? "none" : fmt::format("{}", fmt::join(L.desc, " + "));
    m.kind_name = m.byte_level ? "byte-level BPE" : "SentencePiece BPE";

    // tokenizer_config.json beside it: BOS/EOS names and add_bos_token/add_eos_token
    auto cfg_path = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
    json cfg = json::object();
    if (std::filesystem::exists(cfg_path)) {
      std::ifstream cf(cfg_path);
      try {
        cfg = json::parse(cf);
      } catch (const std::exception&) {
        fail("'{}' is not valid JSON", cfg_path.string());
      }
    }
    if (auto b = config_token(cfg, "bos_token")) m.bos = L.id_of(*b, "bos");
    else if (m.prefix.size() == 1) m.bos = m.prefix[0];
    if (auto e = config_token(cfg, "eos_token")) m.eos = L.id_of(*e, "eos");
    else if (m.suffix.size() == 1) m.eos = m.suffix[0];
    if (auto it = cfg.find("add_bos_token"); it != cfg.end() && it->is_boolean()) {
      bool has = !m.prefix.empty() && m.bos && m.prefix[0] == *m.bos;
      if (it->get<bool>() && !has && m.bos) m.prefix.insert(m.prefix.begin(), *m.bos);
      if (!it->get<bool>() && has) m.prefix.erase(m.prefix.begin());
    }
    if (auto it = cfg.find("add_eos_token"); it != cfg.end() && it->is_boolean()) {
      bool has = !m.suffix.empty() && m.eos && m.suffix.back() == *m.eos;
      if (it->get<bool>() && !has && m.eos) m.suffix.push_back(*m.eos);
      if (!it->get<bool>() && has) m.suffix.pop_back();
    }
  } catch (const json::exception& e) {
    fail("{}: malformed tokenizer.json ({})", path, e.what());
  }
  m.finish();
  return Tokenizer(std::move(impl));
}

// ---- GGUF ------------------------------------------------------------------------------------
namespace {
struct Meta {
  const std::map<std::string, GGUFValue>& kv;
  const GGUFValue* get(const std::string& k) const {
    auto it = kv.find(k);
    return it == kv.end() ? nullptr : &it->second;
  }
  std::optional<std::string> str(const std::string& k) const {
    auto v = get(k);
    if (!v) return std::nullopt;
    auto s = std::get_if<std::string>(v);
    LZ_CHECK(s, "GGUF metadata '{}' is not a string", k);
    return *s;
  }
  std::optional<int64_t> integer(const std::string& k) const {
    auto v = get(k);
    if (!v) return std::nullopt;
    if (auto i = std::get_if<int64_t>(v)) return *i;
    if (auto u = std::get_if<uint64_t>(v)) return static_cast<int64_t>(*u);
    fail("GGUF metadata '{}' is not an integer", k);
  }
  std::optional<bool> boolean(const std::string& k) const {
    auto v = get(k);
    if (!v) return std::nullopt;
    if (auto b = std::get_if<bool>(v)) return *b;
    if (auto i = std::get_if<int64_t>(v)) return *i != 0;
    if (auto u = std::get_if<uint64_t>(v)) return *u != 0;
    fail("GGUF metadata '{}' is not a bool", k);
  }
  std::vector<std::string> strs(const std::string& k, bool required) const {
    auto v = get(k);
    if (!v) {
      LZ_CHECK(!required, "GGUF file has no '{}'", k);
      return {};
    }
    auto s = std::get_if<std::vector<std::string>>(v);
    LZ_CHECK(s, "GGUF metadata '{}' is not a string array", k);
    return *s;
  }
  std::vector<int64_t> ints(const std::string& k) const {
    auto v = get(k);
    if (!v) return {};
    auto s = std::get_if<std::vector<int64_t>>(v);
    LZ_CHECK(s, "GGUF metadata '{}' is not an integer array", k);
    return *s;
  }
  std::vector<double> floats(const std::string& k) const {
    auto v = get(k);
    if (!v) return {};
    if (auto s = std::get_if<std::vector<double>>(v)) return *s;
    if (auto s = std::get_if<std::vector<int64_t>>(v)) return std::vector<double>(s->begin(), s->end());
    fail("GGUF metadata '{}' is not a float array", k);
  }
};

enum TokType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
}  // namespace

Tokenizer Tokenizer::from_gguf(const GGUFFile& file) {
  Meta md{file.metadata()};
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  std::string model = md.str("tokenizer.ggml.model").value_or("");
  LZ_CHECK(!model.empty(), "GGUF file has no tokenizer (tokenizer.ggml.model is missing)");
  LZ_CHECK(model == "gpt2" || model == "llama", "unsupported GGUF tokenizer model '{}' (lizard supports gpt2 and llama)",
           model);
  m.vocab = md.strs("tokenizer.ggml.tokens", true);
  const int32_t n = static_cast<int32_t>(m.vocab.size());
  LZ_CHECK(n > 0, "GGUF tokenizer.ggml.tokens is empty");
  std::vector<int64_t> types = md.ints("tokenizer.ggml.token_type");
  LZ_CHECK(types.empty() || static_cast<int32_t>(types.size()) == n,
           "GGUF tokenizer.ggml.token_type has {} entries for {} tokens", types.size(), n);
  if (types.empty()) types.assign(n, kNormal);
  for (int32_t i = 0; i < n; ++i) {
    m.model_ids.emplace(m.vocab[i], i);
    if (types[i] == kControl || types[i] == kUnknown || types[i] == kUserDefined) {
      AddedToken t;
      t.id = i;
      t.content = m.vocab[i];
      t.special = types[i] != kUserDefined;
      m.added.push_back(t);
    }
    if (types[i] == kUnknown && !m.unk) m.unk = i;
  }
  if (auto u = md.integer("tokenizer.ggml.unknown_token_id"); u && *u >= 0 && *u < n) m.unk = static_cast<int32_t>(*u);
  std::vector<std::string> merges = md.strs("tokenizer.ggml.merges", model == "gpt2");
  for (size_t r = 0; r < merges.size(); ++r) {
    size_t sp = merges[r].find(' ');
    LZ_CHECK(sp != std::string::npos, "GGUF tokenizer.ggml.merges[{}] has no space: '{}'", r, merges[r]);
    add_merge(m, merges[r].substr(0, sp), merges[r].substr(sp + 1), static_cast<int32_t>(r), "GGUF tokenizer.ggml.merges");
  }
  bool add_bos_default = false;
  if (model == "gpt2") {
    std::string pre = md.str("tokenizer.ggml.pre").value_or("default");
    auto split = [&](const char* pat, const char* name) {
      PreStep s;
      s.regex = std::make_shared<Regex>(pat);
      m.pretokenizers.push_back(std::move(s));
      return std::string(name);
    };
    if (pre == "smollm") {
      PreStep d;
      d.regex = std::make_shared<Regex>(R"(\p{N})");
      m.pretokenizers.push_back(std::move(d));
      m.pre_desc = "smollm: Digits(individual) + " + split(kGpt2Pattern, "ByteLevel(gpt2 regex)");
    } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
      m.pre_desc = pre + ": " + split(kLlama3Pattern, "Split(llama3 regex, Isolated) + ByteLevel");
      m.ignore_merges = true;  // Llama-3's tokenizer.json sets it
    } else if (pre == "qwen2") {
      m.normalizers.emplace_back(NormStep::NFC, "");
      m.pre_desc = pre + ": NFC + " + split(kQwen2Pattern, "Split(qwen2 regex, Isolated) + ByteLevel");
    } else if (pre == "gpt2" || pre == "default") {
      m.pre_desc = pre + ": " + split(kGpt2Pattern, "ByteLevel(gpt2 regex)");
    } else {
      fail("unsupported GGUF pre-tokenizer tokenizer.ggml.pre = '{}' (lizard knows smollm, llama-bpe, llama3, "
           "qwen2, gpt2, default)", pre);
    }
    m.byte_level = true;
    // GGUF's unknown_token_id comes from tokenizer_config.json; the HF byte-level model has no unk
    // and silently drops bytes missing from the vocabulary (SmolLM2 lacks 21 of them).
    m.unk.reset();
    m.decoders.emplace_back(DecStep::ByteLevel);
    set_bytes_bl(m);
    m.kind_name = "byte-level BPE";
  } else {
    if (merges.empty()) {
      std::vector<double> scores = md.floats("tokenizer.ggml.scores");
      LZ_CHECK(static_cast<int32_t>(scores.size()) == n, "GGUF llama tokenizer needs tokenizer.ggml.scores for {} tokens",
               n);
      // SentencePiece BPE: the pair whose merged piece scores highest goes first.
      std::vector<int32_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
      m.score_rank.assign(n, -1);
      for (int32_t r = 0; r < n; ++r)
        if (types[order[r]] == kNormal) m.score_rank[order[r]] = r;
      m.score_merges = true;
    }
    bool space_prefix = md.boolean("tokenizer.ggml.add_space_prefix").value_or(true);
    const std::string sp = "\xE2\x96\x81";  // ▁
    if (space_prefix) m.normalizers.emplace_back(NormStep::Prepend, sp, "");
    m.normalizers.emplace_back(NormStep::Replace, " ", sp);
    m.byte_fallback = true;
    m.fuse_unk = true;
    DecStep rep(DecStep::Replace);
    rep.a = sp;
    rep.b = " ";
    m.decoders.push_back(rep);
    m.decoders.emplace_back(DecStep::ByteFallback);
    m.decoders.emplace_back(DecStep::Fuse);
    if (space_prefix) {
      DecStep st(DecStep::Strip);
      st.a = " ";
      st.start = 1;
      m.decoders.push_back(st);
    }
    set_bytes_sp(m);
    m.pre_desc = space_prefix ? "none (SentencePiece, space prefix)" : "none (SentencePiece)";
    m.kind_name = "SentencePiece BPE";
    add_bos_default = true;
  }
  auto id_key = [&](const char* k) -> std::optional<int32_t> {
    auto v = md.integer(k);
    if (!v) return std::nullopt;
    LZ_CHECK(*v >= 0 && *v < n, "GGUF {} = {} is out of range [0, {})", k, *v, n);
    return static_cast<int32_t>(*v);
  };
  m.bos = id_key("tokenizer.ggml.bos_token_id");
  m.eos = id_key("tokenizer.ggml.eos_token_id");
  if (md.boolean("tokenizer.ggml.add_bos_token").value_or(add_bos_default) && m.bos) m.prefix.push_back(*m.bos);
  if (md.boolean("tokenizer.ggml.add_eos_token").value_or(false) && m.eos) m.suffix.push_back(*m.eos);
  m.finish();
  return Tokenizer(std::move(impl));
}

}  // namespace lizard
