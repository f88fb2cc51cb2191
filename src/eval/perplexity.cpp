#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numbers>

#include "train/data.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace lizard {

std::vector<StrideWindow> stride_windows(int64_t n, const StrideOptions& opt) {
  LZ_CHECK(opt.ctx >= 2, "the window (--ctx) must hold at least 2 tokens, not {}", opt.ctx);
  LZ_CHECK(opt.stride >= 1 && opt.stride <= opt.ctx, "the stride must be in [1, ctx={}], not {}", opt.ctx, opt.stride);
  std::vector<StrideWindow> ws;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += opt.stride) {
    const int64_t end = std::min(begin + opt.ctx, n);
    const int64_t trg = end - prev_end;  // tokens not yet scored
    StrideWindow w{begin, end, std::max(end - trg, begin + 1)};
    if (w.score_from < w.end) ws.push_back(w);
    prev_end = end;
    if (end == n) break;
  }
  return ws;
}

double PplStats::ppl() const { return tokens ? std::exp(nll / tokens) : 0; }
double PplStats::bits_per_byte() const { return bytes ? nll / std::numbers::ln2 / bytes : 0; }
void PplStats::add(const PplStats& o) {
  nll += o.nll;
  tokens += o.tokens;
  bytes += o.bytes;
  windows += o.windows;
}

void KlStats::add(const KlStats& o) {
  tokens += o.tokens;
  kl += o.kl;
  top1_agree += o.top1_agree;
  teacher.add(o.teacher);
  student.add(o.student);
}

PplStats perplexity(EvalModel& m, std::span<const int32_t> tokens, const StrideOptions& opt) {
  LZ_CHECK(opt.ctx <= m.context_length(), "the window of {} tokens is longer than {}'s context of {}", opt.ctx,
           m.name(), m.context_length());
  PplStats s;
  const int V = m.vocab_size();
  for (const auto& w : stride_windows(static_cast<int64_t>(tokens.size()), opt)) {
    // Logits at window index j predict token j+1: rows [score_from-1, end-1) are needed.
    auto win = tokens.subspan(w.begin, w.end - 1 - w.begin);
    scan_logits(m, win, w.score_from - 1 - w.begin, opt.chunk, [&](int64_t i0, int64_t n, const float* lg) {
      double nll = 0;
#pragma omp parallel for reduction(+ : nll) schedule(static)
      for (int64_t r = 0; r < n; ++r) {
        const float* row = lg + r * V;
        const int32_t target = tokens[w.begin + i0 + r + 1];
        nll += log_sum_exp(row, V) - row[target];
      }
      s.nll += nll;
      s.tokens += n;
    });
    ++s.windows;
  }
  return s;
}

double kl_of_logits(const float* p, const float* q, int V) {
  const double lp = log_sum_exp(p, V), lq = log_sum_exp(q, V);
  double kl = 0;
  for (int i = 0; i < V; ++i) {
    const double a = p[i] - lp;
    kl += std::exp(a) * (a - (q[i] - lq));
  }
  return std::max(kl, 0.0);
}

KlStats kl_divergence(EvalModel& teacher, EvalModel& student, std::span<const int32_t> tokens, const StrideOptions& opt) {
  LZ_CHECK(teacher.vocab_size() == student.vocab_size(), "{} has {} tokens and {} has {}: KL needs one vocabulary",
           teacher.name(), teacher.vocab_size(), student.name(), student.vocab_size());
  for (EvalModel* m : {&teacher, &student})
    LZ_CHECK(opt.ctx <= m->context_length(), "the window of {} tokens is longer than {}'s context of {}", opt.ctx,
             m->name(), m->context_length());
  KlStats s;
  const int V = teacher.vocab_size();
  const int64_t chunk = std::max({opt.chunk, teacher.preferred_chunk(), student.preferred_chunk(), int64_t(1)});
  std::vector<float> tl;
  for (const auto& w : stride_windows(static_cast<int64_t>(tokens.size()), opt)) {
    auto win = tokens.subspan(w.begin, w.end - 1 - w.begin);
    const int64_t from = w.score_from - 1 - w.begin;
    // The two models step through the window together, one chunk at a time.
    if (from > 0) {
      teacher.feed(win.subspan(0, from), 0);
      student.feed(win.subspan(0, from), 0);
    }
    for (int64_t i0 = from; i0 < static_cast<int64_t>(win.size()); i0 += chunk) {
      const int64_t n = std::min<int64_t>(chunk, static_cast<int64_t>(win.size()) - i0);
      auto t = teacher.forward(win.subspan(i0, n), i0, true);
      tl.assign(t.begin(), t.end());  // the student's call may reuse the teacher's buffer
      auto q = student.forward(win.subspan(i0, n), i0, true);
      // Rows in parallel: a window's rows are n x V logits of each model (2048 x 49152 for SmolLM2), the
      // bulk of an evaluation's time on one core when the models run on the GPU.
      double kl = 0, tn = 0, sn = 0;
      int64_t agree = 0;
      const float* tld = tl.data();
      const float* qd = q.data();
#pragma omp parallel for reduction(+ : kl, tn, sn, agree) schedule(static)
      for (int64_t r = 0; r < n; ++r) {
        const float* pr = tld + r * V;
        const float* qr = qd + r * V;
        const int32_t target = tokens[w.begin + i0 + r + 1];
        kl += kl_of_logits(pr, qr, V);
        agree += argmax(pr, V) == argmax(qr, V);
        tn += log_sum_exp(pr, V) - pr[target];
        sn += log_sum_exp(qr, V) - qr[target];
      }
      s.kl += kl, s.top1_agree += agree, s.teacher.nll += tn, s.student.nll += sn;
      s.tokens += n;
      s.teacher.tokens += n;
      s.student.tokens += n;
    }
    ++s.teacher.windows;
    ++s.student.windows;
  }
  return s;
}

std::vector<std::string> read_text_documents(const std::vector<std::string>& paths) {
  LZ_CHECK(!paths.empty(), "no text given: pass text files or folders (--data PATH...)");
  std::vector<std::string> files;
  for (const auto& p : paths) {
    LZ_CHECK(fs::exists(p), "text path '{}' does not exist", p);
    if (fs::is_directory(p)) {
      for (auto& e : fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied))
        if (e.is_regular_file()) files.push_back(e.path().string());
    } else {
      files.push_back(p);
    }
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> docs;
  for (const auto& f : files)
    for (auto& d : read_documents(f, ChatTemplate{}, size_t(1) << 30)) docs.push_back(std::move(d));
  LZ_CHECK(!docs.empty(), "no text documents found in the given paths");
  return docs;
}

}  // namespace lizard
