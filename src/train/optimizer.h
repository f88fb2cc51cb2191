// AdamW with decoupled weight decay, global gradient-norm clipping and the paper's learning-rate
// schedule (linear warm-up, then cosine decay to a fraction of the peak). State is plain vectors
// so that a training checkpoint can store it bit for bit.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lizard {

// One trainable tensor: its values and the gradient of the loss w.r.t. them (same length).
struct ParamTensor {
  std::string name;
  std::vector<float>* value = nullptr;
  std::vector<float>* grad = nullptr;
};

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.99, eps = 1e-8;
  double weight_decay = 0.0;  // decoupled: p -= lr * wd * p before the Adam update (as PyTorch)
};

// Per step t (1-based):  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   p -= lr wd p;  p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
// Arithmetic is in double per element, rounded to float once when stored.
class AdamW {
 public:
  explicit AdamW(const AdamWOptions& o = {}) : opt_(o) {}
  // Sizes the moments for these tensors (zeros); called once before the first step.
  void init(const std::vector<ParamTensor>& params);
  void step(const std::vector<ParamTensor>& params, double lr);

  int64_t steps() const { return t_; }
  const AdamWOptions& options() const { return opt_; }
  // Moments, one vector per tensor in the order of init (for checkpoints).
  std::vector<std::vector<float>>& m() { return m_; }
  std::vector<std::vector<float>>& v() { return v_; }
  void restore_steps(int64_t t) { t_ = t; }

 private:
  AdamWOptions opt_;
  int64_t t_ = 0;
  std::vector<std::vector<float>> m_, v_;
};

// L2 norm over every gradient (double accumulation). When it exceeds max_norm (> 0), all gradients
// are multiplied by max_norm / (norm + 1e-6). Returns the norm before clipping.
double clip_grad_norm(const std::vector<ParamTensor>& params, double max_norm);

// Learning rate of step s (0-based) of `total` steps:
//   warm = max(1, round(warmup_frac * total)) steps rise linearly: peak * (s + 1) / warm;
//   then cosine from peak down to final_frac * peak, reached at the last step (s = total - 1).
struct LrSchedule {
  double peak = 1e-3;
  int64_t total = 1;
  double warmup_frac = 0.1;
  double final_frac = 0.1;
  int64_t warmup_steps() const;
  double at(int64_t s) const;
};

}  // namespace lizard
