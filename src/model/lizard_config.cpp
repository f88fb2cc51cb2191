#include "model/lizard_config.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "util/error.h"

namespace lizard {

using json = nlohmann::json;

bool LizardConfig::is_lizard_layer(int layer) const {
  if (no_lizard_layers) return false;
  if (lizard_layers.empty()) return true;
  return std::find(lizard_layers.begin(), lizard_layers.end(), layer) != lizard_layers.end();
}

bool LizardConfig::any_lizard_layer(int n_layers) const {
  for (int l = 0; l < n_layers; ++l)
    if (is_lizard_layer(l)) return true;
  return false;
}

void require_lizard_layers(const LizardConfig& c, int n_layers, const std::string& context) {
  LZ_CHECK(c.any_lizard_layer(n_layers),
           "{} needs at least one Lizard layer, and the config selects none of the teacher's {} (\"lizard_layers\": "
           "\"none\"); to fine-tune the teacher with LoRA alone use `lizard linearize --stage 2`",
           context, n_layers);
}

std::string lizard_layers_text(const LizardConfig& c) {
  if (c.no_lizard_layers) return "none";
  if (c.lizard_layers.empty()) return "all";
  std::vector<int> ls = c.lizard_layers;
  std::sort(ls.begin(), ls.end());
  std::string t;
  for (int l : ls) {
    if (!t.empty()) t += ',';
    t += std::to_string(l);
  }
  return t;
}

LizardConfig LizardConfig::none() {
  LizardConfig c;
  c.no_lizard_layers = true;
  return c;
}

LizardConfig LizardConfig::lolcats() {
  LizardConfig c;
  c.combine = Combine::Lolcats;
  c.feature_on_rope = true;
  return c;
}

void LizardConfig::validate(int n_layers) const {
  LZ_CHECK(feature_dim >= 1 && feature_dim <= 4096, "lizard config: feature_dim {} out of range [1, 4096]",
           feature_dim);
  LZ_CHECK(gate_init > 0.0 && gate_init < 1.0, "lizard config: gate_init {} must be in (0, 1)", gate_init);
  LZ_CHECK(window >= 1, "lizard config: window {} must be >= 1", window);
  LZ_CHECK(meta_tokens >= 0 && meta_tokens <= 4096, "lizard config: meta_tokens {} out of range [0, 4096]",
           meta_tokens);
  LZ_CHECK(chunk >= 1 && chunk <= 4096, "lizard config: chunk {} out of range [1, 4096]", chunk);
  LZ_CHECK(eps >= 0.0 && eps < 1.0, "lizard config: eps {} must be in [0, 1)", eps);
  LZ_CHECK(std::isfinite(alpha_init), "lizard config: alpha_init must be finite");
  LZ_CHECK(!meta_weights_gate || (combine == Combine::Lizard && meta_tokens >= 1),
           "lizard config: meta_weights_gate needs combine = lizard and meta_tokens >= 1");
  LZ_CHECK(!shared_normaliser || meta_weights_gate, "lizard config: shared_normaliser needs meta_weights_gate");
  LZ_CHECK(!gate_skips_window || combine == Combine::Lizard, "lizard config: gate_skips_window needs combine = lizard");
  LZ_CHECK(std::isfinite(lolcats_window_init), "lizard config: lolcats_window_init must be finite");
  LZ_CHECK(!(no_lizard_layers && !lizard_layers.empty()),
           "lizard config: no Lizard layers (\"none\") but lizard_layers lists {} layers", lizard_layers.size());
  std::set<int> seen;
  for (int l : lizard_layers) {
    LZ_CHECK(l >= 0, "lizard config: lizard_layers has negative layer {}", l);
    LZ_CHECK(n_layers < 0 || l < n_layers, "lizard config: lizard_layers names layer {} but the teacher has {}",
             l, n_layers);
    LZ_CHECK(seen.insert(l).second, "lizard config: lizard_layers lists layer {} twice", l);
  }
}

const char* to_string(LizardConfig::FeatureAct a) {
  return a == LizardConfig::FeatureAct::Softmax ? "softmax" : "exp";
}
const char* to_string(LizardConfig::Gate g) { return g == LizardConfig::Gate::Scalar ? "scalar" : "per_head"; }
const char* to_string(LizardConfig::Combine c) {
  return c == LizardConfig::Combine::Lizard ? "lizard" : "lolcats";
}

json lizard_config_to_json(const LizardConfig& c) {
  json j;
  j["feature_act"] = to_string(c.feature_act);
  j["feature_dim"] = c.feature_dim;
  j["feature_on_rope"] = c.feature_on_rope;
  j["gate"] = to_string(c.gate);
  j["gate_init"] = c.gate_init;
  j["window"] = c.window;
  j["meta_tokens"] = c.meta_tokens;
  j["meta_per_head"] = c.meta_per_head;
  j["window_rope"] = c.window_rope;
  j["alpha"] = c.alpha_per_layer ? "per_layer" : "per_head";
  j["alpha_init"] = c.alpha_init;
  j["combine"] = to_string(c.combine);
  // Written only when on: files of the paper's combine stay as they were (a resume compares configs).
  if (c.meta_weights_gate) j["meta_weights_gate"] = true;
  if (c.shared_normaliser) j["shared_normaliser"] = true;
  if (c.gate_skips_window) j["gate_skips_window"] = true;
  j["chunk"] = c.chunk;
  j["eps"] = c.eps;
  j["lolcats_window_init"] = c.lolcats_window_init;
  if (c.no_lizard_layers)
    j["lizard_layers"] = "none";
  else if (c.lizard_layers.empty())
    j["lizard_layers"] = "all";
  else
    j["lizard_layers"] = c.lizard_layers;
  return j;
}

namespace {

template <typename T>
T get_as(const json& v, const char* key) {
  try {
    if constexpr (std::is_same_v<T, bool>) {
      LZ_CHECK(v.is_boolean(), "lizard config: '{}' must be true or false", key);
    } else if constexpr (std::is_integral_v<T>) {
      LZ_CHECK(v.is_number_integer(), "lizard config: '{}' must be an integer", key);
    } else if constexpr (std::is_floating_point_v<T>) {
      LZ_CHECK(v.is_number(), "lizard config: '{}' must be a number", key);
    } else {
      LZ_CHECK(v.is_string(), "lizard config: '{}' must be a string", key);
    }
    return v.get<T>();
  } catch (const json::exception& e) {
    fail("lizard config: '{}': {}", key, e.what());
  }
}

}  // namespace

LizardConfig lizard_config_from_json(const json& j) {
  LZ_CHECK(j.is_object(), "lizard config: expected a JSON object");
  LizardConfig c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    if (k == "feature_act") {
      auto s = get_as<std::string>(v, "feature_act");
      if (s == "softmax") c.feature_act = LizardConfig::FeatureAct::Softmax;
      else if (s == "exp") c.feature_act = LizardConfig::FeatureAct::Exp;
      else fail("lizard config: feature_act '{}' is not softmax or exp", s);
    } else if (k == "feature_dim") {
      c.feature_dim = get_as<int>(v, "feature_dim");
    } else if (k == "feature_on_rope") {
      c.feature_on_rope = get_as<bool>(v, "feature_on_rope");
    } else if (k == "gate") {
      auto s = get_as<std::string>(v, "gate");
      if (s == "scalar") c.gate = LizardConfig::Gate::Scalar;
      else if (s == "per_head") c.gate = LizardConfig::Gate::PerHead;
      else fail("lizard config: gate '{}' is not scalar or per_head", s);
    } else if (k == "gate_init") {
      c.gate_init = get_as<double>(v, "gate_init");
    } else if (k == "window") {
      c.window = get_as<int>(v, "window");
    } else if (k == "meta_tokens") {
      c.meta_tokens = get_as<int>(v, "meta_tokens");
    } else if (k == "meta_per_head") {
      c.meta_per_head = get_as<bool>(v, "meta_per_head");
    } else if (k == "window_rope") {
      c.window_rope = get_as<bool>(v, "window_rope");
    } else if (k == "alpha") {
      auto s = get_as<std::string>(v, "alpha");
      if (s == "per_head") c.alpha_per_layer = false;
      else if (s == "per_layer") c.alpha_per_layer = true;
      else fail("lizard config: alpha '{}' is not per_head or per_layer", s);
    } else if (k == "alpha_init") {
      c.alpha_init = get_as<double>(v, "alpha_init");
    } else if (k == "combine") {
      auto s = get_as<std::string>(v, "combine");
      if (s == "lizard") c.combine = LizardConfig::Combine::Lizard;
      else if (s == "lolcats") c.combine = LizardConfig::Combine::Lolcats;
      else fail("lizard config: combine '{}' is not lizard or lolcats", s);
    } else if (k == "meta_weights_gate") {
      c.meta_weights_gate = get_as<bool>(v, "meta_weights_gate");
    } else if (k == "shared_normaliser") {
      c.shared_normaliser = get_as<bool>(v, "shared_normaliser");
    } else if (k == "gate_skips_window") {
      c.gate_skips_window = get_as<bool>(v, "gate_skips_window");
    } else if (k == "chunk") {
      c.chunk = get_as<int>(v, "chunk");
    } else if (k == "eps") {
      c.eps = get_as<double>(v, "eps");
    } else if (k == "lolcats_window_init") {
      c.lolcats_window_init = get_as<double>(v, "lolcats_window_init");
    } else if (k == "lizard_layers") {
      c.lizard_layers.clear();
      c.no_lizard_layers = false;
      if (v.is_string()) {
        const std::string s = v.get<std::string>();
        LZ_CHECK(s == "all" || s == "none",
                 "lizard config: lizard_layers must be \"all\", \"none\" or a list of layers (got \"{}\")", s);
        c.no_lizard_layers = s == "none";
      } else {
        LZ_CHECK(v.is_array(), "lizard config: lizard_layers must be \"all\", \"none\" or a list of layers");
        for (const auto& e : v) c.lizard_layers.push_back(get_as<int>(e, "lizard_layers"));
        LZ_CHECK(!c.lizard_layers.empty(),
                 "lizard config: lizard_layers is an empty list (use \"all\", or \"none\" for no Lizard layer)");
      }
    } else {
      fail("lizard config: unknown key '{}'", k);
    }
  }
  c.validate();
  return c;
}

std::string lizard_config_to_string(const LizardConfig& c) { return lizard_config_to_json(c).dump(2); }

LizardConfig lizard_config_from_string(const std::string& s) {
  json j;
  try {
    j = json::parse(s);
  } catch (const json::exception& e) {
    fail("lizard config: not valid JSON: {}", e.what());
  }
  return lizard_config_from_json(j);
}

void LizardShape::validate() const {
  LZ_CHECK(d_model > 0 && n_heads > 0 && n_kv_heads > 0 && head_dim > 0,
           "lizard: bad shape d_model={} H={} Hkv={} D={}", d_model, n_heads, n_kv_heads, head_dim);
  LZ_CHECK(n_heads % n_kv_heads == 0, "lizard: H={} is not a multiple of Hkv={}", n_heads, n_kv_heads);
}

template <typename T>
std::vector<typename LizardParamsT<T>::Entry> LizardParamsT<T>::entries(const LizardConfig& c,
                                                                       const LizardShape& s) {
  const int64_t H = s.n_heads, D = s.head_dim, F = c.feature_dim;
  const int64_t G = c.gate == LizardConfig::Gate::PerHead ? H : 1;
  const int64_t Hm = c.meta_per_head ? H : 1;
  return {
      {"feat_q", {H, D, F}, &feat_q},
      {"feat_k", {H, D, F}, &feat_k},
      {"gate_w", {G, s.d_model}, &gate_w},
      {"gate_b", {G}, &gate_b},
      {"meta", {Hm, c.meta_tokens}, &meta},
      {"alpha", {c.alpha_per_layer ? 1 : H}, &alpha},
      {"lolcats_f", {H}, &lolcats_f},
  };
}

template <typename T>
size_t LizardParamsT<T>::numel() const {
  return feat_q.size() + feat_k.size() + gate_w.size() + gate_b.size() + meta.size() + alpha.size() +
         lolcats_f.size();
}

template <typename T>
void LizardParamsT<T>::resize(const LizardConfig& c, const LizardShape& s) {
  for (auto& e : entries(c, s)) {
    int64_t n = 1;
    for (auto d : e.shape) n *= d;
    e.data->assign(size_t(n), T(0));
  }
}

template <typename T>
void LizardParamsT<T>::check(const LizardConfig& c, const LizardShape& s) const {
  for (auto& e : const_cast<LizardParamsT<T>*>(this)->entries(c, s)) {
    int64_t n = 1;
    for (auto d : e.shape) n *= d;
    LZ_CHECK(int64_t(e.data->size()) == n, "lizard params: '{}' has {} values, the config needs {}", e.name,
             e.data->size(), n);
  }
}

template struct LizardParamsT<float>;
template struct LizardParamsT<double>;

namespace {

struct SplitMix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (double((next() >> 11)) + 0.5) * (1.0 / 9007199254740992.0); }  // (0, 1)
  double normal() {
    double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

}  // namespace

LizardParams init_lizard_params(const LizardConfig& c, const LizardShape& s, uint64_t seed, int layer) {
  c.validate();
  s.validate();
  LizardParams p;
  p.resize(c, s);
  SplitMix rng{seed ^ (0xA5A5A5A5ull + uint64_t(layer) * 0x9E3779B97F4A7C15ull)};
  for (auto& x : p.feat_q) x = float(0.02 * rng.normal());
  for (auto& x : p.feat_k) x = float(0.02 * rng.normal());
  const double gstd = 0.1 / std::sqrt(double(s.d_model));
  for (auto& x : p.gate_w) x = float(gstd * rng.normal());
  for (auto& x : p.gate_b) x = float(std::log(c.gate_init / (1.0 - c.gate_init)));
  // Small random logits, not all 0: equal sinks get equal gradients and stay equal forever (seen in the
  // H200 runs: m = 4 acted as one sink). exp(0.1 N(0,1)) ~ 1, so the start is as before.
  for (auto& x : p.meta) x = float(0.1 * rng.normal());
  for (auto& x : p.alpha) x = float(c.alpha_init);
  for (auto& x : p.lolcats_f) x = float(c.lolcats_window_init);
  return p;
}

}  // namespace lizard
