// Saving and resuming a sequence: continuing after a reload gives exactly the tokens the
// uninterrupted run gives; other models' states, corrupt and truncated files are refused.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "generate/generate.h"
#include "generate/state_io.h"
#include "llama_fixture.h"
#include "model/llama.h"
#include "util/error.h"

using namespace lizard;
using lizard::testing::Seeded;
using lizard::testing::TinySpec;

namespace {

namespace fs = std::filesystem;

fs::path temp_dir() {
  fs::path d = fs::temp_directory_path() / ("lizard_state_io_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

ModelOptions one_thread() {
  ModelOptions o;
  o.n_threads = 1;
  return o;
}

std::vector<int32_t> random_ids(Seeded& s, int n, int vocab) {
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = std::uniform_int_distribution<int>(0, vocab - 1)(s.rng);
  return ids;
}

GenerateStats gen(const LlamaModel& m, LlamaState& st, const std::vector<int32_t>& prompt, int n, float temp = 0,
                  uint64_t seed = 1) {
  GenerateOptions go;
  go.max_new_tokens = n;
  go.sampling.temperature = temp;
  go.sampling.seed = seed;
  go.stop_at_eos = false;
  return generate(m, st, prompt, go, [](int32_t) { return std::string(); }, std::nullopt);
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Generates from a, saves, then continues with b both in place and from the reloaded state.
void check_resume(const LlamaModel& model, const std::vector<int32_t>& a, const std::vector<int32_t>& b, int n1,
                  int n2, float temp, const fs::path& file) {
  LlamaState st = model.new_state();
  GenerateStats g1 = gen(model, st, a, n1, temp, 7);
  SavedSequence seq{concat(a, g1.tokens), 7};
  ASSERT_EQ(st.n_past() + 1, static_cast<int64_t>(seq.tokens.size()));  // the last sampled token is pending
  save_state(file.string(), model, st, seq);
  EXPECT_FALSE(fs::exists(file.string() + ".tmp"));

  LlamaState st2 = model.new_state();
  SavedSequence back = load_state(file.string(), model, st2);
  EXPECT_EQ(back.tokens, seq.tokens);
  EXPECT_EQ(back.seed, 7u);
  EXPECT_EQ(st2.n_past(), st.n_past());

  GenerateStats straight = gen(model, st, continuation(seq, st, b), n2, temp, 11);
  GenerateStats resumed = gen(model, st2, continuation(back, st2, b), n2, temp, 11);
  EXPECT_EQ(straight.tokens, resumed.tokens);
  EXPECT_EQ(st.n_past(), st2.n_past());
}

}  // namespace

TEST(StateIO, ResumeEqualsUninterruptedTiny) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  TinySpec sp;
  sp.ctx = 128;
  auto tm = lizard::testing::make_tiny(s, sp);
  LlamaModel model(tm.ck, one_thread());
  const auto a = random_ids(s, 13, sp.vocab), b = random_ids(s, 5, sp.vocab);
  const fs::path dir = temp_dir();
  check_resume(model, a, b, 17, 20, 0.0f, dir / "greedy.lzs");
  check_resume(model, a, b, 9, 20, 0.9f, dir / "sampled.lzs");  // seeded sampling resumes too

  // The reloaded state gives bit-identical logits.
  LlamaState x = model.new_state();
  gen(model, x, a, 4);
  const std::string bytes = serialize_state(model, x, {concat(a, std::vector<int32_t>(4, 1))});
  LlamaState y = model.new_state();
  deserialize_state(model, y, bytes);
  const int32_t t = 3;
  auto lx = model.forward(&t, 1, x.n_past(), x);
  std::vector<float> vx(lx.begin(), lx.end());
  auto ly = model.forward(&t, 1, y.n_past(), y);
  EXPECT_EQ(vx, std::vector<float>(ly.begin(), ly.end()));
  fs::remove_all(dir);
}

TEST(StateIO, RefusesOtherModelsCorruptAndTruncated) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  TinySpec sp;
  auto m1 = lizard::testing::make_tiny(s, sp);
  auto m2 = lizard::testing::make_tiny(s, sp);  // same shape, other weights
  TinySpec wide = sp;
  wide.d = 96;
  auto m3 = lizard::testing::make_tiny(s, wide);
  LlamaModel a(m1.ck, one_thread()), b(m2.ck, one_thread()), c(m3.ck, one_thread());
  EXPECT_EQ(model_fingerprint(a), model_fingerprint(LlamaModel(m1.ck, one_thread())));
  EXPECT_NE(model_fingerprint(a), model_fingerprint(b));

  LlamaState st = a.new_state();
  const auto prompt = random_ids(s, 10, sp.vocab);
  gen(a, st, prompt, 3);
  const std::string bytes = serialize_state(a, st, {concat(prompt, {1, 2, 3})});

  LlamaState sb = b.new_state(), sc = c.new_state(), sa = a.new_state();
  EXPECT_THROW(deserialize_state(b, sb, bytes), Error);
  EXPECT_THROW(deserialize_state(c, sc, bytes), Error);
  EXPECT_THROW(deserialize_state(a, sb, bytes), Error);  // a state made by another model
  EXPECT_NO_THROW(deserialize_state(a, sa, bytes));
  EXPECT_EQ(sa.n_past(), st.n_past());

  // Every truncation and a flipped byte anywhere: an Error, and the state is left empty.
  for (size_t len : {size_t(0), size_t(5), size_t(8), size_t(20), bytes.size() / 2, bytes.size() - 9,
                     bytes.size() - 1}) {
    LlamaState t = a.new_state();
    EXPECT_THROW(deserialize_state(a, t, std::string_view(bytes).substr(0, len)), Error) << "length " << len;
    EXPECT_EQ(t.n_past(), 0);
  }
  for (int k = 0; k < 20; ++k) {
    std::string bad = bytes;
    const size_t at = std::uniform_int_distribution<size_t>(0, bad.size() - 1)(s.rng);
    bad[at] = static_cast<char>(bad[at] ^ (1 + k % 255));
    LlamaState t = a.new_state();
    EXPECT_THROW(deserialize_state(a, t, bad), Error) << "byte " << at;
    EXPECT_EQ(t.n_past(), 0);
  }
  // A state longer than a smaller context does not fit.
  ModelOptions small = one_thread();
  small.context = 8;
  LlamaModel a8(m1.ck, small);
  LlamaState s8 = a8.new_state();
  EXPECT_THROW(deserialize_state(a8, s8, bytes), Error);

  const fs::path dir = temp_dir();
  EXPECT_THROW(load_state((dir / "missing.lzs").string(), a, sa), Error);
  std::ofstream(dir / "junk.lzs") << "not a state";
  EXPECT_THROW(load_state((dir / "junk.lzs").string(), a, sa), Error);
  fs::remove_all(dir);
}

namespace {
// A mixer whose state keeps the default (unsaveable) serialize.
struct PlainState : MixerState {
  void reset() override {}
};
struct PlainMixer : SequenceMixer {
  std::string name() const override { return "plain"; }
  std::unique_ptr<MixerState> make_state(int64_t) const override { return std::make_unique<PlainState>(); }
  void forward(const float*, const float*, const float*, const float*, int64_t, int64_t, MixerState&,
               float*) const override {}
};
}  // namespace

TEST(StateIO, UnsaveableMixerIsAnError) {
  Seeded s;
  auto tm = lizard::testing::make_tiny(s, TinySpec{});
  LlamaModel model(tm.ck);
  model.set_mixer(1, std::make_shared<PlainMixer>());
  LlamaState st = model.new_state();
  try {
    serialize_state(model, st, {});
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot be saved"), std::string::npos) << e.what();
  }
}

TEST(StateIO, ResumeEqualsUninterruptedDefaultModel) {
  const std::string path = std::string(LIZARD_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << "default model not present";
  auto ck = std::make_shared<const Checkpoint>(open_checkpoint(path));
  ModelOptions mo = one_thread();  // OpenMP barriers crawl on a busy machine; one thread is steady
  mo.context = 256;
  LlamaModel model(ck, mo);
  const Tokenizer& tok = *ck->tokenizer;
  const fs::path dir = temp_dir();
  check_resume(model, tok.encode("The lizard basked on the warm rock", true), tok.encode(". Then it"), 8, 8, 0.0f,
               dir / "smol.lzs");
  // The file is small: 30 layers x 2 x 192 floats per position.
  EXPECT_LT(fs::file_size(dir / "smol.lzs"), 30u * 2 * 192 * 4 * 32 + 4096);
  fs::remove_all(dir);
}
