// Encoding and decoding. The steps follow Hugging Face `tokenizers` exactly: added tokens are
// split off the raw text first (leftmost-longest), each remaining segment is normalized,
// pre-tokenized by regex splits, and each pre-token goes through BPE (merge ranks, lowest first,
// leftmost on ties). Decoding runs the decoder chain over the token strings.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <queue>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace lizard {

// ---- patterns --------------------------------------------------------------------------------
const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {
// Unicode White_Space as a class body. PCRE2's UCP \s differs (it includes U+180E).
constexpr const char* kWs =
    R"(\x{9}-\x{d}\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000})";

std::string translate_pattern(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[++i];
      if (n == 's') {
        out += in_class ? std::string(kWs) : "[" + std::string(kWs) + "]";
      } else if (n == 'S') {
        LZ_CHECK(!in_class, "tokenizer regex: \\S inside a character class is not supported: {}", p);
        out += "[^" + std::string(kWs) + "]";
      } else {
        out += c;
        out += n;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX class [:alpha:]
      size_t e = p.find(":]", i + 2);
      LZ_CHECK(e != std::string::npos, "tokenizer regex: bad POSIX class in {}", p);
      out.append(p, i, e + 2 - i);
      i = e + 1;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

struct MatchData {
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  ~MatchData() { pcre2_match_data_free(md); }
};
}  // namespace

Regex::Regex(const std::string& pattern) : source_(pattern) {
  std::string p = translate_pattern(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), PCRE2_UTF | PCRE2_UCP,
                                   &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("tokenizer regex does not compile ({} at offset {}): {}", reinterpret_cast<char*>(msg), off, pattern);
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  thread_local MatchData m;
  auto* code = static_cast<pcre2_code*>(code_);
  size_t pos = 0;
  while (pos <= s.size()) {
    int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, PCRE2_NO_UTF_CHECK, m.md,
                         nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    LZ_CHECK(rc >= 0, "tokenizer regex match failed (PCRE2 error {}) for {}", rc, source_);
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.md);
    size_t a = ov[0], b = ov[1];
    if (b == a) {  // empty match: nothing to split off; step one character
      if (a >= s.size()) break;
      pos = a + uni::utf8_len(static_cast<unsigned char>(s[a]));
      continue;
    }
    out.emplace_back(a, b);
    pos = b;
  }
}

// ---- GPT-2 byte mapping ----------------------------------------------------------------------
namespace {
struct ByteMap {
  std::array<std::string, 256> enc;
  std::array<uint32_t, 256> cp;
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      cp[b] = printable ? b : 256 + n++;
      uni::append_utf8(enc[b], cp[b]);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}
}  // namespace

const std::string& byte_to_unicode(uint8_t b) { return byte_map().enc[b]; }

int unicode_to_byte(uint32_t cp) {
  if (cp < 256) {
    const ByteMap& m = byte_map();
    return m.cp[cp] == cp ? static_cast<int>(cp) : -1;
  }
  if (cp < 256 + 68) {  // 68 unprintable bytes are shifted to U+0100..U+0143
    const ByteMap& m = byte_map();
    for (int b = 0; b < 256; ++b)
      if (m.cp[b] == cp) return b;
  }
  return -1;
}

// ---- Impl ------------------------------------------------------------------------------------
void TokImpl::MergeTable::set(uint64_t k, int32_t rank, int32_t id) {
  if ((count + 1) * 2 > slots.size()) {  // keep the load factor under 1/2
    std::vector<Slot> old;
    old.swap(slots);
    slots.assign(std::max<size_t>(1024, old.size() * 2), Slot{});
    mask = slots.size() - 1;
    count = 0;
    for (const Slot& s : old)
      if (s.key != ~0ull) set(s.key, s.rank, s.id);
  }
  for (size_t i = hash(k) & mask;; i = (i + 1) & mask) {
    if (slots[i].key == k || slots[i].key == ~0ull) {
      if (slots[i].key != k) ++count;
      slots[i] = {k, rank, id};
      return;
    }
  }
}


void TokImpl::finish() {
  special.assign(vocab.size(), 0);
  for (auto& t : added) {
    if (t.special) special[t.id] = 1;
    added_ids[t.content] = t.id;
  }
  for (int set = 0; set < 2; ++set) added_by_byte[set].assign(256, {});
  for (size_t k = 0; k < added.size(); ++k) {
    AddedToken& t = added[k];
    if (t.content.empty()) continue;
    // normalized tokens are matched against normalized text, so in their normalized form
    std::string key = t.normalized ? normalize(t.content) : t.content;
    if (key.empty()) continue;
    if (t.normalized) t.content = key;
    added_by_byte[t.normalized ? 1 : 0][static_cast<uint8_t>(key[0])].push_back(static_cast<int32_t>(k));
  }
  for (int set = 0; set < 2; ++set)
    for (auto& v : added_by_byte[set])
      std::stable_sort(v.begin(), v.end(),
                       [&](int32_t a, int32_t b) { return added[a].content.size() > added[b].content.size(); });
}

std::string TokImpl::normalize(std::string_view s) const {
  std::string r(s);
  for (const NormStep& n : normalizers) {
    switch (n.kind) {
      case NormStep::NFC:
        r = uni::nfc(r);
        break;
      case NormStep::Prepend:
        if (!r.empty()) r.insert(0, n.a);
        break;
      case NormStep::Replace: {
        if (n.a.empty()) break;
        std::string o;
        o.reserve(r.size() + r.size() / 4);
        size_t i = 0;
        for (size_t f; (f = r.find(n.a, i)) != std::string::npos; i = f + n.a.size()) {
          o.append(r, i, f - i);
          o += n.b;
        }
        o.append(r, i, std::string::npos);
        r.swap(o);
        break;
      }
    }
  }
  return r;
}

namespace {
bool is_word_char_before(std::string_view s) {  // last character alphanumeric or '_'
  if (s.empty()) return false;
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  static const Regex word(R"([\p{L}\p{N}_])");
  std::vector<std::pair<size_t, size_t>> m;
  word.find_all(s.substr(i), m);
  return !m.empty();
}
bool is_word_char_after(std::string_view s) {
  if (s.empty()) return false;
  size_t n = std::min<size_t>(uni::utf8_len(static_cast<unsigned char>(s[0])), s.size());
  static const Regex word(R"([\p{L}\p{N}_])");
  std::vector<std::pair<size_t, size_t>> m;
  word.find_all(s.substr(0, n), m);
  return !m.empty();
}
}  // namespace

void TokImpl::split_added(std::string_view text, bool normalized_set,
                                  std::vector<std::pair<std::string_view, int32_t>>& out) const {
  const auto& index = added_by_byte[normalized_set ? 1 : 0];
  size_t seg = 0, i = 0;
  while (i < text.size()) {
    const auto& cands = index[static_cast<uint8_t>(text[i])];
    const AddedToken* hit = nullptr;
    for (int32_t k : cands)
      if (text.compare(i, added[k].content.size(), added[k].content) == 0) {
        hit = &added[k];
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + hit->content.size();
    if (hit->single_word && (is_word_char_before(text.substr(0, start)) || is_word_char_after(text.substr(stop)))) {
      i = stop;  // like HF's match iterator, the discarded match is consumed
      continue;
    }
    if (hit->lstrip) {
      size_t s = start;
      while (s > seg) {
        size_t p = s - 1;
        while (p > seg && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
        size_t q = p;
        if (!uni::is_white_space(uni::next_cp(text, q))) break;
        s = p;
      }
      start = s;
    }
    if (hit->rstrip) {
      while (stop < text.size()) {
        size_t q = stop;
        if (!uni::is_white_space(uni::next_cp(text, q))) break;
        stop = q;
      }
    }
    if (start > seg) out.emplace_back(text.substr(seg, start - seg), -1);
    out.emplace_back(text.substr(start, stop - start), hit->id);
    seg = i = stop;
  }
  if (seg < text.size()) out.emplace_back(text.substr(seg), -1);
}

std::optional<std::pair<int32_t, int32_t>> TokImpl::find_merge(int32_t a, int32_t b) const {
  if (!score_merges) {
    const MergeTable::Slot* sl = merges.find(MergeTable::key_of(a, b));
    if (!sl) return std::nullopt;
    return std::pair(sl->rank, sl->id);
  }
  std::string t = vocab[a] + vocab[b];
  auto it = model_ids.find(t);
  if (it == model_ids.end() || score_rank[it->second] < 0) return std::nullopt;
  return std::pair(score_rank[it->second], it->second);
}

void TokImpl::bpe(std::vector<int32_t>& sym, std::vector<int32_t>& out) const {
  const int n = static_cast<int>(sym.size());
  if (n == 1) {
    out.push_back(sym[0]);
    return;
  }
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    int32_t rank, pos, new_id;
    bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand> heap;
  for (int i = 0; i + 1 < n; ++i)
    if (auto m = find_merge(sym[i], sym[i + 1])) heap.push({m->first, i, m->second});
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    int p = c.pos;
    if (sym[p] < 0 || next[p] < 0) continue;
    int q = next[p];
    auto m = find_merge(sym[p], sym[q]);
    if (!m || m->second != c.new_id || m->first != c.rank) continue;  // stale entry
    sym[p] = c.new_id;
    sym[q] = -1;
    next[p] = next[q];
    if (next[q] >= 0) prev[next[q]] = p;
    if (prev[p] >= 0)
      if (auto m2 = find_merge(sym[prev[p]], sym[p])) heap.push({m2->first, prev[p], m2->second});
    if (next[p] >= 0)
      if (auto m2 = find_merge(sym[p], sym[next[p]])) heap.push({m2->first, p, m2->second});
  }
  for (int i = 0; i >= 0; i = next[i]) out.push_back(sym[i]);
}

void TokImpl::model_encode(std::string_view piece, std::vector<int32_t>& out) const {
  constexpr size_t kCacheMaxLen = 128, kCacheMaxEntries = 1 << 18;
  const bool cacheable = piece.size() <= kCacheMaxLen;
  std::string key;
  if (cacheable) {
    key.assign(piece);
    std::shared_lock lock(cache_mu);
    auto it = cache.find(key);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  std::vector<int32_t> sym;
  sym.reserve(piece.size());
  bool done = false;
  if (byte_level) {
    if (ignore_merges) {
      std::string mapped;
      for (unsigned char b : piece) mapped += byte_to_unicode(b);
      auto it = model_ids.find(mapped);
      if (it != model_ids.end()) {
        ids.push_back(it->second);
        done = true;
      }
    }
    if (!done)
      for (unsigned char b : piece) {
        if (byte_token[b] >= 0) sym.push_back(byte_token[b]);
        else if (unk && !(fuse_unk && !sym.empty() && sym.back() == *unk)) sym.push_back(*unk);
      }
  } else {
    if (ignore_merges) {
      auto it = model_ids.find(std::string(piece));
      if (it != model_ids.end()) {
        ids.push_back(it->second);
        done = true;
      }
    }
    if (!done)
      for (size_t i = 0; i < piece.size();) {
        size_t n = std::min<size_t>(uni::utf8_len(static_cast<unsigned char>(piece[i])), piece.size() - i);
        auto it = model_ids.find(std::string(piece.substr(i, n)));
        if (it != model_ids.end()) {
          sym.push_back(it->second);
        } else {
          bool all = byte_fallback;
          for (size_t k = 0; all && k < n; ++k) all = byte_token[static_cast<unsigned char>(piece[i + k])] >= 0;
          if (all) {
            for (size_t k = 0; k < n; ++k) sym.push_back(byte_token[static_cast<unsigned char>(piece[i + k])]);
          } else if (unk && !(fuse_unk && !sym.empty() && sym.back() == *unk)) {
            sym.push_back(*unk);
          }
        }
        i += n;
      }
  }
  if (!done && !sym.empty()) bpe(sym, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::unique_lock lock(cache_mu);
    if (cache.size() >= kCacheMaxEntries) cache.clear();
    cache.emplace(std::move(key), std::move(ids));
  }
}

namespace {
using Range = std::pair<size_t, size_t>;

// One Split step over one piece: the HF SplitDelimiterBehavior rules.
void split_piece(const PreStep& st, std::string_view s, std::vector<std::string_view>& out, std::vector<Range>& m) {
  m.clear();
  st.regex->find_all(s, m);
  std::vector<std::pair<Range, bool>> parts;
  size_t last = 0;
  for (auto [a, b] : m) {
    if (a > last) parts.push_back({{last, a}, st.invert});
    parts.push_back({{a, b}, !st.invert});
    last = b;
  }
  if (last < s.size()) parts.push_back({{last, s.size()}, st.invert});
  std::vector<std::pair<Range, bool>> res;
  switch (st.behavior) {
    case SplitBehavior::Removed:
      for (auto& p : parts)
        if (!p.second) res.push_back(p);
      break;
    case SplitBehavior::Isolated:
      res = parts;
      break;
    case SplitBehavior::MergedWithPrevious: {
      bool prev_match = false;
      for (auto& p : parts) {
        if (p.second && !prev_match && !res.empty()) res.back().first.second = p.first.second;
        else res.push_back(p);
        prev_match = p.second;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->second && !prev_match && !res.empty()) res.back().first.first = it->first.first;
        else res.push_back(*it);
        prev_match = it->second;
      }
      std::reverse(res.begin(), res.end());
      break;
    }
    case SplitBehavior::Contiguous: {
      bool prev_match = false;
      for (auto& p : parts) {
        if (p.second == prev_match && !res.empty()) res.back().first.second = p.first.second;
        else res.push_back(p);
        prev_match = p.second;
      }
      break;
    }
  }
  for (auto& p : res)
    if (p.first.second > p.first.first) out.push_back(s.substr(p.first.first, p.first.second - p.first.first));
}
}  // namespace

void TokImpl::encode_segment(std::string_view seg, std::vector<int32_t>& out) const {
  std::string norm;
  std::string_view text = seg;
  if (!normalizers.empty()) {
    norm = normalize(seg);
    text = norm;
  }
  std::vector<std::pair<std::string_view, int32_t>> subs;
  if (std::any_of(added_by_byte[1].begin(), added_by_byte[1].end(), [](auto& v) { return !v.empty(); }))
    split_added(text, true, subs);
  else
    subs.emplace_back(text, -1);
  std::vector<std::string_view> pieces, next;
  std::vector<Range> scratch;
  std::vector<std::string> owned;
  for (auto [sub, id] : subs) {
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    pieces.assign(1, sub);
    for (size_t k = 0; k <= pretokenizers.size(); ++k) {
      if (prefix_space && k == prefix_space_at) {  // ByteLevel add_prefix_space, on every piece so far
        owned.clear();
        owned.reserve(pieces.size());
        for (std::string_view p : pieces) owned.push_back(p.empty() || p[0] == ' ' ? std::string(p) : " " + std::string(p));
        for (size_t q = 0; q < pieces.size(); ++q) pieces[q] = owned[q];
      }
      if (k == pretokenizers.size()) break;
      next.clear();
      for (std::string_view p : pieces) split_piece(pretokenizers[k], p, next, scratch);
      pieces.swap(next);
    }
    for (std::string_view p : pieces) model_encode(p, out);
  }
}

void TokImpl::encode_into(std::string_view text, std::vector<int32_t>& out) const {
  std::string fixed;
  if (!uni::valid_utf8(text)) {  // HF only takes str; invalid bytes become U+FFFD
    fixed = uni::utf8_lossy(text);
    text = fixed;
  }
  std::vector<std::pair<std::string_view, int32_t>> segs;
  split_added(text, false, segs);
  for (auto [s, id] : segs) {
    if (id >= 0) out.push_back(id);
    else encode_segment(s, out);
  }
}

// ---- public API ------------------------------------------------------------------------------
Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_bos) ids = impl_->prefix;
  impl_->encode_into(text, ids);
  if (add_bos) ids.insert(ids.end(), impl_->suffix.begin(), impl_->suffix.end());
  return ids;
}

namespace {
// "<0xNN>" -> NN, else -1
int byte_token_value(std::string_view t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
  int h = hex(t[3]), l = hex(t[4]);
  return h < 0 || l < 0 ? -1 : h * 16 + l;
}

// ByteLevel decoding of one token: its characters mapped back to bytes, or its raw text when
// some character is not a mapped byte.
void byte_level_bytes(std::string_view t, std::string& out) {
  size_t start = out.size();
  for (size_t i = 0; i < t.size();) {
    int b = unicode_to_byte(uni::next_cp(t, i));
    if (b < 0) {
      out.resize(start);
      out.append(t);
      return;
    }
    out += static_cast<char>(b);
  }
}

std::string replace_all(std::string s, const std::string& a, const std::string& b) {
  if (a.empty()) return s;
  for (size_t i = 0; (i = s.find(a, i)) != std::string::npos; i += b.size()) s.replace(i, a.size(), b);
  return s;
}
}  // namespace

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= static_cast<int32_t>(m.vocab.size())) continue;  // HF skips unknown ids
    if (skip_special && m.special[id]) continue;
    toks.push_back(m.vocab[id]);
  }
  if (m.decoders.empty()) {  // HF joins with spaces when there is no decoder
    std::string r;
    for (size_t i = 0; i < toks.size(); ++i) r += (i ? " " : "") + toks[i];
    return r;
  }
  for (const DecStep& d : m.decoders) {
    switch (d.kind) {
      case DecStep::ByteLevel: {
        std::string bytes;
        for (auto& t : toks) byte_level_bytes(t, bytes);
        toks.assign(1, uni::utf8_lossy(bytes));
        break;
      }
      case DecStep::Replace:
        for (auto& t : toks) t = replace_all(std::move(t), d.a, d.b);
        break;
      case DecStep::ByteFallback: {
        std::vector<std::string> r;
        std::string pending;
        size_t npending = 0;
        auto flush = [&] {
          if (!npending) return;
          if (uni::valid_utf8(pending)) r.push_back(pending);
          else
            for (size_t k = 0; k < npending; ++k) r.push_back("\xEF\xBF\xBD");
          pending.clear();
          npending = 0;
        };
        for (auto& t : toks) {
          int b = byte_token_value(t);
          if (b >= 0) {
            pending += static_cast<char>(b);
            ++npending;
          } else {
            flush();
            r.push_back(std::move(t));
          }
        }
        flush();
        toks.swap(r);
        break;
      }
      case DecStep::Fuse: {
        std::string all;
        for (auto& t : toks) all += t;
        toks.assign(1, std::move(all));
        break;
      }
      case DecStep::Strip:
        for (auto& t : toks) {
          size_t a = 0, b = t.size();
          for (int k = 0; k < d.start && t.compare(a, d.a.size(), d.a) == 0; ++k) a += d.a.size();
          for (int k = 0; k < d.stop && b >= a + d.a.size() && t.compare(b - d.a.size(), d.a.size(), d.a) == 0; ++k)
            b -= d.a.size();
          t = t.substr(a, b - a);
        }
        break;
    }
  }
  std::string r;
  for (auto& t : toks) r += t;
  return r;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  const std::string& t = token_text(id);
  std::string r;
  if (impl_->byte_level) {
    byte_level_bytes(t, r);
    return r;
  }
  int b = byte_token_value(t);
  if (b >= 0) return std::string(1, static_cast<char>(b));
  return replace_all(t, "\xE2\x96\x81", " ");
}

const std::string& Tokenizer::token_text(int32_t id) const {
  LZ_CHECK(id >= 0 && id < vocab_size(), "token id {} is out of range [0, {})", id, vocab_size());
  return impl_->vocab[id];
}

std::optional<int32_t> Tokenizer::token_id(std::string_view text) const {
  std::string k(text);
  if (auto it = impl_->added_ids.find(k); it != impl_->added_ids.end()) return it->second;
  if (auto it = impl_->model_ids.find(k); it != impl_->model_ids.end()) return it->second;
  return std::nullopt;
}

int Tokenizer::vocab_size() const { return static_cast<int>(impl_->vocab.size()); }
bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[id];
}
std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }
bool Tokenizer::adds_bos() const { return !impl_->prefix.empty(); }
std::string Tokenizer::kind() const { return impl_->kind_name; }
std::string Tokenizer::pretokenizer() const { return impl_->pre_desc; }

}  // namespace lizard
