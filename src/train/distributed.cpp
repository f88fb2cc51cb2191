#include "train/distributed.h"

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "util/atomic_file.h"
#include "util/error.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef LIZARD_HAVE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace fs = std::filesystem;

namespace lizard {

namespace {

int parse_int(const char* name, const char* value) {
  int v = 0;
  const char* end = value + std::strlen(value);
  auto [p, ec] = std::from_chars(value, end, v);
  LZ_CHECK(ec == std::errc() && p == end && p != value, "environment variable {}='{}' is not an integer", name, value);
  return v;
}

}  // namespace

DistEnv dist_env_from(const std::function<const char*(const char*)>& get) {
  auto has = [&](const char* n) { return get(n) != nullptr && *get(n) != '\0'; };
  auto num = [&](const char* n, int dflt) { return has(n) ? parse_int(n, get(n)) : dflt; };
  auto str = [&](const char* n) { return has(n) ? std::string(get(n)) : std::string(); };
  DistEnv e;
  if (has("WORLD_SIZE") && has("RANK")) {
    e.launcher = "torchrun";
    e.rank = num("RANK", 0);
    e.world = num("WORLD_SIZE", 1);
    e.local_rank = num("LOCAL_RANK", e.rank);
    e.job = str("TORCHELASTIC_RUN_ID");
  } else if (has("OMPI_COMM_WORLD_SIZE")) {
    e.launcher = "openmpi";
    e.rank = num("OMPI_COMM_WORLD_RANK", 0);
    e.world = num("OMPI_COMM_WORLD_SIZE", 1);
    e.local_rank = num("OMPI_COMM_WORLD_LOCAL_RANK", e.rank);
    e.job = has("PMIX_NAMESPACE") ? str("PMIX_NAMESPACE") : str("OMPI_MCA_ess_base_jobid");
  } else if (has("PMI_SIZE")) {
    e.launcher = "pmi";
    e.rank = num("PMI_RANK", 0);
    e.world = num("PMI_SIZE", 1);
    e.local_rank = num("MPI_LOCALRANKID", num("PMI_LOCAL_RANK", e.rank));
    e.job = str("PMIX_NAMESPACE");
  } else if (has("SLURM_NTASKS") && has("SLURM_PROCID")) {
    e.launcher = "slurm";
    e.rank = num("SLURM_PROCID", 0);
    e.world = num("SLURM_NTASKS", 1);
    e.local_rank = num("SLURM_LOCALID", e.rank);
    if (has("SLURM_JOB_ID")) e.job = str("SLURM_JOB_ID") + "." + str("SLURM_STEP_ID");
  }
  // torchrun's rendezvous address, whichever launcher set the ranks (users export it for mpirun too).
  e.master_addr = str("MASTER_ADDR");
  e.master_port = num("MASTER_PORT", 0);
  LZ_CHECK(e.world >= 1 && e.rank >= 0 && e.rank < e.world && e.local_rank >= 0,
           "{} environment: rank {} of world size {} (local rank {}) is not a valid place", e.launcher, e.rank,
           e.world, e.local_rank);
  LZ_CHECK(e.master_port >= 0 && e.master_port < 65535, "MASTER_PORT={} is not a usable port", e.master_port);
  if (e.world == 1) e.launcher.clear();
  return e;
}

DistEnv dist_env_from_environment() {
  return dist_env_from([](const char* n) { return std::getenv(n); });
}

BatchShard batch_shard(int batch, int world, int rank) {
  LZ_CHECK(world >= 1 && rank >= 0 && rank < world, "rank {} of world size {} is not a valid place", rank, world);
  LZ_CHECK(batch % world == 0,
           "--batch {} does not divide among {} processes; choose a global batch that is a multiple of {}", batch,
           world, world);
  const int share = batch / world;
  return {rank * share, (rank + 1) * share};
}

// --- rendezvous: rank 0's NCCL id reaches the other ranks ----------------------------------------

namespace {

const fs::file_time_type kProcessStart = fs::file_time_type::clock::now();

std::string id_file(const DistEnv& env, const RendezvousOptions& rv) {
  return (fs::path(rv.dir) / ("nccl_id." + (env.job.empty() ? std::string("run") : env.job))).string();
}

void file_publish(const DistEnv& env, const RendezvousOptions& rv, const std::string& id) {
  fs::create_directories(rv.dir);
  write_file_atomic(id_file(env, rv), id);
}

std::string file_receive(const DistEnv& env, const RendezvousOptions& rv, size_t n) {
  const std::string path = id_file(env, rv);
  // A file from well before this process started belongs to an earlier run (rank 0 also removes it
  // once all have joined); the slack covers ranks that the launcher started a little apart.
  const auto started = kProcessStart - std::chrono::seconds(30);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(rv.timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    std::error_code ec;
    if (fs::file_size(path, ec) == n && !ec && fs::last_write_time(path, ec) >= started && !ec) {
      std::ifstream in(path, std::ios::binary);
      std::string id(n, '\0');
      if (in.read(id.data(), static_cast<std::streamsize>(n))) return id;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  fail("rank {} of {}: rank 0's NCCL id did not appear in '{}' within {:.0f} s; every rank must see that "
       "directory (--dist-dir), and rank 0 must be running",
       env.rank, env.world, path, rv.timeout_s);
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

// Rank 0: accept world - 1 connections on MASTER_PORT + 1 and send each the id.
void tcp_publish(const DistEnv& env, const RendezvousOptions& rv, const std::string& id) {
  const int port = env.master_port + 1;
  // Dual-stack IPv6 (IPv4 peers arrive as mapped addresses); plain IPv4 where IPv6 is off.
  Fd s{socket(AF_INET6, SOCK_STREAM, 0)};
  const bool v6 = s.fd >= 0;
  if (!v6) s.fd = socket(AF_INET, SOCK_STREAM, 0);
  LZ_CHECK(s.fd >= 0, "rank 0: socket() failed: {}", std::strerror(errno));
  int one = 1, zero = 0;
  setsockopt(s.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int bound = -1;
  if (v6) {
    setsockopt(s.fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    a.sin6_port = htons(static_cast<uint16_t>(port));
    bound = bind(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(static_cast<uint16_t>(port));
    bound = bind(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  LZ_CHECK(bound == 0 && listen(s.fd, env.world) == 0,
           "rank 0: cannot listen on port {} (MASTER_PORT + 1) for the NCCL rendezvous: {}", port,
           std::strerror(errno));
  for (int joined = 1; joined < env.world; ++joined) {
    pollfd p{s.fd, POLLIN, 0};
    LZ_CHECK(poll(&p, 1, static_cast<int>(rv.timeout_s * 1000)) == 1,
             "rank 0: only {} of {} ranks connected to port {} within {:.0f} s", joined, env.world, port, rv.timeout_s);
    Fd c{accept(s.fd, nullptr, nullptr)};
    LZ_CHECK(c.fd >= 0, "rank 0: accept() on port {} failed: {}", port, std::strerror(errno));
    LZ_CHECK(send(c.fd, id.data(), id.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(id.size()),
             "rank 0: sending the NCCL id failed: {}", std::strerror(errno));
  }
}

// Other ranks: connect to MASTER_ADDR:MASTER_PORT + 1 (retrying until rank 0 listens), read the id.
std::string tcp_receive(const DistEnv& env, const RendezvousOptions& rv, size_t n) {
  const std::string port = std::to_string(env.master_port + 1);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(rv.timeout_s);
  std::string last_error = "no attempt";
  while (std::chrono::steady_clock::now() < deadline) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    const int gai = getaddrinfo(env.master_addr.c_str(), port.c_str(), &hints, &res);
    LZ_CHECK(gai == 0, "rank {}: MASTER_ADDR '{}': {}", env.rank, env.master_addr, gai_strerror(gai));
    for (addrinfo* r = res; r; r = r->ai_next) {
      Fd c{socket(r->ai_family, r->ai_socktype, r->ai_protocol)};
      if (c.fd < 0 || connect(c.fd, r->ai_addr, r->ai_addrlen) != 0) {
        last_error = std::strerror(errno);
        continue;
      }
      std::string id(n, '\0');
      size_t got = 0;
      while (got < n) {
        const ssize_t k = recv(c.fd, id.data() + got, n - got, 0);
        if (k <= 0) break;
        got += static_cast<size_t>(k);
      }
      if (got == n) {
        freeaddrinfo(res);
        return id;
      }
      last_error = "connection closed before the id arrived";
    }
    freeaddrinfo(res);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  fail("rank {} of {}: no NCCL id from rank 0 at {}:{} within {:.0f} s (last error: {})", env.rank, env.world,
       env.master_addr, port, rv.timeout_s, last_error);
}

RendezvousOptions::Method resolve(const DistEnv& env, const RendezvousOptions& rv) {
  RendezvousOptions::Method m = rv.method;
  if (m == RendezvousOptions::Method::Auto)
    m = !env.master_addr.empty() && env.master_port > 0 ? RendezvousOptions::Method::Tcp
                                                        : RendezvousOptions::Method::File;
  LZ_CHECK(m == RendezvousOptions::Method::Tcp || !rv.dir.empty(),
           "rank {}: no rendezvous directory given for the NCCL id (--dist-dir)", env.rank);
  LZ_CHECK(m == RendezvousOptions::Method::File || (!env.master_addr.empty() && env.master_port > 0),
           "rank {}: the TCP rendezvous needs MASTER_ADDR and MASTER_PORT", env.rank);
  return m;
}

}  // namespace

std::string rendezvous_exchange(const DistEnv& env, const RendezvousOptions& rv, const std::string& root_bytes,
                                size_t n) {
  const bool tcp = resolve(env, rv) == RendezvousOptions::Method::Tcp;
  if (env.rank != 0) return tcp ? tcp_receive(env, rv, n) : file_receive(env, rv, n);
  LZ_CHECK(root_bytes.size() == n, "rendezvous: rank 0 has {} bytes to share, not {}", root_bytes.size(), n);
  if (tcp)
    tcp_publish(env, rv, root_bytes);  // returns once every rank has the bytes
  else
    file_publish(env, rv, root_bytes);
  return root_bytes;
}

void rendezvous_done(const DistEnv& env, const RendezvousOptions& rv) {
  if (env.rank != 0 || resolve(env, rv) != RendezvousOptions::Method::File) return;
  std::error_code ec;
  fs::remove(id_file(env, rv), ec);
}

RendezvousOptions train_rendezvous(const std::string& out_dir, const std::string& dist_dir) {
  RendezvousOptions rv;
  rv.dir = dist_dir.empty() ? (fs::path(out_dir) / ".dist").string() : dist_dir;
  return rv;
}

Communicator& process_communicator(const RendezvousOptions& rv) {
  static Communicator* const comm = make_communicator(dist_env_from_environment(), rv).release();
  return *comm;
}

#ifndef LIZARD_HAVE_CUDA

std::unique_ptr<Communicator> make_communicator(const DistEnv& env, const RendezvousOptions&) {
  LZ_CHECK(env.world == 1,
           "rank {} of {} ({}): multi-process training needs NCCL, and this lizard was built without CUDA",
           env.rank, env.world, env.launcher);
  return std::make_unique<Communicator>();
}

#else

namespace {

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const DistEnv& env, const RendezvousOptions& rv) : rank_(env.rank), world_(env.world) {
    setenv("NCCL_NVLS_ENABLE", "0", 0);  // NVLink multicast stays off unless the user asked for it
    int n_dev = 0;
    cuda_ok(cudaGetDeviceCount(&n_dev), "cudaGetDeviceCount");
    LZ_CHECK(n_dev > 0, "rank {} of {}: no CUDA device is visible", rank_, world_);
    device_ = env.local_rank % n_dev;
    int callers_device = 0;
    cuda_ok(cudaGetDevice(&callers_device), "cudaGetDevice");
    cuda_ok(cudaSetDevice(device_), "cudaSetDevice");
    cuda_ok(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");

    ncclUniqueId id;
    std::string id_bytes;
    if (rank_ == 0) {
      nccl_ok(ncclGetUniqueId(&id), "ncclGetUniqueId");
      id_bytes.assign(reinterpret_cast<const char*>(&id), sizeof id);
    }
    id_bytes = rendezvous_exchange(env, rv, id_bytes, sizeof id);
    std::memcpy(&id, id_bytes.data(), sizeof id);
    nccl_ok(ncclCommInitRank(&comm_, world_, id, rank_), "ncclCommInitRank");
    if (!rv.select_device) cuda_ok(cudaSetDevice(callers_device), "cudaSetDevice");
    rendezvous_done(env, rv);  // everyone has joined; a later run must not read this id
  }

  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
    if (buf_) cudaFree(buf_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }

  void allreduce_mean(float* host, size_t n) override {
    if (n == 0) return;
    const OnDevice on(*this);
    void* d = staged(host, n * sizeof(float));
    nccl_ok(ncclAllReduce(d, d, n, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce(float)");
    unstage(host, n * sizeof(float));
    const float inv = 1.0f / static_cast<float>(world_);  // exact for power-of-two worlds
    for (size_t i = 0; i < n; ++i) host[i] *= inv;
  }

  void allreduce_sum(double* host, size_t n) override {
    if (n == 0) return;
    const OnDevice on(*this);
    void* d = staged(host, n * sizeof(double));
    nccl_ok(ncclAllReduce(d, d, n, ncclFloat64, ncclSum, comm_, stream_), "ncclAllReduce(double)");
    unstage(host, n * sizeof(double));
  }

  void broadcast(void* host, size_t bytes, int root) override {
    if (bytes == 0) return;
    const OnDevice on(*this);
    void* d = staged(host, bytes);
    nccl_ok(ncclBroadcast(d, d, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast");
    unstage(host, bytes);
  }

  void barrier() override {
    double x = 0;
    allreduce_sum(&x, 1);
  }

 private:
  void cuda_ok(cudaError_t e, const char* what) const {
    if (e != cudaSuccess) fail("rank {} of {}: {} failed: {}", rank_, world_, what, cudaGetErrorString(e));
  }
  void nccl_ok(ncclResult_t r, const char* what) const {
    if (r != ncclSuccess)
      fail("rank {} of {}: {} failed: {}{}{}", rank_, world_, what, ncclGetErrorString(r), comm_ ? ": " : "",
           comm_ ? ncclGetLastError(comm_) : "");
  }
  // The communicator's GPU for the span of one collective; the caller's current GPU afterwards.
  struct OnDevice {
    const NcclCommunicator& c;
    int prev = 0;
    explicit OnDevice(const NcclCommunicator& comm) : c(comm) {
      c.cuda_ok(cudaGetDevice(&prev), "cudaGetDevice");
      c.cuda_ok(cudaSetDevice(c.device_), "cudaSetDevice");
    }
    ~OnDevice() { cudaSetDevice(prev); }
  };
  // Host data into the (grown as needed) device buffer; the stream orders copies and collectives.
  void* staged(const void* host, size_t bytes) {
    if (bytes > cap_) {
      if (buf_) cuda_ok(cudaFree(buf_), "cudaFree");
      buf_ = nullptr;
      cuda_ok(cudaMalloc(&buf_, bytes), "cudaMalloc (collective buffer)");
      cap_ = bytes;
    }
    cuda_ok(cudaMemcpyAsync(buf_, host, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync (to device)");
    return buf_;
  }
  void unstage(void* host, size_t bytes) {
    cuda_ok(cudaMemcpyAsync(host, buf_, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync (to host)");
    cuda_ok(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (after a collective)");
  }

  int rank_, world_, device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* buf_ = nullptr;
  size_t cap_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_communicator(const DistEnv& env, const RendezvousOptions& rv) {
  if (env.world == 1) return std::make_unique<Communicator>();
  return std::make_unique<NcclCommunicator>(env, rv);
}

#endif  // LIZARD_HAVE_CUDA

}  // namespace lizard
