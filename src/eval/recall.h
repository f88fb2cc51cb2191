// Long-context recall tasks on a pretrained LM, as text:
//  - passkey retrieval (as in the Lizard paper): several passkeys of 5-8 digits hidden at random
//    depths in filler text, one of them (placed at the requested depth) asked for; greedy answer.
//  - MQAR (multi-query associative recall, Zoology/Based): key-value pairs (letter codes or words ->
//    numbers), optional filler, then every key again; teacher-forced, a query is right when the
//    model's argmax gives every token of its value.
// Prompts are built from separately tokenized pieces so lengths and positions are exact.
#pragma once
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "eval/eval_model.h"

namespace lizard {

// ---- passkey --------------------------------------------------------------------------------------
struct PasskeyOptions {
  std::vector<int64_t> lengths{2048, 4096, 8192};  // tokens of prompt + answer
  std::vector<int> depths{0, 25, 50, 75, 100};     // percent of the filler before the asked key
  int samples = 5;                                 // prompts per (length, depth)
  int keys = 5;                                    // passkeys hidden per prompt
  int min_digits = 5, max_digits = 8;
  uint64_t seed = 1234;
};

struct PasskeyPrompt {
  std::vector<int32_t> tokens;
  std::string answer;           // the asked passkey's digits
  std::string label;            // which key is asked ("the red box")
  std::vector<std::string> all_answers;
  int64_t needle_begin = 0;     // token index of the asked needle
  int64_t filler_begin = 0, filler_end = 0;  // token span holding filler and needles
};

// A prompt of at most `length` tokens (and within one filler sentence of it).
PasskeyPrompt make_passkey_prompt(const TextCodec& codec, int64_t length, double depth, const PasskeyOptions& opt,
                                  std::mt19937_64& rng);

// The first run of digits in text ("" if none).
std::string first_number(const std::string& text);

struct PasskeyRecord {
  int64_t length = 0;
  int depth = 0, sample = 0;
  std::string label, answer, output;
  bool correct = false;
};
struct PasskeyResult {
  std::vector<PasskeyRecord> records;
  double accuracy(int64_t length = -1, int depth = -1) const;  // -1: all
};

using Progress = std::function<void(const std::string& line)>;
PasskeyResult run_passkey(EvalModel& m, const TextCodec& codec, const PasskeyOptions& opt, const Progress& progress = {});

// ---- MQAR -----------------------------------------------------------------------------------------
struct MqarOptions {
  std::vector<int> pairs{8, 16, 32};     // key-value pairs per prompt
  std::vector<int64_t> seq_lens{0};      // total prompt tokens, padded with filler between pairs and
                                         // queries; 0: no filler
  int samples = 5;
  int queries = 0;                       // keys asked per prompt; 0: all of them
  bool words = false;                    // keys are words instead of 3-letter codes
  uint64_t seed = 1234;
};

struct MqarPrompt {
  std::vector<int32_t> tokens;
  struct Query {
    std::string key, value;
    int64_t value_begin = 0, value_len = 0;  // token span of the value in the queries
  };
  std::vector<Query> queries;
  int64_t filler_tokens = 0;
};

MqarPrompt make_mqar_prompt(const TextCodec& codec, int pairs, int64_t seq_len, const MqarOptions& opt,
                            std::mt19937_64& rng);

struct MqarCell {
  int pairs = 0;
  int64_t seq_len = 0, tokens = 0;  // asked and actual (mean) prompt length
  int64_t correct = 0, total = 0;
  double accuracy() const { return total ? double(correct) / total : 0; }
};
struct MqarResult {
  std::vector<MqarCell> cells;
  double accuracy() const;
};

MqarResult run_mqar(EvalModel& m, const TextCodec& codec, const MqarOptions& opt, const Progress& progress = {});

}  // namespace lizard
