// Data-parallel training (src/train/distributed.h) without GPUs: each launcher's environment, the
// batch sharding (the ranks' shares are exactly the one-process batch), the single-process
// communicator as a no-op, the single-process trainer equal bit for bit to a plain training loop,
// two ranks in threads (a test communicator standing in for NCCL) matching the one-process run, and
// the NCCL id's rendezvous (file and TCP) between threads.
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include "llama_fixture.h"
#include "train/distributed.h"
#include "train/stage1.h"
#include "train/trainer.h"
#include "train_fixture.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace lizard;
using lizard::testing::Seeded;
using lizard::testing::TinySpec;

namespace {

DistEnv env_of(const std::map<std::string, std::string>& vars) {
  return dist_env_from([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

}  // namespace

TEST(DistEnv, ReadsEachLauncher) {
  const DistEnv none = env_of({});
  EXPECT_EQ(none.world, 1);
  EXPECT_EQ(none.rank, 0);
  EXPECT_EQ(none.launcher, "");

  const DistEnv t = env_of({{"RANK", "3"},
                            {"WORLD_SIZE", "4"},
                            {"LOCAL_RANK", "1"},
                            {"MASTER_ADDR", "node7"},
                            {"MASTER_PORT", "29500"},
                            {"TORCHELASTIC_RUN_ID", "abc"}});
  EXPECT_EQ(t.launcher, "torchrun");
  EXPECT_EQ(t.rank, 3);
  EXPECT_EQ(t.world, 4);
  EXPECT_EQ(t.local_rank, 1);
  EXPECT_EQ(t.master_addr, "node7");
  EXPECT_EQ(t.master_port, 29500);
  EXPECT_EQ(t.job, "abc");

  const DistEnv m = env_of({{"OMPI_COMM_WORLD_RANK", "1"},
                            {"OMPI_COMM_WORLD_SIZE", "2"},
                            {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                            {"PMIX_NAMESPACE", "prterun-x-1@1"}});
  EXPECT_EQ(m.launcher, "openmpi");
  EXPECT_EQ(m.rank, 1);
  EXPECT_EQ(m.world, 2);
  EXPECT_EQ(m.local_rank, 1);
  EXPECT_EQ(m.job, "prterun-x-1@1");
  EXPECT_TRUE(m.master_addr.empty());

  const DistEnv p = env_of({{"PMI_RANK", "5"}, {"PMI_SIZE", "8"}, {"MPI_LOCALRANKID", "1"}});
  EXPECT_EQ(p.launcher, "pmi");
  EXPECT_EQ(p.rank, 5);
  EXPECT_EQ(p.world, 8);
  EXPECT_EQ(p.local_rank, 1);

  const DistEnv s = env_of(
      {{"SLURM_PROCID", "6"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "2"}, {"SLURM_JOB_ID", "99"}, {"SLURM_STEP_ID", "0"}});
  EXPECT_EQ(s.launcher, "slurm");
  EXPECT_EQ(s.rank, 6);
  EXPECT_EQ(s.world, 8);
  EXPECT_EQ(s.local_rank, 2);
  EXPECT_EQ(s.job, "99.0");

  // mpirun inside a SLURM allocation: the MPI launcher's numbers win over the allocation's.
  const DistEnv ms = env_of({{"OMPI_COMM_WORLD_RANK", "1"},
                             {"OMPI_COMM_WORLD_SIZE", "2"},
                             {"SLURM_PROCID", "0"},
                             {"SLURM_NTASKS", "1"}});
  EXPECT_EQ(ms.launcher, "openmpi");
  EXPECT_EQ(ms.world, 2);
  EXPECT_EQ(ms.local_rank, 1);  // no local rank given: the rank

  // A launcher's single process counts as no launcher.
  EXPECT_EQ(env_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}}).launcher, "");

  EXPECT_THROW(env_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}}), Error);
  EXPECT_THROW(env_of({{"RANK", "x"}, {"WORLD_SIZE", "2"}}), Error);
  EXPECT_THROW(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "99999"}}), Error);
}

TEST(DistShard, RanksTogetherSeeTheOneProcessBatch) {
  EXPECT_EQ(batch_shard(8, 1, 0).begin, 0);
  EXPECT_EQ(batch_shard(8, 1, 0).end, 8);
  EXPECT_EQ(batch_shard(8, 2, 1).begin, 4);
  EXPECT_EQ(batch_shard(8, 2, 1).end, 8);
  EXPECT_THROW(batch_shard(6, 4, 0), Error);
  // 11 samples, batch 4: the order wraps epochs mid-batch.
  for (int world : {2, 4}) {
    SampleOrder one(11, 42);
    std::vector<SampleOrder> ranks(static_cast<size_t>(world), SampleOrder(11, 42));
    for (int step = 0; step < 9; ++step) {
      const std::vector<int64_t> all = next_batch(one, 4, batch_shard(4, 1, 0));
      std::vector<int64_t> joined;
      for (int r = 0; r < world; ++r) {
        const std::vector<int64_t> mine = next_batch(ranks[r], 4, batch_shard(4, world, r));
        EXPECT_EQ(mine.size(), size_t(4 / world));
        joined.insert(joined.end(), mine.begin(), mine.end());
      }
      EXPECT_EQ(joined, all) << "world " << world << " step " << step;
    }
  }
}

TEST(DistCommunicator, SingleProcessIsANoOp) {
  const std::unique_ptr<Communicator> c = make_communicator(DistEnv{}, RendezvousOptions{});
  EXPECT_EQ(c->world(), 1);
  EXPECT_TRUE(c->is_root());
  std::vector<float> f = {1.5f, -2.0f};
  std::vector<double> d = {3.25};
  char bytes[3] = {'a', 'b', 'c'};
  c->allreduce_mean(f.data(), f.size());
  c->allreduce_sum(d.data(), d.size());
  c->broadcast(bytes, sizeof bytes);
  c->barrier();
  EXPECT_EQ(f, (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(d, (std::vector<double>{3.25}));
  EXPECT_EQ(std::string(bytes, 3), "abc");
#ifndef LIZARD_HAVE_CUDA
  DistEnv two;
  two.world = 2;
  EXPECT_THROW(make_communicator(two, RendezvousOptions{}), Error);
#endif
}

namespace {

LizardConfig tiny_config() {
  LizardConfig c;
  c.feature_dim = 8;
  c.window = 6;
  c.chunk = 8;
  c.meta_tokens = 2;
  return c;
}

Stage1Options tiny_stage_options(int seq_len) {
  Stage1Options o;
  o.config = tiny_config();
  o.init_seed = 7;
  o.teacher = {"<memory>", 0, "test-teacher", "test"};
  o.seq_len = seq_len;
  o.threads = 1;
  o.fp32_cache_bytes = 0;
  return o;
}

TrainOptions tiny_train_options(const fs::path& dir, int seq_len) {
  TrainOptions o;
  o.out_dir = dir.string();
  o.steps = 6;
  o.batch = 4;
  o.seq_len = seq_len;
  o.lr = 1e-2;
  o.val_seqs = 1;
  o.eval_tokens = 0;
  o.quiet = true;
  return o;
}

// Ranks as threads of this process, for testing the trainer's collective calls (not a substitute
// for NCCL): every call waits for all ranks, then each reads the others' buffers.
struct ThreadGroup {
  explicit ThreadGroup(int n) : world(n), sync(n), ptrs(static_cast<size_t>(n)) {}
  int world;
  std::barrier<> sync;
  std::vector<void*> ptrs;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int world() const override { return g_.world; }
  void allreduce_mean(float* x, size_t n) override {
    reduce(x, n);
    for (size_t i = 0; i < n; ++i) x[i] *= 1.0f / static_cast<float>(g_.world);
  }
  void allreduce_sum(double* x, size_t n) override { reduce(x, n); }
  void broadcast(void* x, size_t bytes, int root) override {
    g_.ptrs[rank_] = x;
    g_.sync.arrive_and_wait();
    if (rank_ != root) std::memcpy(x, g_.ptrs[root], bytes);
    g_.sync.arrive_and_wait();
  }
  void barrier() override { g_.sync.arrive_and_wait(); }

 private:
  template <class T>
  void reduce(T* x, size_t n) {
    g_.ptrs[rank_] = x;
    g_.sync.arrive_and_wait();
    std::vector<T> sum(n, T(0));
    for (int r = 0; r < g_.world; ++r)
      for (size_t i = 0; i < n; ++i) sum[i] += static_cast<const T*>(g_.ptrs[r])[i];
    g_.sync.arrive_and_wait();
    std::copy(sum.begin(), sum.end(), x);
  }
  ThreadGroup& g_;
  int rank_;
};

}  // namespace

// With one process the trainer's arithmetic is the plain loop: same batches, gradients, clipping
// and AdamW steps, so the losses and the trained values are equal bit for bit.
TEST(DistTrainer, SingleProcessEqualsThePlainLoop) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp;
  sp.ctx = 32;
  auto tiny = lizard::testing::make_tiny(sd, sp);
  const int L = 16;
  Dataset data = lizard::testing::random_tokens(sd.rng, sp.vocab, L, 9, 2, 5, 2);
  lizard::testing::ScratchDir dir;
  TrainOptions o = tiny_train_options(dir.path, L);
  Communicator single;
  o.comm = &single;
  Stage1 trained(tiny.ck, tiny_stage_options(L));
  const TrainResult r = train(trained, data, o);
  EXPECT_EQ(r.world, 1);

  Stage1 plain(tiny.ck, tiny_stage_options(L));
  std::vector<ParamTensor> params = plain.params();
  AdamW adam(o.adam);
  adam.init(params);
  SampleOrder order(data.train.num_samples(L), o.seed);
  const LrSchedule sched{o.lr, o.steps, o.warmup_frac, o.final_lr_frac};
  ASSERT_EQ(r.losses.size(), size_t(o.steps));
  for (int64_t s = 0; s < o.steps; ++s) {
    std::vector<const int32_t*> batch;
    for (int i = 0; i < o.batch; ++i) batch.push_back(data.train.sample(order.next(), L));
    const LossResult lr = plain.forward_backward(batch, L);
    clip_grad_norm(params, o.clip);
    adam.step(params, sched.at(s));
    EXPECT_EQ(lr.total, r.losses[s]) << "step " << s + 1;
  }
  for (int l : plain.layers()) EXPECT_EQ(plain.checkpoint().layers.at(l).gate_w, trained.checkpoint().layers.at(l).gate_w);
}

namespace {

struct RankRun {
  TrainResult result;
  std::string error;
  std::unique_ptr<Stage1> stage;
};

// Runs `world` ranks in threads; stop_rank (if >= 0) requests a stop after stop_step steps.
std::vector<RankRun> run_ranks(int world, const lizard::testing::TinyModel& tiny, const Dataset& data, const fs::path& dir, int L,
                               int stop_rank = -1, int64_t stop_step = 0, const Dataset* other_data = nullptr) {
  ThreadGroup group(world);
  std::vector<RankRun> runs(static_cast<size_t>(world));
  std::vector<std::atomic<bool>> stops(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    runs[r].stage = std::make_unique<Stage1>(tiny.ck, tiny_stage_options(L));
    threads.emplace_back([&, r] {
      ThreadCommunicator comm(group, r);
      TrainOptions o = tiny_train_options(dir, L);
      o.comm = &comm;
      o.stop = &stops[r];
      if (r == stop_rank)
        o.on_step = [&, r](int64_t done, const LossResult&) {
          if (done == stop_step) stops[r] = true;
        };
      try {
        runs[r].result = train(*runs[r].stage, r > 0 && other_data ? *other_data : data, o);
      } catch (const std::exception& e) {
        runs[r].error = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return runs;
}

}  // namespace

// Two ranks with half the batch each follow the one-process loss curve (to float rounding: the
// gradient of a batch's mean is summed in another order), keep identical values, and only rank 0
// writes files.
TEST(DistTrainer, TwoRanksFollowTheOneProcessRun) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp;
  sp.ctx = 32;
  auto tiny = lizard::testing::make_tiny(sd, sp);
  const int L = 16;
  Dataset data = lizard::testing::random_tokens(sd.rng, sp.vocab, L, 9, 2, 5, 2);
  lizard::testing::ScratchDir one_dir, two_dir;
  const std::vector<RankRun> one = run_ranks(1, tiny, data, one_dir.path, L);
  const std::vector<RankRun> two = run_ranks(2, tiny, data, two_dir.path, L);
  ASSERT_EQ(one[0].error, "");
  ASSERT_EQ(two[0].error, "");
  ASSERT_EQ(two[1].error, "");
  const std::vector<double>& a = one[0].result.losses;
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(two[0].result.losses.size(), a.size());
  double max_rel = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_rel = std::max(max_rel, std::abs(two[0].result.losses[i] - a[i]) / std::abs(a[i]));
    EXPECT_EQ(two[0].result.losses[i], two[1].result.losses[i]) << "the ranks' averaged losses differ";
  }
  EXPECT_LT(max_rel, 1e-4);
  std::printf("[dist] 2 ranks in threads vs 1 process: max rel loss difference %.2e over %zu steps\n", max_rel,
              a.size());
  for (int l : two[0].stage->layers()) {
    EXPECT_EQ(two[0].stage->checkpoint().layers.at(l).gate_w, two[1].stage->checkpoint().layers.at(l).gate_w);
    EXPECT_EQ(two[0].stage->checkpoint().layers.at(l).feat_q, two[1].stage->checkpoint().layers.at(l).feat_q);
  }
  EXPECT_EQ(two[0].result.world, 2);
  EXPECT_TRUE(fs::exists(two_dir.path / "report.json"));
  EXPECT_EQ(lizard::testing::logged_losses(two_dir.path), two[0].result.losses);
  EXPECT_TRUE(two[1].result.report.is_null());
}

// A stop request seen by one rank stops every rank after the same step, with one checkpoint;
// a resume with two ranks then continues the one-rank-stopped run.
TEST(DistTrainer, AStopOnAnyRankStopsAllAndResumes) {
  Seeded sd;
  SCOPED_TRACE(sd.trace());
  TinySpec sp;
  sp.ctx = 32;
  auto tiny = lizard::testing::make_tiny(sd, sp);
  const int L = 16;
  Dataset data = lizard::testing::random_tokens(sd.rng, sp.vocab, L, 9, 2, 5, 2);
  lizard::testing::ScratchDir full_dir, dir;
  const std::vector<RankRun> full = run_ranks(2, tiny, data, full_dir.path, L);
  const std::vector<RankRun> stopped = run_ranks(2, tiny, data, dir.path, L, /*stop_rank=*/1, /*stop_step=*/3);
  for (const RankRun& r : stopped) {
    ASSERT_EQ(r.error, "");
    EXPECT_TRUE(r.result.interrupted);
    EXPECT_EQ(r.result.steps_done, 3);
  }
  ASSERT_TRUE(fs::exists(dir.path / kTrainStateFile));

  // Resume: rank 0 reads the state and sends it to rank 1 (whose fresh stage starts elsewhere).
  ThreadGroup group(2);
  std::vector<RankRun> resumed(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    resumed[r].stage = std::make_unique<Stage1>(tiny.ck, tiny_stage_options(L));
    threads.emplace_back([&, r] {
      ThreadCommunicator comm(group, r);
      TrainOptions o = tiny_train_options(dir.path, L);
      o.comm = &comm;
      o.resume = true;
      try {
        resumed[r].result = train(*resumed[r].stage, data, o);
      } catch (const std::exception& e) {
        resumed[r].error = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(resumed[0].error, "");
  ASSERT_EQ(resumed[1].error, "");
  EXPECT_EQ(resumed[1].result.start_step, 3);
  EXPECT_EQ(lizard::testing::logged_losses(dir.path), full[0].result.losses);
  for (int l : full[0].stage->layers())
    EXPECT_EQ(full[0].stage->checkpoint().layers.at(l).gate_w, resumed[1].stage->checkpoint().layers.at(l).gate_w);
}

// A failure on rank 0 while it sets up the run reaches every rank as an error, not a hang.
TEST(DistTrainer, RankZeroSetupFailureReachesEveryRank) {
  Seeded sd;
  TinySpec sp;
  sp.ctx = 32;
  auto tiny = lizard::testing::make_tiny(sd, sp);
  const int L = 16;
  Dataset data = lizard::testing::random_tokens(sd.rng, sp.vocab, L, 9, 2, 5, 2);
  lizard::testing::ScratchDir dir;
  ASSERT_EQ(run_ranks(2, tiny, data, dir.path, L)[0].error, "");
  const std::vector<RankRun> again = run_ranks(2, tiny, data, dir.path, L);  // no --resume: refused
  EXPECT_NE(again[0].error.find("already holds a training run"), std::string::npos) << again[0].error;
  EXPECT_NE(again[1].error.find("rank 0 could not set up"), std::string::npos) << again[1].error;
}

namespace {

// Rank 0's bytes through the rendezvous to `world - 1` other ranks (threads); returns what each got.
std::vector<std::string> exchange(DistEnv env, const RendezvousOptions& rv, const std::string& bytes) {
  std::vector<std::string> got(static_cast<size_t>(env.world));
  std::vector<std::string> errors(static_cast<size_t>(env.world));
  std::vector<std::thread> threads;
  for (int r = 0; r < env.world; ++r)
    threads.emplace_back([&, env, r]() mutable {
      env.rank = r;
      env.local_rank = r;
      try {
        got[r] = rendezvous_exchange(env, rv, r == 0 ? bytes : std::string(), bytes.size());
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < env.world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  return got;
}

}  // namespace

TEST(DistRendezvous, FileReachesEveryRankAndIsRemovedAfter) {
  lizard::testing::ScratchDir dir;
  DistEnv env;
  env.world = 3;
  env.job = "job7";
  RendezvousOptions rv;
  rv.dir = (dir.path / ".dist").string();
  rv.timeout_s = 20;
  const std::string id(128, '\x5a');
  for (const std::string& g : exchange(env, rv, id)) EXPECT_EQ(g, id);
  EXPECT_TRUE(fs::exists(dir.path / ".dist" / "nccl_id.job7"));
  rendezvous_done(env, rv);
  EXPECT_FALSE(fs::exists(dir.path / ".dist" / "nccl_id.job7"));

  // A file left by an earlier run is not taken for this run's id: a clear timeout instead.
  fs::create_directories(rv.dir);
  { std::ofstream(dir.path / ".dist" / "nccl_id.job7", std::ios::binary) << id; }
  fs::last_write_time(dir.path / ".dist" / "nccl_id.job7", fs::file_time_type::clock::now() - std::chrono::hours(1));
  env.rank = 1;
  rv.timeout_s = 0.3;
  try {
    rendezvous_exchange(env, rv, "", id.size());
    ADD_FAILURE() << "a stale id file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did not appear"), std::string::npos) << e.what();
  }
}

TEST(DistRendezvous, TcpReachesEveryRank) {
  DistEnv env;
  env.world = 3;
  env.master_addr = "localhost";
  env.master_port = 20000 + static_cast<int>(std::random_device{}() % 20000);
  RendezvousOptions rv;  // Auto: TCP, as MASTER_ADDR and MASTER_PORT are set
  rv.timeout_s = 20;
  std::string id(128, '\0');
  for (size_t i = 0; i < id.size(); ++i) id[i] = static_cast<char>(i * 7 + 1);
  for (const std::string& g : exchange(env, rv, id)) EXPECT_EQ(g, id);
}

// Ranks that loaded different data (or settings) refuse to train together, all of them.
TEST(DistTrainer, RanksWithDifferentDataRefuse) {
  Seeded sd;
  TinySpec sp;
  sp.ctx = 32;
  auto tiny = lizard::testing::make_tiny(sd, sp);
  const int L = 16;
  Dataset data = lizard::testing::random_tokens(sd.rng, sp.vocab, L, 9, 2, 5, 2);
  Dataset other = lizard::testing::random_tokens(sd.rng, sp.vocab, L, 9, 2, 5, 2);
  lizard::testing::ScratchDir dir;
  const std::vector<RankRun> runs = run_ranks(2, tiny, data, dir.path, L, -1, 0, &other);
  for (const RankRun& r : runs) EXPECT_NE(r.error.find("differ from rank 0"), std::string::npos) << r.error;
}
