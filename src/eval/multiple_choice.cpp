#include "eval/multiple_choice.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "util/error.h"

namespace lizard {
namespace {

const char* kWs = " \t\n\r\v\f";  // Python's str.strip() on ASCII text

std::string strip(const std::string& s) {
  const size_t b = s.find_first_not_of(kWs);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(kWs) - b + 1);
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  // Left to right, non-overlapping, like Python's str.replace.
  std::string out;
  size_t i = 0;
  for (size_t j; (j = s.find(from, i)) != std::string::npos; i = j + from.size()) out += s.substr(i, j - i) + to;
  return out + s.substr(i);
}

// Python's str.capitalize() for ASCII: first character upper case, the rest lower case.
std::string capitalize(std::string s) {
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 128) s[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
  }
  return s;
}

const nlohmann::json& field(const nlohmann::json& doc, const char* name, McFormat f) {
  if (!doc.is_object() || !doc.contains(name))
    fail("{} document without a \"{}\" field; expected {}", to_string(f), name, mc_schema(f));
  return doc.at(name);
}
std::string str_field(const nlohmann::json& doc, const char* name, McFormat f) {
  const auto& v = field(doc, name, f);
  LZ_CHECK(v.is_string(), "{} field \"{}\" must be a string; expected {}", to_string(f), name, mc_schema(f));
  return v.get<std::string>();
}
std::vector<std::string> str_list(const nlohmann::json& v, const char* name, McFormat f) {
  LZ_CHECK(v.is_array() && !v.empty(), "{} field \"{}\" must be a list of strings; expected {}", to_string(f), name,
           mc_schema(f));
  std::vector<std::string> out;
  for (const auto& x : v) {
    LZ_CHECK(x.is_string(), "{} field \"{}\" must be a list of strings; expected {}", to_string(f), name, mc_schema(f));
    out.push_back(x.get<std::string>());
  }
  return out;
}
// An integer label given as a number or a digit string.
int int_field(const nlohmann::json& doc, const char* name, McFormat f) {
  const auto& v = field(doc, name, f);
  if (v.is_number_integer()) return v.get<int>();
  if (v.is_string()) {
    const auto s = v.get<std::string>();
    if (!s.empty() && s.size() < 4 && std::all_of(s.begin(), s.end(), ::isdigit)) return std::stoi(s);
  }
  fail("{} field \"{}\" must be an integer; expected {}", to_string(f), name, mc_schema(f));
}

struct Parsed {
  std::string text;                  // doc_to_text
  std::vector<std::string> choices;  // doc_to_choice
  int gold = 0;
  std::string subject;
};

Parsed parse(McFormat f, const nlohmann::json& doc) {
  Parsed p;
  switch (f) {
    case McFormat::MMLU: {
      const auto q = str_field(doc, "question", f);
      const auto ch = str_list(field(doc, "choices", f), "choices", f);
      LZ_CHECK(ch.size() == 4, "mmlu \"choices\" must hold 4 strings, not {}", ch.size());
      p.subject = str_field(doc, "subject", f);
      p.text = strip(q) + "\nA. " + ch[0] + "\nB. " + ch[1] + "\nC. " + ch[2] + "\nD. " + ch[3] + "\nAnswer:";
      p.choices = {"A", "B", "C", "D"};
      const auto& a = field(doc, "answer", f);
      if (a.is_string() && a.get<std::string>().size() == 1 && a.get<std::string>()[0] >= 'A' &&
          a.get<std::string>()[0] <= 'D')
        p.gold = a.get<std::string>()[0] - 'A';
      else
        p.gold = int_field(doc, "answer", f);
      break;
    }
    case McFormat::PIQA:
      p.text = "Question: " + str_field(doc, "goal", f) + "\nAnswer:";
      p.choices = {str_field(doc, "sol1", f), str_field(doc, "sol2", f)};
      p.gold = int_field(doc, "label", f);
      break;
    case McFormat::ARC: {
      p.text = "Question: " + str_field(doc, "question", f) + "\nAnswer:";
      const auto& ch = field(doc, "choices", f);
      LZ_CHECK(ch.is_object() && ch.contains("text") && ch.contains("label"),
               "arc field \"choices\" must be {{\"text\": [...], \"label\": [...]}}; expected {}", mc_schema(f));
      p.choices = str_list(ch["text"], "choices.text", f);
      const auto labels = str_list(ch["label"], "choices.label", f);
      LZ_CHECK(labels.size() == p.choices.size(), "arc \"choices\" has {} texts and {} labels", p.choices.size(),
               labels.size());
      const auto key = str_field(doc, "answerKey", f);
      auto it = std::find(labels.begin(), labels.end(), key);
      LZ_CHECK(it != labels.end(), "arc answerKey '{}' is not among the choice labels", key);
      p.gold = static_cast<int>(it - labels.begin());
      break;
    }
    case McFormat::HellaSwag: {
      const auto ctx = str_field(doc, "ctx_a", f) + " " + capitalize(str_field(doc, "ctx_b", f));
      p.text = hellaswag_preprocess(str_field(doc, "activity_label", f) + ": " + ctx);
      for (const auto& e : str_list(field(doc, "endings", f), "endings", f)) p.choices.push_back(hellaswag_preprocess(e));
      p.gold = int_field(doc, "label", f);
      break;
    }
    case McFormat::WinoGrande: {
      // Partial evaluation: the choices are contexts (sentence up to the blank + option); the
      // continuation (the rest of the sentence) is shared.
      const auto s = str_field(doc, "sentence", f);
      const size_t idx = s.find('_');
      LZ_CHECK(idx != std::string::npos, "winogrande \"sentence\" has no \"_\" blank");
      p.choices = {s.substr(0, idx) + str_field(doc, "option1", f), s.substr(0, idx) + str_field(doc, "option2", f)};
      p.text = strip(s.substr(idx + 1));  // doc_to_target
      const auto a = str_field(doc, "answer", f);
      LZ_CHECK(a == "1" || a == "2", "winogrande \"answer\" must be \"1\" or \"2\", not '{}'", a);
      p.gold = a == "1" ? 0 : 1;
      break;
    }
  }
  LZ_CHECK(p.gold >= 0 && p.gold < static_cast<int>(p.choices.size()), "{} answer {} is out of range for {} choices",
           to_string(f), p.gold, p.choices.size());
  return p;
}

// lm-eval's len() of a Python str: code points.
double text_len(const std::string& s) {
  double n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace

McFormat parse_mc_format(const std::string& s) {
  if (s == "mmlu") return McFormat::MMLU;
  if (s == "piqa") return McFormat::PIQA;
  if (s == "arc" || s == "arc_easy" || s == "arc_challenge") return McFormat::ARC;
  if (s == "hellaswag") return McFormat::HellaSwag;
  if (s == "winogrande") return McFormat::WinoGrande;
  fail("unknown multiple-choice format '{}' (expected mmlu, piqa, arc, hellaswag or winogrande)", s);
}

const char* to_string(McFormat f) {
  switch (f) {
    case McFormat::MMLU: return "mmlu";
    case McFormat::PIQA: return "piqa";
    case McFormat::ARC: return "arc";
    case McFormat::HellaSwag: return "hellaswag";
    case McFormat::WinoGrande: return "winogrande";
  }
  return "?";
}

std::string mc_schema(McFormat f) {
  switch (f) {
    case McFormat::MMLU:
      return R"(JSONL lines {"question": str, "choices": [4 str], "answer": 0-3 or "A"-"D", "subject": str})";
    case McFormat::PIQA: return R"(JSONL lines {"goal": str, "sol1": str, "sol2": str, "label": 0 or 1})";
    case McFormat::ARC:
      return R"(JSONL lines {"question": str, "choices": {"text": [str], "label": [str]}, "answerKey": str})";
    case McFormat::HellaSwag:
      return R"(JSONL lines {"activity_label": str, "ctx_a": str, "ctx_b": str, "endings": [str], "label": int})";
    case McFormat::WinoGrande:
      return R"(JSONL lines {"sentence": str with one "_", "option1": str, "option2": str, "answer": "1" or "2"})";
  }
  return "";
}

std::string hellaswag_preprocess(const std::string& text) {
  std::string t = replace_all(strip(text), " [title]", ". ");
  // re.sub(r"\[.*?\]", "", t): '.' does not cross a newline.
  std::string out;
  for (size_t i = 0; i < t.size();) {
    if (t[i] == '[') {
      const size_t close = t.find_first_of("]\n", i + 1);
      if (close != std::string::npos && t[close] == ']') {
        i = close + 1;
        continue;
      }
    }
    out.push_back(t[i++]);
  }
  return replace_all(out, "  ", " ");
}

std::string mmlu_description(const std::string& subject) {
  return "The following are multiple choice questions (with answers) about " + replace_all(subject, "_", " ") + ".\n\n";
}

std::string mc_doc_text(McFormat f, const nlohmann::json& doc) { return parse(f, doc).text; }
std::string mc_gold_text(McFormat f, const nlohmann::json& doc) {
  auto p = parse(f, doc);
  return p.choices[p.gold];
}

McDoc make_mc_doc(McFormat f, const nlohmann::json& doc, const std::vector<nlohmann::json>& shots) {
  const Parsed p = parse(f, doc);
  McDoc d;
  d.gold = p.gold;
  d.subject = p.subject;
  if (f == McFormat::WinoGrande) {
    LZ_CHECK(shots.empty(), "few-shot prompts are not supported for winogrande (partial evaluation)");
    for (const auto& c : p.choices) {
      d.requests.push_back({c, " " + p.text});
      d.norm_len.push_back(text_len(c));
    }
    return d;
  }
  // description + (shot text + " " + shot answer + "\n\n")... + doc text
  std::string ctx = f == McFormat::MMLU ? mmlu_description(p.subject) : "";
  for (const auto& s : shots) {
    const Parsed q = parse(f, s);
    ctx += q.text + " " + q.choices[q.gold] + "\n\n";
  }
  ctx += p.text;
  for (const auto& c : p.choices) {
    d.requests.push_back({ctx, " " + c});
    d.norm_len.push_back(text_len(c));
  }
  return d;
}

std::vector<nlohmann::json> read_mc_jsonl(const std::string& path, McFormat f) {
  LZ_CHECK(!path.empty(), "no data file given (--data FILE); {} expects {}", to_string(f), mc_schema(f));
  std::ifstream in(path, std::ios::binary);
  LZ_CHECK(in.good() && !std::filesystem::is_directory(path), "cannot read '{}'; {} expects a file of {}", path,
           to_string(f), mc_schema(f));
  std::vector<nlohmann::json> docs;
  std::string line;
  for (size_t lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(kWs) == std::string::npos) continue;
    try {
      docs.push_back(nlohmann::json::parse(line));
    } catch (const std::exception&) {
      fail("{}:{}: not valid JSON; {} expects {}", path, lineno, to_string(f), mc_schema(f));
    }
    LZ_CHECK(docs.back().is_object(), "{}:{}: expected a JSON object; {} expects {}", path, lineno, to_string(f),
             mc_schema(f));
  }
  LZ_CHECK(!docs.empty(), "'{}' holds no documents; {} expects {}", path, to_string(f), mc_schema(f));
  return docs;
}

McScore score_choices(const std::vector<double>& ll, const std::vector<double>& norm_len, int gold) {
  LZ_CHECK(!ll.empty() && ll.size() == norm_len.size(), "score_choices: {} log-likelihoods for {} lengths", ll.size(),
           norm_len.size());
  McScore s;
  // First maximum on ties, like numpy.argmax.
  for (size_t i = 1; i < ll.size(); ++i) {
    if (ll[i] > ll[s.pred]) s.pred = static_cast<int>(i);
    if (ll[i] / std::max(norm_len[i], 1.0) > ll[s.pred_norm] / std::max(norm_len[s.pred_norm], 1.0))
      s.pred_norm = static_cast<int>(i);
  }
  s.acc = s.pred == gold;
  s.acc_norm = s.pred_norm == gold;
  return s;
}

std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const TextCodec& codec, const std::string& context,
                                                                  const std::string& continuation) {
  std::string ctx = context, cont = continuation;
  const size_t keep = ctx.find_last_not_of(kWs);
  const size_t cut = keep == std::string::npos ? 0 : keep + 1;
  cont = ctx.substr(cut) + cont;
  ctx.resize(cut);
  auto whole = codec.encode(ctx + cont);
  auto c = codec.encode(ctx);
  LZ_CHECK(c.size() <= whole.size(), "tokenizing the context alone gave more ids than with its continuation");
  return {c, std::vector<int32_t>(whole.begin() + static_cast<std::ptrdiff_t>(c.size()), whole.end())};
}

std::vector<double> mc_loglikelihoods(EvalModel& m, const TextCodec& codec, const McDoc& doc, bool add_doc_start) {
  const int V = m.vocab_size();
  const int64_t max_len = m.context_length();
  std::vector<double> out;
  std::vector<int32_t> prev;  // input run by the previous request
  for (const auto& r : doc.requests) {
    std::vector<int32_t> ctx, cont;
    if (r.context.empty()) {
      ctx = codec.doc_start;  // lm-eval's prefix token
      cont = codec.encode(r.continuation);
    } else {
      std::tie(ctx, cont) = encode_pair(codec, r.context, r.continuation);
      if (add_doc_start) ctx.insert(ctx.begin(), codec.doc_start.begin(), codec.doc_start.end());
    }
    LZ_CHECK(!ctx.empty() && !cont.empty(), "a multiple-choice request has an empty context or continuation");
    std::vector<int32_t> full = ctx;
    full.insert(full.end(), cont.begin(), cont.end());
    if (static_cast<int64_t>(full.size()) > max_len + 1) full.erase(full.begin(), full.end() - (max_len + 1));
    const std::vector<int32_t> inp(full.begin(), full.end() - 1);
    const int64_t n = static_cast<int64_t>(inp.size());
    const int64_t first = static_cast<int64_t>(full.size() - cont.size()) - 1;  // row predicting cont[0]
    // Reuse the previous request's positions that agree (same context), when the model can rewind.
    int64_t start = 0;
    if (m.can_rewind())
      while (start < first && start < static_cast<int64_t>(prev.size()) && prev[start] == inp[start]) ++start;
    if (start < first) m.forward(std::span<const int32_t>(inp).subspan(start, first - start), start, false);
    double ll = 0;
    for (int64_t i0 = first; i0 < n; i0 += 256) {
      const int64_t b = std::min<int64_t>(256, n - i0);
      auto lg = m.forward(std::span<const int32_t>(inp).subspan(i0, b), i0, true);
      for (int64_t r2 = 0; r2 < b; ++r2) {
        const float* row = lg.data() + r2 * V;
        ll += row[full[i0 + r2 + 1]] - log_sum_exp(row, V);
      }
    }
    out.push_back(ll);
    prev = inp;
  }
  return out;
}

double binary_stderr(double p, int64_t n) { return n > 1 ? std::sqrt(p * (1 - p) / double(n - 1)) : 0; }

McResult run_mc(EvalModel& m, const TextCodec& codec, const McOptions& opt, const McProgress& progress) {
  const auto docs = read_mc_jsonl(opt.data, opt.format);
  std::vector<nlohmann::json> pool;
  if (opt.shots > 0) {
    LZ_CHECK(!opt.fewshot_file.empty(), "--shots {} needs --fewshot-file FILE (e.g. the dev split) of {}", opt.shots,
             mc_schema(opt.format));
    pool = read_mc_jsonl(opt.fewshot_file, opt.format);
  }
  const int64_t total = opt.limit > 0 ? std::min<int64_t>(opt.limit, static_cast<int64_t>(docs.size()))
                                      : static_cast<int64_t>(docs.size());
  McResult res;
  for (int64_t i = 0; i < total; ++i) {
    const auto& doc = docs[i];
    std::vector<nlohmann::json> shots;
    if (opt.shots > 0) {
      // The first K examples (of the same subject for MMLU), as lm-eval's first_n sampler.
      const std::string subj = opt.format == McFormat::MMLU ? str_field(doc, "subject", opt.format) : "";
      for (const auto& s : pool) {
        if (static_cast<int>(shots.size()) == opt.shots) break;
        if (opt.format == McFormat::MMLU && str_field(s, "subject", opt.format) != subj) continue;
        shots.push_back(s);
      }
      LZ_CHECK(static_cast<int>(shots.size()) == opt.shots, "'{}' has only {} few-shot examples{}, {} asked",
               opt.fewshot_file, shots.size(), subj.empty() ? "" : " for subject " + subj, opt.shots);
    }
    McDoc d;
    try {
      d = make_mc_doc(opt.format, doc, shots);
    } catch (const Error& e) {
      fail("{} document {}: {}", opt.data, i + 1, e.what());
    }
    const auto ll = mc_loglikelihoods(m, codec, d, opt.doc_start);
    const McScore s = score_choices(ll, d.norm_len, d.gold);
    ++res.n;
    res.acc += s.acc;
    res.acc_norm += s.acc_norm;
    if (!d.subject.empty()) {
      auto& b = res.by_subject[d.subject];
      ++b.first;
      b.second += s.acc;
    }
    res.records.push_back({{"doc", i}, {"gold", d.gold}, {"pred", s.pred}, {"pred_norm", s.pred_norm}, {"loglik", ll}});
    if (progress) progress(i + 1, total);
  }
  return res;
}

}  // namespace lizard
