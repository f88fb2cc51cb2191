// Generation on the GPU: a teacher or a Lizard model (all-Lizard or hybrid, stage 2's LoRA merged into
// the uploaded weights), bf16 storage, fp32 accumulation, reproducing the CPU graph of model/llama.h.
// Sequences live in a CudaBatch of `slots`: softmax layers hold a bf16 KV cache [slots, Hkv, ctx, D]
// (K and V), Lizard layers hold S, z (fp32) and the ring of the last w keys/values: constant in size.
//
// Prefill runs layer by layer over the whole prompt (flash attention for softmax layers, the chunked
// Lizard kernel with its final state for Lizard layers); projections and MLP go in pieces of
// `prefill_piece` rows, so prefill memory is the prompt's residual stream and q/k/v/attention output
// (about n * (d_model + 2 * (H + Hkv) * D) * 2 bytes), never n x n or n x d_ff.
// Decode runs one token for every active slot, each at its own position.
//
// Plain C++ header; without CUDA every entry point throws Error("built without CUDA").
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"

namespace lizard {
struct LoadedModel;
struct Checkpoint;
struct LizardCheckpoint;
class LlamaState;
}

namespace lizard::cuda {

struct CudaModelOptions {
  int64_t prefill_piece = 2048;  // rows per projection / MLP / head piece of a prefill
};

class CudaModel;

// The sequences of one batch. Movable; frees its device memory when destroyed.
class CudaBatch {
 public:
  CudaBatch();
  ~CudaBatch();
  CudaBatch(CudaBatch&&) noexcept;
  CudaBatch& operator=(CudaBatch&&) noexcept;

  int slots() const;
  int64_t context() const;
  int64_t n_past(int slot) const;  // positions held by a slot (0: empty)
  size_t bytes() const;            // device memory held (caches, states, decode scratch)

  struct Impl;
  std::unique_ptr<Impl> impl;
};

class CudaModel {
 public:
  // Uploads the weights to the current device. Throws Error (one line) for a missing GPU, out of memory,
  // or Lizard options the kernels do not implement (feature_on_rope != window_rope). A LoLCATs model
  // (combine = lolcats) runs all_logits only: no batches (can_generate() is false).
  explicit CudaModel(const LoadedModel& lm, const CudaModelOptions& opt = {});
  // The same from a teacher and an optional Lizard checkpoint (layers + LoRA); neither is kept.
  CudaModel(const Checkpoint& teacher, const LizardCheckpoint* lizard, const CudaModelOptions& opt = {});
  // A synthetic model of cfg's shape with random weights made on the GPU (TeacherWeights(cfg, seed)) and
  // the Lizard layers of `lizard` (no LoRA), for speed and memory benchmarks only.
  CudaModel(const ModelConfig& cfg, uint64_t seed, const LizardCheckpoint* lizard, const CudaModelOptions& opt = {});
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  const ModelConfig& config() const;
  int vocab_size() const;
  size_t weight_bytes() const;   // device memory of the weights
  void release_scratch();        // frees the prefill scratch
  bool has_softmax_layers() const;
  bool can_generate() const;  // false for LoLCATs and gate_skips_window layers: all_logits only

  // A batch of `slots` empty sequences of up to ctx positions each. Out of memory throws Error.
  CudaBatch new_batch(int slots, int64_t ctx) const;

  // Runs tokens[0..n) from position 0 in `slot` (replacing what it held) and returns the logits of the
  // last token [vocab].
  std::vector<float> prefill(CudaBatch& b, int slot, const int32_t* tokens, int64_t n);
  // Runs tokens[0..n) at positions n_past(slot).. , continuing what the slot holds (a further chat turn,
  // a restored state), and returns the logits of the last token [vocab]. Softmax layers attend over the
  // cache with the decode kernel; Lizard layers step token by token (one launch per token and layer:
  // meant for turn-sized n). An empty slot: the same as prefill.
  std::vector<float> extend(CudaBatch& b, int slot, const int32_t* tokens, int64_t n);
  // A slot's sequence state to / from a CPU LlamaState made by the CPU model of the same weights and
  // layers (LoadedModel::model), so generate/state_io.h saves and loads it: files are the CPU's format,
  // and a conversation moves between devices. KV caches and rings are bf16 on the GPU: download is
  // exact, upload rounds CPU-made values to bf16 (a GPU-made state round-trips bit for bit).
  // download_slot resets st first; upload_slot needs st.n_past() <= the batch's context (softmax).
  void download_slot(CudaBatch& b, int slot, LlamaState& st) const;
  void upload_slot(CudaBatch& b, int slot, const LlamaState& st);
  // Makes slot `to` a copy of slot `from` (caches, states, position): one prefill serves many sequences
  // of the same prompt.
  void copy_slot(CudaBatch& b, int from, int to);
  // One token per slot (tokens[slots]) for the slots with active[s]; each at its slot's n_past().
  // Returns [slots, vocab] logits (rows of inactive slots are unspecified).
  std::vector<float> decode(CudaBatch& b, const int32_t* tokens, const bool* active);
  // Logits of every position of tokens[0..n) from position 0 ([n, vocab]); no batch needed.
  std::vector<float> all_logits(const int32_t* tokens, int64_t n);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Free and total device memory (cudaMemGetInfo), for reports.
void device_memory(size_t& free_bytes, size_t& total_bytes);
// The device's name, e.g. "NVIDIA H100 80GB HBM3".
std::string device_name();

}  // namespace lizard::cuda
