#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "train/data.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace lizard;

namespace {

const std::string kLlama3 = std::string(LIZARD_SOURCE_DIR) + "/../shared/data/tokenizers/llama3/tokenizer.json";

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("lizard_data_" + std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  void write(const std::string& name, const std::string& text) {
    fs::create_directories((path / name).parent_path());
    std::ofstream(path / name, std::ios::binary) << text;
  }
};

ChatTemplate chatml() {
  ChatTemplate t;
  t.format = ChatFormat::ChatML;
  return t;
}

}  // namespace

TEST(Data, ReadsTextJsonlAlpacaAndGzip) {
  TempDir d;
  d.write("a.txt", "The quick brown fox.");
  d.write("sub/b.jsonl", "{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n");
  d.write("c.jsonl", "{\"instruction\": \"Say hi\", \"input\": \"\", \"output\": \"hi\"}\n");
  d.write("bin.dat", std::string("\x00\x01\x02", 3));
  gzFile g = gzopen((d.path / "z.txt.gz").c_str(), "wb");
  gzputs(g, "compressed words");
  gzclose(g);
  auto docs = read_documents((d.path / "sub/b.jsonl").string(), chatml(), 1 << 20);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[1], "two");
  auto alp = read_documents((d.path / "c.jsonl").string(), chatml(), 1 << 20);
  ASSERT_EQ(alp.size(), 1u);
  EXPECT_NE(alp[0].find("Say hi"), std::string::npos);
  EXPECT_NE(alp[0].find("<|im_start|>assistant"), std::string::npos);
  EXPECT_EQ(read_documents((d.path / "z.txt.gz").string(), chatml(), 1 << 20).at(0), "compressed words");
  EXPECT_TRUE(read_documents((d.path / "bin.dat").string(), chatml(), 1 << 20).empty());

  Tokenizer tok = Tokenizer::from_json_file(kLlama3);
  DataOptions opt;
  opt.paths = {d.path.string()};
  opt.seq_len = 4;
  opt.val_fraction = 0.0;
  Dataset ds = load_dataset(opt, tok, chatml());
  EXPECT_EQ(ds.files, 4);
  EXPECT_EQ(ds.skipped_files, 1);
  EXPECT_EQ(ds.documents, 5);
  EXPECT_GT(ds.train.num_samples(4), 0);
  EXPECT_TRUE(ds.val.tokens.empty());
}

TEST(Data, BadInputGivesClearErrors) {
  TempDir d;
  d.write("bad.jsonl", "{\"text\": 1}\n");
  EXPECT_THROW(read_documents((d.path / "bad.jsonl").string(), chatml(), 1 << 20), Error);
  d.write("bad2.jsonl", "not json\n");
  EXPECT_THROW(read_documents((d.path / "bad2.jsonl").string(), chatml(), 1 << 20), Error);
  d.write("bad3.jsonl", "{\"foo\": \"bar\"}\n");
  EXPECT_THROW(read_documents((d.path / "bad3.jsonl").string(), chatml(), 1 << 20), Error);
  Tokenizer tok = Tokenizer::from_json_file(kLlama3);
  DataOptions opt;
  opt.paths = {(d.path / "missing").string()};
  EXPECT_THROW(load_dataset(opt, tok, chatml()), Error);
}

TEST(Data, ValidationSplitIsDisjointAndDeterministic) {
  TempDir d;
  std::string jl;
  for (int i = 0; i < 400; ++i) jl += "{\"text\": \"document number " + std::to_string(i) + " has some words\"}\n";
  d.write("docs.jsonl", jl);
  Tokenizer tok = Tokenizer::from_json_file(kLlama3);
  DataOptions opt;
  opt.paths = {d.path.string()};
  opt.seq_len = 8;
  opt.val_fraction = 0.1;
  Dataset a = load_dataset(opt, tok, chatml()), b = load_dataset(opt, tok, chatml());
  EXPECT_EQ(a.train.tokens, b.train.tokens);
  EXPECT_EQ(a.val.tokens, b.val.tokens);
  double frac = double(a.val.tokens.size()) / double(a.val.tokens.size() + a.train.tokens.size());
  EXPECT_GT(frac, 0.03);
  EXPECT_LT(frac, 0.2);
}

TEST(Data, SampleOrderIsAPermutationAndResumes) {
  SampleOrder o(37, 7);
  std::set<int64_t> seen;
  for (int i = 0; i < 37; ++i) seen.insert(o.next());
  EXPECT_EQ(seen.size(), 37u);
  for (int i = 0; i < 10; ++i) o.next();  // into epoch 1
  SampleOrder r(37, 7);
  r.restore(o.epoch(), o.position());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(o.next(), r.next());
}
