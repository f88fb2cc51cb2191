// Evaluation: PNG writer (decoded back with zlib), lm-eval prompt formats against hand-written
// strings, acc/acc_norm on fixed log-likelihoods, strided perplexity and KL on tiny random models
// against a direct computation, passkey/MQAR prompt construction, result files and --compare.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "eval/eval_model.h"
#include "eval/multiple_choice.h"
#include "eval/perplexity.h"
#include "eval/png.h"
#include "eval/recall.h"
#include "eval/report.h"
#include "llama_fixture.h"
#include "util/error.h"

using namespace lizard;
using lizard::testing::Seeded;
using lizard::testing::TinySpec;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kFixtures = std::string(LIZARD_SOURCE_DIR) + "/tests/fixtures/eval/";

uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

// Parses a PNG as written by encode_png, checking every chunk's CRC; returns RGB pixels.
std::vector<uint8_t> decode_png(const std::vector<uint8_t>& png, int& w, int& h) {
  const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  EXPECT_TRUE(png.size() > 8 && std::equal(sig, sig + 8, png.begin()));
  std::vector<uint8_t> idat;
  std::vector<std::string> order;
  for (size_t p = 8; p + 12 <= png.size();) {
    const uint32_t len = be32(&png[p]);
    const std::string type(png.begin() + p + 4, png.begin() + p + 8);
    order.push_back(type);
    const uLong crc = crc32(crc32(0, Z_NULL, 0), &png[p + 4], len + 4);
    EXPECT_EQ(be32(&png[p + 8 + len]), static_cast<uint32_t>(crc)) << type;
    if (type == "IHDR") {
      w = static_cast<int>(be32(&png[p + 8]));
      h = static_cast<int>(be32(&png[p + 12]));
      EXPECT_EQ(png[p + 16], 8);  // bit depth
      EXPECT_EQ(png[p + 17], 2);  // RGB
    }
    if (type == "IDAT") idat.insert(idat.end(), png.begin() + p + 8, png.begin() + p + 8 + len);
    p += 12 + len;
  }
  EXPECT_EQ(order, (std::vector<std::string>{"IHDR", "IDAT", "IEND"}));
  std::vector<uint8_t> raw(size_t(h) * (1 + 3 * size_t(w)));
  uLongf n = raw.size();
  EXPECT_EQ(uncompress(raw.data(), &n, idat.data(), idat.size()), Z_OK);
  EXPECT_EQ(n, raw.size());
  std::vector<uint8_t> px;
  for (int y = 0; y < h; ++y) {
    EXPECT_EQ(raw[y * (1 + 3 * size_t(w))], 0);  // filter: none
    px.insert(px.end(), raw.begin() + y * (1 + 3 * w) + 1, raw.begin() + (y + 1) * (1 + 3 * w));
  }
  return px;
}

// A model with all-zero logits: every token has probability 1/vocab.
FunctionEvalModel uniform_model(int vocab, int64_t ctx, std::vector<float>& buf, int* calls = nullptr) {
  return FunctionEvalModel("uniform", vocab, ctx, [&buf, vocab, calls](std::span<const int32_t> t, int64_t, bool all) {
    if (calls) ++*calls;
    buf.assign((all ? t.size() : 1) * vocab, 0.0f);
    return std::span<const float>(buf);
  });
}

// A model that knows the true sequence and gives its next token a high logit, except at the
// positions listed in `wrong`; with the byte codec.
struct Oracle {
  std::vector<int32_t> truth;
  std::set<int64_t> wrong;  // positions whose prediction is wrong
  std::vector<float> buf;
  FunctionEvalModel model() {
    return FunctionEvalModel("oracle", 256, 1 << 20, [this](std::span<const int32_t> t, int64_t pos, bool all) {
      const int64_t n = static_cast<int64_t>(t.size());
      buf.assign((all ? n : 1) * 256, 0.0f);
      for (int64_t r = all ? 0 : n - 1, row = 0; r < n; ++r, ++row) {
        const int64_t p = pos + r;
        if (p + 1 < static_cast<int64_t>(truth.size())) {
          const int32_t next = truth[p + 1];
          buf[row * 256 + (wrong.count(p) ? (next + 1) % 256 : next)] = 10.0f;
        }
      }
      return std::span<const float>(buf);
    });
  }
};

std::string bytes_to_string(const std::vector<int32_t>& ids, int64_t b, int64_t e) {
  std::string s;
  for (int64_t i = b; i < e; ++i) s.push_back(static_cast<char>(ids[i]));
  return s;
}

}  // namespace

// ---- PNG ------------------------------------------------------------------------------------------

TEST(EvalPng, WritesValidPngThatDecodes) {
  Raster r(7, 5, {10, 20, 30});
  r.set(0, 0, {255, 0, 0});
  r.fill_rect(2, 1, 3, 2, {0, 200, 100});
  r.set(6, 4, {1, 2, 3});
  int w = 0, h = 0;
  const auto px = decode_png(encode_png(r), w, h);
  ASSERT_EQ(w, 7);
  ASSERT_EQ(h, 5);
  EXPECT_EQ(px, r.pixels());
  EXPECT_EQ((Rgb{px[0], px[1], px[2]}), (Rgb{255, 0, 0}));
  const size_t at = (size_t(1) * 7 + 3) * 3;
  EXPECT_EQ((Rgb{px[at], px[at + 1], px[at + 2]}), (Rgb{0, 200, 100}));
}

TEST(EvalPng, HeatmapCellsAndText) {
  EXPECT_EQ(heat_color(0), (Rgb{215, 48, 39}));
  EXPECT_EQ(heat_color(1), (Rgb{26, 152, 80}));
  const Raster r = heatmap("T", "LEN", {"2048", "4096"}, "DEPTH", {"0%", "50%", "100%"}, {{1, 0, 0.5}, {-1, 1, 1}});
  int w = 0, h = 0;
  const auto px = decode_png(encode_png(r), w, h);
  EXPECT_EQ(w, r.width());
  EXPECT_EQ(h, r.height());
  // Count pixels of the full-accuracy and zero-accuracy colours: three green cells, one red.
  int64_t green = 0, red = 0, grey = 0;
  for (size_t i = 0; i < px.size(); i += 3) {
    const Rgb c{px[i], px[i + 1], px[i + 2]};
    green += c == heat_color(1);
    red += c == heat_color(0);
    grey += c == Rgb{200, 200, 200};
  }
  EXPECT_GT(green, 3 * 64 * 40 / 2);
  EXPECT_GT(red, 64 * 40 / 2);
  EXPECT_LT(red, 64 * 40);
  EXPECT_GT(grey, 64 * 40 / 2);
  // Text draws black pixels; an unknown character draws a box rather than nothing.
  Raster t(20, 10);
  t.text(1, 1, "~", {0, 0, 0});
  EXPECT_EQ(t.at(1, 1), (Rgb{0, 0, 0}));
}

// ---- multiple choice ------------------------------------------------------------------------------

TEST(EvalMc, MmluPromptZeroAndFewShot) {
  const json doc = json::parse(
      R"({"question": "  What is 2+2? ", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "elementary_mathematics"})");
  const json shot = json::parse(
      R"({"question": "What is 1+1?", "choices": ["2", "3", "4", "5"], "answer": "A", "subject": "elementary_mathematics"})");
  McDoc d = make_mc_doc(McFormat::MMLU, doc);
  ASSERT_EQ(d.requests.size(), 4u);
  EXPECT_EQ(d.requests[0].context,
            "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
            "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:");
  EXPECT_EQ(d.requests[0].continuation, " A");
  EXPECT_EQ(d.requests[3].continuation, " D");
  EXPECT_EQ(d.gold, 1);
  EXPECT_EQ(d.norm_len, (std::vector<double>{1, 1, 1, 1}));
  d = make_mc_doc(McFormat::MMLU, doc, {shot, shot});
  const std::string s = "What is 1+1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A\n\n";
  EXPECT_EQ(d.requests[2].context,
            "The following are multiple choice questions (with answers) about elementary mathematics.\n\n" + s + s +
                "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:");
}

TEST(EvalMc, PiqaArcHellaswagWinograndePrompts) {
  McDoc d = make_mc_doc(McFormat::PIQA, json::parse(R"({"goal": "Open a jar", "sol1": "Twist it.", "sol2": "Paint it.", "label": 1})"));
  EXPECT_EQ(d.requests[0].context, "Question: Open a jar\nAnswer:");
  EXPECT_EQ(d.requests[0].continuation, " Twist it.");
  EXPECT_EQ(d.requests[1].continuation, " Paint it.");
  EXPECT_EQ(d.norm_len, (std::vector<double>{9, 9}));
  EXPECT_EQ(d.gold, 1);

  d = make_mc_doc(McFormat::ARC, json::parse(R"({"question": "Which is a metal?", "choices": {"text": ["wood", "iron", "glass"],
                                                 "label": ["A", "B", "C"]}, "answerKey": "B"})"));
  EXPECT_EQ(d.requests[2].context, "Question: Which is a metal?\nAnswer:");
  EXPECT_EQ(d.requests[2].continuation, " glass");
  EXPECT_EQ(d.gold, 1);
  EXPECT_EQ(d.norm_len, (std::vector<double>{4, 4, 5}));

  d = make_mc_doc(McFormat::HellaSwag,
                  json::parse(R"({"activity_label": "Home and Garden", "ctx_a": "[header] How to grow a plant [title] Choose a pot.",
                                  "ctx_b": "FILL the pot", "endings": [" with soil [step] then water.", "with [x] sand"], "label": "0"})"));
  EXPECT_EQ(d.requests[0].context, "Home and Garden: How to grow a plant. Choose a pot. Fill the pot");
  EXPECT_EQ(d.requests[0].continuation, " with soil then water.");
  EXPECT_EQ(d.requests[1].continuation, " with sand");
  EXPECT_EQ(hellaswag_preprocess("a [b\n] c   d"), "a [b\n] c  d");  // no match across a newline; one pass
  EXPECT_EQ(d.gold, 0);

  d = make_mc_doc(McFormat::WinoGrande,
                  json::parse(R"({"sentence": "The trophy does not fit in the case because _ is too big.", "option1": "the trophy",
                                  "option2": "the case", "answer": "1"})"));
  EXPECT_EQ(d.requests[0].context, "The trophy does not fit in the case because the trophy");
  EXPECT_EQ(d.requests[1].context, "The trophy does not fit in the case because the case");
  EXPECT_EQ(d.requests[0].continuation, " is too big.");
  EXPECT_EQ(d.requests[1].continuation, " is too big.");
  EXPECT_EQ(d.norm_len, (std::vector<double>{54, 52}));
  EXPECT_EQ(d.gold, 0);
}

TEST(EvalMc, ScoresAccAndAccNorm) {
  // acc: -4 is the largest; acc_norm: -4/2 = -2, -6/12 = -0.5, -5/5 = -1 -> choice 1.
  McScore s = score_choices({-4, -6, -5}, {2, 12, 5}, 1);
  EXPECT_EQ(s.pred, 0);
  EXPECT_EQ(s.pred_norm, 1);
  EXPECT_FALSE(s.acc);
  EXPECT_TRUE(s.acc_norm);
  s = score_choices({-1, -1}, {3, 3}, 0);  // ties: the first, like numpy.argmax
  EXPECT_EQ(s.pred, 0);
  EXPECT_EQ(s.pred_norm, 0);
  EXPECT_NEAR(binary_stderr(0.5, 101), std::sqrt(0.25 / 100), 1e-12);
}

TEST(EvalMc, EncodePairAndLoglikelihoods) {
  const TextCodec bc = byte_codec();
  auto [c, k] = encode_pair(bc, "Answer: ", "A");  // the trailing space moves to the continuation
  EXPECT_EQ(bytes_to_string(c, 0, c.size()), "Answer:");
  EXPECT_EQ(bytes_to_string(k, 0, k.size()), " A");
  // Uniform model: each continuation byte costs log(256).
  std::vector<float> buf;
  int calls = 0;
  auto m = uniform_model(256, 64, buf, &calls);
  McDoc d;
  d.requests = {{"Question: x\nAnswer:", " ab"}, {"Question: x\nAnswer:", " abcd"}};
  d.norm_len = {2, 4};
  const auto ll = mc_loglikelihoods(m, bc, d, false);
  EXPECT_NEAR(ll[0], -3 * std::log(256.0), 1e-9);
  EXPECT_NEAR(ll[1], -5 * std::log(256.0), 1e-9);
  EXPECT_EQ(calls, 3);  // the shared context runs once
  // Longer than the context: the first tokens are dropped, the continuation still fully scored.
  d.requests = {{std::string(100, 'x'), " abc"}};
  EXPECT_NEAR(mc_loglikelihoods(m, bc, d, false)[0], -4 * std::log(256.0), 1e-9);
}

TEST(EvalMc, RunsFixtureAndExplainsBadInput) {
  std::vector<float> buf;
  auto m = uniform_model(256, 4096, buf);
  McOptions o;
  o.format = McFormat::PIQA;
  o.data = kFixtures + "piqa_sample.jsonl";
  McResult r = run_mc(m, byte_codec(), o);
  // Uniform model: loglik = -(len + 1) log 256 (the space too), so acc picks the shorter solution
  // and acc_norm (divided by len) the longer. Lengths (gold): 14/28 (0), 20/18 (1), 26/24 (0).
  EXPECT_EQ(r.n, 3);
  EXPECT_EQ(r.acc, 2);
  EXPECT_EQ(r.acc_norm, 1);
  o.format = McFormat::MMLU;
  o.data = kFixtures + "mmlu_test.jsonl";
  o.fewshot_file = kFixtures + "mmlu_dev.jsonl";
  o.shots = 2;
  try {
    run_mc(m, byte_codec(), o);
    ADD_FAILURE() << "astronomy has one dev example, two asked";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("astronomy"), std::string::npos) << e.what();
  }
  o.shots = 1;
  r = run_mc(m, byte_codec(), o);
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.by_subject.size(), 2u);
  o.format = McFormat::PIQA;
  o.shots = 0;
  o.data = kFixtures + "bad_piqa.jsonl";
  try {
    run_mc(m, byte_codec(), o);
    ADD_FAILURE() << "missing sol2";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"sol2\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("\"goal\": str"), std::string::npos) << e.what();
  }
  o.data = kFixtures + "no_such_file.jsonl";
  try {
    run_mc(m, byte_codec(), o);
    ADD_FAILURE() << "missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expects a file of JSONL lines"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_mc_format("boolq"), Error);
}

// ---- perplexity and KL ----------------------------------------------------------------------------

namespace {
// The HF strided-perplexity loop written out directly: summed NLL and count.
std::pair<double, int64_t> direct_strided_nll(const LlamaModel& m, const std::vector<int32_t>& ids, int64_t ctx,
                                              int64_t stride) {
  const int64_t n = ids.size(), V = m.vocab_size();
  double nll = 0;
  int64_t count = 0, prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + ctx, n), trg_len = end - prev_end;
    std::vector<int32_t> win(ids.begin() + begin, ids.begin() + end);
    LlamaState st = m.new_state();
    auto lg = m.forward(win, 0, st, true);
    for (int64_t j = 1; j < end - begin; ++j) {  // label j, predicted by row j - 1
      if (j < (end - begin) - trg_len) continue;   // masked (-100)
      const float* row = lg.data() + (j - 1) * V;
      double mx = row[0], s = 0;
      for (int v = 0; v < V; ++v) mx = std::max<double>(mx, row[v]);
      for (int v = 0; v < V; ++v) s += std::exp(row[v] - mx);
      nll += mx + std::log(s) - row[win[j]];
      ++count;
    }
    prev_end = end;
    if (end == n) break;
  }
  return {nll, count};
}
}  // namespace

TEST(EvalPpl, StridedMatchesDirectComputation) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  TinySpec sp;
  sp.ctx = 48;
  auto tiny = lizard::testing::make_tiny(s, sp);
  ModelOptions mo;
  mo.n_threads = 1;  // tiny sizes: threads would only wait on each other
  LlamaModel model(tiny.ck, mo);
  std::vector<int32_t> ids(131);
  for (auto& t : ids) t = static_cast<int32_t>(s.rng() % sp.vocab);
  LlamaEvalModel em(model, "tiny");
  for (auto [ctx, stride] : {std::pair<int64_t, int64_t>{32, 12}, {32, 32}, {48, 1}, {17, 5}}) {
    StrideOptions o;
    o.ctx = ctx;
    o.stride = stride;
    o.chunk = 5;
    const PplStats p = perplexity(em, ids, o);
    const auto [nll, count] = direct_strided_nll(model, ids, ctx, stride);
    EXPECT_EQ(p.tokens, count) << ctx << "/" << stride;
    EXPECT_NEAR(p.nll, nll, 1e-4 * count) << ctx << "/" << stride;
    if (stride < ctx) {
      EXPECT_EQ(p.tokens, 130);  // every token but the first
    }
  }
  PplStats p;
  p.nll = 100 * std::log(2.0);
  p.tokens = 50;
  p.bytes = 25;
  EXPECT_NEAR(p.bits_per_byte(), 4.0, 1e-12);
  EXPECT_NEAR(p.ppl(), 4.0, 1e-12);
  StrideOptions bad;
  bad.ctx = 64;
  EXPECT_THROW(perplexity(em, ids, bad), Error);  // longer than the model's context
}

TEST(EvalKl, SelfIsZeroAndMatchesDirect) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  TinySpec sp;
  sp.ctx = 32;
  auto ta = lizard::testing::make_tiny(s, sp);
  auto tb = lizard::testing::make_tiny(s, sp);
  ModelOptions mo;
  mo.n_threads = 1;
  LlamaModel a(ta.ck, mo), b(tb.ck, mo);
  std::vector<int32_t> ids(40);
  for (auto& t : ids) t = static_cast<int32_t>(s.rng() % sp.vocab);
  StrideOptions o;
  o.ctx = 24;
  o.stride = 8;
  o.chunk = 7;
  LlamaEvalModel ea(a, "a"), ea2(a, "a2"), eb(b, "b");
  KlStats self = kl_divergence(ea, ea2, ids, o);
  EXPECT_EQ(self.tokens, 39);
  EXPECT_NEAR(self.kl_per_token(), 0, 1e-6);
  EXPECT_EQ(self.top1_agree, 39);
  KlStats ab = kl_divergence(ea, eb, ids, o);
  // One window covering everything, computed directly.
  o.ctx = 32;
  o.stride = 32;
  std::vector<int32_t> first(ids.begin(), ids.begin() + 32);
  KlStats one = kl_divergence(ea, eb, first, o);
  LlamaState sa = a.new_state(), sb = b.new_state();
  auto la = a.forward(first, 0, sa, true);
  auto lb = b.forward(first, 0, sb, true);
  double kl = 0;
  int agree = 0;
  const int V = sp.vocab;
  for (int r = 0; r < 31; ++r) {
    const float *p = la.data() + r * V, *q = lb.data() + r * V;
    double zp = 0, zq = 0;
    for (int v = 0; v < V; ++v) zp += std::exp(double(p[v])), zq += std::exp(double(q[v]));
    for (int v = 0; v < V; ++v) {
      const double pp = std::exp(double(p[v])) / zp;
      kl += pp * (std::log(pp) - (q[v] - std::log(zq)));
    }
    agree += argmax(p, V) == argmax(q, V);
  }
  EXPECT_EQ(one.tokens, 31);
  EXPECT_NEAR(one.kl, kl, 1e-4);
  EXPECT_EQ(one.top1_agree, agree);
  EXPECT_GT(ab.kl_per_token(), 0);
  EXPECT_EQ(ab.teacher.tokens, 39);
}

// ---- passkey and MQAR -----------------------------------------------------------------------------

TEST(EvalPasskey, KeyAtRequestedDepth) {
  const TextCodec bc = byte_codec();
  PasskeyOptions o;
  for (double depth : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    std::mt19937_64 rng(static_cast<uint64_t>(depth * 100));
    const PasskeyPrompt p = make_passkey_prompt(bc, 3000, depth, o, rng);
    SCOPED_TRACE(depth);
    EXPECT_LE(p.tokens.size(), 3000u);
    EXPECT_GT(p.tokens.size(), 3000u - 30);  // within one filler sentence
    EXPECT_EQ(p.tokens[0], 0);               // document start
    const std::string text = bytes_to_string(p.tokens, 0, p.tokens.size());
    const std::string needle = " The pass key of " + p.label + " is " + p.answer + ". Remember it.";
    EXPECT_EQ(text.substr(p.needle_begin, needle.size()), needle);
    EXPECT_GE(p.answer.size(), 5u);
    EXPECT_LE(p.answer.size(), 8u);
    ASSERT_EQ(p.all_answers.size(), 5u);
    for (const auto& a : p.all_answers) EXPECT_NE(text.find(" is " + a + ". Remember it."), std::string::npos);
    EXPECT_TRUE(text.ends_with("\nWhat is the pass key of " + p.label + "? The pass key of " + p.label + " is"));
    // Depth: the filler before the asked needle, as a share of all filler (other needles excluded).
    int64_t needles = 0, before = 0;
    for (const auto& a : p.all_answers) {
      const size_t at = text.find(" is " + a + ". Remember it.");
      const size_t b = text.rfind(" The pass key of", at);
      const size_t e = text.find(" box.", at) + 5;
      needles += e - b;
      if (static_cast<int64_t>(b) < p.needle_begin) before += e - b;
    }
    const double filler = double(p.filler_end - p.filler_begin - needles);
    const double got = (p.needle_begin - p.filler_begin - before) / filler;
    EXPECT_NEAR(got, depth, 0.02);
  }
  EXPECT_EQ(first_number(" 12345. Remember"), "12345");
  EXPECT_EQ(first_number("none"), "");
  std::mt19937_64 rng(1);
  EXPECT_THROW(make_passkey_prompt(bc, 100, 0.5, o, rng), Error);  // too short for 5 keys
}

TEST(EvalPasskey, RunsWithOracleAndCountsMisses) {
  // An oracle that reads the prompt (byte codec) and answers the asked key; it answers wrongly at
  // depth 100 to check the table.
  std::vector<int32_t> seq;
  std::vector<float> buf;
  FunctionEvalModel m("oracle", 256, 1 << 20, [&](std::span<const int32_t> t, int64_t pos, bool) {
    seq.resize(pos);
    seq.insert(seq.end(), t.begin(), t.end());
    const std::string text = bytes_to_string(seq, 0, seq.size());
    const size_t q = text.rfind("\nWhat is the pass key of ");
    const std::string label = text.substr(q + 25, text.find('?', q) - q - 25);
    const size_t n = text.find(" The pass key of " + label + " is ");
    const size_t s = n + 21 + label.size();
    std::string ans = text.substr(s, text.find('.', s) - s);
    if (text.find(" box.", s) + 5 == q) ans = "0";  // the asked key sits right before the question
    const std::string said = text.substr(text.find(" box is", q + 30) + 7);
    const std::string want = " " + ans + ".";
    buf.assign(256, 0.0f);
    buf[said.size() < want.size() ? static_cast<unsigned char>(want[said.size()]) : '\n'] = 5;
    return std::span<const float>(buf);
  });
  PasskeyOptions o;
  o.lengths = {1200, 1500};
  o.depths = {0, 50, 100};
  o.samples = 2;
  const PasskeyResult r = run_passkey(m, byte_codec(), o);
  EXPECT_EQ(r.records.size(), 12u);
  EXPECT_NEAR(r.accuracy(), 2.0 / 3, 1e-12);
  EXPECT_DOUBLE_EQ(r.accuracy(1200, 50), 1.0);
  EXPECT_DOUBLE_EQ(r.accuracy(-1, 100), 0.0);
  const EvalReport rep = passkey_report("oracle", o, r);
  EXPECT_NEAR(rep.metric("acc_len1500"), 2.0 / 3, 1e-12);
  EXPECT_NE(rep.tables.find("| 1200 | 100.0 | 100.0 | 0.0 | 66.7 |"), std::string::npos) << rep.tables;
  o.lengths = {int64_t(1) << 21};
  EXPECT_THROW(run_passkey(m, byte_codec(), o), Error);  // beyond the context
}

TEST(EvalMqar, PromptAndTeacherForcedScoring) {
  const TextCodec bc = byte_codec();
  MqarOptions o;
  std::mt19937_64 rng(7);
  const MqarPrompt p = make_mqar_prompt(bc, 8, 600, o, rng);
  EXPECT_LE(p.tokens.size(), 600u);
  EXPECT_GT(p.tokens.size(), 570u);
  EXPECT_GT(p.filler_tokens, 300);
  ASSERT_EQ(p.queries.size(), 8u);
  const std::string text = bytes_to_string(p.tokens, 0, p.tokens.size());
  std::set<std::string> keys;
  for (const auto& q : p.queries) {
    EXPECT_EQ(bytes_to_string(p.tokens, q.value_begin, q.value_begin + q.value_len), " " + q.value);
    EXPECT_EQ(text.substr(q.value_begin - q.key.size() - 1, q.key.size() + 1), q.key + ":");
    // The pair is listed before the filler, with the same value.
    EXPECT_LT(text.find("\n" + q.key + ": " + q.value + "\n"), static_cast<size_t>(p.queries[0].value_begin) - 300);
    keys.insert(q.key);
  }
  EXPECT_EQ(keys.size(), 8u);
  o.words = true;
  o.queries = 3;
  const MqarPrompt w = make_mqar_prompt(bc, 5, 0, o, rng);
  EXPECT_EQ(w.queries.size(), 3u);
  EXPECT_EQ(w.filler_tokens, 0);

  // Scoring: record the prompt run_mqar builds, then an oracle on it is always right, and one
  // wrong digit fails exactly one query.
  o = MqarOptions();
  o.pairs = {6};
  o.seq_lens = {200};
  o.samples = 1;
  std::vector<int32_t> seen;
  std::vector<float> zeros;
  FunctionEvalModel rec("rec", 256, 1 << 20, [&](std::span<const int32_t> t, int64_t pos, bool all) {
    seen.resize(pos);
    seen.insert(seen.end(), t.begin(), t.end());
    zeros.assign((all ? t.size() : 1) * 256, 0.0f);
    return std::span<const float>(zeros);
  });
  EXPECT_DOUBLE_EQ(run_mqar(rec, bc, o).accuracy(), 0.0);
  Oracle orc;
  orc.truth = seen;
  orc.truth.push_back('\n');  // the last token is never fed
  auto m = orc.model();
  MqarResult r = run_mqar(m, bc, o);
  EXPECT_DOUBLE_EQ(r.accuracy(), 1.0);
  EXPECT_EQ(r.cells[0].total, 6);
  const std::string t2 = bytes_to_string(orc.truth, 0, orc.truth.size());
  orc.wrong = {static_cast<int64_t>(t2.rfind(':')) + 2};  // the row predicting the last value's 2nd digit
  r = run_mqar(m, bc, o);
  EXPECT_EQ(r.cells[0].correct, 5);
}

// ---- reports --------------------------------------------------------------------------------------

TEST(EvalReport, WritesReadsAndCompares) {
  const fs::path dir = fs::path(LIZARD_BINARY_DIR) / "test_eval_out";
  fs::remove_all(dir);
  StrideOptions o;
  PplStats a;
  a.nll = 200;
  a.tokens = 100;
  a.bytes = 400;
  PplStats b = a;
  b.nll = 250;
  const auto ja = write_report(ppl_report("models/teacher.gguf", o, a, 3), dir.string());
  const auto jb = write_report(ppl_report("student", o, b, 3), dir.string());
  EXPECT_TRUE(fs::exists(dir / "ppl_teacher.md"));
  EXPECT_EQ(fs::path(ja).filename(), "ppl_teacher.json");
  const EvalReport ra = read_report(ja), rb = read_report(jb);
  EXPECT_EQ(ra.model, "models/teacher.gguf");
  EXPECT_NEAR(ra.metric("ppl"), std::exp(2.0), 1e-9);
  EXPECT_NEAR(rb.metric("bits_per_byte"), 250 / std::log(2.0) / 400, 1e-12);
  const std::string expected =
      "| metric | models/teacher.gguf | student |\n"
      "|---|---:|---:|\n"
      "| ppl ppl | 7.389 | 12.18 |\n"
      "| ppl bits_per_byte | 0.7213 | 0.9017 |\n"
      "| ppl nll_per_token | 2 | 2.5 |\n"
      "| ppl tokens | 100 | 100 |\n"
      "| ppl bytes | 400 | 400 |\n";
  EXPECT_EQ(compare_reports({ra, rb}), expected);
  std::ofstream(dir / "junk.json") << R"({"a": 1})";
  EXPECT_THROW(read_report((dir / "junk.json").string()), Error);
  EXPECT_THROW(read_report((dir / "none.json").string()), Error);
  // The passkey heatmap lands next to the report.
  PasskeyOptions po;
  po.lengths = {2048};
  po.depths = {0, 100};
  PasskeyResult pr;
  pr.records = {{2048, 0, 0, "k", "1", "1", true}, {2048, 100, 0, "k", "1", "2", false}};
  write_passkey_png((dir / "p.png").string(), "m", po, pr);
  EXPECT_GT(fs::file_size(dir / "p.png"), 100u);
  fs::remove_all(dir);
}
