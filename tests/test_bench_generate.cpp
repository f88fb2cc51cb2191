// lizard bench generate on a tiny random teacher and its all-layer Lizard: each (model, context) in a
// child process, JSON/markdown/PNG outputs, Lizard's state constant while the KV cache grows, the
// time limit. Timings are not checked (speed belongs to bench/).
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <unistd.h>

#include "generate/bench_generate.h"
#include "llama_fixture.h"
#include "model/lizard_checkpoint.h"
#include "model/load_model.h"
#include "util/error.h"

using namespace lizard;
using lizard::testing::Seeded;
using lizard::testing::TinyModel;
using lizard::testing::TinySpec;
namespace fs = std::filesystem;

namespace {

struct Tiny {
  TinyModel tm;
  LizardCheckpoint lck;
};

Tiny make_models(Seeded& rs) {
  TinySpec sp;  // trained context 64: the teacher's context is raised for 256
  sp.layers = 2;
  Tiny t;
  t.tm = lizard::testing::make_tiny(rs, sp);
  LizardConfig c;
  c.feature_dim = 8;
  c.window = 16;
  c.chunk = 16;
  c.meta_tokens = 2;
  t.lck = init_lizard_checkpoint(c, t.tm.ck->config, rs.rng());
  return t;
}

// One thread: the test binary may have run OpenMP regions already (see bench_generate.h).
ModelOptions one_thread() {
  ModelOptions o;
  o.n_threads = 1;
  return o;
}

std::vector<BenchSubject> subjects(const Tiny& t) {
  return {
      {"teacher", [&] { return std::make_shared<LlamaModel>(t.tm.ck, one_thread()); }},
      {"lizard",
       [&] {
         auto m = std::make_shared<LlamaModel>(t.tm.ck, one_thread());
         apply_lizard(*m, t.lck);
         m->set_context(int64_t{1} << 40);  // as load_model does for an all-Lizard model
         return m;
       }},
  };
}

struct TmpDir {
  fs::path p;
  TmpDir() {
    p = fs::temp_directory_path() / ("lizard_bench_test_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
  }
  ~TmpDir() { fs::remove_all(p); }
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

uint32_t be32(const std::string& s, size_t off) {
  return (uint32_t(uint8_t(s[off])) << 24) | (uint32_t(uint8_t(s[off + 1])) << 16) | (uint32_t(uint8_t(s[off + 2])) << 8) |
         uint32_t(uint8_t(s[off + 3]));
}

}  // namespace

TEST(BenchGenerate, TinyTeacherAndLizard) {
  Seeded rs;
  SCOPED_TRACE(rs.trace());
  const Tiny t = make_models(rs);
  BenchGenerateOptions o;
  o.contexts = {256, 64};  // sorted by the runner
  o.decode = 4;
  o.time_limit_s = 60;
  o.seed = rs.seed;
  const auto runs = run_bench_generate(subjects(t), o);
  ASSERT_EQ(runs.size(), 4u);
  for (const auto& r : runs) EXPECT_TRUE(r.ok()) << r.model << " @ " << r.context << ": " << r.status << " " << r.note;
  const BenchRun &t64 = runs[0], &t256 = runs[1], &z64 = runs[2], &z256 = runs[3];
  EXPECT_EQ(t64.model, "teacher");
  EXPECT_EQ(t64.context, 64);
  EXPECT_EQ(t256.context, 256);
  EXPECT_EQ(z64.model, "lizard");

  // The KV cache grows with the context (2 layers x 2 kv heads x 16 dims x k,v x fp32 per token).
  const uint64_t per_token = 2 * 2 * 16 * 2 * 4;
  EXPECT_EQ(t64.state_bytes, 64 * per_token);
  EXPECT_EQ(t256.state_bytes, 256 * per_token);
  EXPECT_EQ(t256.state_bytes_end, (256 + 4) * per_token);
  EXPECT_GT(t256.state_bytes, t64.state_bytes);
  // Lizard's state does not.
  EXPECT_GT(z64.state_bytes, 0u);
  EXPECT_EQ(z64.state_bytes, z256.state_bytes);
  EXPECT_EQ(z64.state_bytes_end, z256.state_bytes_end);
  EXPECT_EQ(z64.state_bytes, z64.state_bytes_end);
  // The teacher beyond its context of 64 ran with it raised, and says so.
  EXPECT_EQ(t64.trained_context, 64);
  EXPECT_EQ(t256.run_context, 256 + 4);
  EXPECT_NE(t256.note.find("context raised"), std::string::npos) << t256.note;
  EXPECT_EQ(z256.trained_context, 0);
  EXPECT_TRUE(z256.note.empty()) << z256.note;
  for (const auto& r : runs) {
    EXPECT_GT(r.prefill_tok_s, 0);
    EXPECT_GT(r.decode_tok_s, 0);
    EXPECT_GT(r.peak_rss, 0u);
    EXPECT_GE(r.peak_rss, r.rss_after_load);
  }

  TmpDir tmp;
  write_bench_generate(tmp.p.string(), runs, {{"test", true}}, "tiny bench");
  // JSON: every field, per run.
  const auto j = nlohmann::json::parse(read_file(tmp.p / "bench_generate.json"));
  EXPECT_EQ(j.at("bench"), "generate");
  EXPECT_EQ(j.at("meta").at("test"), true);
  ASSERT_EQ(j.at("runs").size(), 4u);
  for (const auto& r : j.at("runs"))
    for (const char* k : {"model", "context", "status", "note", "trained_context", "run_context", "context_raised",
                          "decode_tokens", "wall_s", "load_s", "prefill_s", "decode_s", "prefill_tokens_per_s",
                          "decode_tokens_per_s", "state_bytes", "state_bytes_after_decode", "rss_after_load_bytes",
                          "peak_rss_bytes"})
      EXPECT_TRUE(r.contains(k)) << k;
  EXPECT_EQ(j["runs"][1]["context_raised"], true);
  EXPECT_EQ(j["runs"][3]["state_bytes"], j["runs"][2]["state_bytes"]);
  EXPECT_EQ(bench_run_from_json(j["runs"][1]).state_bytes, t256.state_bytes);
  // Markdown: a header and a row per run.
  const std::string md = read_file(tmp.p / "bench_generate.md");
  EXPECT_NE(md.find("| model | context |"), std::string::npos);
  EXPECT_NE(md.find("| lizard | 256 |"), std::string::npos) << md;
  // The summary says Lizard's state is flat and the teacher's is not.
  EXPECT_NE(md.find("- lizard: from 64 to 256 tokens (4x), state"), std::string::npos) << md;
  EXPECT_NE(md.find("MiB (flat)"), std::string::npos) << md;
  EXPECT_NE(md.find("- teacher: from 64 to 256 tokens (4x)"), std::string::npos) << md;
  EXPECT_NE(md.find("MiB (x3.8)"), std::string::npos) << md;  // 260 / 68 positions after decoding
  // PNG: signature, IHDR with the raster's size, IEND at the end.
  const std::string png = read_file(tmp.p / "bench_generate.png");
  ASSERT_GT(png.size(), 33u + 12u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  const Raster r = plot_bench_generate(runs, "tiny bench");
  EXPECT_EQ(be32(png, 16), uint32_t(r.width()));
  EXPECT_EQ(be32(png, 20), uint32_t(r.height()));
  EXPECT_EQ(png.substr(png.size() - 8, 4), "IEND");
  // Both lines are drawn: the teacher's red and the Lizard's blue pixels are there.
  int red = 0, blue = 0;
  for (int y = 0; y < r.height(); ++y)
    for (int x = 0; x < r.width(); ++x) {
      red += r.at(x, y) == Rgb{220, 60, 40};
      blue += r.at(x, y) == Rgb{30, 90, 200};
    }
  EXPECT_GT(red, 50);
  EXPECT_GT(blue, 50);
}

TEST(BenchGenerate, TimeLimitAndErrors) {
  // A run over the limit is killed and recorded; the model's longer contexts are skipped.
  std::vector<BenchSubject> s = {
      {"slow", [] { std::this_thread::sleep_for(std::chrono::seconds(30)); return std::shared_ptr<LlamaModel>(); }},
      {"broken", []() -> std::shared_ptr<LlamaModel> { fail("no such model"); }},
  };
  BenchGenerateOptions o;
  o.contexts = {16, 32};
  o.decode = 1;
  o.time_limit_s = 0.5;
  const auto t0 = std::chrono::steady_clock::now();
  const auto runs = run_bench_generate(s, o);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  ASSERT_EQ(runs.size(), 4u);
  EXPECT_EQ(runs[0].status, "did not finish");
  EXPECT_NE(runs[0].note.find("time limit"), std::string::npos) << runs[0].note;
  EXPECT_EQ(runs[1].status, "skipped");
  EXPECT_EQ(runs[2].status, "error");
  EXPECT_NE(runs[2].note.find("no such model"), std::string::npos) << runs[2].note;
  EXPECT_EQ(runs[3].status, "skipped");
  const std::string md = bench_generate_markdown(runs);
  EXPECT_NE(md.find("did not finish"), std::string::npos);
  // The plot copes with no finished run.
  const Raster r = plot_bench_generate(runs, "nothing finished");
  EXPECT_GT(r.width(), 0);
}
