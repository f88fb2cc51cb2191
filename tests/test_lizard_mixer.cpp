// Lizard layers inside the model (model/lizard_mixer.h) and opening Lizard checkpoints
// (model/load_model.h): chunked continuation of the layer, prefill/decode agreement on tiny random
// teachers (all layers Lizard and hybrids), saved states, checkpoint round trips, teacher checks,
// and the default teacher end to end.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "generate/generate.h"
#include "generate/state_io.h"
#include "llama_fixture.h"
#include "model/lizard_checkpoint.h"
#include "model/lizard_mixer.h"
#include "model/load_model.h"
#include "util/error.h"

using namespace lizard;
using lizard::testing::error_of;
using lizard::testing::Seeded;
using lizard::testing::TinyModel;
using lizard::testing::TinySpec;
namespace fs = std::filesystem;

namespace {

template <typename T>
double rel_err(const std::vector<T>& a, const std::vector<T>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return den > 0 ? num / den : num;
}

// Random parameters (not the near-uniform init) so that every branch and the gate matter.
template <typename T>
void randomize(LizardParamsT<T>& p, const LizardConfig& c, const LizardShape& s, Seeded& rs) {
  p.resize(c, s);
  for (auto& e : p.entries(c, s)) {
    const std::string n = e.name;
    for (auto& v : *e.data) {
      if (n == "feat_q" || n == "feat_k") v = T(rs.uniform(-0.6f, 0.6f));
      else if (n == "gate_w") v = T(rs.uniform(-0.3f, 0.3f));
      else if (n == "gate_b") v = T(rs.uniform(0.5f, 4.0f));
      else if (n == "meta") v = T(rs.uniform(-1.0f, 1.0f));
      else if (n == "alpha") v = T(rs.uniform(0.5f, 1.5f));
      else v = T(rs.uniform(-2.5f, -1.5f));
    }
  }
}

template <typename T>
std::vector<T> rand_vec(Seeded& rs, size_t n, float scale) {
  std::vector<T> v(n);
  for (auto& x : v) x = T(rs.uniform(-scale, scale));
  return v;
}

}  // namespace

// ---- the layer: chunked forward continued from a state ----------------------------------------

TEST(LizardMixerOp, ChunkedContinuesFromAState) {
  Seeded rs;
  SCOPED_TRACE(rs.trace());
  const LizardShape s{12, 4, 2, 8};
  const int H = s.n_heads, Hkv = s.n_kv_heads, D = s.head_dim, dm = s.d_model;
  const LizardRope rope = LizardRope::make(D, 10000.0);
  struct Case {
    int w, C;
    bool window_rope, feature_on_rope, per_head, meta_per_head;
  };
  const Case cases[] = {{5, 4, false, false, false, false}, {8, 8, true, false, true, false},
                        {16, 4, false, true, false, true},  {37, 8, true, true, true, true},
                        {200, 16, false, false, false, false}};
  // Pieces: 1-token pieces go through lizard_step, the others through the chunked form.
  const std::vector<int64_t> pieces = {7, 1, 1, 13, 2, 1, 40, 3, 64, 1, 17};
  int64_t L = 0;
  for (auto n : pieces) L += n;
  for (const Case& cs : cases) {
    LizardConfig c;
    c.feature_dim = 4;
    c.window = cs.w;
    c.chunk = cs.C;
    c.meta_tokens = 3;
    c.window_rope = cs.window_rope;
    c.feature_on_rope = cs.feature_on_rope;
    c.gate = cs.per_head ? LizardConfig::Gate::PerHead : LizardConfig::Gate::Scalar;
    c.meta_per_head = cs.meta_per_head;
    LizardParamsT<double> pd;
    randomize(pd, c, s, rs);
    const auto pf = cast_params<float>(pd);
    const auto x = rand_vec<double>(rs, size_t(L) * dm, 1.0f), q = rand_vec<double>(rs, size_t(L) * H * D, 1.5f),
               k = rand_vec<double>(rs, size_t(L) * Hkv * D, 1.5f), v = rand_vec<double>(rs, size_t(L) * Hkv * D, 1.0f);
    std::vector<int32_t> pos(L);
    for (int64_t i = 0; i < L; ++i) pos[i] = int32_t(i + 3);  // not starting at 0 on purpose
    std::vector<double> ref(size_t(L) * H * D);
    lizard_forward_parallel(c, s, pd, &rope, LizardInput<double>{L, x.data(), q.data(), k.data(), v.data(), pos.data()},
                            ref.data());
    // double: exact up to rounding; float: fp32 rounding
    auto run = [&](auto zero) {
      using T = decltype(zero);
      const auto& p = [&]() -> const LizardParamsT<T>& {
        if constexpr (std::is_same_v<T, double>) return pd; else return pf;
      }();
      std::vector<T> xt(x.begin(), x.end()), qt(q.begin(), q.end()), kt(k.begin(), k.end()), vt(v.begin(), v.end());
      std::vector<T> y(size_t(L) * H * D);
      LizardState<T> st;
      st.reset(c, s);
      int64_t i0 = 0;
      for (int64_t n : pieces) {
        if (n == 1) {
          lizard_step(c, s, p, &rope, st, &xt[i0 * dm], &qt[i0 * H * D], &kt[i0 * Hkv * D], &vt[i0 * Hkv * D], pos[i0],
                      &y[i0 * H * D]);
        } else {
          LizardInput<T> in{n, &xt[i0 * dm], &qt[i0 * H * D], &kt[i0 * Hkv * D], &vt[i0 * Hkv * D], &pos[i0]};
          lizard_forward_chunked(c, s, p, &rope, in, &y[i0 * H * D], &st, &st);
        }
        i0 += n;
        EXPECT_EQ(st.n_tokens, i0);
      }
      return std::vector<double>(y.begin(), y.end());
    };
    EXPECT_LT(rel_err(run(double(0)), ref), 1e-11) << "w " << cs.w << " C " << cs.C;
    EXPECT_LT(rel_err(run(float(0)), ref), 2e-5) << "w " << cs.w << " C " << cs.C;
  }
}

TEST(LizardMixerOp, LolcatsCanNotContinueChunked) {
  Seeded rs;
  const LizardShape s{8, 2, 1, 4};
  LizardConfig c = LizardConfig::lolcats();
  c.feature_dim = 4;
  c.window = 4;
  c.chunk = 4;
  LizardParams p;
  randomize(p, c, s, rs);
  const LizardRope rope = LizardRope::make(4, 10000.0);
  auto q = rand_vec<float>(rs, 6 * 2 * 4, 1), k = rand_vec<float>(rs, 6 * 4, 1), v = k;
  std::vector<int32_t> pos = {0, 1, 2, 3, 4, 5};
  std::vector<float> y(6 * 2 * 4);
  LizardState<float> st;
  lizard_forward_chunked(c, s, p, &rope, LizardInput<float>{3, nullptr, q.data(), k.data(), v.data(), pos.data()},
                         y.data(), &st);
  EXPECT_THROW(lizard_forward_chunked(c, s, p, &rope,
                                      LizardInput<float>{3, nullptr, &q[24], &k[12], &v[12], &pos[3]}, &y[24], &st, &st),
               Error);
}

// ---- tiny random teachers with Lizard layers ------------------------------------------------------

namespace {

struct LizardTiny {
  TinyModel tm;
  LizardCheckpoint lck;
};

LizardConfig tiny_config(std::vector<int> layers, int w, int C) {
  LizardConfig c;
  c.feature_dim = 8;
  c.window = w;
  c.chunk = C;
  c.meta_tokens = 2;
  c.lizard_layers = std::move(layers);
  return c;
}

LizardTiny make_lizard_tiny(Seeded& rs, const LizardConfig& c, int n_layers = 3) {
  TinySpec sp;
  sp.layers = n_layers;
  sp.ctx = 1024;
  LizardTiny t;
  t.tm = lizard::testing::make_tiny(rs, sp);
  t.lck = init_lizard_checkpoint(c, t.tm.ck->config, rs.rng());
  for (auto& [l, p] : t.lck.layers) randomize(p, c, t.lck.shape, rs);
  return t;
}

ModelOptions test_options(int64_t max_batch = 512) {
  ModelOptions o;
  o.n_threads = 1;
  o.exact = true;  // decode on the same fp32 weights as prefill
  o.max_batch = max_batch;
  return o;
}

std::vector<int32_t> random_tokens(Seeded& rs, int n, int vocab) {
  std::vector<int32_t> t(n);
  for (auto& x : t) x = std::uniform_int_distribution<int>(0, vocab - 1)(rs.rng);
  return t;
}

std::vector<float> run_all(const LlamaModel& m, LlamaState& st, const std::vector<int32_t>& t) {
  auto l = m.forward(t, st.n_past(), st, true);
  return {l.begin(), l.end()};
}

std::vector<float> token_by_token(const LlamaModel& m, LlamaState& st, const std::vector<int32_t>& t) {
  std::vector<float> out;
  for (int32_t id : t) {
    auto l = m.forward(&id, 1, st.n_past(), st);
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

int argmax(std::span<const float> l) { return int(std::max_element(l.begin(), l.end()) - l.begin()); }

// Greedy decode of n tokens after whatever st holds, starting from logits `last`; returns all logits.
std::vector<float> decode(const LlamaModel& m, LlamaState& st, std::vector<float> last, int n) {
  std::vector<float> out;
  for (int i = 0; i < n; ++i) {
    const int32_t id = argmax(last);
    auto l = m.forward(&id, 1, st.n_past(), st);
    last.assign(l.begin(), l.end());
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

std::vector<float> last_row(const std::vector<float>& all, int vocab) {
  return {all.end() - vocab, all.end()};
}

}  // namespace

TEST(LizardMixer, NamesAndStateSize) {
  Seeded rs;
  SCOPED_TRACE(rs.trace());
  auto t = make_lizard_tiny(rs, tiny_config({0, 2}, 8, 4));
  LlamaModel m(t.tm.ck, test_options());
  apply_lizard(m, t.lck);
  EXPECT_EQ(m.mixer(1).name(), "softmax");
  EXPECT_EQ(m.mixer(0).name().rfind("lizard-", 0), 0u);
  EXPECT_NE(m.mixer(0).name(), m.mixer(2).name());
  auto st = m.new_state();
  const auto tok = random_tokens(rs, 300, m.vocab_size());
  m.forward(tok.data(), 10, 0, st);
  const size_t l10 = st.layer_state(0).bytes(), s10 = st.layer_state(1).bytes();
  m.forward(tok.data() + 10, 290, 10, st);
  EXPECT_EQ(st.layer_state(0).bytes(), l10);  // constant
  EXPECT_EQ(st.layer_state(2).bytes(), l10);
  EXPECT_EQ(st.layer_state(1).bytes(), s10 * 30);  // the softmax layer's cache grows
  EXPECT_FALSE(st.layer_state(0).truncate(5));
  EXPECT_THROW(m.forward(tok.data(), 5, 7, st), Error);  // can not rewind a Lizard layer
}

// One prefill == token-by-token decode == prefill in small internal pieces (max_batch), for all
// layers Lizard and a hybrid, windows smaller and larger than the chunk.
TEST(LizardMixer, PrefillEqualsTokenByToken) {
  Seeded rs;
  SCOPED_TRACE(rs.trace());
  for (auto layers : {std::vector<int>{}, std::vector<int>{1}})
    for (auto [w, C] : {std::pair{8, 4}, std::pair{5, 16}, std::pair{40, 8}}) {
      auto t = make_lizard_tiny(rs, tiny_config(layers, w, C));
      LlamaModel m(t.tm.ck, test_options()), m7(t.tm.ck, test_options(7));
      apply_lizard(m, t.lck);
      apply_lizard(m7, t.lck);
      const auto tok = random_tokens(rs, 93, m.vocab_size());
      auto s1 = m.new_state(), s2 = m.new_state(), s3 = m7.new_state();
      const auto a = run_all(m, s1, tok), b = token_by_token(m, s2, tok), c = run_all(m7, s3, tok);
      EXPECT_LT(rel_err(a, b), 2e-5) << "w " << w << " C " << C << " hybrid " << !layers.empty();
      EXPECT_LT(rel_err(c, b), 2e-5) << "w " << w << " C " << C << " hybrid " << !layers.empty();
    }
}

// Multi-turn on model m: prefill A (nA tokens), prefill B (nB), decode == prefill A+B, decode == token by token.
static void expect_continuation_agrees(Seeded& rs, LlamaModel& m, int nA, int nB, int ndecode, const std::string& what) {
  const int V = m.vocab_size();
  const auto A = random_tokens(rs, nA, V), B = random_tokens(rs, nB, V);
  std::vector<int32_t> AB = A;
  AB.insert(AB.end(), B.begin(), B.end());
  auto s1 = m.new_state(), s2 = m.new_state(), s3 = m.new_state();
  auto la = run_all(m, s1, A), lb = run_all(m, s1, B);
  la.insert(la.end(), lb.begin(), lb.end());
  const auto lab = run_all(m, s2, AB);
  const auto lt = token_by_token(m, s3, AB);
  EXPECT_LT(rel_err(la, lt), 2e-5) << what;
  EXPECT_LT(rel_err(lab, lt), 2e-5) << what;
  const auto d1 = decode(m, s1, last_row(la, V), ndecode), d2 = decode(m, s2, last_row(lab, V), ndecode),
             d3 = decode(m, s3, last_row(lt, V), ndecode);
  EXPECT_LT(rel_err(d1, d3), 2e-5) << what;
  EXPECT_LT(rel_err(d2, d3), 2e-5) << what;
}

TEST(LizardMixer, PrefillContinuation) {
  Seeded rs;
  SCOPED_TRACE(rs.trace());
  for (auto layers : {std::vector<int>{}, std::vector<int>{0, 2}})
    for (auto [w, C] : {std::pair{8, 4}, std::pair{64, 16}, std::pair{3, 8}}) {
      auto cfg = tiny_config(layers, w, C);
      cfg.window_rope = w == 8;
      cfg.gate = w == 64 ? LizardConfig::Gate::PerHead : LizardConfig::Gate::Scalar;
      auto t = make_lizard_tiny(rs, cfg);
      LlamaModel m(t.tm.ck, test_options());
      apply_lizard(m, t.lck);
      expect_continuation_agrees(rs, m, 45, 29, 6, fmt::format("w {} C {} hybrid {}", w, C, !layers.empty()));
    }
}

// gate_skips_window (its chunked form does not continue: later prompts run token by token): the same agreement.
TEST(LizardMixer, GateSkipsWindowContinuation) {
  Seeded rs;
  SCOPED_TRACE(rs.trace());
  for (auto [w, C] : {std::pair{8, 4}, std::pair{3, 8}}) {
    auto cfg = tiny_config({}, w, C);
    cfg.gate_skips_window = true;
    auto t = make_lizard_tiny(rs, cfg);
    LlamaModel m(t.tm.ck, test_options());
    apply_lizard(m, t.lck);
    expect_continuation_agrees(rs, m, 21, 13, 4, fmt::format("gate_skips_window w {} C {}", w, C));
  }
}

// A saved state (state_io) resumes exactly; another Lizard model refuses it.
TEST(LizardMixer, SaveLoadState) {
  Seeded rs;
  SCOPED_TRACE(rs.trace());
  for (auto layers : {std::vector<int>{}, std::vector<int>{1}}) {
    auto t = make_lizard_tiny(rs, tiny_config(layers, 6, 4));
    LlamaModel m(t.tm.ck, test_options());
    apply_lizard(m, t.lck);
    const int V = m.vocab_size();
    const auto A = random_tokens(rs, 50, V), B = random_tokens(rs, 11, V);
    auto st = m.new_state();
    run_all(m, st, A);
    SavedSequence seq;
    seq.tokens = A;
    const std::string bytes = serialize_state(m, st, seq);
    auto st2 = m.new_state();
    const SavedSequence back = deserialize_state(m, st2, bytes);
    EXPECT_EQ(back.tokens, A);
    EXPECT_EQ(st2.n_past(), 50);
    EXPECT_EQ(run_all(m, st, B), run_all(m, st2, B));  // bitwise: same state, same ops
    if (layers.empty()) EXPECT_LT(bytes.size(), 3u * st.cache_bytes() / 2 + 4096);

    // Same teacher, other Lizard parameters: refused.
    auto other = t.lck;
    for (auto& [l, p] : other.layers) p.alpha[0] += 0.5f;
    LlamaModel m2(t.tm.ck, test_options());
    apply_lizard(m2, other);
    auto st3 = m2.new_state();
    EXPECT_THROW(deserialize_state(m2, st3, bytes), Error);
  }
}

// ---- Lizard checkpoints on disk through load_model ------------------------------------------------

namespace {

struct TmpDir {
  fs::path p;
  explicit TmpDir(const std::string& tag) {
    p = fs::temp_directory_path() / ("lizard_mixer_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
  }
  ~TmpDir() { fs::remove_all(p); }
};

std::string hf_name(const std::string& c) {
  if (c == "token_embd.weight") return "model.embed_tokens.weight";
  if (c == "output_norm.weight") return "model.norm.weight";
  if (c == "output.weight") return "lm_head.weight";
  const size_t dot = c.find('.', 4);
  const std::string l = c.substr(4, dot - 4), r = c.substr(dot + 1);
  const std::map<std::string, std::string> m = {
      {"attn_norm.weight", "input_layernorm.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},   {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},   {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},    {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"}};
  return "model.layers." + l + "." + m.at(r);
}

// The tiny model as a Hugging Face directory, with a small synthetic tokenizer (704 tokens).
void write_hf_teacher(const std::string& dir, const TinyModel& tm) {
  fs::create_directories(dir);
  const ModelConfig& c = tm.ck->config;
  nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                        {"model_type", "llama"},
                        {"hidden_size", c.d_model},
                        {"intermediate_size", c.d_ff},
                        {"num_hidden_layers", c.n_layers},
                        {"num_attention_heads", c.n_heads},
                        {"num_key_value_heads", c.n_kv_heads},
                        {"head_dim", c.head_dim},
                        {"rms_norm_eps", c.rms_eps},
                        {"rope_theta", c.rope_theta},
                        {"max_position_embeddings", c.max_seq_len},
                        {"tie_word_embeddings", false},
                        {"vocab_size", c.vocab_size},
                        {"hidden_act", "silu"}};
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  std::vector<TensorToWrite> ts;
  for (auto& [n, b] : tm.blobs) ts.push_back({hf_name(n), b->type, b->shape, b->bytes.data(), b->bytes.size()});
  write_safetensors(dir + "/model.safetensors", ts, {{"format", "pt"}});
  fs::copy_file(std::string(LIZARD_SOURCE_DIR) + "/tests/fixtures/tokenizer/synth_a.json", dir + "/tokenizer.json");
}

}  // namespace

TEST(LizardMixer, CheckpointRoundTripThroughLoadModel) {
  Seeded rs;
  SCOPED_TRACE(rs.trace());
  TinySpec sp;
  sp.vocab = 720;  // the tokenizer has 704
  sp.layers = 3;
  sp.ctx = 512;
  TinyModel tm = lizard::testing::make_tiny(rs, sp);
  TmpDir tmp("ckpt");
  const std::string teacher = (tmp.p / "teacher").string(), ldir = (tmp.p / "student").string();
  write_hf_teacher(teacher, tm);
  for (auto layers : {std::vector<int>{}, std::vector<int>{0, 2}}) {
    LizardCheckpoint ck = init_lizard_checkpoint(tiny_config(layers, 8, 4), tm.ck->config, rs.rng());
    for (auto& [l, p] : ck.layers) randomize(p, ck.config, ck.shape, rs);
    ck.teacher = fingerprint_teacher(teacher);
    save_lizard_dir(ldir, ck);
    EXPECT_EQ(find_lizard_checkpoint(ldir), ldir + "/lizard.safetensors");
    EXPECT_EQ(find_lizard_checkpoint(teacher), "");

    LoadedModel lm = load_model(ldir, test_options());
    ASSERT_TRUE(lm.is_lizard());
    EXPECT_EQ(lm.lizard->layers.size(), layers.empty() ? 3u : 2u);
    ASSERT_NE(lm.tokenizer(), nullptr);
    EXPECT_EQ(lm.checkpoint().path, teacher);
    // the same as the in-memory teacher with the same Lizard layers
    LlamaModel ref(tm.ck, test_options());
    apply_lizard(ref, ck);
    for (int l = 0; l < 3; ++l) EXPECT_EQ(lm.model->mixer(l).name(), ref.mixer(l).name());
    const auto tok = random_tokens(rs, 40, 700);
    auto s1 = lm.model->new_state(), s2 = ref.new_state();
    EXPECT_LT(rel_err(run_all(*lm.model, s1, tok), run_all(ref, s2, tok)), 1e-6);
    // The .safetensors file itself opens too; a plain teacher opens as one.
    EXPECT_TRUE(load_model(ldir + "/lizard.safetensors", test_options()).is_lizard());
    LoadedModel plain = load_model(teacher, test_options());
    EXPECT_FALSE(plain.is_lizard());
    EXPECT_EQ(plain.model->mixer(0).name(), "softmax");
  }

  // Moved teacher: a clear error, and --teacher finds it.
  const std::string moved = (tmp.p / "moved").string();
  fs::rename(teacher, moved);
  const std::string e1 = error_of([&] { load_model(ldir, test_options()); });
  EXPECT_NE(e1.find("not found"), std::string::npos) << e1;
  EXPECT_NE(e1.find("--teacher"), std::string::npos) << e1;
  EXPECT_TRUE(load_model(ldir, test_options(), moved).is_lizard());

  // Another teacher (same shape, other weights): refused by fingerprint.
  TinyModel other = lizard::testing::make_tiny(rs, sp);
  const std::string odir = (tmp.p / "other").string();
  write_hf_teacher(odir, other);
  const std::string e2 = error_of([&] { load_model(ldir, test_options(), odir); });
  EXPECT_NE(e2.find("is not the one"), std::string::npos) << e2;

  // Right fingerprint, wrong shape is caught too (a checkpoint edited by hand, say).
  LizardCheckpoint bad = init_lizard_checkpoint(tiny_config({}, 8, 4), tm.ck->config, 1);
  bad.teacher = fingerprint_teacher(moved);
  bad.shape.d_model += 1;
  EXPECT_THROW(apply_lizard(*load_model(moved, test_options()).model, bad), Error);
}

// ---- the default teacher --------------------------------------------------------------------------

TEST(LizardMixer, DefaultModelEndToEnd) {
  const std::string path = std::string(LIZARD_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << path << " is missing";
  TmpDir tmp("default");
  const Checkpoint teacher = open_checkpoint(path);
  LizardCheckpoint ck = init_lizard_checkpoint(LizardConfig{}, teacher.config, 7);
  ck.teacher = fingerprint_teacher(path);
  save_lizard_dir(tmp.p.string(), ck);
  ModelOptions mo;
  mo.n_threads = 2;
  mo.context = 4096;
  LoadedModel lm = load_model(tmp.p.string(), mo);
  ASSERT_TRUE(lm.is_lizard());
  const int V = lm.model->vocab_size();
  std::vector<int32_t> tok(2000);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t((i * 7919 + 13) % (V - 10));
  auto st = lm.model->new_state();
  lm.model->forward(tok.data(), 100, 0, st);
  const size_t b100 = st.cache_bytes();
  lm.model->forward(tok.data() + 100, 1900, 100, st);
  const size_t b2000 = st.cache_bytes();
  EXPECT_EQ(b100, b2000);
  std::printf("[lizard] default model, all layers Lizard: sequence state %.2f MiB at 100 and at 2000 tokens\n",
              b2000 / 1048576.0);
  GenerateOptions go;
  go.max_new_tokens = 16;
  go.sampling.temperature = 0;
  go.stop_at_eos = false;
  auto st2 = lm.model->new_state();
  const auto prompt = lm.tokenizer()->encode("The capital of France is", true);
  auto gs = generate(*lm.model, st2, prompt, go, [](int32_t) { return std::string(); }, std::nullopt);
  EXPECT_EQ(gs.tokens.size(), 16u);
}

// The CLI: init-lizard, then generate and info on the checkpoint (skipped without the binary/model).
TEST(LizardMixer, CliInitLizardThenGenerate) {
  const std::string model = std::string(LIZARD_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  const std::string cli = std::string(LIZARD_BINARY_DIR) + "/lizard";
  if (!fs::exists(model) || !fs::exists(cli)) GTEST_SKIP() << "needs " << model << " and " << cli;
  TmpDir tmp("cli");
  const std::string dir = (tmp.p / "ck").string(), log = (tmp.p / "log").string();
  auto run = [&](const std::string& args) { return std::system((cli + " " + args + " >" + log + " 2>&1").c_str()); };
  ASSERT_EQ(run("init-lizard -m " + model + " --out " + dir + " --seed 5"), 0);
  ASSERT_EQ(run("generate -m " + dir + " -n 16 --temp 0 -t 2 -p 'Once upon a time' --save-state " + dir + "/s.lzs"), 0);
  std::ifstream in(log);
  const std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(out.find("16 generated"), std::string::npos) << out;
  EXPECT_LT(fs::file_size(dir + "/s.lzs"), 20u << 20);  // constant-size state: ~14 MiB for 30 layers
  EXPECT_EQ(run("info " + dir), 0);
  EXPECT_NE(run("generate -m " + dir + " --teacher " + dir + "/lizard.safetensors -n 1 -p x"), 0);  // wrong teacher
}
