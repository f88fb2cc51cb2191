#include "train/data.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "util/error.h"
#include "util/hash.h"

namespace fs = std::filesystem;

namespace lizard {

namespace {

std::string read_file_bytes(const std::string& path) {
  if (path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0) {
    gzFile f = gzopen(path.c_str(), "rb");
    LZ_CHECK(f != nullptr, "cannot open '{}'", path);
    std::string out;
    char buf[1 << 16];
    int n;
    while ((n = gzread(f, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    int err = 0;
    const char* msg = gzerror(f, &err);
    gzclose(f);
    LZ_CHECK(n == 0 && err == Z_OK, "'{}': corrupt gzip data ({})", path, msg ? msg : "?");
    return out;
  }
  std::ifstream in(path, std::ios::binary);
  LZ_CHECK(in.good(), "cannot open '{}'", path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Text, not a binary: no NUL bytes and valid UTF-8 in the first 64 KiB.
bool looks_like_text(const std::string& s) {
  size_t n = std::min<size_t>(s.size(), 65536);
  if (std::memchr(s.data(), 0, n) != nullptr) return false;
  size_t i = 0;
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0) return false;
    if (i + len > n) break;  // cut at the window's edge
    for (int k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    i += len;
  }
  return true;
}

bool is_jsonl(const std::string& path) {
  auto ends = [&](const char* e) {
    size_t m = std::strlen(e);
    return path.size() >= m && path.compare(path.size() - m, m, e) == 0;
  };
  return ends(".jsonl") || ends(".jsonl.gz");
}

std::string render_alpaca(const nlohmann::json& j, const ChatTemplate& chat) {
  std::string user = j.value("instruction", "");
  std::string input = j.value("input", "");
  if (!input.empty()) user += "\n\n" + input;
  std::vector<ChatMessage> msgs{{"user", user}, {"assistant", j.value("output", "")}};
  if (chat.format == ChatFormat::Unknown) return user + "\n\n" + j.value("output", "");
  return chat.render(msgs, /*add_generation_prompt=*/false);
}

}  // namespace

std::vector<std::string> read_documents(const std::string& path, const ChatTemplate& chat, size_t max_bytes) {
  std::vector<std::string> docs;
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  LZ_CHECK(!ec, "cannot read '{}': {}", path, ec.message());
  if (size > max_bytes) return docs;
  std::string data = read_file_bytes(path);
  if (!is_jsonl(path)) {
    if (looks_like_text(data) && !data.empty()) docs.push_back(std::move(data));
    return docs;
  }
  size_t start = 0, lineno = 0;
  while (start < data.size()) {
    size_t end = data.find('\n', start);
    if (end == std::string::npos) end = data.size();
    std::string_view line(data.data() + start, end - start);
    ++lineno;
    start = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception&) {
      fail("{}:{}: not valid JSON", path, lineno);
    }
    LZ_CHECK(j.is_object(), "{}:{}: expected a JSON object", path, lineno);
    if (j.contains("text")) {
      LZ_CHECK(j["text"].is_string(), "{}:{}: \"text\" must be a string", path, lineno);
      docs.push_back(j["text"].get<std::string>());
    } else if (j.contains("instruction") && j.contains("output")) {
      docs.push_back(render_alpaca(j, chat));
    } else {
      fail("{}:{}: expected a \"text\" field or Alpaca \"instruction\"/\"input\"/\"output\" fields", path, lineno);
    }
  }
  return docs;
}

Dataset load_dataset(const DataOptions& opt, const Tokenizer& tok, const ChatTemplate& chat) {
  LZ_CHECK(!opt.paths.empty(), "no training data given (--data PATH...)");
  LZ_CHECK(opt.seq_len >= 1, "sequence length must be positive");
  std::vector<std::string> files;
  for (const auto& p : opt.paths) {
    LZ_CHECK(fs::exists(p), "data path '{}' does not exist", p);
    if (fs::is_directory(p)) {
      for (auto& e : fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied))
        if (e.is_regular_file()) files.push_back(e.path().string());
    } else {
      files.push_back(p);
    }
  }
  std::sort(files.begin(), files.end());  // directory order is not deterministic
  auto sep = tok.eos_id() ? tok.eos_id() : tok.bos_id();
  Dataset ds;
  for (const auto& f : files) {
    auto docs = read_documents(f, chat, opt.max_file_bytes);
    if (docs.empty()) {
      ++ds.skipped_files;
      continue;
    }
    ++ds.files;
    for (auto& d : docs) {
      auto ids = tok.encode(d, /*add_bos=*/false);
      if (ids.empty()) continue;
      bool val = (fnv1a(d.data(), d.size()) % 1000000) < static_cast<uint64_t>(opt.val_fraction * 1000000);
      auto& dst = val ? ds.val.tokens : ds.train.tokens;
      dst.insert(dst.end(), ids.begin(), ids.end());
      if (sep) dst.push_back(*sep);
      ++ds.documents;
    }
    if (opt.max_tokens > 0 && static_cast<int64_t>(ds.train.tokens.size() + ds.val.tokens.size()) >= opt.max_tokens) break;
  }
  LZ_CHECK(ds.train.num_samples(opt.seq_len) > 0, "the training data holds {} tokens, fewer than one sequence of {}",
           ds.train.tokens.size(), opt.seq_len + 1);
  return ds;
}

std::string Dataset::describe() const {
  return fmt::format("{} documents from {} files ({} skipped), {} train tokens, {} validation tokens", documents, files,
                     skipped_files, train.tokens.size(), val.tokens.size());
}

void SampleOrder::reshuffle() {
  perm_.resize(static_cast<size_t>(n_));
  std::iota(perm_.begin(), perm_.end(), 0);
  std::mt19937_64 rng(seed_ * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(epoch_));
  std::shuffle(perm_.begin(), perm_.end(), rng);
}

int64_t SampleOrder::next() {
  LZ_CHECK(n_ > 0, "no samples to draw from");
  if (pos_ >= n_) {
    ++epoch_;
    pos_ = 0;
    reshuffle();
  }
  return perm_[static_cast<size_t>(pos_++)];
}

void SampleOrder::restore(int64_t epoch, int64_t position) {
  epoch_ = epoch;
  pos_ = position;
  reshuffle();
}

}  // namespace lizard
