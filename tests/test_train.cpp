// Training (src/train): AdamW, clipping and the schedule against hand-computed steps; the stage-1
// loss gradient against finite differences (fp64) and the float training path against it; the loss
// falls on a tiny random teacher; a run stopped and resumed reproduces the uninterrupted losses; a
// stop request leaves a valid checkpoint and no temporary files.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "formats/safetensors.h"
#include "llama_fixture.h"
#include "train_fixture.h"
#include "model/lizard_checkpoint.h"
#include "model/lizard_mixer.h"
#include "train/optimizer.h"
#include "train/stage1.h"
#include "train/trainer.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace lizard;
using lizard::testing::Seeded;
using lizard::testing::TinySpec;
using lizard::testing::logged_losses;
using lizard::testing::random_tokens;

namespace {

using TempDir = lizard::testing::ScratchDir;

LizardConfig tiny_config() {
  LizardConfig c;
  c.feature_dim = 8;
  c.window = 6;
  c.chunk = 8;
  c.meta_tokens = 2;
  return c;
}

Stage1Options tiny_stage_options(const LizardConfig& c, int seq_len) {
  Stage1Options o;
  o.config = c;
  o.init_seed = 7;
  o.teacher = {"<memory>", 0, "test-teacher", "test"};
  o.seq_len = seq_len;
  o.threads = 2;
  o.fp32_cache_bytes = 0;
  return o;
}


bool has_temp_files(const fs::path& dir) {
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".tmp") return true;
  return false;
}

}  // namespace

TEST(TrainOptimizer, AdamWMatchesHandComputedSteps) {
  std::vector<float> p{1.0f, -1.0f}, g{0.5f, -2.0f};
  std::vector<ParamTensor> ps{{"p", &p, &g}};
  AdamWOptions o;
  o.weight_decay = 0.01;
  AdamW adam(o);
  adam.init(ps);
  adam.step(ps, 0.1);
  // t=1: the bias-corrected update is g/|g|; decay multiplies by 1 - lr*wd first.
  EXPECT_NEAR(p[0], 0.899000002, 1e-6);
  EXPECT_NEAR(p[1], -0.8990000005, 1e-6);
  g = {0.1f, 0.3f};
  adam.step(ps, 0.1);
  // t=2, p0: m = 0.9*0.05 + 0.1*0.1 = 0.055, v = 0.99*0.0025 + 0.01*0.01 = 0.002575,
  // p = 0.899*0.999 - 0.1 * (0.055/0.19) / sqrt(0.002575/0.0199) = 0.8176286
  EXPECT_NEAR(p[0], 0.8176285938, 1e-6);
  EXPECT_NEAR(p[1], -0.8427613156, 1e-6);
  EXPECT_EQ(adam.steps(), 2);
  EXPECT_NEAR(adam.m()[0][0], 0.055, 1e-8);
  EXPECT_NEAR(adam.v()[0][0], 0.002575, 1e-9);
}

TEST(TrainOptimizer, ClipsTheGlobalNorm) {
  std::vector<float> a{0}, b{0, 0}, ga{3.0f}, gb{0.0f, 4.0f};
  std::vector<ParamTensor> ps{{"a", &a, &ga}, {"b", &b, &gb}};
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 10.0), 5.0);  // under the limit: untouched
  EXPECT_EQ(ga[0], 3.0f);
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 1.0), 5.0);
  EXPECT_NEAR(ga[0], 0.6, 1e-6);
  EXPECT_NEAR(gb[1], 0.8, 1e-6);
  EXPECT_NEAR(clip_grad_norm(ps, 0.0), 1.0, 1e-6);  // 0: report only
}

TEST(TrainSchedule, WarmupThenCosineToTenPercent) {
  LrSchedule s{1e-3, 30, 0.1, 0.1};
  EXPECT_EQ(s.warmup_steps(), 3);
  EXPECT_NEAR(s.at(0), 1e-3 / 3, 1e-15);
  EXPECT_NEAR(s.at(1), 2e-3 / 3, 1e-15);
  EXPECT_NEAR(s.at(2), 1e-3, 1e-15);
  EXPECT_NEAR(s.at(3), 1e-3, 1e-15);                      // cosine starts at the peak
  EXPECT_NEAR(s.at(16), 1e-3 * 0.55, 1e-15);              // halfway: (1 + 0.1) / 2
  EXPECT_NEAR(s.at(29), 1e-4, 1e-15);                     // last step: 0.1x
  for (int64_t i = 3; i < 29; ++i) EXPECT_GE(s.at(i), s.at(i + 1));
  LrSchedule one{1e-3, 1, 0.1, 0.1};
  EXPECT_NEAR(one.at(0), 1e-3, 1e-15);
}

TEST(TrainStage1, CaptureMatchesTheTeacherAndGradientsMatchFiniteDifferences) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp;
  sp.ctx = 32;
  auto tiny = lizard::testing::make_tiny(sd, sp);
  const int L = 19;  // odd: a partial chunk
  LizardConfig cfg = tiny_config();
  Stage1 stage(tiny.ck, tiny_stage_options(cfg, L));
  // Train a few steps first so that the check is not at the symmetric initial point.
  for (auto& [l, p] : stage.checkpoint().layers) {
    for (auto& x : p.meta) x = sd.uniform(-0.5f, 0.5f);
    for (auto& x : p.alpha) x = sd.uniform(0.5f, 1.5f);
    for (auto& x : p.feat_q) x = sd.uniform(-0.3f, 0.3f);
  }
  std::vector<int32_t> toks(L + 1);
  for (auto& t : toks) t = static_cast<int32_t>(sd.rng() % sp.vocab);
  stage.capture(toks.data(), L);

  // The captured y is the softmax mixer's output on the captured inputs.
  {
    const auto& c = stage.captures()[1];
    SoftmaxMixer sm(tiny.ck->config);
    auto st = sm.make_state(L);
    std::vector<float> y(c.y.size());
    sm.forward(c.x.data(), c.q.data(), c.k.data(), c.v.data(), L, 0, *st, y.data());
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], c.y[i]);
  }

  const auto& mc = tiny.ck->config;
  const LizardShape shape{mc.d_model, mc.n_heads, mc.n_kv_heads, mc.head_dim};
  const LizardRope rope = LizardRope::make(mc.head_dim, mc.rope_theta, mc.rope_scaling);
  // What training optimises is what inference runs: the LizardMixer (model/lizard_mixer.h) on the
  // same inputs gives the chunked form's output that the loss compares.
  {
    const auto& c = stage.captures()[0];
    const LizardParams& p = stage.checkpoint().layers.at(stage.layers()[0]);
    LizardMixer mixer(cfg, mc, p);
    auto st = mixer.make_state(L);
    std::vector<float> y_mixer(c.y.size()), y_train(c.y.size());
    mixer.forward(c.x.data(), c.q.data(), c.k.data(), c.v.data(), L, 0, *st, y_mixer.data());
    LizardInput<float> in;
    in.L = L, in.x = c.x.data(), in.q = c.q.data(), in.k = c.k.data(), in.v = c.v.data();
    lizard_forward_chunked(cfg, shape, p, &rope, in, y_train.data());
    for (size_t i = 0; i < y_train.size(); ++i) ASSERT_NEAR(y_mixer[i], y_train[i], 1e-5 * (1 + std::fabs(y_train[i])));
  }
  struct D {
    std::vector<double> x, q, k, v, y;
    LizardInput<double> in;
  };
  std::vector<D> ins(stage.layers().size());
  for (size_t i = 0; i < ins.size(); ++i) {
    const auto& c = stage.captures()[i];
    auto cv = [](const std::vector<float>& f) { return std::vector<double>(f.begin(), f.end()); };
    ins[i].x = cv(c.x), ins[i].q = cv(c.q), ins[i].k = cv(c.k), ins[i].v = cv(c.v), ins[i].y = cv(c.y);
    ins[i].in.L = L;
    ins[i].in.x = ins[i].x.data(), ins[i].in.q = ins[i].q.data(), ins[i].in.k = ins[i].k.data(),
    ins[i].in.v = ins[i].v.data();
  }
  std::vector<LizardParamsT<double>> pd;
  for (int l : stage.layers()) pd.push_back(cast_params<double>(stage.checkpoint().layers.at(l)));
  auto total = [&](std::vector<LizardParamsT<double>>* grads) {
    double s = 0;
    for (size_t i = 0; i < ins.size(); ++i)
      s += stage1_layer_loss(cfg, shape, pd[i], &rope, ins[i].in, ins[i].y.data(), 1.0, grads ? &(*grads)[i] : nullptr);
    return s;
  };
  std::vector<LizardParamsT<double>> gd(pd.size());
  const double loss = total(&gd);
  ASSERT_GT(loss, 0);
  double worst = 0;
  for (size_t i = 0; i < pd.size(); ++i) {
    auto pe = pd[i].entries(cfg, shape);
    auto ge = gd[i].entries(cfg, shape);
    for (size_t e = 0; e < pe.size(); ++e) {
      if (std::string(pe[e].name) == "lolcats_f") continue;  // unused by combine = lizard
      for (size_t idx : {size_t(0), pe[e].data->size() / 2, pe[e].data->size() - 1}) {
        double& w = (*pe[e].data)[idx];
        const double w0 = w, h = 1e-5;
        w = w0 + h;
        const double lp = total(nullptr);
        w = w0 - h;
        const double lm = total(nullptr);
        w = w0;
        const double fd = (lp - lm) / (2 * h), an = (*ge[e].data)[idx];
        const double err = std::fabs(fd - an) / std::max(1e-8, std::max(std::fabs(fd), std::fabs(an)));
        if (std::fabs(fd) > 1e-9) worst = std::max(worst, err);
        EXPECT_NEAR(an, fd, 1e-6 * std::max(1.0, std::fabs(fd)) + 1e-9) << pe[e].name << "[" << idx << "] layer " << i;
      }
    }
  }
  std::printf("[train] stage-1 loss gradient vs finite differences (fp64): worst rel. error %.3g\n", worst);

  // The float training path: same loss, gradients within float rounding of the fp64 ones.
  std::vector<const int32_t*> batch{toks.data()};
  const LossResult r = stage.forward_backward(batch, L);
  EXPECT_NEAR(r.total, loss, 1e-4 * loss);
  const auto params = stage.params();
  size_t k = 0;
  double gmax = 0, emax = 0;
  for (size_t i = 0; i < pd.size(); ++i) {
    auto ge = gd[i].entries(cfg, shape);
    for (auto& e : ge) {
      if (std::string(e.name) == "lolcats_f") continue;
      ASSERT_LT(k, params.size());
      ASSERT_EQ(params[k].grad->size(), e.data->size()) << params[k].name;
      for (size_t j = 0; j < e.data->size(); ++j) {
        gmax = std::max(gmax, std::fabs((*e.data)[j]));
        emax = std::max(emax, std::fabs((*e.data)[j] - (*params[k].grad)[j]));
      }
      ++k;
    }
  }
  EXPECT_EQ(k, params.size());
  EXPECT_LT(emax, 1e-3 * gmax) << "float vs fp64 gradient";
}

TEST(TrainLoop, LossFallsOnATinyTeacher) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp;
  sp.ctx = 32;
  auto tiny = lizard::testing::make_tiny(sd, sp);
  const int L = 24;
  Stage1 stage(tiny.ck, tiny_stage_options(tiny_config(), L));
  Dataset data = random_tokens(sd.rng, sp.vocab, L, 40, 3, 5, 2);
  TempDir dir;
  TrainOptions o;
  o.out_dir = dir.path.string();
  o.steps = 30;
  o.batch = 2;
  o.seq_len = L;
  o.lr = 3e-2;
  o.eval_every = 10;
  o.val_seqs = 2;
  o.eval_tokens = 48;
  o.quiet = true;
  const TrainResult r = train(stage, data, o);
  ASSERT_EQ(r.losses.size(), 30u);
  double first = (r.losses[0] + r.losses[1] + r.losses[2]) / 3, last = (r.losses[27] + r.losses[28] + r.losses[29]) / 3;
  EXPECT_LT(last, 0.7 * first) << "first " << first << " last " << last;
  std::printf("[train] tiny teacher: loss %.4g -> %.4g over 30 steps\n", first, last);
  // Everything a finished run leaves behind.
  for (const char* f : {kLizardCheckpointFile, kTrainStateFile, kTrainLogFile, "loss.png", "report.json"})
    EXPECT_TRUE(fs::exists(dir.path / f)) << f;
  const LizardCheckpoint ck = load_lizard_checkpoint((dir.path / kLizardCheckpointFile).string());
  EXPECT_EQ(ck.layers.size(), 2u);
  EXPECT_EQ(ck.teacher.fingerprint, "test-teacher");
  auto rep = nlohmann::json::parse(std::ifstream(dir.path / "report.json"));
  EXPECT_EQ(rep["steps"], 30);
  EXPECT_TRUE(rep["heldout_eval"]["teacher_ppl"].get<double>() > 1.0);
  EXPECT_TRUE(rep["heldout_eval"]["student_ppl"].get<double>() > 1.0);
  EXPECT_GE(rep["heldout_eval"]["kl_per_token"].get<double>(), 0.0);
  EXPECT_LT(rep["heldout_loss"].get<double>(), first);
  EXPECT_EQ(logged_losses(dir.path), r.losses);
  EXPECT_FALSE(has_temp_files(dir.path));
  // A second run into the same folder needs --resume.
  Stage1 again(tiny.ck, tiny_stage_options(tiny_config(), L));
  EXPECT_THROW(train(again, data, o), Error);
}

TEST(TrainResume, StopAndResumeReproducesTheUninterruptedLosses) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp;
  sp.ctx = 32;
  auto tiny = lizard::testing::make_tiny(sd, sp);
  const int L = 16, N = 5;
  Dataset data = random_tokens(sd.rng, sp.vocab, L, 7, 2, 5, 2);  // 7 samples: the order wraps an epoch
  TrainOptions o;
  o.steps = 2 * N;
  o.batch = 2;
  o.seq_len = L;
  o.lr = 5e-3;
  o.eval_every = 3;
  o.val_seqs = 1;
  o.eval_tokens = 0;
  o.quiet = true;

  TempDir a;
  o.out_dir = a.path.string();
  Stage1 sa(tiny.ck, tiny_stage_options(tiny_config(), L));
  const TrainResult ra = train(sa, data, o);
  ASSERT_EQ(ra.losses.size(), size_t(2 * N));

  // Same run, with a stop requested (as SIGINT does) during step N: it finishes the step, saves, returns.
  TempDir b;
  o.out_dir = b.path.string();
  std::atomic<bool> stop{false};
  o.stop = &stop;
  o.on_step = [&](int64_t done, const LossResult&) {
    if (done == N) stop = true;
  };
  {
    Stage1 sb(tiny.ck, tiny_stage_options(tiny_config(), L));
    const TrainResult rb = train(sb, data, o);
    EXPECT_TRUE(rb.interrupted);
    EXPECT_EQ(rb.steps_done, N);
    EXPECT_FALSE(has_temp_files(b.path));
    EXPECT_FALSE(fs::exists(b.path / "report.json"));
    // The interrupted folder is a valid Lizard model and a valid training state.
    const LizardCheckpoint ck = load_lizard_checkpoint((b.path / kLizardCheckpointFile).string());
    for (auto& [l, p] : ck.layers) EXPECT_EQ(p.feat_q, sb.checkpoint().layers.at(l).feat_q);
    SafeTensorsFile st((b.path / kTrainStateFile).string());
    EXPECT_EQ(nlohmann::json::parse(st.metadata().at("state"))["step"], N);
  }
  // A fresh process-like start: new stage (re-initialised parameters), --resume.
  stop = false;
  o.on_step = nullptr;
  o.resume = true;
  Stage1 sc(tiny.ck, tiny_stage_options(tiny_config(), L));
  const TrainResult rc = train(sc, data, o);
  EXPECT_FALSE(rc.interrupted);
  EXPECT_EQ(rc.start_step, N);
  ASSERT_EQ(rc.losses.size(), size_t(N));
  const std::vector<double> resumed = logged_losses(b.path);
  ASSERT_EQ(resumed.size(), size_t(2 * N));
  for (int i = 0; i < 2 * N; ++i) EXPECT_EQ(resumed[i], ra.losses[i]) << "step " << i + 1;
  for (int l : sa.layers()) EXPECT_EQ(sa.checkpoint().layers.at(l).gate_w, sc.checkpoint().layers.at(l).gate_w);

  // A resume with other settings is refused.
  o.batch = 3;
  Stage1 sd2(tiny.ck, tiny_stage_options(tiny_config(), L));
  EXPECT_THROW(train(sd2, data, o), Error);
}
