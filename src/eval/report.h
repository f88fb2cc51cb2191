// Evaluation results: one JSON file and one markdown file per run (--out DIR), and a side-by-side
// comparison of several result files.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/multiple_choice.h"
#include "eval/perplexity.h"
#include "eval/recall.h"

namespace lizard {

struct EvalReport {
  std::string task;   // "ppl", "kl", "passkey", "mqar", "mc-mmlu", ...
  std::string model;  // label of the model evaluated (teacher -> student for kl)
  nlohmann::json params = nlohmann::json::object();
  std::vector<std::pair<std::string, double>> metrics;  // flat, in display order
  std::string tables;                                   // markdown body (task-specific tables)
  nlohmann::json details = nlohmann::json::array();     // per-sample records

  double metric(const std::string& name) const;  // throws Error if absent
  nlohmann::json to_json() const;
  static EvalReport from_json(const nlohmann::json& j);  // throws Error on a file not written by eval
  std::string markdown() const;
};

// Writes DIR/<task>_<model>.json and .md (temporary names, then renamed); returns the .json path.
std::string write_report(const EvalReport& r, const std::string& dir);
EvalReport read_report(const std::string& path);
// A markdown table: one row per (task, metric), one column per report.
std::string compare_reports(const std::vector<EvalReport>& reports);
// File-name-safe form of a model label.
std::string file_stem(const std::string& label);

EvalReport ppl_report(const std::string& model, const StrideOptions& opt, const PplStats& s, int64_t documents);
EvalReport kl_report(const std::string& teacher, const std::string& student, const StrideOptions& opt, const KlStats& s,
                     int64_t documents);
EvalReport passkey_report(const std::string& model, const PasskeyOptions& opt, const PasskeyResult& r);
// The accuracy heatmap (rows: lengths, columns: depths) of a passkey result.
void write_passkey_png(const std::string& path, const std::string& model, const PasskeyOptions& opt,
                       const PasskeyResult& r);
EvalReport mqar_report(const std::string& model, const MqarOptions& opt, const MqarResult& r);
EvalReport mc_report(const std::string& model, const McOptions& opt, const McResult& r);

}  // namespace lizard
