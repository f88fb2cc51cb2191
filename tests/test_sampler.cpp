// Sampling rules and UTF-8 streaming.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "generate/generate.h"
#include "generate/sampler.h"
#include "llama_fixture.h"

using namespace lizard;
using lizard::testing::Seeded;

namespace {

std::vector<double> frequencies(Sampler& s, const std::vector<float>& logits, int draws) {
  std::vector<double> f(logits.size());
  for (int i = 0; i < draws; ++i) f[s.sample(logits)] += 1.0 / draws;
  return f;
}

std::vector<double> softmax(const std::vector<float>& l, double t) {
  std::vector<double> p(l.size());
  double z = 0;
  for (size_t i = 0; i < l.size(); ++i) z += (p[i] = std::exp(l[i] / t));
  for (auto& x : p) x /= z;
  return p;
}

}  // namespace

TEST(Sampler, GreedyIsArgmaxLowestIdOnTies) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  SamplerOptions o;
  o.temperature = 0;
  Sampler sm(o);
  for (int rep = 0; rep < 20; ++rep) {
    auto l = s.vec(1001, 5.0f);
    EXPECT_EQ(sm.sample(l), std::max_element(l.begin(), l.end()) - l.begin());
  }
  std::vector<float> tie = {1, 3, 0, 3};
  EXPECT_EQ(sm.sample(tie), 1);
  o.temperature = 1.5f;  // top-k 1 is greedy at any temperature
  o.top_k = 1;
  Sampler k1(o);
  EXPECT_EQ(k1.sample(tie), 1);
}

TEST(Sampler, SeedReproduces) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  auto l = s.vec(500, 3.0f);
  SamplerOptions o;
  o.temperature = 1.0f;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.seed = s.seed;
  Sampler a(o), b(o);
  std::vector<int32_t> ra, rb, rc;
  for (int i = 0; i < 50; ++i) ra.push_back(a.sample(l)), rb.push_back(b.sample(l));
  EXPECT_EQ(ra, rb);
  o.seed = s.seed + 1;
  Sampler c(o);
  for (int i = 0; i < 50; ++i) rc.push_back(c.sample(l));
  EXPECT_NE(ra, rc);
}

TEST(Sampler, TemperatureMatchesSoftmax) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  std::vector<float> l = {1.0f, 2.0f, 0.5f, -1.0f, 1.7f};
  for (float t : {0.5f, 1.0f, 2.0f}) {
    SamplerOptions o;
    o.temperature = t;
    o.top_k = 0;
    o.top_p = 1.0f;
    o.seed = s.seed;
    Sampler sm(o);
    auto f = frequencies(sm, l, 200000);
    auto p = softmax(l, t);
    for (size_t i = 0; i < l.size(); ++i) EXPECT_NEAR(f[i], p[i], 0.006) << "T " << t << " id " << i;
  }
}

TEST(Sampler, TopKAndTopPRenormalise) {
  Seeded s;
  SCOPED_TRACE(s.trace());
  // probabilities 0.5, 0.3, 0.15, 0.05
  std::vector<float> l = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  SamplerOptions o;
  o.temperature = 1.0f;
  o.seed = s.seed;
  o.top_k = 3;
  o.top_p = 1.0f;
  Sampler k3(o);
  auto f = frequencies(k3, l, 100000);
  EXPECT_EQ(f[2], 0.0);
  EXPECT_NEAR(f[1], 0.5 / 0.95, 0.01);
  EXPECT_NEAR(f[0], 0.15 / 0.95, 0.01);
  o.top_k = 0;
  o.top_p = 0.7f;  // smallest set reaching 0.7: {0.5, 0.3}
  Sampler p7(o);
  f = frequencies(p7, l, 100000);
  EXPECT_EQ(f[0], 0.0);
  EXPECT_EQ(f[2], 0.0);
  EXPECT_NEAR(f[1], 0.5 / 0.8, 0.01);
  EXPECT_NEAR(f[3], 0.3 / 0.8, 0.01);
  o.top_p = 0.1f;  // at least one token survives
  Sampler p1(o);
  EXPECT_EQ(p1.sample(l), 1);
}

TEST(Sampler, RepetitionPenalty) {
  std::vector<float> l = {2.0f, 1.5f, -1.0f, -1.2f};
  SamplerOptions o;
  o.temperature = 0;
  o.repetition_penalty = 1.5f;
  Sampler sm(o);
  std::vector<int32_t> hist = {0, 0, 7};  // 7 is out of range: ignored
  EXPECT_EQ(sm.sample(l, hist), 1);     // 2.0 / 1.5 < 1.5
  std::vector<float> neg = {-1.0f, -1.2f};
  std::vector<int32_t> h0 = {0};
  EXPECT_EQ(sm.sample(neg, h0), 1);     // -1.5 < -1.2
  o.repeat_last_n = 1;                  // only the last token counts
  Sampler last1(o);
  std::vector<int32_t> h2 = {0, 1};
  EXPECT_EQ(last1.sample(l, h2), 0);
}

TEST(Sampler, Utf8StreamHoldsSplitCharacters) {
  const std::string text = "a\xC3\xA9-\xE2\x82\xAC-\xF0\x9F\xA6\x8E-\xE4\xB8\xAD!";  // a é - € - 🦎 - 中 !
  for (size_t step : {1, 2, 3, 5}) {
    Utf8Stream u;
    std::string all;
    for (size_t i = 0; i < text.size(); i += step) {
      std::string out = u.push(std::string_view(text).substr(i, step));
      // Whatever comes out ends on a character boundary.
      if (!out.empty()) {
        size_t j = out.size();
        while (j > 0 && (static_cast<unsigned char>(out[j - 1]) & 0xC0) == 0x80) --j;
        ASSERT_GT(j, 0u);
        const auto lead = static_cast<unsigned char>(out[j - 1]);
        const size_t len = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
        EXPECT_EQ(out.size() - (j - 1), len) << "step " << step;
      }
      all += out;
    }
    all += u.flush();
    EXPECT_EQ(all, text);
  }
  Utf8Stream bad;
  EXPECT_EQ(bad.push("\xFF" "x"), "\xFF" "x");  // invalid bytes are not held
  EXPECT_EQ(bad.push("\xE2"), "");
  EXPECT_EQ(bad.flush(), "\xE2");
}
