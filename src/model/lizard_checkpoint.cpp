#include "model/lizard_checkpoint.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "formats/safetensors.h"
#include "util/error.h"

namespace lizard {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- SHA-256 (FIPS 180-4) ----------------------------------------------------------------------
namespace {

struct Sha256 {
  // Round constants and initial hash: fractional parts of cube / square roots of the first primes,
  // computed rather than tabulated (long double keeps 64 bits, enough for the 32 that are used).
  static const std::array<uint32_t, 64>& K() {
    static const std::array<uint32_t, 64> k = [] {
      std::array<uint32_t, 64> r{};
      int n = 0;
      for (int p = 2; n < 64; ++p) {
        bool prime = true;
        for (int d = 2; d * d <= p; ++d) prime &= (p % d) != 0;
        if (!prime) continue;
        long double x = cbrtl((long double)p);
        r[n++] = uint32_t((x - floorl(x)) * 4294967296.0L);
      }
      return r;
    }();
    return k;
  }
  static std::array<uint32_t, 8> H0() {
    std::array<uint32_t, 8> r{};
    int n = 0;
    for (int p = 2; n < 8; ++p) {
      bool prime = true;
      for (int d = 2; d * d <= p; ++d) prime &= (p % d) != 0;
      if (!prime) continue;
      long double x = sqrtl((long double)p);
      r[n++] = uint32_t((x - floorl(x)) * 4294967296.0L);
    }
    return r;
  }
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  std::array<uint32_t, 8> h = H0();
  uint8_t buf[64];
  size_t fill = 0;
  uint64_t total = 0;

  void block(const uint8_t* b) {
    const auto& k = K();
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(b[4 * i]) << 24 | uint32_t(b[4 * i + 1]) << 16 | uint32_t(b[4 * i + 2]) << 8 | b[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      const uint32_t ch = (e & f) ^ (~e & g);
      const uint32_t t1 = hh + S1 + ch + k[i] + w[i];
      const uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      const uint32_t mj = (a & bb) ^ (a & c) ^ (bb & c);
      const uint32_t t2 = S0 + mj;
      hh = g, g = f, f = e, e = d + t1, d = c, c = bb, bb = a, a = t1 + t2;
    }
    h[0] += a, h[1] += bb, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  }
  void update(const void* data, size_t n) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    total += n;
    while (n > 0) {
      const size_t take = std::min(n, 64 - fill);
      std::memcpy(buf + fill, p, take);
      fill += take, p += take, n -= take;
      if (fill == 64) block(buf), fill = 0;
    }
  }
  std::string hex() {
    const uint64_t bits = total * 8;
    const uint8_t one = 0x80, zero = 0;
    update(&one, 1);
    while (fill != 56) update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(bits >> (56 - 8 * i));
    update(len, 8);
    std::string s;
    for (uint32_t v : h) s += fmt::format("{:08x}", v);
    return s;
  }
};

}  // namespace

std::string sha256_hex(const void* data, size_t n) {
  Sha256 s;
  s.update(data, n);
  return s.hex();
}

// ---- teacher fingerprint ------------------------------------------------------------------------

TeacherRecord fingerprint_teacher(const std::string& path) {
  std::error_code ec;
  LZ_CHECK(fs::exists(path, ec), "teacher '{}' not found", path);
  std::vector<fs::path> files;
  if (fs::is_directory(path, ec)) {
    for (const auto& e : fs::directory_iterator(path, ec)) {
      if (!e.is_regular_file()) continue;
      // A Lizard checkpoint may live in its own (exported) teacher directory; it cannot hash itself.
      if (e.path().filename() == "lizard.safetensors") continue;
      const auto ext = e.path().extension().string();
      if (ext == ".safetensors" || ext == ".json" || ext == ".gguf") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    LZ_CHECK(!files.empty(), "teacher '{}' is a directory without model files", path);
  } else {
    files.push_back(fs::path(path));
  }
  constexpr size_t MiB = size_t(1) << 20;
  Sha256 sh;
  TeacherRecord r;
  r.path = path;
  std::vector<char> buf;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    LZ_CHECK(in.good(), "teacher file '{}' cannot be read", f.string());
    const uint64_t size = fs::file_size(f, ec);
    LZ_CHECK(!ec, "teacher file '{}': {}", f.string(), ec.message());
    r.size += size;
    if (files.size() > 1 || fs::is_directory(path, ec)) {  // a lone file may be renamed freely
      const std::string name = f.filename().string();
      sh.update(name.data(), name.size() + 1);
    }
    sh.update(&size, sizeof size);
    auto hash_range = [&](uint64_t off, uint64_t n) {
      buf.resize(n);
      in.seekg(std::streamoff(off));
      in.read(buf.data(), std::streamsize(n));
      LZ_CHECK(uint64_t(in.gcount()) == n, "teacher file '{}' could not be read", f.string());
      sh.update(buf.data(), n);
    };
    if (size <= 2 * MiB) {
      hash_range(0, size);
    } else {
      hash_range(0, MiB);
      hash_range(size - MiB, MiB);
    }
  }
  r.fingerprint = sh.hex();
  return r;
}

// ---- checkpoint -----------------------------------------------------------------------------------

namespace {

constexpr const char* kFormat = "lizard-checkpoint/1";

std::vector<int> lizard_layer_list(const LizardConfig& c, int n_layers) {
  std::vector<int> v;
  for (int l = 0; l < n_layers; ++l)
    if (c.is_lizard_layer(l)) v.push_back(l);
  return v;
}

}  // namespace

LizardCheckpoint init_lizard_checkpoint(const LizardConfig& c, const ModelConfig& t, uint64_t seed) {
  LizardCheckpoint ck;
  ck.config = c;
  ck.shape = LizardShape{t.d_model, t.n_heads, t.n_kv_heads, t.head_dim};
  ck.n_layers = t.n_layers;
  c.validate(t.n_layers);
  for (int l : lizard_layer_list(c, t.n_layers)) ck.layers[l] = init_lizard_params(c, ck.shape, seed, l);
  return ck;
}

void save_lizard_checkpoint(const std::string& path, const LizardCheckpoint& ck) {
  ck.config.validate(ck.n_layers);
  ck.shape.validate();
  const auto want = lizard_layer_list(ck.config, ck.n_layers);
  LZ_CHECK(want.size() == ck.layers.size(), "lizard checkpoint: {} layers of parameters for {} Lizard layers",
           ck.layers.size(), want.size());
  std::vector<TensorToWrite> tensors;
  for (int l : want) {
    auto it = ck.layers.find(l);
    LZ_CHECK(it != ck.layers.end(), "lizard checkpoint: no parameters for Lizard layer {}", l);
    it->second.check(ck.config, ck.shape);
    auto& p = const_cast<LizardParams&>(it->second);
    for (auto& e : p.entries(ck.config, ck.shape)) {
      TensorToWrite t;
      t.name = fmt::format("blk.{}.lizard.{}", l, e.name);
      t.type = DType::F32;
      t.shape = e.shape;
      t.data = e.data->data();
      t.nbytes = e.data->size() * sizeof(float);
      tensors.push_back(std::move(t));
    }
  }
  // Adapter widths: q [H*D, d], k and v [Hkv*D, d].
  auto lora_out = [&](const std::string& t) {
    return int64_t(t == "q" ? ck.shape.n_heads : ck.shape.n_kv_heads) * ck.shape.head_dim;
  };
  json lora_meta;
  if (!ck.lora.empty()) {
    json ls = json::array();
    for (auto& [l, m] : ck.lora.layers) {
      ls.push_back(l);
      for (auto& [t, ad] : m) {
        const int64_t r = ck.lora.rank, in = ck.shape.d_model, out = lora_out(t);
        LZ_CHECK(int64_t(ad.a.size()) == r * in && int64_t(ad.b.size()) == out * r,
                 "lizard checkpoint: LoRA blk.{}.{} has the wrong size", l, t);
        tensors.push_back({fmt::format("blk.{}.lora.{}.a", l, t), DType::F32, {r, in}, ad.a.data(), ad.a.size() * 4});
        tensors.push_back({fmt::format("blk.{}.lora.{}.b", l, t), DType::F32, {out, r}, ad.b.data(), ad.b.size() * 4});
      }
    }
    lora_meta = {{"rank", ck.lora.rank}, {"alpha", ck.lora.alpha}, {"targets", ck.lora.targets}, {"layers", ls}};
  }
  json shape = {{"d_model", ck.shape.d_model},
                {"n_heads", ck.shape.n_heads},
                {"n_kv_heads", ck.shape.n_kv_heads},
                {"head_dim", ck.shape.head_dim},
                {"n_layers", ck.n_layers}};
  json teacher = {{"path", ck.teacher.path},
                  {"size", ck.teacher.size},
                  {"fingerprint", ck.teacher.fingerprint},
                  {"method", ck.teacher.method}};
  std::map<std::string, std::string> meta = {{"format", kFormat},
                                             {"lizard_config", lizard_config_to_json(ck.config).dump()},
                                             {"shape", shape.dump()},
                                             {"teacher", teacher.dump()}};
  if (!lora_meta.is_null()) meta["lora"] = lora_meta.dump();
  write_safetensors(path, tensors, meta);
}

LizardCheckpoint load_lizard_checkpoint(const std::string& path) {
  SafeTensorsFile f(path);
  const auto& meta = f.metadata();
  auto get = [&](const char* key) -> const std::string& {
    auto it = meta.find(key);
    LZ_CHECK(it != meta.end(), "'{}' is not a Lizard checkpoint (no '{}' in its metadata)", path, key);
    return it->second;
  };
  LZ_CHECK(get("format") == kFormat, "'{}': unsupported Lizard checkpoint format '{}' (expected {})", path,
           get("format"), kFormat);
  LizardCheckpoint ck;
  try {
    ck.config = lizard_config_from_json(json::parse(get("lizard_config")));
    const json sh = json::parse(get("shape"));
    ck.shape = LizardShape{sh.at("d_model").get<int>(), sh.at("n_heads").get<int>(), sh.at("n_kv_heads").get<int>(),
                           sh.at("head_dim").get<int>()};
    ck.n_layers = sh.at("n_layers").get<int>();
    const json t = json::parse(get("teacher"));
    ck.teacher.path = t.at("path").get<std::string>();
    ck.teacher.size = t.at("size").get<uint64_t>();
    ck.teacher.fingerprint = t.at("fingerprint").get<std::string>();
    ck.teacher.method = t.at("method").get<std::string>();
  } catch (const json::exception& e) {
    fail("'{}': bad Lizard checkpoint metadata: {}", path, e.what());
  }
  ck.shape.validate();
  LZ_CHECK(ck.n_layers > 0, "'{}': bad layer count {}", path, ck.n_layers);
  ck.config.validate(ck.n_layers);
  std::set<std::string> expected;
  for (int l : lizard_layer_list(ck.config, ck.n_layers)) {
    LizardParams p;
    p.resize(ck.config, ck.shape);
    for (auto& e : p.entries(ck.config, ck.shape)) {
      const std::string name = fmt::format("blk.{}.lizard.{}", l, e.name);
      const TensorView* t = f.find_tensor(name);
      LZ_CHECK(t, "'{}': tensor '{}' is missing", path, name);
      LZ_CHECK(t->type == DType::F32, "'{}': tensor '{}' is {}, expected F32", path, name, dtype_name(t->type));
      LZ_CHECK(t->shape == e.shape, "'{}': tensor '{}' has shape {}, the config needs {}", path, name, t->shape_str(),
               TensorView{"", DType::F32, e.shape}.shape_str());
      std::memcpy(e.data->data(), t->data, e.data->size() * sizeof(float));
      expected.insert(name);
    }
    ck.layers[l] = std::move(p);
  }
  if (auto it = meta.find("lora"); it != meta.end()) {
    try {
      const json j = json::parse(it->second);
      ck.lora.rank = j.at("rank").get<int>();
      ck.lora.alpha = j.at("alpha").get<double>();
      ck.lora.targets = j.at("targets").get<std::vector<std::string>>();
      for (int l : j.at("layers").get<std::vector<int>>()) ck.lora.layers[l];
    } catch (const json::exception& e) {
      fail("'{}': bad LoRA metadata: {}", path, e.what());
    }
    LZ_CHECK(ck.lora.rank >= 1, "'{}': bad LoRA rank {}", path, ck.lora.rank);
    for (auto& [l, m] : ck.lora.layers) {
      LZ_CHECK(l >= 0 && l < ck.n_layers, "'{}': LoRA for layer {} of {}", path, l, ck.n_layers);
      for (const std::string& t : ck.lora.targets) {
        LZ_CHECK(t == "q" || t == "k" || t == "v", "'{}': LoRA target '{}' (q, k, v)", path, t);
        const int64_t r = ck.lora.rank, in = ck.shape.d_model,
                      out = int64_t(t == "q" ? ck.shape.n_heads : ck.shape.n_kv_heads) * ck.shape.head_dim;
        LoraAdapter ad;
        for (auto [suffix, vec, shp] : {std::tuple{"a", &ad.a, std::vector<int64_t>{r, in}},
                                        std::tuple{"b", &ad.b, std::vector<int64_t>{out, r}}}) {
          const std::string name = fmt::format("blk.{}.lora.{}.{}", l, t, suffix);
          const TensorView* tv = f.find_tensor(name);
          LZ_CHECK(tv && tv->type == DType::F32 && tv->shape == shp, "'{}': LoRA tensor '{}' is missing or malformed",
                   path, name);
          vec->resize(static_cast<size_t>(tv->numel()));
          std::memcpy(vec->data(), tv->data, vec->size() * sizeof(float));
        }
        m[t] = std::move(ad);
      }
    }
  }
  // Other tensors are left to their readers; unknown Lizard ones mean a broken file.
  for (const auto& t : f.tensors())
    LZ_CHECK(t.name.find(".lizard.") == std::string::npos || expected.count(t.name),
             "'{}': unexpected Lizard tensor '{}' (not a Lizard layer of its config)", path, t.name);
  return ck;
}

void check_lizard_teacher(const LizardCheckpoint& ck, const std::string& teacher_path) {
  const std::string p = teacher_path.empty() ? ck.teacher.path : teacher_path;
  LZ_CHECK(!p.empty(), "the Lizard checkpoint names no teacher; pass the teacher's path");
  std::error_code ec;
  LZ_CHECK(fs::exists(p, ec), "teacher '{}' not found (the Lizard checkpoint was made for '{}'); pass its path", p,
           ck.teacher.path);
  const TeacherRecord r = fingerprint_teacher(p);
  LZ_CHECK(r.fingerprint == ck.teacher.fingerprint && r.size == ck.teacher.size,
           "teacher '{}' is not the one this Lizard checkpoint was made for ('{}', {} bytes, fingerprint {}...; "
           "found {} bytes, fingerprint {}...)",
           p, ck.teacher.path, ck.teacher.size, ck.teacher.fingerprint.substr(0, 12), r.size, r.fingerprint.substr(0, 12));
}

void check_lizard_teacher_shape(const LizardCheckpoint& ck, const ModelConfig& t) {
  LZ_CHECK(t.d_model == ck.shape.d_model && t.n_heads == ck.shape.n_heads && t.n_kv_heads == ck.shape.n_kv_heads &&
               t.head_dim == ck.shape.head_dim && t.n_layers == ck.n_layers,
           "teacher shape (d_model {}, {} heads, {} kv heads, head_dim {}, {} layers) does not match the Lizard "
           "checkpoint's ({}, {}, {}, {}, {})",
           t.d_model, t.n_heads, t.n_kv_heads, t.head_dim, t.n_layers, ck.shape.d_model, ck.shape.n_heads,
           ck.shape.n_kv_heads, ck.shape.head_dim, ck.n_layers);
}

LizardCheckpoint load_lizard_checkpoint(const std::string& path, const std::string& teacher_path) {
  LizardCheckpoint ck = load_lizard_checkpoint(path);
  check_lizard_teacher(ck, teacher_path);
  return ck;
}

static std::string lora_line(const LoraSet& l) {
  if (l.empty()) return {};
  std::string t;
  for (const auto& x : l.targets) t += (t.empty() ? "" : ",") + x;
  return fmt::format("  LoRA: rank {}, alpha {} on {} of {} layers\n", l.rank, l.alpha, t, l.layers.size());
}

std::string describe_lizard_checkpoint(const LizardCheckpoint& ck) {
  size_t n = 0;
  for (const auto& [l, p] : ck.layers) n += p.numel();
  const std::string layers = lizard_layers_text(ck.config) + (ck.config.no_lizard_layers ? " (the teacher)" : "");
  return fmt::format(
      "Lizard checkpoint ({})\n  teacher: {} ({} bytes, fingerprint {})\n  shape: d_model {}, {} heads, {} kv heads, "
      "head_dim {}, {} layers; Lizard layers: {} ({} of {})\n  parameters: {}\n  config: {}\n",
      ck.config.combine == LizardConfig::Combine::Lizard ? "lizard" : "lolcats", ck.teacher.path, ck.teacher.size,
      ck.teacher.fingerprint.substr(0, 16), ck.shape.d_model, ck.shape.n_heads, ck.shape.n_kv_heads, ck.shape.head_dim,
      ck.n_layers, layers, ck.layers.size(), ck.n_layers, n, lizard_config_to_json(ck.config).dump()) +
         lora_line(ck.lora);
}

void add_lora_rows(const LoraAdapter& ad, int rank, float scale, int64_t row0, int64_t nrows, int64_t cols, float* w) {
  const int64_t r = rank;
#pragma omp parallel for
  for (int64_t i = 0; i < nrows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      double s = 0;
      for (int64_t k = 0; k < r; ++k) s += double(ad.b[(row0 + i) * r + k]) * ad.a[k * cols + j];
      w[i * cols + j] += scale * static_cast<float>(s);
    }
}

}  // namespace lizard
