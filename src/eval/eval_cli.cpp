#include "eval/eval_cli.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "eval/cuda_eval_model.h"
#include "eval/report.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/load_model.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace lizard {
namespace {

struct Loaded {
  std::shared_ptr<const Checkpoint> ck;  // the teacher's (tokenizer)
  std::shared_ptr<LlamaModel> model;     // teacher or Lizard model
  std::unique_ptr<EvalModel> eval;
  TextCodec codec;
  std::string label;
};

Loaded load(const std::string& path_arg, const std::string& label, int64_t context, int threads,
            const std::string& teacher, const std::string& device) {
  Loaded l;
  const std::string path = path_arg.empty() ? default_model_path() : path_arg;
  ModelOptions mo;
  mo.n_threads = threads;
  mo.context = context;
  LoadedModel lm = load_model(path, mo, teacher);  // a teacher or a Lizard checkpoint
  l.ck = lm.teacher;
  l.model = lm.model;
  LZ_CHECK(l.ck->tokenizer != nullptr, "model '{}' has no tokenizer", path);
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "dir/"
  l.label = label.empty() ? p.filename().string() : label;
  if (device == "cuda") {
    auto gpu = std::make_shared<cuda::CudaModel>(lm);
    l.eval = std::make_unique<CudaEvalModel>(std::move(gpu), l.label, std::max(context, l.model->context_length()));
  } else {
    l.eval = std::make_unique<LlamaEvalModel>(*l.model, l.label);
  }
  l.codec = codec_of(*l.ck->tokenizer);
  return l;
}

struct Texts {
  std::vector<std::vector<int32_t>> docs;
  int64_t bytes = 0, tokens = 0;
};

Texts tokenize_texts(const EvalArgs& a, const TextCodec& codec) {
  Texts t;
  for (const auto& d : read_text_documents(a.data)) {
    if (a.max_tokens > 0 && t.tokens >= a.max_tokens) break;
    std::vector<int32_t> ids = codec.doc_start;
    const auto body = codec.encode(d);
    ids.insert(ids.end(), body.begin(), body.end());
    int64_t bytes = static_cast<int64_t>(d.size());
    if (a.max_tokens > 0 && t.tokens + static_cast<int64_t>(ids.size()) > a.max_tokens) {
      // Keep a prefix; count the bytes it stands for.
      ids.resize(a.max_tokens - t.tokens);
      std::vector<int32_t> kept(ids.begin() + static_cast<std::ptrdiff_t>(codec.doc_start.size()), ids.end());
      bytes = static_cast<int64_t>(codec.decode(kept).size());
    }
    if (ids.size() < 2) continue;
    t.tokens += static_cast<int64_t>(ids.size());
    t.bytes += bytes;
    t.docs.push_back(std::move(ids));
  }
  LZ_CHECK(!t.docs.empty(), "the given text holds fewer than 2 tokens");
  return t;
}

void emit(const EvalReport& r, const EvalArgs& a) {
  const std::string path = write_report(r, a.out_dir);
  std::fputs(r.markdown().c_str(), stdout);
  std::fprintf(stdout, "\n[written: %s and .md]\n\n", path.c_str());
  std::fflush(stdout);
}

}  // namespace

void run_eval(const EvalArgs& a) {
  if (!a.compare.empty()) {
    LZ_CHECK(a.task.empty(), "--compare prints result files side by side; give no task with it");
    std::vector<EvalReport> rs;
    for (const auto& p : a.compare) rs.push_back(read_report(p));
    std::fputs(compare_reports(rs).c_str(), stdout);
    return;
  }
  const std::string& task = a.task;
  LZ_CHECK(a.device == "cpu" || a.device == "cuda", "--device must be cpu or cuda, not '{}'", a.device);
  LZ_CHECK(task == "ppl" || task == "kl" || task == "passkey" || task == "mqar" || task == "mc",
           "unknown eval task '{}' (expected ppl, kl, passkey, mqar or mc; or --compare FILES)", task);
  LZ_CHECK(task != "kl" || !a.student.empty(), "kl needs --student MODEL to compare with the teacher (-m)");
  auto say = [&](const std::string& line) {
    if (!a.quiet) std::fprintf(stderr, "%s\n", line.c_str());
  };

  // The context each model is built for: passkey lengths may go past the teacher's own (Lizard
  // models); everything else uses the model's.
  int64_t need = 0;
  if (task == "passkey") need = *std::max_element(a.lengths.begin(), a.lengths.end());
  std::vector<Loaded> models;
  models.push_back(load(a.model, a.name, need, a.threads, a.teacher, a.device));
  if (!a.student.empty()) models.push_back(load(a.student, a.student_name, need, a.threads, a.teacher, a.device));
  if (models.size() == 2)
    LZ_CHECK(models[0].ck->tokenizer->vocab_size() == models[1].ck->tokenizer->vocab_size(),
             "the two models' tokenizers differ ({} and {} tokens)", models[0].ck->tokenizer->vocab_size(),
             models[1].ck->tokenizer->vocab_size());
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };

  StrideOptions so;
  if (task == "ppl" || task == "kl") {
    int64_t ctx_min = models[0].eval->context_length();
    for (auto& m : models) ctx_min = std::min(ctx_min, m.eval->context_length());
    so.ctx = a.ctx > 0 ? a.ctx : std::min<int64_t>(2048, ctx_min);
    so.stride = a.stride > 0 ? a.stride : std::max<int64_t>(so.ctx / 2, 1);
  }

  if (task == "kl") {
    const Texts t = tokenize_texts(a, models[0].codec);
    KlStats s;
    for (size_t i = 0; i < t.docs.size(); ++i) {
      s.add(kl_divergence(*models[0].eval, *models[1].eval, t.docs[i], so));
      say(fmt::format("kl: document {}/{}, {} tokens scored, KL {:.4f}/token, top-1 {:.3f} ({:.0f} s)", i + 1,
                      t.docs.size(), s.tokens, s.kl_per_token(), s.agreement(), elapsed()));
    }
    s.teacher.bytes = s.student.bytes = t.bytes;
    emit(kl_report(models[0].label, models[1].label, so, s, static_cast<int64_t>(t.docs.size())), a);
    return;
  }

  for (auto& m : models) {
    EvalModel& em = *m.eval;
    if (task == "ppl") {
      const Texts t = tokenize_texts(a, m.codec);
      PplStats s;
      for (size_t i = 0; i < t.docs.size(); ++i) {
        s.add(perplexity(em, t.docs[i], so));
        say(fmt::format("ppl {}: document {}/{}, {} tokens scored, ppl {:.3f} ({:.0f} s)", m.label, i + 1,
                        t.docs.size(), s.tokens, s.ppl(), elapsed()));
      }
      s.bytes = t.bytes;
      emit(ppl_report(m.label, so, s, static_cast<int64_t>(t.docs.size())), a);
    } else if (task == "passkey") {
      PasskeyOptions o;
      o.lengths = a.lengths;
      o.depths = a.depths;
      o.samples = a.samples;
      o.seed = a.seed;
      const PasskeyResult r = run_passkey(em, m.codec, o, [&](const std::string& l) { say(fmt::format("{} ({:.0f} s)", l, elapsed())); });
      const EvalReport rep = passkey_report(m.label, o, r);
      emit(rep, a);
      const std::string png = (fs::path(a.out_dir) / ("passkey_" + file_stem(m.label) + ".png")).string();
      write_passkey_png(png, m.label, o, r);
      std::fprintf(stdout, "[heatmap: %s]\n\n", png.c_str());
    } else if (task == "mqar") {
      LZ_CHECK(a.keys == "letters" || a.keys == "words", "--keys must be letters or words, not '{}'", a.keys);
      MqarOptions o;
      o.pairs = a.pairs;
      o.seq_lens = a.seq_lens;
      o.samples = a.samples;
      o.queries = a.queries;
      o.words = a.keys == "words";
      o.seed = a.seed;
      const MqarResult r = run_mqar(em, m.codec, o, [&](const std::string& l) { say(fmt::format("{} ({:.0f} s)", l, elapsed())); });
      emit(mqar_report(m.label, o, r), a);
    } else {  // mc
      LZ_CHECK(!a.task_format.empty(), "mc needs --task-format mmlu|piqa|arc|hellaswag|winogrande and --data FILE");
      McOptions o;
      o.format = parse_mc_format(a.task_format);
      LZ_CHECK(a.data.size() == 1, "mc takes one --data FILE ({}), not {}", mc_schema(o.format), a.data.size());
      o.data = a.data[0];
      o.fewshot_file = a.fewshot_file;
      o.shots = a.shots;
      o.limit = a.limit;
      o.doc_start = a.bos;
      const McResult r = run_mc(em, m.codec, o, [&](int64_t done, int64_t total) {
        if (done % 50 == 0 || done == total) say(fmt::format("mc {}: {}/{} ({:.0f} s)", m.label, done, total, elapsed()));
      });
      emit(mc_report(m.label, o, r), a);
    }
  }
}

}  // namespace lizard
