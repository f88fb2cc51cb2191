#include "eval/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <cctype>
#include <cstring>
#include <map>

#include "eval/png.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace lizard {
namespace {

std::string fmt_value(double v) {
  const double a = std::abs(v);
  if (a < 1e15 && v == std::floor(v)) return fmt::format("{}", static_cast<int64_t>(v));  // counts
  if (a >= 1000) return fmt::format("{:.1f}", v);
  if (a >= 1) return fmt::format("{:.4g}", v);
  return fmt::format("{:.4f}", v);
}
std::string pct(double v) { return fmt::format("{:.1f}", 100 * v); }

}  // namespace

double EvalReport::metric(const std::string& name) const {
  for (const auto& [k, v] : metrics)
    if (k == name) return v;
  fail("report {} of {} has no metric '{}'", task, model, name);
}

nlohmann::json EvalReport::to_json() const {
  nlohmann::json m = nlohmann::json::array();
  for (const auto& [k, v] : metrics) m.push_back({{"name", k}, {"value", v}});
  return {{"lizard_eval", 1}, {"task", task},     {"model", model},   {"params", params},
          {"metrics", m},     {"tables", tables}, {"details", details}};
}

EvalReport EvalReport::from_json(const nlohmann::json& j) {
  LZ_CHECK(j.is_object() && j.contains("lizard_eval") && j.contains("metrics"),
           "not a result file written by 'lizard eval'");
  EvalReport r;
  try {
    r.task = j.at("task").get<std::string>();
    r.model = j.at("model").get<std::string>();
    r.params = j.value("params", nlohmann::json::object());
    for (const auto& m : j.at("metrics")) r.metrics.emplace_back(m.at("name").get<std::string>(), m.at("value").get<double>());
    r.tables = j.value("tables", "");
    r.details = j.value("details", nlohmann::json::array());
  } catch (const nlohmann::json::exception& e) {
    fail("malformed 'lizard eval' result: {}", e.what());
  }
  return r;
}

std::string EvalReport::markdown() const {
  std::string s = fmt::format("# {} — {}\n\n", task, model);
  if (!params.empty()) {
    s += "Parameters: ";
    bool first = true;
    for (auto it = params.begin(); it != params.end(); ++it) {
      s += fmt::format("{}`{}` = {}", first ? "" : ", ", it.key(), it.value().dump());
      first = false;
    }
    s += "\n\n";
  }
  s += "| metric | value |\n|---|---|\n";
  for (const auto& [k, v] : metrics) s += fmt::format("| {} | {} |\n", k, fmt_value(v));
  if (!tables.empty()) s += "\n" + tables;
  return s;
}

std::string file_stem(const std::string& label) {
  std::string s = fs::path(label).filename().string();
  for (const char* ext : {".gguf", ".json"})
    if (s.size() > std::strlen(ext) && s.ends_with(ext)) s.resize(s.size() - std::strlen(ext));
  for (char& c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_')) c = '_';
  return s.empty() ? "model" : s;
}

std::string write_report(const EvalReport& r, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  LZ_CHECK(!ec, "cannot create output folder '{}': {}", dir, ec.message());
  const fs::path base = fs::path(dir) / (r.task + "_" + file_stem(r.model));
  write_file_atomic(base.string() + ".json", r.to_json().dump(2) + "\n");
  write_file_atomic(base.string() + ".md", r.markdown());
  return base.string() + ".json";
}

EvalReport read_report(const std::string& path) {
  std::ifstream in(path);
  LZ_CHECK(in.good(), "cannot read result file '{}'", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception&) {
    fail("'{}' is not valid JSON", path);
  }
  try {
    return EvalReport::from_json(j);
  } catch (const Error& e) {
    fail("'{}': {}", path, e.what());
  }
}

std::string compare_reports(const std::vector<EvalReport>& reports) {
  LZ_CHECK(!reports.empty(), "nothing to compare: give result files (--compare A.json B.json ...)");
  std::vector<std::string> rows;
  std::map<std::string, std::map<size_t, double>> cells;
  for (size_t i = 0; i < reports.size(); ++i)
    for (const auto& [k, v] : reports[i].metrics) {
      const std::string key = reports[i].task + " " + k;
      if (!cells.count(key)) rows.push_back(key);
      cells[key][i] = v;
    }
  std::string s = "| metric |";
  for (const auto& r : reports) s += fmt::format(" {} |", r.model);
  s += "\n|---|";
  for (size_t i = 0; i < reports.size(); ++i) s += "---:|";
  s += "\n";
  for (const auto& key : rows) {
    s += fmt::format("| {} |", key);
    for (size_t i = 0; i < reports.size(); ++i) {
      auto it = cells[key].find(i);
      s += fmt::format(" {} |", it == cells[key].end() ? std::string("-") : fmt_value(it->second));
    }
    s += "\n";
  }
  return s;
}

EvalReport ppl_report(const std::string& model, const StrideOptions& opt, const PplStats& s, int64_t documents) {
  EvalReport r;
  r.task = "ppl";
  r.model = model;
  r.params = {{"ctx", opt.ctx}, {"stride", opt.stride}, {"documents", documents}};
  r.metrics = {{"ppl", s.ppl()},
               {"bits_per_byte", s.bits_per_byte()},
               {"nll_per_token", s.nll_per_token()},
               {"tokens", double(s.tokens)},
               {"bytes", double(s.bytes)}};
  return r;
}

EvalReport kl_report(const std::string& teacher, const std::string& student, const StrideOptions& opt, const KlStats& s,
                     int64_t documents) {
  EvalReport r;
  r.task = "kl";
  r.model = student;
  r.params = {{"teacher", teacher}, {"student", student}, {"ctx", opt.ctx}, {"stride", opt.stride}, {"documents", documents}};
  r.metrics = {{"kl_per_token", s.kl_per_token()},
               {"top1_agreement", s.agreement()},
               {"teacher_ppl", s.teacher.ppl()},
               {"student_ppl", s.student.ppl()},
               {"tokens", double(s.tokens)}};
  return r;
}

EvalReport passkey_report(const std::string& model, const PasskeyOptions& opt, const PasskeyResult& res) {
  EvalReport r;
  r.task = "passkey";
  r.model = model;
  r.params = {{"lengths", opt.lengths}, {"depths", opt.depths},         {"samples", opt.samples},
              {"keys", opt.keys},       {"digits", {opt.min_digits, opt.max_digits}}, {"seed", opt.seed}};
  r.metrics.emplace_back("acc", res.accuracy());
  for (int64_t L : opt.lengths) r.metrics.emplace_back(fmt::format("acc_len{}", L), res.accuracy(L));
  for (int d : opt.depths) r.metrics.emplace_back(fmt::format("acc_depth{}", d), res.accuracy(-1, d));
  std::string t = "Accuracy (%) by prompt length (tokens) and depth of the asked key:\n\n| length |";
  for (int d : opt.depths) t += fmt::format(" {}% |", d);
  t += " all |\n|---:|";
  for (size_t i = 0; i <= opt.depths.size(); ++i) t += "---:|";
  t += "\n";
  for (int64_t L : opt.lengths) {
    t += fmt::format("| {} |", L);
    for (int d : opt.depths) t += fmt::format(" {} |", pct(res.accuracy(L, d)));
    t += fmt::format(" {} |\n", pct(res.accuracy(L)));
  }
  r.tables = t;
  for (const auto& x : res.records)
    r.details.push_back({{"length", x.length}, {"depth", x.depth},     {"sample", x.sample}, {"key", x.label},
                         {"answer", x.answer}, {"output", x.output},   {"correct", x.correct}});
  return r;
}

void write_passkey_png(const std::string& path, const std::string& model, const PasskeyOptions& opt,
                       const PasskeyResult& res) {
  std::vector<std::string> rows, cols;
  std::vector<std::vector<double>> v;
  for (int64_t L : opt.lengths) {
    rows.push_back(std::to_string(L));
    v.emplace_back();
    for (int d : opt.depths) v.back().push_back(res.accuracy(L, d));
  }
  for (int d : opt.depths) cols.push_back(std::to_string(d) + "%");
  const Raster img = heatmap("PASSKEY ACC % - " + file_stem(model), "LENGTH", rows, "DEPTH OF THE KEY", cols, v);
  write_png(path, img);
}

EvalReport mqar_report(const std::string& model, const MqarOptions& opt, const MqarResult& res) {
  EvalReport r;
  r.task = "mqar";
  r.model = model;
  r.params = {{"pairs", opt.pairs},     {"seq_lens", opt.seq_lens},           {"samples", opt.samples},
              {"queries", opt.queries}, {"keys", opt.words ? "words" : "letters"}, {"seed", opt.seed}};
  r.metrics.emplace_back("acc", res.accuracy());
  std::string t = "Query accuracy (%) by key-value pairs and sequence length (asked; actual mean tokens):\n\n"
                  "| pairs | seq_len | tokens | queries | acc |\n|---:|---:|---:|---:|---:|\n";
  for (const auto& c : res.cells) {
    r.metrics.emplace_back(fmt::format("acc_pairs{}_len{}", c.pairs, c.seq_len), c.accuracy());
    t += fmt::format("| {} | {} | {} | {} | {} |\n", c.pairs, c.seq_len, c.tokens, c.total, pct(c.accuracy()));
  }
  r.tables = t;
  return r;
}

EvalReport mc_report(const std::string& model, const McOptions& opt, const McResult& res) {
  EvalReport r;
  r.task = std::string("mc-") + to_string(opt.format);
  r.model = model;
  r.params = {{"format", to_string(opt.format)}, {"data", opt.data}, {"shots", opt.shots}, {"documents", res.n},
              {"bos", opt.doc_start}};
  r.metrics = {{"acc", res.acc_rate()},
               {"acc_stderr", binary_stderr(res.acc_rate(), res.n)},
               {"acc_norm", res.acc_norm_rate()},
               {"acc_norm_stderr", binary_stderr(res.acc_norm_rate(), res.n)},
               {"documents", double(res.n)}};
  if (!res.by_subject.empty()) {
    std::string t = "| subject | n | acc (%) |\n|---|---:|---:|\n";
    for (const auto& [subj, nc] : res.by_subject)
      t += fmt::format("| {} | {} | {} |\n", subj, nc.first, pct(nc.first ? double(nc.second) / nc.first : 0));
    r.tables = t;
  }
  r.details = res.records;
  return r;
}

}  // namespace lizard
