#include "train/trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "eval/cuda_eval_model.h"
#include "eval/eval_model.h"
#include "eval/perplexity.h"
#include "formats/safetensors.h"
#include "train/plot.h"
#include "util/atomic_file.h"
#include "util/hash.h"
#include "util/error.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace lizard {

namespace {

constexpr const char* kStateFormat = "lizard-train-state/1";

std::string human_time(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = std::llround(s);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

// What ties a training state to its run; a resume must match every field.
json run_identity(Stage& stage, const Dataset& data, const TrainOptions& o) {
  return {{"stage", stage.fingerprint()},
          {"data", dataset_fingerprint(data)},
          {"batch", o.batch},
          {"seq_len", o.seq_len},
          {"seed", o.seed}};
}

struct Saved {
  int64_t step = 0;
  int64_t epoch = 0, position = 0;
};

void save_state(const fs::path& dir, const std::vector<ParamTensor>& params, AdamW& adam, int64_t step,
                const SampleOrder& order, const std::mt19937_64& rng, const json& identity, const TrainOptions& o) {
  std::vector<TensorToWrite> ts;
  auto add = [&](const std::string& name, const std::vector<float>& v) {
    TensorToWrite t;
    t.name = name;
    t.type = DType::F32;
    t.shape = {static_cast<int64_t>(v.size())};
    t.data = v.data();
    t.nbytes = v.size() * sizeof(float);
    ts.push_back(std::move(t));
  };
  for (size_t i = 0; i < params.size(); ++i) {
    add("value/" + params[i].name, *params[i].value);
    add("adam_m/" + params[i].name, adam.m()[i]);
    add("adam_v/" + params[i].name, adam.v()[i]);
  }
  std::ostringstream rs;
  rs << rng;
  json st = {{"step", step},
             {"adam_steps", adam.steps()},
             {"epoch", order.epoch()},
             {"position", order.position()},
             {"rng", rs.str()},
             {"identity", identity},
             {"steps_total", o.steps},
             {"lr", o.lr}};
  write_safetensors((dir / kTrainStateFile).string(), ts, {{"format", kStateFormat}, {"state", st.dump()}});
}

Saved load_state(const fs::path& dir, const std::vector<ParamTensor>& params, AdamW& adam, SampleOrder& order,
                 std::mt19937_64& rng, const json& identity) {
  const std::string path = (dir / kTrainStateFile).string();
  LZ_CHECK(fs::exists(path), "--resume: '{}' holds no training state ({} is missing)", dir.string(), kTrainStateFile);
  SafeTensorsFile f(path);
  auto it = f.metadata().find("format");
  LZ_CHECK(it != f.metadata().end() && it->second == kStateFormat, "'{}' is not a lizard training state", path);
  json st;
  try {
    st = json::parse(f.metadata().at("state"));
  } catch (const std::exception& e) {
    fail("'{}': bad training state metadata ({})", path, e.what());
  }
  const json& id = st.at("identity");
  for (auto& [k, v] : identity.items())
    LZ_CHECK(id.contains(k) && id[k] == v,
             "--resume: the run in '{}' used a different {} ({} there, {} now); use another --out or the same settings",
             dir.string(), k, id.contains(k) ? id[k].dump() : "none", v.dump());
  for (size_t i = 0; i < params.size(); ++i) {
    auto take = [&](const std::string& name, std::vector<float>& dst) {
      const TensorView* t = f.find_tensor(name);
      LZ_CHECK(t != nullptr, "'{}': tensor '{}' is missing", path, name);
      LZ_CHECK(t->type == DType::F32 && t->numel() == static_cast<int64_t>(dst.size()),
               "'{}': tensor '{}' has {} values, expected {}", path, name, t->numel(), dst.size());
      std::memcpy(dst.data(), t->data, dst.size() * sizeof(float));
    };
    take("value/" + params[i].name, *params[i].value);
    take("adam_m/" + params[i].name, adam.m()[i]);
    take("adam_v/" + params[i].name, adam.v()[i]);
  }
  adam.restore_steps(st.at("adam_steps").get<int64_t>());
  Saved s;
  s.step = st.at("step").get<int64_t>();
  s.epoch = st.at("epoch").get<int64_t>();
  s.position = st.at("position").get<int64_t>();
  order.restore(s.epoch, s.position);
  std::istringstream rs(st.at("rng").get<std::string>());
  rs >> rng;
  LZ_CHECK(!rs.fail(), "'{}': bad random state", path);
  return s;
}

// Keeps the log lines up to `step` (a crash may have left lines past the last checkpoint) and
// rebuilds the curves from them.
void trim_log(const fs::path& path, int64_t step, LossCurves& curves) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const std::exception&) {
      continue;  // a line cut short by a crash
    }
    if (j.contains("step") && j["step"].get<int64_t>() > step) continue;
    if (j.contains("loss") && j.contains("step")) {
      curves.steps.push_back(j["step"].get<int64_t>());
      curves.total.push_back(j["loss"].get<double>());
      curves.parts.push_back(j.value("parts", std::vector<double>{}));
    }
    if (j.contains("val_loss") && j.contains("step")) {
      curves.val_steps.push_back(j["step"].get<int64_t>());
      curves.val.push_back(j["val_loss"].get<double>());
    }
    kept += line + "\n";
  }
  in.close();
  write_file_atomic(path.string(), kept);
}

std::string parts_summary(const LossResult& r, const std::vector<std::string>& names) {
  if (r.parts.size() < 2) return "";
  std::vector<size_t> idx(r.parts.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return r.parts[a] < r.parts[b]; });
  const size_t lo = idx.front(), hi = idx.back(), med = idx[idx.size() / 2];
  return fmt::format(" | {} parts: min {:.3e} ({}) median {:.3e} max {:.3e} ({})", r.parts.size(), r.parts[lo],
                     names.at(lo), r.parts[med], r.parts[hi], names.at(hi));
}

json seconds_json(const LossResult& r) {
  json j = json::object();
  for (const auto& [k, v] : r.seconds) j[k] = v;
  return j;
}

// The same string on every rank: rank 0's.
void broadcast_string(Communicator& c, std::string& s) {
  uint64_t n = s.size();
  c.broadcast(&n, sizeof n);
  s.resize(static_cast<size_t>(n));
  c.broadcast(s.data(), s.size());
}

// Every rank starts from rank 0's values, moments, step, data position and random state (fresh
// stages are initialised alike, but a resumed state is read by rank 0 alone).
void sync_from_root(Communicator& c, const std::vector<ParamTensor>& params, AdamW& adam, SampleOrder& order,
                    std::mt19937_64& rng, int64_t& start_step) {
  for (size_t i = 0; i < params.size(); ++i) {
    c.broadcast(params[i].value->data(), params[i].value->size() * sizeof(float));
    c.broadcast(adam.m()[i].data(), adam.m()[i].size() * sizeof(float));
    c.broadcast(adam.v()[i].data(), adam.v()[i].size() * sizeof(float));
  }
  int64_t nums[4] = {start_step, adam.steps(), order.epoch(), order.position()};
  c.broadcast(nums, sizeof nums);
  std::ostringstream rs;
  rs << rng;
  std::string r = rs.str();
  broadcast_string(c, r);
  if (c.is_root()) return;
  start_step = nums[0];
  adam.restore_steps(nums[1]);
  order.restore(nums[2], nums[3]);
  std::istringstream in(r);
  in >> rng;
  LZ_CHECK(!in.fail(), "rank {}: bad random state from rank 0", c.rank());
}

}  // namespace

std::vector<int64_t> next_batch(SampleOrder& order, int batch, const BatchShard& shard) {
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(shard.end - shard.begin));
  for (int i = 0; i < batch; ++i) {
    const int64_t s = order.next();
    if (i >= shard.begin && i < shard.end) mine.push_back(s);
  }
  return mine;
}

std::string dataset_fingerprint(const Dataset& d) {
  uint64_t h = fnv1a(d.train.tokens.data(), d.train.tokens.size() * sizeof(int32_t));
  h = fnv1a(d.val.tokens.data(), d.val.tokens.size() * sizeof(int32_t), h);
  return fmt::format("{:016x}/{}/{}", h, d.train.tokens.size(), d.val.tokens.size());
}

TrainResult train(Stage& stage, const Dataset& data, const TrainOptions& o) {
  LZ_CHECK(!o.out_dir.empty(), "no output directory given (--out DIR)");
  LZ_CHECK(o.steps >= 1, "nothing to train: {} steps", o.steps);
  LZ_CHECK(o.batch >= 1 && o.seq_len >= 1, "batch ({}) and sequence length ({}) must be positive", o.batch, o.seq_len);
  LZ_CHECK(o.lr > 0 && std::isfinite(o.lr), "learning rate must be positive, not {}", o.lr);
  const int64_t n_train = data.train.num_samples(o.seq_len);
  LZ_CHECK(n_train > 0, "the training data holds {} tokens, fewer than one sequence of {}", data.train.tokens.size(),
           o.seq_len + 1);
  const fs::path dir(o.out_dir);
  const fs::path log_path = dir / kTrainLogFile;

  Communicator* comm = o.comm;
  if (!comm) {
    RendezvousOptions rv = train_rendezvous(o.out_dir, o.dist_dir);
    rv.select_device = false;  // the stage exists already: it stays on its GPU
    comm = &process_communicator(rv);
  }
  const int world = comm->world();
  const bool root = comm->is_root();
  const BatchShard shard = batch_shard(o.batch, world, comm->rank());

  auto say = [&](const std::string& s) {
    if (!o.quiet && root) std::fprintf(stderr, "%s\n", s.c_str());
  };
  const std::vector<std::string> part_names = stage.part_names();
  std::vector<ParamTensor> params = stage.params();
  int64_t n_params = 0;
  for (auto& p : params) n_params += static_cast<int64_t>(p.value->size());
  AdamW adam(o.adam);
  adam.init(params);
  SampleOrder order(n_train, o.seed);
  std::mt19937_64 rng(o.seed ^ 0x5eed5eed5eedull);
  const json identity = run_identity(stage, data, o);
  LrSchedule sched{o.lr, o.steps, o.warmup_frac, o.final_lr_frac};

  LossCurves curves;
  curves.title = fmt::format("lizard linearize: {}", stage.name());
  curves.part_names = part_names;
  TrainResult res;
  res.world = world;
  std::ofstream log;
  // Rank 0 owns the output directory. With several ranks its failure must reach the others (they
  // would wait in the next collective for ever), so it is caught, agreed on, then raised everywhere.
  std::string setup_error;
  if (root) {
    try {
      fs::create_directories(dir);
      if (!o.resume)
        LZ_CHECK(!fs::exists(dir / kTrainStateFile),
                 "'{}' already holds a training run; pass --resume to continue it, or choose another --out",
                 dir.string());
      if (o.resume) {
        const Saved s = load_state(dir, params, adam, order, rng, identity);
        res.start_step = s.step;
        trim_log(log_path, s.step, curves);
      } else {
        write_file_atomic(log_path.string(), "");
      }
      log.open(log_path, std::ios::app);
      LZ_CHECK(log.good(), "cannot write '{}'", log_path.string());
    } catch (const std::exception& e) {
      if (world == 1) throw;
      setup_error = e.what();
    }
  }
  if (world > 1) {
    int32_t failed = setup_error.empty() ? 0 : 1;
    comm->broadcast(&failed, sizeof failed);
    if (failed) {
      if (root) fail("{}", setup_error);
      fail("rank {}: rank 0 could not set up the run (its output says why)", comm->rank());
    }
    std::string root_identity = identity.dump();
    broadcast_string(*comm, root_identity);
    double mismatched = root_identity == identity.dump() ? 0 : 1;
    comm->allreduce_sum(&mismatched, 1);
    LZ_CHECK(mismatched == 0,
             "rank {}: {} rank(s) differ from rank 0's run ({}){}; every rank needs the same model, data and settings",
             comm->rank(), mismatched, root_identity,
             root_identity == identity.dump() ? std::string() : fmt::format(", this one has {}", identity.dump()));
    sync_from_root(*comm, params, adam, order, rng, res.start_step);
  }
  auto log_line = [&](const json& j) {
    if (!root) return;
    log << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    log.flush();
  };
  json start_line = {{"event", o.resume ? "resume" : "start"},
                     {"stage", stage.name()},
                     {"from_step", res.start_step},
                     {"steps", o.steps},
                     {"batch", o.batch},
                     {"seq_len", o.seq_len},
                     {"lr", o.lr},
                     {"trainable", n_params},
                     {"data", data.describe()},
                     {"args", o.args}};
  if (world > 1) start_line["world"] = world;
  log_line(start_line);
  say(fmt::format("{} {}: {} trainable values in {} tensors; {} training sequences of {} tokens; {} steps of {} x {} "
                  "tokens{}{}",
                  o.resume ? "resuming" : "training", stage.name(), n_params, params.size(), n_train, o.seq_len,
                  o.steps, o.batch, o.seq_len,
                  o.resume ? fmt::format(" (from step {})", res.start_step) : std::string(),
                  world > 1 ? fmt::format("; {} processes, {} sequences each per step", world, shard.end - shard.begin)
                            : std::string()));

  // Held-out sequences: the first val_seqs of the validation split.
  std::vector<const int32_t*> val_seqs;
  for (int64_t i = 0; i < std::min<int64_t>(o.val_seqs, data.val.num_samples(o.seq_len)); ++i)
    val_seqs.push_back(data.val.sample(i, o.seq_len));
  if (val_seqs.empty()) say("note: the validation split holds no full sequence; no held-out loss");
  double last_val = NAN;
  int64_t last_val_step = -1;
  auto run_val = [&](int64_t step) {  // rank 0 alone
    if (!root || val_seqs.empty() || last_val_step == step) return;
    const LossResult v = stage.evaluate(val_seqs, o.seq_len);
    last_val = v.total;
    last_val_step = step;
    curves.val_steps.push_back(step);
    curves.val.push_back(v.total);
    log_line({{"step", step}, {"val_loss", v.total}, {"val_parts", v.parts}, {"val_seqs", val_seqs.size()}});
    say(fmt::format("step {} held-out loss {:.4e}{}", step, v.total, parts_summary(v, part_names)));
  };
  auto write_plot = [&] { write_png((dir / "loss.png").string(), plot_loss_curves(curves)); };
  auto checkpoint = [&](int64_t step) {
    if (!root) return;
    save_state(dir, params, adam, step, order, rng, identity, o);
    stage.save_model(dir.string());
    write_plot();
    log_line({{"event", "checkpoint"}, {"step", step}});
  };

  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  double train_s = 0;
  int64_t tokens_run = 0;
  const int64_t tok_per_step = int64_t(o.batch) * o.seq_len;
  int64_t step = res.start_step;
  std::vector<const int32_t*> batch;
  std::vector<float> flat_grads(world > 1 ? static_cast<size_t>(n_params) : 0);
  // A stop request (Ctrl-C reaches the ranks at slightly different moments) counts once every rank
  // has seen it, so that all stop after the same step.
  auto stop_requested = [&] {
    const bool mine = o.stop && o.stop->load();
    if (world == 1) return mine;
    double any = mine ? 1 : 0;
    comm->allreduce_sum(&any, 1);
    return any > 0;
  };
  while (step < o.steps) {
    if (stop_requested()) {
      res.interrupted = true;
      break;
    }
    const auto t0 = clock::now();
    batch.clear();
    for (int64_t i : next_batch(order, o.batch, shard)) batch.push_back(data.train.sample(i, o.seq_len));
    LossResult r = stage.forward_backward(batch, o.seq_len);
    if (world > 1) {
      // Equal shares, each gradient of its share's mean loss: their mean is the global batch's gradient.
      size_t at = 0;
      for (auto& p : params) {
        std::copy(p.grad->begin(), p.grad->end(), flat_grads.begin() + at);
        at += p.grad->size();
      }
      comm->allreduce_mean(flat_grads.data(), flat_grads.size());
      at = 0;
      for (auto& p : params) {
        std::copy(flat_grads.begin() + at, flat_grads.begin() + at + p.grad->size(), p.grad->begin());
        at += p.grad->size();
      }
      std::vector<double> losses = {r.total};
      losses.insert(losses.end(), r.parts.begin(), r.parts.end());
      comm->allreduce_sum(losses.data(), losses.size());
      r.total = losses[0] / world;
      for (size_t i = 0; i < r.parts.size(); ++i) r.parts[i] = losses[i + 1] / world;
    }
    LZ_CHECK(std::isfinite(r.total), "step {}: the loss is {}; lower the learning rate (--lr)", step + 1, r.total);
    const double gnorm = clip_grad_norm(params, o.clip);
    const double lr = sched.at(step);
    adam.step(params, lr);
    ++step;
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    train_s += dt;
    tokens_run += tok_per_step;
    const double tok_s = tokens_run / std::max(train_s, 1e-9);
    const double elapsed = std::chrono::duration<double>(clock::now() - t_start).count();
    res.losses.push_back(r.total);
    curves.steps.push_back(step);
    curves.total.push_back(r.total);
    curves.parts.push_back(r.parts);
    json step_line = {{"step", step},
                      {"loss", r.total},
                      {"parts", r.parts},
                      {"lr", lr},
                      {"grad_norm", gnorm},
                      {"tokens", step * tok_per_step},
                      {"step_s", dt},
                      {"seconds", seconds_json(r)},
                      {"tok_s", tok_s},
                      {"elapsed_s", elapsed}};
    if (world > 1) step_line["tok_s_per_gpu"] = tok_s / world;
    log_line(step_line);
    const double eta = (o.steps - step) * (train_s / double(step - res.start_step));
    say(fmt::format("step {}/{} loss {:.4e} lr {:.2e} |g| {:.3f} | {:.0f} tok/s{} | ETA {}{}", step, o.steps, r.total,
                    lr, gnorm, tok_s, world > 1 ? fmt::format(" ({:.0f} per GPU)", tok_s / world) : std::string(),
                    human_time(eta), parts_summary(r, part_names)));
    if (o.eval_every > 0 && step % o.eval_every == 0 && step < o.steps) run_val(step);
    const bool stop_now = stop_requested();
    if (o.save_every > 0 && step % o.save_every == 0 && step < o.steps && !stop_now) checkpoint(step);
    if (o.on_step) o.on_step(step, r);
    if (stop_requested()) {
      res.interrupted = true;
      break;
    }
  }
  res.steps_done = step;
  res.tokens_per_s = train_s > 0 ? tokens_run / train_s : 0;
  res.tokens_per_s_per_gpu = res.tokens_per_s / world;
  if (res.interrupted) {
    checkpoint(step);
    log_line({{"event", "interrupted"}, {"step", step}});
    say(fmt::format("stopped at step {}; checkpoint written to {} (continue with --resume)", step, dir.string()));
    comm->barrier();  // no rank exits (which makes torchrun stop the others) before the checkpoint is written
    return res;
  }
  if (!root) {
    comm->barrier();  // rank 0 evaluates and writes the model and report; then all may go on and read them
    return res;
  }

  run_val(step);
  checkpoint(step);

  // Final held-out perplexity of teacher and student, and their KL.
  json rep = {{"stage", stage.name()},
              {"steps", step},
              {"tokens_trained", step * tok_per_step},
              {"batch", o.batch},
              {"seq_len", o.seq_len},
              {"train_tokens_per_s", res.tokens_per_s},
              {"train_tokens_per_s_per_gpu", res.tokens_per_s_per_gpu},
              {"world", world},
              {"train_seconds_this_run", train_s},
              {"final_train_loss", curves.total.empty() ? json(nullptr) : json(curves.total.back())},
              {"final_train_parts", curves.parts.empty() ? json(nullptr) : json(curves.parts.back())},
              {"first_train_loss", curves.total.empty() ? json(nullptr) : json(curves.total.front())},
              {"first_train_parts", curves.parts.empty() ? json(nullptr) : json(curves.parts.front())},
              {"part_names", part_names},
              {"heldout_loss", std::isfinite(last_val) ? json(last_val) : json(nullptr)},
              {"data", data.describe()}};
  const int64_t n_eval = std::min<int64_t>(o.eval_tokens, static_cast<int64_t>(data.val.tokens.size()));
  if (o.eval_tokens > 0 && n_eval >= 2) {
    StrideOptions so;
    so.ctx = std::min<int64_t>(o.seq_len, stage.teacher().context_length());
    so.stride = std::max<int64_t>(1, so.ctx / 2);
    const std::span<const int32_t> toks(data.val.tokens.data(), static_cast<size_t>(n_eval));
    const auto t0 = clock::now();
    std::optional<KlStats> gpu_kl;  // from the checkpoint just saved; the GPU models are freed after
    if (o.eval_on_gpu) {
      try {
        CudaEvalPair gpu = cuda_eval_models_of(dir.string(), so.ctx);
        gpu_kl = kl_divergence(*gpu.teacher, *gpu.student, toks, so);
      } catch (const Error& e) {
        say(fmt::format("held-out evaluation on the CPU: {}", e.what()));
      }
    }
    LlamaEvalModel teacher(stage.teacher(), "teacher");
    std::unique_ptr<LlamaModel> student_model = gpu_kl ? nullptr : stage.student();
    json ev = {{"tokens", n_eval}, {"ctx", so.ctx}, {"stride", so.stride}, {"device", gpu_kl ? "cuda" : "cpu"}};
    if (gpu_kl || student_model) {
      KlStats k;
      if (gpu_kl) {
        k = *gpu_kl;
      } else {
        LlamaEvalModel student(*student_model, "student");
        k = kl_divergence(teacher, student, toks, so);
      }
      ev["tokens_scored"] = k.tokens;
      ev["teacher_ppl"] = k.teacher.ppl();
      ev["student_ppl"] = k.student.ppl();
      ev["kl_per_token"] = k.kl_per_token();
      ev["top1_agreement"] = k.agreement();
      say(fmt::format("held-out ({} tokens scored, windows of {}): teacher ppl {:.3f}, student ppl {:.3f}, KL {:.4f} "
                      "nats/token, top-1 agreement {:.3f}{}",
                      k.tokens, so.ctx, k.teacher.ppl(), k.student.ppl(), k.kl_per_token(), k.agreement(),
                      gpu_kl ? " (on the GPU)" : ""));
    } else {
      const PplStats p = perplexity(teacher, toks, so);
      ev["tokens_scored"] = p.tokens;
      ev["teacher_ppl"] = p.ppl();
      ev["student_ppl"] = nullptr;
      ev["note"] = "the student model could not be built (no Lizard mixer in this build)";
      say(fmt::format("held-out ({} tokens scored): teacher ppl {:.3f}; student not evaluated", p.tokens, p.ppl()));
    }
    ev["seconds"] = std::chrono::duration<double>(clock::now() - t0).count();
    rep["heldout_eval"] = ev;
  } else {
    rep["heldout_eval"] = nullptr;
  }
  write_file_atomic((dir / "report.json").string(), rep.dump(2) + "\n");
  log_line({{"event", "end"}, {"step", step}, {"report", rep}});
  res.report = rep;
  comm->barrier();
  return res;
}

}  // namespace lizard
