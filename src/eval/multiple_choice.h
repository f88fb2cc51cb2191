// Multiple-choice scoring by log-likelihood, with lm-eval-harness's prompt formats, from JSONL
// files users bring (no data is downloaded). Expected fields, one JSON object per line (the Hugging
// Face dataset schemas):
//   mmlu        {"question": str, "choices": [4 str], "answer": 0-3 or "A"-"D", "subject": str}
//   piqa        {"goal": str, "sol1": str, "sol2": str, "label": 0|1}
//   arc         {"question": str, "choices": {"text": [str], "label": [str]}, "answerKey": str}
//   hellaswag   {"activity_label": str, "ctx_a": str, "ctx_b": str, "endings": [str], "label": int or str}
//   winogrande  {"sentence": str with one "_", "option1": str, "option2": str, "answer": "1"|"2"}
// Requests are (context, continuation) pairs scored as lm-eval does: trailing spaces of the context
// move to the continuation, the context and context+continuation are tokenized on their own, and
// the continuation's ids are those of the whole past the context's. acc = argmax of the summed
// continuation log-likelihood; acc_norm = argmax of that divided by the length of the choice text
// (lm-eval: len() of each doc_to_choice string, i.e. characters, bytes for ASCII).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/eval_model.h"

namespace lizard {

enum class McFormat { MMLU, PIQA, ARC, HellaSwag, WinoGrande };
McFormat parse_mc_format(const std::string& s);  // throws Error listing the formats
const char* to_string(McFormat f);
std::string mc_schema(McFormat f);  // the expected fields, for error messages and --help

struct McRequest {
  std::string context, continuation;
};
struct McDoc {
  std::vector<McRequest> requests;  // one per choice
  std::vector<double> norm_len;     // acc_norm's divisor per choice
  int gold = 0;
  std::string subject;              // MMLU
};

// One JSONL document -> requests; shots are labelled examples put before it (MMLU 5-shot: the first
// K of the dev split with the same subject). Throws Error naming the missing field.
McDoc make_mc_doc(McFormat f, const nlohmann::json& doc, const std::vector<nlohmann::json>& shots = {});

// Pieces of the formats (exposed for tests).
std::string hellaswag_preprocess(const std::string& text);
std::string mmlu_description(const std::string& subject);
std::string mc_doc_text(McFormat f, const nlohmann::json& doc);    // the prompt of a doc
std::string mc_gold_text(McFormat f, const nlohmann::json& doc);   // the gold choice's text

// Reads a JSONL file; a missing file says which format is expected.
std::vector<nlohmann::json> read_mc_jsonl(const std::string& path, McFormat f);

struct McScore {
  int pred = 0, pred_norm = 0;
  bool acc = false, acc_norm = false;
};
McScore score_choices(const std::vector<double>& loglik, const std::vector<double>& norm_len, int gold);

// lm-eval's pair encoding: (context ids, continuation ids).
std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const TextCodec& codec, const std::string& context,
                                                                  const std::string& continuation);
// Summed log-likelihood of each request's continuation. Contexts shared by consecutive requests
// run once when the model can rewind. Inputs longer than the context keep their last tokens.
std::vector<double> mc_loglikelihoods(EvalModel& m, const TextCodec& codec, const McDoc& doc, bool add_doc_start);

struct McOptions {
  McFormat format = McFormat::MMLU;
  std::string data, fewshot_file;
  int shots = 0;
  int64_t limit = 0;     // documents to score (0: all)
  bool doc_start = false;  // put BOS before each request (lm-eval's default adds none)
};
struct McResult {
  int64_t n = 0, acc = 0, acc_norm = 0;
  std::map<std::string, std::pair<int64_t, int64_t>> by_subject;  // subject -> (n, correct)
  std::vector<nlohmann::json> records;
  double acc_rate() const { return n ? double(acc) / n : 0; }
  double acc_norm_rate() const { return n ? double(acc_norm) / n : 0; }
};
using McProgress = std::function<void(int64_t done, int64_t total)>;
McResult run_mc(EvalModel& m, const TextCodec& codec, const McOptions& opt, const McProgress& progress = {});

// Sample standard error of a mean of 0/1 values (as lm-eval reports it).
double binary_stderr(double p, int64_t n);

}  // namespace lizard
