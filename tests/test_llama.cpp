// The Llama forward pass against a naive reference written here (plain loops, double
// accumulation), on tiny random models held in memory; and, when the default teacher is present,
// prefill/decode agreement and greedy generation on it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numbers>

#include "generate/generate.h"
#include "llama_fixture.h"
#include "model/llama.h"
#include "util/error.h"

using namespace lizard;
using lizard::testing::Seeded;
using lizard::testing::TinyModel;
using lizard::testing::TinySpec;

namespace {

// Logits [n, vocab] of every position of `tokens`, straight from the definitions.
std::vector<double> reference_forward(const TinyModel& m, const std::vector<int32_t>& tokens) {
  const ModelConfig& c = m.ck->config;
  const int n = static_cast<int>(tokens.size()), d = c.d_model, H = c.n_heads, Hkv = c.n_kv_heads,
            D = c.head_dim, F = c.d_ff, V = c.vocab_size;
  using Mat = std::vector<double>;
  auto linear = [&](const Mat& x, const std::string& name, int out, int in) {
    const auto& w = m.w(name + ".weight");
    Mat y(size_t(n) * out);
    for (int i = 0; i < n; ++i)
      for (int r = 0; r < out; ++r) {
        double acc = m.has(name + ".bias") ? m.w(name + ".bias")[r] : 0.0;
        for (int j = 0; j < in; ++j) acc += x[size_t(i) * in + j] * w[size_t(r) * in + j];
        y[size_t(i) * out + r] = acc;
      }
    return y;
  };
  auto norm = [&](const Mat& x, const std::string& name) {
    const auto& w = m.w(name);
    Mat y(x.size());
    for (int i = 0; i < n; ++i) {
      double ss = 0;
      for (int j = 0; j < d; ++j) ss += x[i * d + j] * x[i * d + j];
      const double inv = 1 / std::sqrt(ss / d + c.rms_eps);
      for (int j = 0; j < d; ++j) y[i * d + j] = x[i * d + j] * inv * w[j];
    }
    return y;
  };
  // Inverse frequencies, with the Llama-3 bands or linear scaling.
  std::vector<double> inv(D / 2);
  for (int j = 0; j < D / 2; ++j) {
    double f = std::pow(double(c.rope_theta), -2.0 * j / D);
    const auto& s = c.rope_scaling;
    if (s.kind == RopeScaling::Kind::Linear) f /= s.factor;
    if (s.kind == RopeScaling::Kind::Llama3) {
      const double wl = 2 * std::numbers::pi / f;
      if (wl > s.original_max_position / s.low_freq_factor) {
        f /= s.factor;
      } else if (wl >= s.original_max_position / s.high_freq_factor) {
        const double t = (s.original_max_position / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = (1 - t) * f / s.factor + t * f;
      }
    }
    inv[j] = f;
  }
  auto rope = [&](Mat& x, int heads) {
    for (int i = 0; i < n; ++i)
      for (int h = 0; h < heads; ++h)
        for (int j = 0; j < D / 2; ++j) {
          double* p = &x[(size_t(i) * heads + h) * D];
          const double a = i * inv[j], x1 = p[j], x2 = p[j + D / 2];
          p[j] = x1 * std::cos(a) - x2 * std::sin(a);
          p[j + D / 2] = x2 * std::cos(a) + x1 * std::sin(a);
        }
  };

  Mat x(size_t(n) * d);
  const auto& emb = m.w("token_embd.weight");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < d; ++j) x[i * d + j] = emb[size_t(tokens[i]) * d + j];
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    Mat xn = norm(x, p + "attn_norm.weight");
    Mat q = linear(xn, p + "attn_q", H * D, d), k = linear(xn, p + "attn_k", Hkv * D, d),
        v = linear(xn, p + "attn_v", Hkv * D, d);
    rope(q, H);
    rope(k, Hkv);
    Mat att(size_t(n) * H * D, 0.0);
    for (int i = 0; i < n; ++i)
      for (int h = 0; h < H; ++h) {
        const int g = h / (H / Hkv);
        std::vector<double> w(i + 1);
        double mx = -1e300, z = 0;
        for (int t = 0; t <= i; ++t) {
          double s = 0;
          for (int e = 0; e < D; ++e) s += q[(size_t(i) * H + h) * D + e] * k[(size_t(t) * Hkv + g) * D + e];
          w[t] = s / std::sqrt(double(D));
          mx = std::max(mx, w[t]);
        }
        for (auto& e : w) z += (e = std::exp(e - mx));
        for (int t = 0; t <= i; ++t)
          for (int e = 0; e < D; ++e) att[(size_t(i) * H + h) * D + e] += w[t] / z * v[(size_t(t) * Hkv + g) * D + e];
      }
    Mat o = linear(att, p + "attn_output", d, H * D);
    for (size_t j = 0; j < x.size(); ++j) x[j] += o[j];
    xn = norm(x, p + "ffn_norm.weight");
    Mat gt = linear(xn, p + "ffn_gate", F, d), up = linear(xn, p + "ffn_up", F, d);
    for (size_t j = 0; j < gt.size(); ++j) gt[j] = gt[j] / (1 + std::exp(-gt[j])) * up[j];
    Mat dn = linear(gt, p + "ffn_down", d, F);
    for (size_t j = 0; j < x.size(); ++j) x[j] += dn[j];
  }
  Mat xn = norm(x, "output_norm.weight");
  return linear(xn, m.has("output.weight") ? "output" : "token_embd", V, d);
}

std::vector<int32_t> random_tokens(Seeded& s, int n, int vocab) {
  std::vector<int32_t> t(n);
  for (auto& x : t) x = std::uniform_int_distribution<int32_t>(0, vocab - 1)(s.rng);
  return t;
}

double max_abs(std::span<const double> v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

void expect_logits_close(std::span<const float> got, std::span<const double> ref, double rel, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  const double tol = rel * std::max(1.0, max_abs(ref));
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    if (std::fabs(got[i] - ref[i]) > worst) worst = std::fabs(got[i] - ref[i]), at = i;
  EXPECT_LE(worst, tol) << what << ": worst |diff| at " << at << " (got " << got[at] << ", ref " << ref[at] << ")";
}

// Full forward (all logits) against the reference.
// last_rel: the last-token path runs the output head as a matvec, which rounds the activations
// to 8 bits for block-quantized weights.
void check_against_reference(const TinySpec& spec, double rel, int n = 13, double last_rel = 0) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  TinyModel m = lizard::testing::make_tiny(s, spec);
  LlamaModel model(m.ck);
  auto tokens = random_tokens(s, n, spec.vocab);
  auto ref = reference_forward(m, tokens);
  LlamaState st = model.new_state();
  auto all = model.forward(tokens, 0, st, true);
  expect_logits_close(all, ref, rel, "all logits");
  st.reset();
  auto last = model.forward(tokens, 0, st);
  expect_logits_close(last, std::span<const double>(ref).subspan((n - 1) * spec.vocab), last_rel > 0 ? last_rel : rel,
                      "last logits");
}

}  // namespace

TEST(Llama, ForwardMatchesReference) { check_against_reference(TinySpec{}, 1e-5); }

TEST(Llama, QkvBiasQwen2) {
  TinySpec sp;
  sp.arch = "qwen2";
  sp.qkv_bias = true;
  check_against_reference(sp, 1e-5);
}

TEST(Llama, TiedEmbeddings) {
  TinySpec sp;
  sp.tied = true;
  check_against_reference(sp, 1e-5);
}

TEST(Llama, Llama3RopeScaling) {
  TinySpec sp;
  sp.scaling.kind = RopeScaling::Kind::Llama3;
  sp.scaling.factor = 8;
  sp.scaling.low_freq_factor = 1;
  sp.scaling.high_freq_factor = 4;
  sp.scaling.original_max_position = 16;  // puts head_dim 16's wavelengths in all three bands
  check_against_reference(sp, 1e-5, 40);
}

TEST(Llama, LinearRopeScalingAndMhaNoGrouping) {
  TinySpec sp;
  sp.scaling.kind = RopeScaling::Kind::Linear;
  sp.scaling.factor = 2.5f;
  sp.kv_heads = sp.heads;
  sp.layers = 3;
  check_against_reference(sp, 1e-5);
}

TEST(Llama, QuantizedWeightsMatchDequantizedReference) {
  for (DType t : {DType::Q8_0, DType::Q4_1}) {
    TinySpec sp;
    sp.weight_type = t;
    sp.embd_type = DType::Q8_0;
    sp.tied = t == DType::Q4_1;
    sp.d = 96;
    sp.ff = 160;
    sp.head_dim = 32;  // rows of W_o are 4*32 = 128 long, a multiple of the block
    check_against_reference(sp, 2e-5, 13, 2e-2);  // prefill dequantizes, so only fp32 rounding differs
  }
}

// Prefill k tokens, then one at a time: every step's logits equal the full forward's row.
TEST(Llama, IncrementalDecodeEqualsFullForward) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  for (DType t : {DType::F32, DType::Q8_0}) {
    TinySpec sp;
    sp.weight_type = t;
    TinyModel m = lizard::testing::make_tiny(s, sp);
    ModelOptions opt;
    opt.max_batch = 4;  // every pass runs in chunks of 4 (sgemm, no 8-bit activations)
    LlamaModel model(m.ck, opt);
    const int n = 20, k = 8;
    auto tokens = random_tokens(s, n, sp.vocab);
    LlamaState full = model.new_state();
    auto all_span = model.forward(tokens, 0, full, true);
    std::vector<float> all(all_span.begin(), all_span.end());
    auto ref = reference_forward(m, tokens);
    expect_logits_close(all, ref, t == DType::F32 ? 1e-5 : 2e-5, "chunked full forward");

    LlamaState st = model.new_state();
    auto pre = model.forward(tokens.data(), k, 0, st);
    expect_logits_close(pre, std::span<const double>(ref).subspan((k - 1) * sp.vocab, sp.vocab),
                        t == DType::F32 ? 1e-5 : 2e-2, "prefill");
    for (int i = k; i < n; ++i) {
      auto l = model.forward(&tokens[i], 1, i, st);
      // Decoding a quantized model rounds activations to 8 bits (matvec), hence the looser bound.
      expect_logits_close(l, std::span<const double>(ref).subspan(size_t(i) * sp.vocab, sp.vocab),
                          t == DType::F32 ? 1e-5 : 3e-2, "decode step " + std::to_string(i));
    }
    EXPECT_EQ(st.n_past(), n);
    EXPECT_GT(st.cache_bytes(), 0u);
  }
}

TEST(Llama, RewindAndThreadsGiveSameLogits) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  TinyModel m = lizard::testing::make_tiny(s, TinySpec{});
  LlamaModel model(m.ck);
  auto a = random_tokens(s, 12, 97), b = random_tokens(s, 5, 97);
  LlamaState st = model.new_state();
  model.forward(a, 0, st);
  model.forward(b, 7, st);  // rewinds to 7 and continues with b
  std::vector<float> rewound(model.forward(b.data(), 1, 12, st).begin(), model.forward(b.data(), 1, 12, st).end());
  std::vector<int32_t> seq(a.begin(), a.begin() + 7);
  seq.insert(seq.end(), b.begin(), b.end());
  seq.push_back(b[0]);
  for (int threads : {1, 2, 3}) {
    model.set_threads(threads);
    LlamaState fresh = model.new_state();
    auto l = model.forward(seq, 0, fresh);
    for (size_t i = 0; i < l.size(); ++i) ASSERT_NEAR(l[i], rewound[i], 1e-4) << "threads " << threads;
  }
}

TEST(Llama, ErrorsAreClear) {
  Seeded s;
  TinyModel m = lizard::testing::make_tiny(s, TinySpec{});
  LlamaModel model(m.ck);
  LlamaState st = model.new_state();
  std::vector<int32_t> long_prompt(65, 1);
  try {
    model.forward(long_prompt, 0, st);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "prompt has 65 tokens, the context is 64");
  }
  std::vector<int32_t> bad = {3, 97};
  EXPECT_THROW(model.forward(bad, 0, st), Error);
  std::vector<int32_t> ok(40, 2);
  model.forward(ok, 0, st);
  EXPECT_THROW(model.forward(ok, 40, st), Error);  // 80 > 64
  EXPECT_THROW(model.forward(ok, 41, st), Error);  // beyond what the state holds

  // A longer context can be asked for.
  ModelOptions opt;
  opt.context = 100;
  LlamaModel longer(m.ck, opt);
  LlamaState st2 = longer.new_state();
  EXPECT_NO_THROW(longer.forward(long_prompt, 0, st2));

  // Missing and misshapen tensors.
  auto ck2 = std::make_shared<Checkpoint>();
  ck2->config = m.ck->config;
  ck2->tensors = m.ck->tensors;
  ck2->tensors.erase("blk.1.ffn_up.weight");
  EXPECT_THROW(LlamaModel{ck2}, Error);
  ck2->tensors = m.ck->tensors;
  ck2->tensors["blk.0.attn_k.weight"].shape = {16, 64};
  EXPECT_THROW(LlamaModel{ck2}, Error);
  ck2->tensors = m.ck->tensors;
  ck2->config.arch = "gpt2";
  EXPECT_THROW(LlamaModel{ck2}, Error);
}

TEST(Llama, Fp32CacheGivesSameLogits) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  TinySpec sp;
  sp.weight_type = DType::Q4_1;
  TinyModel m = lizard::testing::make_tiny(s, sp);
  LlamaModel plain(m.ck);
  ModelOptions opt;
  opt.fp32_cache_bytes = size_t(1) << 30;
  LlamaModel cached(m.ck, opt);
  EXPECT_EQ(plain.fp32_cached_bytes(), 0u);
  EXPECT_GT(cached.fp32_cached_bytes(), 0u);
  auto tokens = random_tokens(s, 10, sp.vocab);
  LlamaState a = plain.new_state(), b = cached.new_state();
  auto la = plain.forward(tokens, 0, a, true);
  auto lb = cached.forward(tokens, 0, b, true);
  for (size_t i = 0; i < la.size(); ++i) ASSERT_NEAR(la[i], lb[i], 1e-5);
}

// A mixer can be swapped per layer; states made before the swap are refused.
TEST(Llama, MixerSwap) {
  Seeded s;
  TinyModel m = lizard::testing::make_tiny(s, TinySpec{});
  LlamaModel model(m.ck);
  LlamaState before = model.new_state();
  auto tokens = random_tokens(s, 20, 97);
  auto full = std::vector<float>(model.forward(tokens, 0, before).begin(), model.forward(tokens, 0, before).end());
  // A window covering the whole sequence changes nothing; a short one does.
  model.set_mixer(1, std::make_shared<SoftmaxMixer>(m.ck->config, 64));
  EXPECT_THROW(model.forward(tokens, 0, before), Error);
  LlamaState st = model.new_state();
  auto same = model.forward(tokens, 0, st);
  for (size_t i = 0; i < same.size(); ++i) ASSERT_NEAR(same[i], full[i], 1e-5);
  model.set_mixer(0, std::make_shared<SoftmaxMixer>(m.ck->config, 3));
  st = model.new_state();
  auto diff = model.forward(tokens, 0, st);
  double d = 0;
  for (size_t i = 0; i < diff.size(); ++i) d = std::max(d, double(std::fabs(diff[i] - full[i])));
  EXPECT_GT(d, 1e-3);
  EXPECT_EQ(model.mixer(0).name(), "softmax");
}

// generate(): greedy output equals an argmax loop over full forwards; stops and streaming.
TEST(LlamaGenerate, GreedyStopsAndStreams) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  TinyModel m = lizard::testing::make_tiny(s, TinySpec{});
  LlamaModel model(m.ck);
  auto prompt = random_tokens(s, 6, 97);
  auto bytes = [](int32_t id) { return "<" + std::to_string(id) + ">"; };

  GenerateOptions opt;
  opt.max_new_tokens = 12;
  opt.sampling.temperature = 0;
  std::string streamed;
  int calls = 0;
  LlamaState st = model.new_state();
  GenerateStats g = generate(model, st, prompt, opt, bytes, std::nullopt, [&](int32_t id, std::string_view t) {
    ++calls;
    streamed += t;
    return true;
  });
  EXPECT_EQ(g.stop_reason, "length");
  EXPECT_EQ(g.new_tokens, 12);
  EXPECT_EQ(g.decode_steps, 11);
  EXPECT_EQ(g.prompt_tokens, 6);
  EXPECT_EQ(st.n_past(), 6 + 11);
  EXPECT_EQ(calls, 12);
  std::vector<int32_t> seq = prompt;
  std::string expect;
  for (int i = 0; i < 12; ++i) {
    LlamaState fresh = model.new_state();
    auto l = model.forward(seq, 0, fresh);
    const int32_t next = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    ASSERT_EQ(g.tokens[i], next) << "token " << i;
    seq.push_back(next);
    expect += bytes(next);
  }
  EXPECT_EQ(streamed, expect);

  // A stop id ends generation before its text is streamed; EOS likewise.
  GenerateOptions stop = opt;
  stop.stop_ids = {g.tokens[3]};
  streamed.clear();
  const size_t first = std::find(g.tokens.begin(), g.tokens.end(), g.tokens[3]) - g.tokens.begin();
  GenerateStats gs = generate(model, st = model.new_state(), prompt, stop, bytes, std::nullopt,
                              [&](int32_t, std::string_view t) { streamed += t; return true; });
  EXPECT_EQ(gs.stop_reason, "stop");
  EXPECT_EQ(gs.new_tokens, static_cast<int64_t>(first + 1));
  GenerateStats ge = generate(model, st = model.new_state(), prompt, opt, bytes, g.tokens[0], {});
  EXPECT_EQ(ge.stop_reason, "eos");
  EXPECT_EQ(ge.new_tokens, 1);
  // The callback can stop it.
  GenerateStats gc = generate(model, st = model.new_state(), prompt, opt, bytes, std::nullopt,
                              [&](int32_t, std::string_view) { return false; });
  EXPECT_EQ(gc.stop_reason, "callback");
  EXPECT_EQ(gc.new_tokens, 1);
  // The context ends it: 6 + 58 positions fill the 64.
  opt.max_new_tokens = 100;
  GenerateStats gx = generate(model, st = model.new_state(), prompt, opt, bytes, std::nullopt, {});
  EXPECT_EQ(gx.stop_reason, "context");
  EXPECT_EQ(st.n_past(), 64);
  // A prompt that does not fit.
  std::vector<int32_t> huge(70, 1);
  try {
    generate(model, st = model.new_state(), huge, opt, bytes, std::nullopt, {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "prompt has 70 tokens, the context is 64");
  }
  // Streaming loses no byte, with characters split across tokens and a dangling lead byte at the end.
  auto euro = [](int32_t id) { return std::string(id % 2 ? "\x82\xAC" : "\xE2"); };
  opt.max_new_tokens = 7;
  std::string joined;
  GenerateStats gu = generate(model, st = model.new_state(), prompt, opt, euro, std::nullopt,
                              [&](int32_t, std::string_view t) { joined += t; return true; });
  std::string all;
  for (int32_t id : gu.tokens) all += euro(id);
  EXPECT_EQ(joined, all);
}

// The default teacher (fetched by the test command): prefill logits equal token-by-token decoding,
// and greedy generation is deterministic and sensible.
namespace {
std::shared_ptr<const Checkpoint> default_teacher() {
  const std::string path = std::string(LIZARD_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) return nullptr;
  static std::shared_ptr<const Checkpoint> ck = std::make_shared<const Checkpoint>(open_checkpoint(path));
  return ck;
}
}  // namespace

TEST(LlamaTeacher, PrefillEqualsTokenByToken) {
  auto ck = default_teacher();
  if (!ck) GTEST_SKIP() << "default model not present";
  LlamaModel model(ck);
  auto tokens = ck->tokenizer->encode("The lizard basked on the warm rock, its tail curled around a small stone.");
  const int64_t n = static_cast<int64_t>(tokens.size()), V = model.vocab_size();
  ASSERT_GT(n, 10);
  LlamaState a = model.new_state();
  auto pre_span = model.forward(tokens, 0, a, true);
  std::vector<float> pre(pre_span.begin(), pre_span.end());
  LlamaState b = model.new_state();
  double worst = 0, scale = 0;
  int argmax_same = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto l = model.forward(&tokens[i], 1, i, b);
    const float* p = &pre[i * V];
    for (int64_t j = 0; j < V; ++j) {
      worst = std::max(worst, double(std::fabs(l[j] - p[j])));
      scale = std::max(scale, double(std::fabs(p[j])));
    }
    argmax_same += std::max_element(l.begin(), l.end()) - l.begin() == std::max_element(p, p + V) - p;
  }
  // Decoding rounds activations to 8 bits for the quantized dot products (as llama.cpp does);
  // prefill multiplies the dequantized weights in fp32. SmolLM2's outlier activations make that
  // rounding cost up to ~1 logit of ~30.
  EXPECT_LT(worst, 0.06 * scale) << "max |diff| " << worst << " of logits up to " << scale;
  EXPECT_GE(argmax_same, n - 2) << "of " << n;
  std::printf("prefill vs decode over %ld tokens: max |diff| %.4f (logits up to %.2f), argmax equal %d\n",
              static_cast<long>(n), worst, scale, argmax_same);

  // In exact mode decoding is the same fp32 arithmetic as prefill.
  ModelOptions ex;
  ex.exact = true;
  LlamaModel exact(ck, ex);
  LlamaState e = exact.new_state();
  double worst_exact = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto l = exact.forward(&tokens[i], 1, i, e);
    for (int64_t j = 0; j < V; ++j) worst_exact = std::max(worst_exact, double(std::fabs(l[j] - pre[i * V + j])));
  }
  EXPECT_LT(worst_exact, 1e-3 * scale);
  std::printf("exact decode: max |diff| %.6f\n", worst_exact);

  // Prefill in chunks (as for long prompts) equals one pass.
  ModelOptions opt;
  opt.max_batch = 5;
  LlamaModel chunked(ck, opt);
  LlamaState c = chunked.new_state();
  auto ch = chunked.forward(tokens, 0, c, true);
  double wc = 0;
  for (size_t j = 0; j < pre.size(); ++j) wc = std::max(wc, double(std::fabs(ch[j] - pre[j])));
  EXPECT_LT(wc, 1e-3 * scale);
}

TEST(LlamaTeacher, GreedyGeneration) {
  auto ck = default_teacher();
  if (!ck) GTEST_SKIP() << "default model not present";
  LlamaModel model(ck);
  const Tokenizer& tok = *ck->tokenizer;
  auto ids = tok.encode("The capital of France is");
  GenerateOptions opt;
  opt.max_new_tokens = 8;
  opt.sampling.temperature = 0;
  opt.stop_ids = chat_stop_ids(tok, ck->chat_template);
  std::string text;
  auto g = generate(model, tok, ids, opt, [&](int32_t, std::string_view t) {
    text += t;
    return true;
  });
  std::printf("greedy: The capital of France is%s [%s, %.1f prefill t/s, %.1f decode t/s]\n", text.c_str(), g.stop_reason.c_str(),
              g.prefill_tokens_per_s(), g.decode_tokens_per_s());
  EXPECT_EQ(text.substr(0, 6), " Paris") << text;
  std::string again;
  generate(model, tok, ids, opt, [&](int32_t, std::string_view t) {
    again += t;
    return true;
  });
  EXPECT_EQ(text, again);
}
