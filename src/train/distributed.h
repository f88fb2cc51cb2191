// Data-parallel training across processes, one per GPU, as torchrun, mpirun and SLURM start them.
//
// Each process reads its place (rank, world size, local rank) from the launcher's environment
// (DistEnv). With one process, Communicator is a no-op and needs neither NCCL nor CUDA. With more,
// NcclCommunicator (built only with CUDA) selects GPU local_rank, meets the other ranks through a
// rendezvous, and reduces with NCCL:
//   - TCP (default when MASTER_ADDR and MASTER_PORT are set, as torchrun does): rank 0 listens on
//     MASTER_PORT + 1 (torchrun's own store holds MASTER_PORT) and hands each rank the NCCL id;
//   - file (otherwise, e.g. mpirun or srun): rank 0 writes DIR/nccl_id.<job> (temp + rename), the
//     others poll for it; DIR must be visible to every rank (default: the run's --out DIR/.dist).
// NCCL is found at run time through the loader: /usr/local/cuda/lib64, or pip's
// site-packages/nvidia/nccl/lib, which then needs LD_LIBRARY_PATH. NVLink multicast (NVLS) stays off:
// NCCL_NVLS_ENABLE=0 unless the user set it.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace lizard {

struct DistEnv {
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr;   // torchrun's MASTER_ADDR (empty when not given)
  int master_port = 0;       // torchrun's MASTER_PORT (0 when not given)
  std::string launcher;      // "torchrun", "openmpi", "pmi", "slurm" or "" (single process)
  std::string job;           // the launcher's job id, when it gives one (names the rendezvous file)
};

// Reads the launcher's variables through `get` (returns null when unset); precedence: torchrun
// (RANK/WORLD_SIZE), Open MPI, MPICH/PMI, SLURM. Fails on values that do not parse or rank >= world.
DistEnv dist_env_from(const std::function<const char*(const char*)>& get);
DistEnv dist_env_from_environment();

// The sequences [begin, end) of a global batch that `rank` of `world` trains on: equal contiguous
// shares of the same sample order, so that the ranks together see exactly the one-process batch.
// Fails unless world divides batch.
struct BatchShard {
  int begin = 0, end = 0;
};
BatchShard batch_shard(int batch, int world, int rank);

// Collectives over every rank. This base class is the single-process one: every call is a no-op.
// All ranks must make the same calls in the same order.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const { return 0; }
  virtual int world() const { return 1; }
  bool is_root() const { return rank() == 0; }
  // In place, on host memory: the element-wise mean (floats, e.g. gradients) or sum (doubles, e.g.
  // losses and counts) over all ranks.
  virtual void allreduce_mean(float* /*host_data*/, size_t /*n*/) {}
  virtual void allreduce_sum(double* /*host_data*/, size_t /*n*/) {}
  // Copies rank `root`'s bytes into every other rank's buffer (same size on every rank).
  virtual void broadcast(void* /*host_data*/, size_t /*bytes*/, int /*root*/ = 0) {}
  virtual void barrier() {}
};

struct RendezvousOptions {
  enum class Method { Auto, File, Tcp };
  Method method = Method::Auto;  // Auto: TCP when MASTER_ADDR and MASTER_PORT are set, else File
  std::string dir;               // for File: a directory every rank sees
  double timeout_s = 600;        // how long ranks wait for rank 0's id (model loading comes first)
  // Leave GPU local_rank current for the caller's later CUDA work (the stage). Off: the caller's
  // current GPU stays as it was (a stage built before the communicator keeps working where it is).
  bool select_device = true;
};

// World 1: the no-op Communicator. World > 1: an NCCL communicator (fails when built without CUDA)
// on GPU local_rank mod visible GPUs, which it makes current (rv.select_device), so make it BEFORE
// putting anything on the GPU.
std::unique_ptr<Communicator> make_communicator(const DistEnv& env, const RendezvousOptions& rv);

// The rendezvous (what NcclCommunicator uses; exposed for tests): rank 0's n bytes (root_bytes)
// reach every rank, which returns them. rendezvous_done: rank 0 removes the file once all have joined.
std::string rendezvous_exchange(const DistEnv& env, const RendezvousOptions& rv, const std::string& root_bytes,
                                size_t n);
void rendezvous_done(const DistEnv& env, const RendezvousOptions& rv);

// This process's communicator, made from the launcher's environment on the first call (later calls
// return the same one and ignore rv): the trainer uses it when given none, and `lizard linearize`
// calls it before building a GPU stage, so that the stage lands on GPU local_rank. Never destroyed
// (tearing NCCL down after CUDA at exit would fail).
Communicator& process_communicator(const RendezvousOptions& rv);

// The rendezvous of a training run that writes to out_dir: files under dist_dir, or out_dir/.dist
// when dist_dir is empty (the trainer's default and what `lizard linearize` uses before its stage).
RendezvousOptions train_rendezvous(const std::string& out_dir, const std::string& dist_dir = {});

}  // namespace lizard
