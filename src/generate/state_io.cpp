#include "generate/state_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "util/atomic_file.h"
#include "util/hash.h"
#include "util/error.h"

namespace lizard {

namespace {

constexpr char kMagic[8] = {'L', 'Z', 'S', 'T', 'A', 'T', 'E', '\0'};
constexpr uint32_t kVersion = 1;

// Running FNV-1a (util/hash.h) over the file: enough to tell models and corrupt files apart.
struct Fnv {
  uint64_t h = kFnvOffset;
  void add(const void* p, size_t n) { h = fnv1a(p, n, h); }
  template <typename T>
  void add_pod(const T& v) { add(&v, sizeof v); }
  void add_str(const std::string& s) {
    add_pod(static_cast<uint64_t>(s.size()));
    add(s.data(), s.size());
  }
};

// A few KiB from the start, middle and end of a tensor: cheap, and any other weights differ there.
void hash_tensor(Fnv& f, const TensorView* t) {
  if (!t || !t->data) {
    f.add_pod(uint64_t{0});
    return;
  }
  constexpr size_t kSpan = 4096;
  const auto* b = static_cast<const unsigned char*>(t->data);
  f.add_str(t->name);
  f.add_pod(static_cast<int32_t>(t->type));
  f.add_pod(static_cast<uint64_t>(t->nbytes));
  if (t->nbytes <= 3 * kSpan) {
    f.add(b, t->nbytes);
    return;
  }
  f.add(b, kSpan);
  f.add(b + (t->nbytes / 2 - kSpan / 2), kSpan);
  f.add(b + (t->nbytes - kSpan), kSpan);
}

struct Writer {
  std::string out;
  template <typename T>
  void pod(const T& v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void str(const std::string& s) {
    pod(static_cast<uint32_t>(s.size()));
    out += s;
  }
};

struct Reader {
  std::string_view in;
  size_t pos = 0;
  void need(size_t n) const { LZ_CHECK(in.size() - pos >= n, "saved state is truncated"); }
  template <typename T>
  T pod() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, in.data() + pos, sizeof v);
    pos += sizeof v;
    return v;
  }
  std::string_view bytes(size_t n) {
    need(n);
    std::string_view s = in.substr(pos, n);
    pos += n;
    return s;
  }
  std::string str() {
    const auto n = pod<uint32_t>();
    return std::string(bytes(n));
  }
};

struct Fingerprint {
  std::string arch;
  int32_t dims[7] = {};
  uint64_t hash = 0;
};

Fingerprint fingerprint_of(const LlamaModel& model) {
  const ModelConfig& c = model.config();
  Fingerprint fp;
  fp.arch = c.arch;
  const int32_t dims[7] = {c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff};
  std::copy(std::begin(dims), std::end(dims), fp.dims);
  fp.hash = model_fingerprint(model);
  return fp;
}

}  // namespace

uint64_t model_fingerprint(const LlamaModel& model) {
  const Checkpoint& ck = model.checkpoint();
  const ModelConfig& c = model.config();
  Fnv f;
  f.add_str(c.arch);
  for (int32_t v : {c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff}) f.add_pod(v);
  hash_tensor(f, ck.find("token_embd.weight"));
  hash_tensor(f, ck.find("output_norm.weight"));
  hash_tensor(f, ck.find("output.weight"));
  for (int i = 0; i < c.n_layers; ++i) {
    // First and last layer's attention and MLP weights; every layer's kind of mixer.
    if (i == 0 || i == c.n_layers - 1) {
      const std::string p = "blk." + std::to_string(i) + ".";
      for (const char* t : {"attn_q.weight", "attn_v.weight", "ffn_down.weight", "attn_norm.weight"})
        hash_tensor(f, ck.find(p + t));
    }
    f.add_str(model.mixer(i).name());
  }
  return f.h;
}

std::string serialize_state(const LlamaModel& model, const LlamaState& st, const SavedSequence& seq) {
  LZ_CHECK(st.model() == &model, "this sequence state belongs to another model");
  LZ_CHECK(static_cast<int64_t>(seq.tokens.size()) >= st.n_past(),
           "the token history has {} tokens, the state holds {} positions", seq.tokens.size(), st.n_past());
  const Fingerprint fp = fingerprint_of(model);
  Writer w;
  w.out.append(kMagic, sizeof kMagic);
  w.pod(kVersion);
  w.str(fp.arch);
  for (int32_t d : fp.dims) w.pod(d);
  w.pod(fp.hash);
  w.pod(st.n_past());
  w.pod(static_cast<int64_t>(seq.tokens.size()));
  w.out.append(reinterpret_cast<const char*>(seq.tokens.data()), seq.tokens.size() * sizeof(int32_t));
  w.pod(seq.seed);
  w.pod(static_cast<uint32_t>(st.n_layers()));
  for (size_t i = 0; i < st.n_layers(); ++i) {
    std::ostringstream layer;
    st.layer_state(i).serialize(layer);
    LZ_CHECK(layer.good(), "could not serialise the state of layer {}", i);
    const std::string bytes = std::move(layer).str();
    w.str(model.mixer(static_cast<int>(i)).name());
    w.pod(static_cast<uint64_t>(bytes.size()));
    w.out += bytes;
  }
  Fnv sum;
  sum.add(w.out.data(), w.out.size());
  w.pod(sum.h);
  return std::move(w.out);
}

SavedSequence deserialize_state(const LlamaModel& model, LlamaState& st, std::string_view bytes) {
  LZ_CHECK(st.model() == &model, "this sequence state belongs to another model");
  st.reset();
  try {
    LZ_CHECK(bytes.size() >= sizeof kMagic && std::memcmp(bytes.data(), kMagic, sizeof kMagic) == 0,
             "not a lizard state file");
    LZ_CHECK(bytes.size() >= sizeof kMagic + 4 + 8, "saved state is truncated");
    Reader r{bytes.substr(0, bytes.size() - 8)};
    r.pos = sizeof kMagic;
    const auto version = r.pod<uint32_t>();
    LZ_CHECK(version == kVersion, "saved state has version {}, this lizard reads version {}", version, kVersion);
    // The checksum first: a corrupt file should say so, not fail on some field.
    uint64_t stored;
    std::memcpy(&stored, bytes.data() + bytes.size() - 8, 8);
    Fnv sum;
    sum.add(bytes.data(), bytes.size() - 8);
    LZ_CHECK(sum.h == stored, "saved state is corrupt or truncated (checksum mismatch)");

    const Fingerprint want = fingerprint_of(model);
    Fingerprint got;
    got.arch = r.str();
    for (int32_t& d : got.dims) d = r.pod<int32_t>();
    got.hash = r.pod<uint64_t>();
    LZ_CHECK(got.arch == want.arch && std::equal(std::begin(got.dims), std::end(got.dims), want.dims),
             "saved state is for another model ({} d_model {} layers {} vocab {}; this one: {} d_model {} layers {} "
             "vocab {})",
             got.arch, got.dims[1], got.dims[2], got.dims[0], want.arch, want.dims[1], want.dims[2], want.dims[0]);
    LZ_CHECK(got.hash == want.hash, "saved state is for another model (same shape, different weights or layers)");

    const auto n_past = r.pod<int64_t>();
    const auto n_tokens = r.pod<int64_t>();
    LZ_CHECK(n_past >= 0 && n_tokens >= n_past, "saved state is corrupt ({} positions, {} tokens)", n_past,
             n_tokens);
    LZ_CHECK(n_past <= model.context_length(), "saved state holds {} positions, the context is {}", n_past,
             model.context_length());
    SavedSequence seq;
    LZ_CHECK(static_cast<uint64_t>(n_tokens) <= (r.in.size() - r.pos) / sizeof(int32_t), "saved state is truncated");
    seq.tokens.resize(static_cast<size_t>(n_tokens));
    const std::string_view tb = r.bytes(seq.tokens.size() * sizeof(int32_t));
    std::memcpy(seq.tokens.data(), tb.data(), tb.size());
    for (int32_t id : seq.tokens)
      LZ_CHECK(id >= 0 && id < model.vocab_size(), "saved state has token id {} out of range", id);
    seq.seed = r.pod<uint64_t>();
    const auto n_layers = r.pod<uint32_t>();
    LZ_CHECK(n_layers == st.n_layers(), "saved state has {} layers, the model {}", n_layers, st.n_layers());
    for (size_t i = 0; i < n_layers; ++i) {
      const std::string name = r.str();
      LZ_CHECK(name == model.mixer(static_cast<int>(i)).name(), "saved state's layer {} is {}, the model's is {}", i,
               name, model.mixer(static_cast<int>(i)).name());
      const auto size = r.pod<uint64_t>();
      LZ_CHECK(size <= r.in.size() - r.pos, "saved state is truncated");
      std::istringstream layer(std::string(r.bytes(size)));
      st.layer_state(i).deserialize(layer);
      LZ_CHECK(layer.peek() == std::char_traits<char>::eof(), "saved state of layer {} has trailing bytes", i);
    }
    LZ_CHECK(r.pos == r.in.size(), "saved state has trailing bytes");
    st.set_restored_n_past(n_past);
    return seq;
  } catch (...) {
    st.reset();
    throw;
  }
}

void save_state(const std::string& path, const LlamaModel& model, const LlamaState& st, const SavedSequence& seq) {
  const std::string bytes = serialize_state(model, st, seq);
  write_file_atomic(path, bytes);
}

SavedSequence load_state(const std::string& path, const LlamaModel& model, LlamaState& st) {
  std::ifstream in(path, std::ios::binary);
  LZ_CHECK(in.good(), "cannot read state file '{}'", path);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LZ_CHECK(!in.bad(), "cannot read state file '{}'", path);
  try {
    return deserialize_state(model, st, bytes);
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
}

}  // namespace lizard
