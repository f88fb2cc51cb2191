// Stage 2 (src/train/stage2.h, lora.h, ops/cpu/layer_backward.h): every backward op against central
// finite differences in fp64; the whole-model cross-entropy gradient w.r.t. LoRA entries (and Lizard
// parameters, hybrid softmax layers included) against finite differences on a tiny random Lizard
// model; recomputation gives the same gradients; the loss falls over 30 steps; the saved directory
// carries the LoRA and the loaded model reproduces the training loss; stop + resume reproduces the
// uninterrupted losses. With no Lizard layer ("lizard_layers": "none"): LoRA on the teacher itself trains,
// saves, reloads and exports, through Stage2 and through `lizard linearize --stage 2`; stage 1 refuses.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <csignal>
#include <thread>
#include <unistd.h>

#include "llama_fixture.h"
#include "teacher_file_fixture.h"
#include "train_fixture.h"
#include "model/export.h"
#include "model/lizard_checkpoint.h"
#include "model/load_model.h"
#include "ops/cpu/layer_backward.h"
#include "train/linearize_cli.h"
#include "train/lora.h"
#include "train/stage1.h"
#include "train/stage2.h"
#include "train/trainer.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace lizard;
using lizard::testing::error_of;
using lizard::testing::Seeded;
using lizard::testing::TinySpec;
using lizard::testing::logged_losses;
using lizard::testing::random_tokens;

namespace {

std::vector<double> rnd(Seeded& s, size_t n, double scale = 1.0) {
  std::vector<double> v(n);
  for (auto& x : v) x = s.uniform(-1, 1) * scale;
  return v;
}

// 30 steps of batch 2 at lr 1e-2 with a held-out evaluation every 10: the end-to-end "stage 2 learns" runs.
TrainResult train_30_steps(Stage& stage, const Dataset& data, const std::string& out, int L) {
  TrainOptions o;
  o.out_dir = out;
  o.steps = 30;
  o.batch = 2;
  o.seq_len = L;
  o.lr = 1e-2;
  o.eval_every = 10;
  o.val_seqs = 2;
  o.eval_tokens = 32;
  o.quiet = true;
  return train(stage, data, o);
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks grad (analytic d f / d x) against central differences of f at every entry of x.
void expect_fd(std::vector<double>& x, const std::vector<double>& grad, const std::function<double()>& f,
               const char* what, double tol = 1e-6) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  const double h = 1e-5;
  double worst = 0, scale = 1e-12;
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f();
    x[i] = x0 - h;
    const double fm = f();
    x[i] = x0;
    const double num = (fp - fm) / (2 * h);
    worst = std::max(worst, std::abs(num - grad[i]));
    scale = std::max(scale, std::abs(num));
  }
  EXPECT_LT(worst / scale, tol) << what << ": max abs error " << worst << " (max |grad| " << scale << ")";
}

using TempDir = lizard::testing::ScratchDir;

LizardConfig tiny_config() {
  LizardConfig c;
  c.feature_dim = 8;
  c.window = 4;
  c.chunk = 4;
  c.meta_tokens = 2;
  return c;
}

TinySpec tiny_spec() {
  TinySpec sp;
  sp.vocab = 61;
  sp.d = 32;
  sp.layers = 2;
  sp.heads = 4;
  sp.kv_heads = 2;
  sp.head_dim = 8;
  sp.ff = 48;
  sp.ctx = 32;
  return sp;
}

LizardCheckpoint tiny_lizard(const Checkpoint& ck, const LizardConfig& c) {
  LizardCheckpoint lz = init_lizard_checkpoint(c, ck.config, 11);
  lz.teacher = {"<memory>", 0, "test-teacher", "test"};
  return lz;
}

Stage2Options tiny_options(int seq_len) {
  Stage2Options o;
  o.init_seed = 5;
  o.seq_len = seq_len;
  o.threads = 2;
  o.fp32_cache_bytes = 0;
  return o;
}

std::vector<int32_t> random_seq(Seeded& s, int n, int vocab) {
  std::vector<int32_t> v(n);
  for (auto& t : v) t = int32_t(s.rng() % vocab);
  return v;
}


}  // namespace

// ---- ops -------------------------------------------------------------------------------------

TEST(Stage2Ops, LinearAndLoraBackwardMatchFiniteDifferences) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  const int n = 5, in = 7, out = 6, r = 3;
  const double scale = 1.7;
  auto x = rnd(sd, n * in), W = rnd(sd, out * in), A = rnd(sd, r * in), B = rnd(sd, out * r), R = rnd(sd, n * out);
  auto f = [&] {
    std::vector<double> y(n * out), h(n * r);
    linear_forward(x.data(), n, in, W.data(), out, static_cast<const double*>(nullptr), y.data());
    lora_forward(x.data(), n, in, out, r, scale, A.data(), B.data(), h.data(), y.data());
    return dot(y, R);
  };
  std::vector<double> h(n * r), y(n * out), dx(n * in), dA(r * in, 0.0), dB(out * r, 0.0);
  linear_forward(x.data(), n, in, W.data(), out, static_cast<const double*>(nullptr), y.data());
  lora_forward(x.data(), n, in, out, r, scale, A.data(), B.data(), h.data(), y.data());
  linear_backward_input(R.data(), n, out, W.data(), in, dx.data(), false);
  lora_backward(x.data(), h.data(), R.data(), n, in, out, r, scale, A.data(), B.data(), dA.data(), dB.data(),
                dx.data());
  expect_fd(x, dx, f, "dx");
  expect_fd(A, dA, f, "dA");
  expect_fd(B, dB, f, "dB");
}

TEST(Stage2Ops, RmsnormSwigluRopeBackwardMatchFiniteDifferences) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  const int rows = 3, dim = 9;
  auto x = rnd(sd, rows * dim, 2.0), w = rnd(sd, dim), R = rnd(sd, rows * dim);
  auto f = [&] {
    std::vector<double> y(rows * dim);
    rmsnorm_forward(x.data(), w.data(), y.data(), rows, dim, 1e-5);
    return dot(y, R);
  };
  std::vector<double> dx(rows * dim, 0.5), base(rows * dim, 0.5);
  rmsnorm_backward(x.data(), w.data(), R.data(), dx.data(), rows, dim, 1e-5, true);
  for (int i = 0; i < rows * dim; ++i) dx[i] -= base[i];  // accumulate adds
  expect_fd(x, dx, f, "rmsnorm dx");

  const int n = 11;
  auto g = rnd(sd, n, 4.0), u = rnd(sd, n), Ro = rnd(sd, n);
  auto fs = [&] {
    std::vector<double> o(n);
    swiglu_forward(g.data(), u.data(), o.data(), n);
    return dot(o, Ro);
  };
  std::vector<double> dg(n), du(n);
  swiglu_backward(g.data(), u.data(), Ro.data(), dg.data(), du.data(), n);
  expect_fd(g, dg, fs, "swiglu dg");
  expect_fd(u, du, fs, "swiglu du");

  const int L = 4, H = 2, D = 8;
  const LizardRope rope = LizardRope::make(D, 10000.0);
  auto q = rnd(sd, L * H * D), Rq = rnd(sd, L * H * D);
  auto fr = [&] {
    std::vector<double> t = q;
    rope_rows(rope, t.data(), L, H, D, 3, false);
    return dot(t, Rq);
  };
  std::vector<double> dq = Rq;
  rope_rows(rope, dq.data(), L, H, D, 3, true);
  expect_fd(q, dq, fr, "rope dx");
}

TEST(Stage2Ops, AttentionAndCrossEntropyBackwardMatchFiniteDifferences) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  const int n = 6, H = 4, Hkv = 2, D = 5;
  auto q = rnd(sd, n * H * D, 1.5), k = rnd(sd, n * Hkv * D, 1.5), v = rnd(sd, n * Hkv * D), R = rnd(sd, n * H * D);
  auto f = [&] {
    std::vector<double> y(n * H * D);
    attention_forward(q.data(), k.data(), v.data(), n, H, Hkv, D, y.data());
    return dot(y, R);
  };
  std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
  attention_backward(q.data(), k.data(), v.data(), R.data(), n, H, Hkv, D, dq.data(), dk.data(), dv.data());
  expect_fd(q, dq, f, "attention dq");
  expect_fd(k, dk, f, "attention dk");
  expect_fd(v, dv, f, "attention dv");

  const int V = 13;
  auto z = rnd(sd, n * V, 3.0);
  std::vector<int32_t> tg(n);
  for (auto& t : tg) t = int32_t(sd.rng() % V);
  auto fc = [&] { return 0.3 * cross_entropy(z.data(), tg.data(), n, V, 1.0, static_cast<double*>(nullptr)); };
  std::vector<double> dz(z.size());
  cross_entropy(z.data(), tg.data(), n, V, 0.3, dz.data());
  expect_fd(z, dz, fc, "cross-entropy dlogits");
}

// ---- whole model --------------------------------------------------------------------------------

namespace {

// Checks a few entries of every gradient tensor of net against finite differences of its loss.
void check_model_gradients(Seeded& sd, Stage2Net<double>& net, const std::vector<int32_t>& seq, int L, bool lizard) {
  // B = 0 makes dA vanish: start from random adapters so both factors are exercised.
  for (auto& [l, m] : net.lora)
    for (auto& [t, a] : m)
      for (auto& b : a.b) b = sd.uniform(-0.3f, 0.3f);
  const double w = 1.0 / L;
  net.zero_grads();
  const double loss = net.run(seq.data(), L, w, true);
  EXPECT_TRUE(std::isfinite(loss));
  auto f = [&] { return net.run(seq.data(), L, w, false); };
  auto probe = [&](std::vector<double>& v, const std::vector<double>& g, const std::string& what) {
    double worst = 0, scale = 1e-12;
    const double h = 1e-5;
    for (int rep = 0; rep < 4; ++rep) {
      const size_t i = sd.rng() % v.size();
      const double x0 = v[i];
      v[i] = x0 + h;
      const double fp = f();
      v[i] = x0 - h;
      const double fm = f();
      v[i] = x0;
      const double num = (fp - fm) / (2 * h);
      worst = std::max(worst, std::abs(num - g[i]));
      scale = std::max(scale, std::abs(num));
    }
    EXPECT_LT(worst / scale, 1e-5) << what << ": max abs error " << worst << " (max |grad| " << scale << ")";
  };
  for (auto& [l, m] : net.lora)
    for (auto& [t, a] : m) {
      probe(a.a, a.ga, fmt::format("blk.{}.lora.{}.a", l, t));
      probe(a.b, a.gb, fmt::format("blk.{}.lora.{}.b", l, t));
    }
  if (lizard)
    for (auto& [l, p] : net.lizard) {
      auto pe = p.entries(net.lizard_config, net.lizard_shape);
      auto ge = net.lizard_grad.at(l).entries(net.lizard_config, net.lizard_shape);
      for (size_t e = 0; e < pe.size(); ++e)
        if (!pe[e].data->empty()) probe(*pe[e].data, *ge[e].data, fmt::format("blk.{}.lizard.{}", l, pe[e].name));
    }
}

}  // namespace

TEST(Stage2Grad, WholeModelLoraGradientsMatchFiniteDifferences) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp = tiny_spec();
  sp.tied = true;  // output head = embedding
  auto tiny = lizard::testing::make_tiny(sd, sp);
  LizardCheckpoint lz = tiny_lizard(*tiny.ck, tiny_config());
  lz.lora = init_lora({}, tiny.ck->config, 3);
  const int L = 10;
  const auto seq = random_seq(sd, L + 1, sp.vocab);
  Stage2Net<double> net(*tiny.ck, lz);
  net.train_lizard = true;
  check_model_gradients(sd, net, seq, L, true);

  // Recomputation: the same gradients.
  net.zero_grads();
  net.run(seq.data(), L, 0.1, true);
  auto g1 = net.lora.at(0).at("q").ga;
  net.recompute = true;
  net.zero_grads();
  net.run(seq.data(), L, 0.1, true);
  EXPECT_EQ(net.lora.at(0).at("q").ga, g1);
}

TEST(Stage2Grad, HybridModelWithBiasAndUntiedHead) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp = tiny_spec();
  sp.qkv_bias = true;
  sp.arch = "qwen2";
  auto tiny = lizard::testing::make_tiny(sd, sp);
  LizardConfig c = tiny_config();
  c.lizard_layers = {1};  // layer 0 keeps softmax attention
  LizardCheckpoint lz = tiny_lizard(*tiny.ck, c);
  LoraOptions lo;
  lo.rank = 4;
  lo.targets = {"q", "v"};
  lz.lora = init_lora(lo, tiny.ck->config, 3);
  const int L = 9;
  const auto seq = random_seq(sd, L + 1, sp.vocab);
  Stage2Net<double> net(*tiny.ck, lz);
  check_model_gradients(sd, net, seq, L, false);

  // The float network agrees with the double one.
  Stage2Net<float> nf(*tiny.ck, lz);
  for (auto& [l, m] : net.lora)
    for (auto& [t, a] : m) nf.lora[l][t].b.assign(a.b.begin(), a.b.end());
  net.zero_grads();
  nf.zero_grads();
  const double ld = net.run(seq.data(), L, 1.0 / L, true), lf = nf.run(seq.data(), L, 1.0 / L, true);
  EXPECT_NEAR(lf, ld, 1e-4 * std::abs(ld));
  const auto& gd = net.lora.at(0).at("q").ga;
  const auto& gf = nf.lora.at(0).at("q").ga;
  double err = 0, mx = 0;
  for (size_t i = 0; i < gd.size(); ++i) {
    err = std::max(err, std::abs(double(gf[i]) - gd[i]));
    mx = std::max(mx, std::abs(gd[i]));
  }
  EXPECT_LT(err, 1e-3 * mx);
}

// ---- training -------------------------------------------------------------------------------------

TEST(Stage2Train, LossFallsAndTheSavedModelCarriesTheLora) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp = tiny_spec();
  auto tiny = lizard::testing::make_tiny(sd, sp);
  const int L = 16;
  Stage2 stage(tiny.ck, tiny_lizard(*tiny.ck, tiny_config()), tiny_options(L));
  Dataset data = random_tokens(sd.rng, sp.vocab, L, 4, 2, 4, 3);  // few sequences: LoRA can fit them
  TempDir dir;
  const TrainResult r = train_30_steps(stage, data, dir.path.string(), L);
  ASSERT_EQ(r.losses.size(), 30u);
  const double first = (r.losses[0] + r.losses[1] + r.losses[2]) / 3,
               last = (r.losses[27] + r.losses[28] + r.losses[29]) / 3;
  EXPECT_LT(last, 0.85 * first) << "first " << first << " last " << last;
  std::printf("[stage2] tiny model: loss %.4g -> %.4g over 30 steps (%.0f tokens/s)\n", first, last, r.tokens_per_s);
  for (const char* f : {kLizardCheckpointFile, kTrainStateFile, kTrainLogFile, "loss.png", "report.json"})
    EXPECT_TRUE(fs::exists(dir.path / f)) << f;

  // The directory holds the adapters; the model built from it (load_model's path after the teacher
  // check) gives the loss the trainer computes.
  const LizardCheckpoint ck = load_lizard_checkpoint((dir.path / kLizardCheckpointFile).string());
  ASSERT_EQ(ck.lora.rank, 8);
  EXPECT_EQ(ck.lora.alpha, 16);
  EXPECT_EQ(ck.lora.layers.size(), 2u);
  EXPECT_EQ(ck.lora.layers.at(1).at("v").b, stage.net().lora.at(1).at("v").b);
  bool moved = false;
  for (float b : ck.lora.layers.at(0).at("q").b) moved |= b != 0;
  EXPECT_TRUE(moved);
  ModelOptions mo;
  mo.context = L;
  LlamaModel m(tiny.ck, mo);
  apply_lizard(m, ck);
  auto st = m.new_state();
  const int32_t* seq = data.val.tokens.data();
  auto logits = m.forward(seq, L, 0, st, true);
  const double ce = cross_entropy(logits.data(), seq + 1, L, sp.vocab, 1.0, static_cast<float*>(nullptr)) / L;
  const double want = stage.evaluate({seq}, L).total;
  EXPECT_NEAR(ce, want, 2e-3 * want);
  // Without the adapters the loss differs (they are in use).
  LizardCheckpoint bare = ck;
  bare.lora = {};
  LlamaModel m2(tiny.ck, mo);
  apply_lizard(m2, bare);
  auto st2 = m2.new_state();
  auto l2 = m2.forward(seq, L, 0, st2, true);
  EXPECT_GT(std::abs(cross_entropy(l2.data(), seq + 1, L, sp.vocab, 1.0, static_cast<float*>(nullptr)) / L - ce), 1e-4);
}

TEST(Stage2Resume, StopAndResumeReproducesTheUninterruptedLosses) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp = tiny_spec();
  auto tiny = lizard::testing::make_tiny(sd, sp);
  const int L = 12, N = 4;
  const LizardCheckpoint lz = tiny_lizard(*tiny.ck, tiny_config());
  Dataset data = random_tokens(sd.rng, sp.vocab, L, 7, 2, 4, 3);
  TrainOptions o;
  o.steps = 2 * N;
  o.batch = 2;
  o.seq_len = L;
  o.lr = 1e-2;
  o.eval_every = 3;
  o.val_seqs = 1;
  o.eval_tokens = 0;
  o.quiet = true;
  Stage2Options so = tiny_options(L);
  so.train_lizard = true;

  TempDir a;
  o.out_dir = a.path.string();
  Stage2 sa(tiny.ck, lz, so);
  const TrainResult ra = train(sa, data, o);
  ASSERT_EQ(ra.losses.size(), size_t(2 * N));

  TempDir b;
  o.out_dir = b.path.string();
  std::atomic<bool> stop{false};
  o.stop = &stop;
  o.on_step = [&](int64_t done, const LossResult&) {
    if (done == N) stop = true;
  };
  {
    Stage2 sb(tiny.ck, lz, so);
    const TrainResult rb = train(sb, data, o);
    EXPECT_TRUE(rb.interrupted);
    EXPECT_EQ(rb.steps_done, N);
  }
  stop = false;
  o.on_step = nullptr;
  o.resume = true;
  Stage2 sc(tiny.ck, lz, so);
  const TrainResult rc = train(sc, data, o);
  EXPECT_EQ(rc.start_step, N);
  const std::vector<double> resumed = logged_losses(b.path);
  ASSERT_EQ(resumed.size(), size_t(2 * N));
  for (int i = 0; i < 2 * N; ++i) EXPECT_EQ(resumed[i], ra.losses[i]) << "step " << i + 1;
  EXPECT_EQ(sa.net().lora.at(1).at("k").a, sc.net().lora.at(1).at("k").a);
  EXPECT_EQ(sa.net().lizard.at(0).gate_w, sc.net().lizard.at(0).gate_w);

  // Other LoRA settings: the resume is refused.
  so.lora.rank = 4;
  Stage2 sd2(tiny.ck, lz, so);
  EXPECT_THROW(train(sd2, data, o), Error);
}

TEST(Stage2Lora, DecodeStepsMatchPrefillWithAdapters) {
  // `lizard generate` decodes one token at a time (matvec path): the adapters must apply there too.
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp = tiny_spec();
  auto tiny = lizard::testing::make_tiny(sd, sp);
  LizardConfig c = tiny_config();
  c.lizard_layers = {0};
  LizardCheckpoint lz = tiny_lizard(*tiny.ck, c);
  lz.lora = init_lora({}, tiny.ck->config, 9);
  for (auto& [l, m] : lz.lora.layers)
    for (auto& [t, a] : m)
      for (auto& b : a.b) b = sd.uniform(-0.5f, 0.5f);
  ModelOptions mo;
  mo.context = 16;
  mo.exact = true;
  LlamaModel m(tiny.ck, mo);
  apply_lizard(m, lz);
  const auto seq = random_seq(sd, 8, sp.vocab);
  auto st = m.new_state();
  const auto all = m.forward(seq.data(), 8, 0, st, true);
  const std::vector<float> want(all.end() - sp.vocab, all.end());
  auto st2 = m.new_state();
  std::span<const float> got;
  for (int i = 0; i < 8; ++i) got = m.forward(seq.data() + i, 1, i, st2);
  double err = 0, mx = 0;
  for (int j = 0; j < sp.vocab; ++j) {
    err = std::max(err, double(std::abs(got[j] - want[j])));
    mx = std::max(mx, double(std::abs(want[j])));
  }
  EXPECT_LT(err, 1e-4 * mx + 1e-5);
  // And the adapters change the output.
  LlamaModel bare(tiny.ck, mo);
  lz.lora = {};
  apply_lizard(bare, lz);
  auto st3 = bare.new_state();
  const auto b = bare.forward(seq.data(), 8, 0, st3);
  double diff = 0;
  for (int j = 0; j < sp.vocab; ++j) diff = std::max(diff, double(std::abs(b[j] - want[j])));
  EXPECT_GT(diff, 1e-3);
}

// ---- no Lizard layers: LoRA on the teacher itself (stage 2's yardstick) -----------------------------

TEST(Stage2NoLizard, Stage1Refuses) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  auto tiny = lizard::testing::make_tiny(sd, tiny_spec());
  Stage1Options so;
  so.config = LizardConfig::none();
  so.seq_len = 8;
  so.threads = 1;
  so.fp32_cache_bytes = 0;
  const std::string e = error_of([&] { Stage1 s(tiny.ck, so); });
  EXPECT_NE(e.find("stage 1 needs at least one Lizard layer"), std::string::npos) << e;
}

TEST(Stage2NoLizard, TeacherLoraTrainsSavesAndReloads) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp = tiny_spec();
  auto tiny = lizard::testing::make_tiny(sd, sp);
  const LizardCheckpoint start = tiny_lizard(*tiny.ck, LizardConfig::none());
  EXPECT_TRUE(start.layers.empty());
  const int L = 16;
  Stage2 stage(tiny.ck, start, tiny_options(L));
  // Only the adapters train: per layer a, b of q, k, v.
  EXPECT_EQ(stage.params().size(), size_t(sp.layers) * 3 * 2);
  // Before training the student is the teacher (B = 0): same loss.
  Dataset data = random_tokens(sd.rng, sp.vocab, L, 4, 2, 4, 3);
  const int32_t* vseq = data.val.tokens.data();
  {
    LlamaModel t(tiny.ck, [&] {
      ModelOptions mo;
      mo.context = L;
      return mo;
    }());
    auto st = t.new_state();
    auto lg = t.forward(vseq, L, 0, st, true);
    const double teacher_ce = cross_entropy(lg.data(), vseq + 1, L, sp.vocab, 1.0, static_cast<float*>(nullptr)) / L;
    const double student_ce = stage.evaluate({vseq}, L).total;
    EXPECT_NEAR(student_ce, teacher_ce, 2e-3 * teacher_ce);
  }
  TempDir dir;
  const TrainResult r = train_30_steps(stage, data, dir.path.string(), L);
  ASSERT_EQ(r.losses.size(), 30u);
  const double first = (r.losses[0] + r.losses[1] + r.losses[2]) / 3,
               last = (r.losses[27] + r.losses[28] + r.losses[29]) / 3;
  EXPECT_LT(last, 0.85 * first) << "first " << first << " last " << last;
  std::printf("[stage2] tiny teacher, no Lizard layers: loss %.4g -> %.4g over 30 steps\n", first, last);
  ASSERT_TRUE(r.report.contains("heldout_eval"));
  EXPECT_TRUE(r.report["heldout_eval"]["student_ppl"].is_number());
  EXPECT_TRUE(r.report["heldout_eval"]["kl_per_token"].is_number());

  // The saved checkpoint: no Lizard layers, the config says "none", the adapters are there and moved.
  const LizardCheckpoint ck = load_lizard_checkpoint((dir.path / kLizardCheckpointFile).string());
  EXPECT_TRUE(ck.config.no_lizard_layers);
  EXPECT_TRUE(ck.layers.empty());
  ASSERT_EQ(ck.lora.layers.size(), size_t(sp.layers));
  EXPECT_EQ(ck.lora.layers.at(1).at("v").b, stage.net().lora.at(1).at("v").b);
  EXPECT_NE(describe_lizard_checkpoint(ck).find("none"), std::string::npos);
  // Reloaded, every layer keeps softmax attention and the model gives the trainer's loss.
  ModelOptions mo;
  mo.context = L;
  LlamaModel m(tiny.ck, mo);
  apply_lizard(m, ck);
  for (int l = 0; l < sp.layers; ++l) EXPECT_EQ(m.mixer(l).name(), "softmax") << l;
  auto st = m.new_state();
  auto logits = m.forward(vseq, L, 0, st, true);
  const double ce = cross_entropy(logits.data(), vseq + 1, L, sp.vocab, 1.0, static_cast<float*>(nullptr)) / L;
  const double want = stage.evaluate({vseq}, L).total;
  EXPECT_NEAR(ce, want, 2e-3 * want);
}

// For `lizard linearize` end to end: a tiny GGUF teacher in `dir` and a folder of `docs` word-salad text
// documents (the validation split takes whole documents, by hash), with the small run settings both tests use.
LinearizeArgs tiny_linearize_args(Seeded& sd, const fs::path& dir, int docs, const std::string& out) {
  TinySpec sp = tiny_spec();
  sp.vocab = 270;  // the fixture's tokenizer has 264
  sp.ctx = 64;
  auto tiny = lizard::testing::make_tiny(sd, sp);
  LinearizeArgs a;
  a.teacher = (dir / "tiny.gguf").string();
  lizard::testing::write_gguf_teacher(a.teacher, tiny);
  const fs::path text = dir / "data";
  fs::create_directories(text);
  for (int f = 0; f < docs; ++f) {
    std::ofstream t(text / ("doc" + std::to_string(f) + ".txt"));
    const char* words[] = {"the", "thin", "hen", "in", "then", "there", "this", "then"};
    for (int i = 0; i < 150; ++i) t << words[sd.rng() % 8] << (i % 13 == 12 ? ".\n" : " ");
  }
  a.data = {text.string()};
  a.out = out;
  a.seq_len = 16;
  a.batch = 2;
  a.val_fraction = 0.3;
  a.val_seqs = 2;
  a.quiet = true;
  return a;
}

// `lizard linearize` with configs/teacher_lora.json's config, end to end on a GGUF teacher and a text file:
// stage 1 (and both) and --train-lizard refuse; --stage 2 trains the LoRA and reports held-out ppl / KL;
// the directory loads (load_model: what generate and eval use) and exports.
TEST(Stage2NoLizard, LinearizeStage2FromTheTeacher) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TempDir dir;
  const std::string cfg = (dir.path / "none.json").string(), out = (dir.path / "yardstick").string();
  std::ofstream(cfg) << R"({"lizard_layers": "none"})";
  LinearizeArgs a = tiny_linearize_args(sd, dir.path, 40, out);
  a.config = cfg;
  a.steps = 12;
  a.eval_every = 6;
  a.eval_tokens = 64;
  a.lr2 = 1e-2;
  a.threads = 2;
  for (const char* stage : {"1", "both"}) {
    a.stage = stage;
    const std::string e = error_of([&] { run_linearize(a); });
    EXPECT_NE(e.find("stage 1 needs at least one Lizard layer"), std::string::npos) << stage << ": " << e;
  }
  EXPECT_FALSE(fs::exists(out));  // refused before anything was written
  a.stage = "2";
  a.train_lizard = true;
  EXPECT_NE(error_of([&] { run_linearize(a); }).find("--train-lizard"), std::string::npos);
  a.train_lizard = false;
  ASSERT_EQ(run_linearize(a), 0);

  std::ifstream rf(out + "/report.json");
  ASSERT_TRUE(rf.good());
  const auto rep = nlohmann::json::parse(rf);
  ASSERT_TRUE(rep["heldout_eval"].is_object()) << rep.dump();
  const double tppl = rep["heldout_eval"]["teacher_ppl"].get<double>(),
               sppl = rep["heldout_eval"]["student_ppl"].get<double>(),
               kl = rep["heldout_eval"]["kl_per_token"].get<double>();
  EXPECT_TRUE(std::isfinite(tppl) && std::isfinite(sppl) && kl >= 0) << rep["heldout_eval"].dump();
  EXPECT_LT(sppl, tppl) << "LoRA on in-domain text should lower the held-out ppl";
  const std::vector<double> losses = logged_losses(out);
  ASSERT_EQ(losses.size(), 12u);
  EXPECT_LT(losses.back(), losses.front());

  // Loads as a Lizard model with no Lizard layer (the teacher found through the checkpoint) ...
  ModelOptions mo;
  mo.context = 64;
  mo.n_threads = 1;
  mo.exact = true;
  const LoadedModel m = load_model(out, mo);
  ASSERT_TRUE(m.is_lizard());
  EXPECT_TRUE(m.lizard->config.no_lizard_layers);
  EXPECT_FALSE(m.lizard->lora.empty());
  EXPECT_EQ(m.model->context_length(), 64);  // softmax layers: the context stays bounded
  for (int l = 0; l < tiny_spec().layers; ++l) EXPECT_EQ(m.model->mixer(l).name(), "softmax");
  // ... and exports (LoRA merged) to a model that gives the same logits.
  const std::string merged = (dir.path / "merged").string();
  export_merged(out, merged);
  const LoadedModel e = load_model(merged, mo);
  ASSERT_TRUE(e.is_lizard());
  EXPECT_TRUE(e.lizard->layers.empty());
  EXPECT_TRUE(e.lizard->lora.empty());
  std::vector<int32_t> tok(20);
  for (auto& t : tok) t = int32_t(sd.rng() % 264);
  auto s1 = m.model->new_state(), s2 = e.model->new_state();
  const auto l1 = m.model->forward(tok, 0, s1, true);
  const std::vector<float> a1(l1.begin(), l1.end());
  const auto l2 = e.model->forward(tok, 0, s2, true);
  double err = 0, mx = 0;
  for (size_t i = 0; i < a1.size(); ++i) {
    err = std::max(err, double(std::abs(l2[i] - a1[i])));
    mx = std::max(mx, double(std::abs(a1[i])));
  }
  EXPECT_LT(err, 1e-4 * mx);
}

// `lizard linearize` stopped by signals, as `timeout`, SLURM and torchrun stop it: a burst of SIGINT and
// SIGTERM (the copies a process group and several threads receive at once) counts as one request, so the
// run finishes its step, saves and returns 130; --resume then continues from the saved step.
TEST(Linearize, StopSignalBurstSavesAndResumes) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TempDir dir;
  const std::string out = (dir.path / "run").string();
  LinearizeArgs a = tiny_linearize_args(sd, dir.path, 20, out);
  a.stage = "1";
  a.steps = 100000;  // far more than the test lets run
  a.eval_every = 0;
  a.eval_tokens = 0;
  a.threads = 1;
  auto steps_logged = [&] { return logged_losses(out).size(); };
  // Runs linearize on a thread, sends the burst once `after` steps are logged, returns its exit code.
  auto run_and_stop = [&](size_t after) {
    std::atomic<int> rc{-1};
    std::thread t([&] { rc = run_linearize(a); });
    for (int i = 0; i < 6000 && steps_logged() < after; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    EXPECT_GE(steps_logged(), after) << "the run did not get going";
    for (int sig : {SIGINT, SIGINT, SIGTERM, SIGINT}) ::kill(::getpid(), sig);
    t.join();
    return rc.load();
  };
  ASSERT_EQ(run_and_stop(3), 130);
  ASSERT_TRUE(fs::exists(fs::path(out) / kTrainStateFile));
  EXPECT_FALSE(fs::exists(fs::path(out) / "report.json"));
  const size_t first = steps_logged();
  a.resume = true;
  ASSERT_EQ(run_and_stop(first + 2), 130);
  std::ifstream in(fs::path(out) / kTrainLogFile);
  std::string line;
  int resumes = 0;
  int64_t resumed_from = -1;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.value("event", "") == "resume") ++resumes;
    if (j.value("event", "") == "interrupted" && resumed_from < 0) resumed_from = j["step"].get<int64_t>();
  }
  EXPECT_EQ(resumes, 1);
  EXPECT_EQ(resumed_from, int64_t(first));  // the first stop saved at the step it logged last
  EXPECT_GT(steps_logged(), first + 1);
}
