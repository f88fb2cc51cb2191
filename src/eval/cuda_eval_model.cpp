#include "eval/cuda_eval_model.h"

#include "model/checkpoint.h"
#include "model/load_model.h"
#include "util/error.h"

namespace lizard {

CudaEvalModel::CudaEvalModel(std::shared_ptr<cuda::CudaModel> model, std::string name, int64_t context)
    : model_(std::move(model)), name_(std::move(name)), context_(context) {
  LZ_CHECK(model_ != nullptr, "CudaEvalModel needs a model");
  LZ_CHECK(context_ >= 1, "CudaEvalModel: context must be positive, not {}", context_);
}

int CudaEvalModel::vocab_size() const { return model_->vocab_size(); }

void CudaEvalModel::set_history(std::span<const int32_t> tokens, int64_t start_pos) {
  LZ_CHECK(start_pos >= 0 && start_pos <= static_cast<int64_t>(history_.size()),
           "{}: position {} is past the {} tokens held", name_, start_pos, history_.size());
  LZ_CHECK(start_pos + static_cast<int64_t>(tokens.size()) <= context_, "{}: {} tokens exceed the context of {}",
           name_, start_pos + static_cast<int64_t>(tokens.size()), context_);
  history_.resize(static_cast<size_t>(start_pos));
  history_.insert(history_.end(), tokens.begin(), tokens.end());
  if (batch_pos_ > start_pos) batch_pos_ = -1;  // rewound below what the batch holds
}

void CudaEvalModel::feed(std::span<const int32_t> tokens, int64_t start_pos) { set_history(tokens, start_pos); }

std::span<const float> CudaEvalModel::forward(std::span<const int32_t> tokens, int64_t start_pos, bool all_logits) {
  LZ_CHECK(!tokens.empty(), "{}: forward needs at least one token", name_);
  const bool extends_batch = batch_pos_ >= 0 && batch_pos_ == start_pos && batch_pos_ == static_cast<int64_t>(history_.size());
  set_history(tokens, start_pos);
  const size_t V = static_cast<size_t>(model_->vocab_size());
  const int64_t n = static_cast<int64_t>(history_.size());
  if (all_logits || !model_->can_generate()) {  // LoLCATs: no batch, the last row of all_logits
    logits_ = model_->all_logits(history_.data(), n);
    if (!all_logits) return std::span<const float>(logits_).subspan(static_cast<size_t>(n - 1) * V, V);
    return std::span<const float>(logits_).subspan(static_cast<size_t>(start_pos) * V, tokens.size() * V);
  }
  if (!batch_made_) {
    batch_ = model_->new_batch(1, context_);
    batch_made_ = true;
  }
  if (extends_batch && tokens.size() == 1) {
    const int32_t tok = tokens[0];
    const bool active = true;
    logits_ = model_->decode(batch_, &tok, &active);
  } else {
    logits_ = model_->prefill(batch_, 0, history_.data(), n);
  }
  batch_pos_ = n;
  return std::span<const float>(logits_).subspan(0, V);
}

CudaEvalPair cuda_eval_models_of(const std::string& lizard_dir, int64_t context) {
  const std::string file = find_lizard_checkpoint(lizard_dir);
  LZ_CHECK(!file.empty(), "'{}' holds no Lizard checkpoint", lizard_dir);
  const LizardCheckpoint lz = load_lizard_checkpoint(file);
  const Checkpoint teacher = open_checkpoint(lizard_teacher_path(lz, file));
  CudaEvalPair p;
  p.teacher = std::make_unique<CudaEvalModel>(std::make_shared<cuda::CudaModel>(teacher, nullptr), "teacher", context);
  p.student = std::make_unique<CudaEvalModel>(std::make_shared<cuda::CudaModel>(teacher, &lz), "student", context);
  return p;
}

}  // namespace lizard
