// Helpers shared by the training tests (stage 1 and stage 2).
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "train/data.h"
#include "train/trainer.h"

namespace lizard::testing {

// A fresh directory under $TMPDIR, removed with everything in it at scope exit.
struct ScratchDir {
  std::filesystem::path path;
  ScratchDir() {
    path = std::filesystem::temp_directory_path() / ("lizard_train_" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// Token streams with a little structure (each random phrase of 3..3+extra-1 tokens repeated `reps`
// times in a row), so that attention has something to find and a tiny model something to learn.
inline Dataset random_tokens(std::mt19937_64& rng, int vocab, int seq_len, int n_train, int n_val, int extra, int reps) {
  Dataset d;
  std::uniform_int_distribution<int> pick(0, vocab - 1);
  auto fill = [&](std::vector<int32_t>& v, int n) {
    while (static_cast<int>(v.size()) < n) {
      const int len = 3 + pick(rng) % extra;
      std::vector<int32_t> phrase;
      for (int i = 0; i < len; ++i) phrase.push_back(pick(rng));
      for (int rep = 0; rep < reps; ++rep) v.insert(v.end(), phrase.begin(), phrase.end());
    }
    v.resize(static_cast<size_t>(n));
  };
  fill(d.train.tokens, n_train * seq_len + 1);
  fill(d.val.tokens, n_val * seq_len + 1);
  d.documents = 1;
  d.files = 1;
  return d;
}

// The "loss" of every step in a run's JSON-lines log.
inline std::vector<double> logged_losses(const std::filesystem::path& dir) {
  std::vector<double> v;
  std::ifstream in(dir / kTrainLogFile);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) v.push_back(j["loss"].get<double>());
  }
  return v;
}

}  // namespace lizard::testing
