#include "eval/recall.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>

#include "util/error.h"

namespace lizard {
namespace {

const char* const kFiller[] = {" The grass is green.", " The sky is blue.", " The sun is yellow.", " Here we go.",
                               " There and back again."};
const char* const kColors[] = {"red",    "blue",  "green", "yellow", "purple", "orange", "silver", "golden",
                               "black",  "white", "brown", "pink",   "grey",   "violet", "amber",  "teal"};
const char* const kWords[] = {
    "apple",  "river",  "stone",  "cloud",  "tiger",  "candle", "garden", "window", "pencil", "mirror", "forest",
    "bottle", "castle", "rabbit", "planet", "ladder", "wallet", "carpet", "dragon", "violin", "anchor", "basket",
    "button", "cactus", "camera", "cheese", "circle", "desert", "engine", "feather", "finger", "flower", "guitar",
    "hammer", "island", "jacket", "kettle", "lemon",  "magnet", "meadow", "needle", "orange", "parrot", "pepper",
    "pillow", "pocket", "puzzle", "rocket", "saddle", "salmon", "shadow", "silver", "spider", "spoon",  "square",
    "summer", "table",  "ticket", "tomato", "tunnel", "turtle", "valley", "wizard", "yellow", "zebra",  "barrel",
    "blanket", "bridge", "cherry", "copper", "cotton", "dinner", "donkey", "falcon", "forget", "helmet", "insect",
    "jungle", "kitten", "lizard", "marble", "monkey", "napkin", "ocean",  "oyster", "panda",  "pirate", "quartz",
    "ribbon", "rubber", "sailor", "tablet", "thunder", "velvet", "walnut", "winter", "harbor", "lantern", "canyon"};

std::string random_digits(std::mt19937_64& rng, int n) {
  std::string s;
  s.push_back(char('1' + rng() % 9));
  while (static_cast<int>(s.size()) < n) s.push_back(char('0' + rng() % 10));
  return s;
}

void append(std::vector<int32_t>& dst, const std::vector<int32_t>& src) { dst.insert(dst.end(), src.begin(), src.end()); }

// Filler sentences, cycled, of at most `budget` tokens in all.
std::vector<std::vector<int32_t>> filler_units(const TextCodec& codec, int64_t budget) {
  std::vector<std::vector<int32_t>> pieces;
  for (const char* f : kFiller) pieces.push_back(codec.encode(f));
  std::vector<std::vector<int32_t>> units;
  for (size_t i = 0;; ++i) {
    const auto& p = pieces[i % pieces.size()];
    if (static_cast<int64_t>(p.size()) > budget) break;
    budget -= static_cast<int64_t>(p.size());
    units.push_back(p);
  }
  return units;
}

uint64_t mix(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t h = seed ^ 0x9e3779b97f4a7c15ull;
  for (uint64_t v : {a, b, c}) h = (h ^ v) * 0x100000001b3ull + (h >> 29);
  return h;
}

}  // namespace

std::string first_number(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && !std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  size_t j = i;
  while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
  return text.substr(i, j - i);
}

PasskeyPrompt make_passkey_prompt(const TextCodec& codec, int64_t length, double depth, const PasskeyOptions& opt,
                                  std::mt19937_64& rng) {
  const int n_colors = static_cast<int>(std::size(kColors));
  LZ_CHECK(opt.keys >= 1 && opt.keys <= n_colors, "passkeys per prompt must be in [1, {}], not {}", n_colors, opt.keys);
  LZ_CHECK(opt.min_digits >= 1 && opt.min_digits <= opt.max_digits && opt.max_digits <= 18,
           "passkey digits must satisfy 1 <= min <= max <= 18");
  LZ_CHECK(depth >= 0 && depth <= 1, "depth must be in [0, 100]%");
  std::vector<int> colors(n_colors);
  for (int i = 0; i < n_colors; ++i) colors[i] = i;
  std::shuffle(colors.begin(), colors.end(), rng);

  PasskeyPrompt p;
  std::vector<std::vector<int32_t>> needles;
  std::set<std::string> used;
  for (int k = 0; k < opt.keys; ++k) {
    std::string digits;
    do {
      digits = random_digits(rng, opt.min_digits + static_cast<int>(rng() % (opt.max_digits - opt.min_digits + 1)));
    } while (!used.insert(digits).second);
    const std::string box = std::string("the ") + kColors[colors[k]] + " box";
    needles.push_back(codec.encode(" The pass key of " + box + " is " + digits + ". Remember it. " + digits +
                                   " is the pass key of " + box + "."));
    p.all_answers.push_back(digits);
    if (k == 0) {
      p.answer = digits;
      p.label = box;
    }
  }
  std::vector<int32_t> head = codec.doc_start;
  append(head, codec.encode("There is important information hidden inside a lot of irrelevant text. Find it and "
                            "memorize it. I will quiz you about it."));
  const auto question =
      codec.encode("\nWhat is the pass key of " + p.label + "? The pass key of " + p.label + " is");
  int64_t budget = length - static_cast<int64_t>(head.size() + question.size());
  for (auto& n : needles) budget -= static_cast<int64_t>(n.size());
  LZ_CHECK(budget >= 0, "a passkey prompt of {} tokens is too short to hold {} passkeys", length, opt.keys);
  const auto units = filler_units(codec, budget);
  const int64_t nu = static_cast<int64_t>(units.size());

  // Where each needle goes: before filler sentence `at` (nu: at the end).
  std::vector<int64_t> at(opt.keys);
  at[0] = std::llround(depth * nu);
  for (int k = 1; k < opt.keys; ++k) at[k] = static_cast<int64_t>(rng() % (nu + 1));
  p.tokens = head;
  p.filler_begin = static_cast<int64_t>(p.tokens.size());
  for (int64_t u = 0; u <= nu; ++u) {
    // At a shared spot the asked key goes first in the first half, last in the second.
    auto put = [&](int k) {
      if (k == 0) p.needle_begin = static_cast<int64_t>(p.tokens.size());
      append(p.tokens, needles[k]);
    };
    if (depth <= 0.5 && at[0] == u) put(0);
    for (int k = 1; k < opt.keys; ++k)
      if (at[k] == u) put(k);
    if (depth > 0.5 && at[0] == u) put(0);
    if (u < nu) append(p.tokens, units[u]);
  }
  p.filler_end = static_cast<int64_t>(p.tokens.size());
  append(p.tokens, question);
  return p;
}

double PasskeyResult::accuracy(int64_t length, int depth) const {
  int64_t n = 0, ok = 0;
  for (const auto& r : records)
    if ((length < 0 || r.length == length) && (depth < 0 || r.depth == depth)) {
      ++n;
      ok += r.correct;
    }
  return n ? double(ok) / n : 0;
}

PasskeyResult run_passkey(EvalModel& m, const TextCodec& codec, const PasskeyOptions& opt, const Progress& progress) {
  LZ_CHECK(!opt.lengths.empty() && !opt.depths.empty() && opt.samples >= 1, "passkey needs lengths, depths and samples");
  for (int64_t L : opt.lengths)
    LZ_CHECK(L <= m.context_length(), "a passkey prompt of {} tokens does not fit {}'s context of {} (raise --ctx)", L,
             m.name(), m.context_length());
  for (int d : opt.depths) LZ_CHECK(d >= 0 && d <= 100, "depths are percentages in [0, 100], not {}", d);
  PasskeyResult res;
  for (int64_t L : opt.lengths)
    for (int d : opt.depths)
      for (int s = 0; s < opt.samples; ++s) {
        // Each prompt has its own seed, so a cell does not depend on which others are run.
        std::mt19937_64 rng(mix(opt.seed, static_cast<uint64_t>(L), static_cast<uint64_t>(d), static_cast<uint64_t>(s)));
        // The answer (the digits and a little more; EOS stops early) fits within the L tokens too.
        const int answer_room = opt.max_digits + 3;
        auto p = make_passkey_prompt(codec, L - answer_room, d / 100.0, opt, rng);
        auto ids = greedy_continue(m, p.tokens, answer_room, codec.stop_ids);
        PasskeyRecord r;
        r.length = L;
        r.depth = d;
        r.sample = s;
        r.label = p.label;
        r.answer = p.answer;
        r.output = codec.decode(ids);
        r.correct = first_number(r.output) == p.answer;
        res.records.push_back(r);
        if (progress)
          progress(fmt::format("passkey len {} depth {}% #{}: {} -> '{}' {}", L, d, s, p.answer, first_number(r.output),
                               r.correct ? "ok" : "WRONG"));
      }
  return res;
}

// ---- MQAR -----------------------------------------------------------------------------------------

MqarPrompt make_mqar_prompt(const TextCodec& codec, int pairs, int64_t seq_len, const MqarOptions& opt,
                            std::mt19937_64& rng) {
  const int n_words = static_cast<int>(std::size(kWords));
  LZ_CHECK(pairs >= 1 && pairs <= 900, "MQAR pairs must be in [1, 900], not {}", pairs);
  LZ_CHECK(!opt.words || pairs <= n_words, "MQAR with word keys has {} words, fewer than {} pairs", n_words, pairs);
  std::vector<std::string> keys, values;
  std::set<std::string> used;
  if (opt.words) {
    std::vector<int> idx(n_words);
    for (int i = 0; i < n_words; ++i) idx[i] = i;
    std::shuffle(idx.begin(), idx.end(), rng);
    for (int i = 0; i < pairs; ++i) keys.push_back(kWords[idx[i]]);
  } else {
    while (static_cast<int>(keys.size()) < pairs) {
      std::string k;
      for (int i = 0; i < 3; ++i) k.push_back(char('A' + rng() % 26));
      if (used.insert(k).second) keys.push_back(k);
    }
  }
  used.clear();
  while (static_cast<int>(values.size()) < pairs) {
    std::string v = std::to_string(100 + rng() % 900);
    if (used.insert(v).second) values.push_back(v);
  }
  // Each line is three pieces, tokenized alone: "KEY:", " 123", "\n" (same ids in list and queries).
  const auto nl = codec.encode("\n");
  std::vector<std::vector<int32_t>> kt, vt;
  for (int i = 0; i < pairs; ++i) {
    kt.push_back(codec.encode(keys[i] + ":"));
    vt.push_back(codec.encode(" " + values[i]));
  }
  std::vector<int32_t> list = codec.doc_start;
  append(list, codec.encode("Memorize the number of each key."));
  append(list, nl);
  for (int i = 0; i < pairs; ++i) {
    append(list, kt[i]);
    append(list, vt[i]);
    append(list, nl);
  }
  const auto again = codec.encode("\nNow the number of each key again.\n");
  const int nq = opt.queries > 0 ? std::min(opt.queries, pairs) : pairs;
  std::vector<int> order(pairs);
  for (int i = 0; i < pairs; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  int64_t q_tokens = static_cast<int64_t>(again.size());
  for (int j = 0; j < nq; ++j) q_tokens += static_cast<int64_t>(kt[order[j]].size() + vt[order[j]].size() + nl.size());

  MqarPrompt p;
  p.tokens = list;
  if (seq_len > 0) {
    const int64_t budget = seq_len - static_cast<int64_t>(list.size()) - q_tokens;
    for (auto& u : filler_units(codec, std::max<int64_t>(budget, 0))) {
      append(p.tokens, u);
      p.filler_tokens += static_cast<int64_t>(u.size());
    }
  }
  append(p.tokens, again);
  for (int j = 0; j < nq; ++j) {
    const int i = order[j];
    append(p.tokens, kt[i]);
    MqarPrompt::Query q{keys[i], values[i], static_cast<int64_t>(p.tokens.size()), static_cast<int64_t>(vt[i].size())};
    append(p.tokens, vt[i]);
    append(p.tokens, nl);
    p.queries.push_back(q);
  }
  return p;
}

double MqarResult::accuracy() const {
  int64_t n = 0, ok = 0;
  for (const auto& c : cells) {
    n += c.total;
    ok += c.correct;
  }
  return n ? double(ok) / n : 0;
}

MqarResult run_mqar(EvalModel& m, const TextCodec& codec, const MqarOptions& opt, const Progress& progress) {
  LZ_CHECK(!opt.pairs.empty() && !opt.seq_lens.empty() && opt.samples >= 1, "MQAR needs pairs, lengths and samples");
  MqarResult res;
  const int V = m.vocab_size();
  for (int np : opt.pairs)
    for (int64_t L : opt.seq_lens) {
      MqarCell c;
      c.pairs = np;
      c.seq_len = L;
      for (int s = 0; s < opt.samples; ++s) {
        std::mt19937_64 rng(mix(opt.seed, static_cast<uint64_t>(np), static_cast<uint64_t>(L), static_cast<uint64_t>(s)));
        auto p = make_mqar_prompt(codec, np, L, opt, rng);
        const int64_t n = static_cast<int64_t>(p.tokens.size());
        LZ_CHECK(n <= m.context_length(), "an MQAR prompt of {} tokens does not fit {}'s context of {}", n, m.name(),
                 m.context_length());
        // Argmax of every row from the first value on; row t predicts token t + 1.
        const int64_t from = p.queries.front().value_begin - 1;
        std::vector<int32_t> pred(n, -1);
        scan_logits(m, std::span<const int32_t>(p.tokens).subspan(0, n - 1), from, 256,
                    [&](int64_t i0, int64_t rows, const float* lg) {
                      for (int64_t r = 0; r < rows; ++r) pred[i0 + r] = argmax(lg + r * V, V);
                    });
        int64_t ok = 0;
        for (const auto& q : p.queries) {
          bool good = true;
          for (int64_t t = q.value_begin; t < q.value_begin + q.value_len; ++t) good = good && pred[t - 1] == p.tokens[t];
          ok += good;
        }
        c.correct += ok;
        c.total += static_cast<int64_t>(p.queries.size());
        c.tokens += n;
        if (progress)
          progress(fmt::format("mqar pairs {} len {} #{}: {}/{} ({} tokens)", np, L, s, ok, p.queries.size(), n));
      }
      c.tokens /= opt.samples;
      res.cells.push_back(c);
    }
  return res;
}

}  // namespace lizard
