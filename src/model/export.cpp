#include "model/export.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "formats/quant.h"
#include "formats/safetensors.h"
#include "model/checkpoint.h"
#include "model/lizard_checkpoint.h"
#include "model/load_model.h"
#include "tokenizer/tokenizer_impl.h"
#include "util/error.h"
#include "util/half.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace lizard {

namespace {

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  LZ_CHECK(f.good(), "cannot write '{}'", p.string());
  f << s;
  f.close();
  LZ_CHECK(f.good(), "cannot write '{}'", p.string());
}

const char* hf_arch(const std::string& a) {
  if (a == "llama") return "LlamaForCausalLM";
  if (a == "mistral") return "MistralForCausalLM";
  if (a == "qwen2") return "Qwen2ForCausalLM";
  fail("export: architecture '{}' has no Hugging Face form here", a);
}

// Removes a directory tree on scope exit unless released (the half-built OUT.tmp on errors).
struct TreeGuard {
  fs::path p;
  ~TreeGuard() {
    if (!p.empty()) {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
  }
};

}  // namespace

std::string hf_config_json(const ModelConfig& c, DType dtype) {
  json j = {{"architectures", {hf_arch(c.arch)}},
            {"model_type", c.arch},
            {"hidden_act", "silu"},
            {"hidden_size", c.d_model},
            {"intermediate_size", c.d_ff},
            {"num_hidden_layers", c.n_layers},
            {"num_attention_heads", c.n_heads},
            {"num_key_value_heads", c.n_kv_heads},
            {"head_dim", c.head_dim},
            // floats go out as the double of the float, so reading back gives the same float
            {"rms_norm_eps", double(c.rms_eps)},
            {"rope_theta", double(c.rope_theta)},
            {"max_position_embeddings", c.max_seq_len},
            {"tie_word_embeddings", c.tied_embeddings},
            {"vocab_size", c.vocab_size},
            {"torch_dtype", dtype == DType::BF16 ? "bfloat16" : "float32"}};
  if (c.arch == "llama") j["attention_bias"] = false;  // Qwen2's q/k/v biases are implied by its type
  const RopeScaling& r = c.rope_scaling;
  switch (r.kind) {
    case RopeScaling::Kind::None: j["rope_scaling"] = nullptr; break;
    case RopeScaling::Kind::Linear: j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", double(r.factor)}}; break;
    case RopeScaling::Kind::Llama3:
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", double(r.factor)},
                           {"low_freq_factor", double(r.low_freq_factor)},
                           {"high_freq_factor", double(r.high_freq_factor)},
                           {"original_max_position_embeddings", r.original_max_position}};
      break;
  }
  if (c.sliding_window > 0) j["sliding_window"] = c.sliding_window;
  else if (c.arch == "qwen2") j["use_sliding_window"] = false;
  return j.dump(2) + "\n";
}

void write_gguf_tokenizer(const GGUFFile& g, const std::string& dir, const std::string& chat_template) {
  const std::string model = g.find_string("tokenizer.ggml.model").value_or("");
  LZ_CHECK(!model.empty(), "'{}' has no tokenizer (tokenizer.ggml.model is missing)", g.path());
  LZ_CHECK(model == "gpt2",
           "'{}': exporting a '{}' (SentencePiece) GGUF tokenizer is not supported; export from the Hugging Face "
           "directory of the teacher instead",
           g.path(), model);
  auto strs = [&](const char* k) -> std::vector<std::string> {
    const GGUFValue* v = g.get(k);
    if (!v) return {};
    auto* s = std::get_if<std::vector<std::string>>(v);
    LZ_CHECK(s, "GGUF metadata '{}' is not a string array", k);
    return *s;
  };
  const std::vector<std::string> tokens = strs("tokenizer.ggml.tokens");
  const std::vector<std::string> merges = strs("tokenizer.ggml.merges");
  LZ_CHECK(!tokens.empty(), "'{}': tokenizer.ggml.tokens is empty", g.path());
  std::vector<int64_t> types;
  if (const GGUFValue* v = g.get("tokenizer.ggml.token_type"))
    if (auto* t = std::get_if<std::vector<int64_t>>(v)) types = *t;
  if (types.size() != tokens.size()) types.assign(tokens.size(), 1);

  // Every GGUF token is in the model vocabulary (as from_gguf has it); control, unknown and
  // user-defined ones are also added tokens, matched before BPE, control/unknown as special.
  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!vocab.contains(tokens[i])) vocab[tokens[i]] = int64_t(i);  // a repeat keeps the first id
    const int64_t ty = types[i];
    if (ty == 2 || ty == 3 || ty == 4)
      added.push_back({{"id", int64_t(i)},
                       {"content", tokens[i]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", ty != 4}});
  }
  LZ_CHECK(vocab.size() == tokens.size(), "'{}': the GGUF vocabulary repeats tokens; tokenizer.json cannot hold it",
           g.path());

  const std::string pre = g.find_string("tokenizer.ggml.pre").value_or("default");
  json normalizer = nullptr, pre_tok;
  bool ignore_merges = false;
  auto byte_level = [](bool use_regex) {
    return json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
  };
  auto split = [](const char* pattern) {
    return json{{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}};
  };
  // The presets of Tokenizer::from_gguf, in tokenizer.json components.
  if (pre == "smollm") {
    pre_tok = {{"type", "Sequence"},
               {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)}}};
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    pre_tok = {{"type", "Sequence"}, {"pretokenizers", {split(kLlama3Pattern), byte_level(false)}}};
    ignore_merges = true;
  } else if (pre == "qwen2") {
    normalizer = {{"type", "NFC"}};
    pre_tok = {{"type", "Sequence"}, {"pretokenizers", {split(kQwen2Pattern), byte_level(false)}}};
  } else if (pre == "gpt2" || pre == "default") {
    pre_tok = byte_level(true);
  } else {
    fail("'{}': GGUF pre-tokenizer '{}' cannot be exported (lizard knows smollm, llama-bpe, llama3, qwen2, gpt2, "
         "default)",
         g.path(), pre);
  }

  const int64_t n = int64_t(tokens.size());
  auto id_of = [&](const char* k) -> std::optional<int64_t> {
    auto v = g.find_int(k);
    if (!v) return std::nullopt;
    LZ_CHECK(*v >= 0 && *v < n, "GGUF {} = {} is out of range [0, {})", k, *v, n);
    return *v;
  };
  const auto bos = id_of("tokenizer.ggml.bos_token_id"), eos = id_of("tokenizer.ggml.eos_token_id");
  const bool add_bos = g.find_bool("tokenizer.ggml.add_bos_token").value_or(false) && bos;
  const bool add_eos = g.find_bool("tokenizer.ggml.add_eos_token").value_or(false) && eos;

  json post = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  if (add_bos || add_eos) {
    json single = json::array(), pair = json::array(), special = json::object();
    auto tok = [&](int64_t id, int type_id) {
      special[tokens[id]] = {{"id", tokens[id]}, {"ids", {id}}, {"tokens", {tokens[id]}}};
      return json{{"SpecialToken", {{"id", tokens[id]}, {"type_id", type_id}}}};
    };
    auto seq = [](const char* s, int type_id) { return json{{"Sequence", {{"id", s}, {"type_id", type_id}}}}; };
    if (add_bos) single.push_back(tok(*bos, 0)), pair.push_back(tok(*bos, 0));
    single.push_back(seq("A", 0)), pair.push_back(seq("A", 0));
    if (add_eos) single.push_back(tok(*eos, 0)), pair.push_back(tok(*eos, 0));
    if (add_bos) pair.push_back(tok(*bos, 1));
    pair.push_back(seq("B", 1));
    if (add_eos) pair.push_back(tok(*eos, 1));
    post = {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", special}};
  }

  json tj = {{"version", "1.0"},
             {"truncation", nullptr},
             {"padding", nullptr},
             {"added_tokens", added},
             {"normalizer", normalizer},
             {"pre_tokenizer", pre_tok},
             {"post_processor", post},
             {"decoder", byte_level(true)},
             {"model",
              {{"type", "BPE"},
               {"dropout", nullptr},
               {"unk_token", nullptr},  // HF's byte-level BPE has none (from_gguf drops GGUF's)
               {"continuing_subword_prefix", nullptr},
               {"end_of_word_suffix", nullptr},
               {"fuse_unk", false},
               {"byte_fallback", false},
               {"ignore_merges", ignore_merges},
               {"vocab", vocab},
               {"merges", merges}}}};
  json cfg = {{"tokenizer_class", "PreTrainedTokenizerFast"},
              {"clean_up_tokenization_spaces", false},
              {"add_bos_token", add_bos},
              {"add_eos_token", add_eos}};
  if (bos) cfg["bos_token"] = tokens[*bos];
  if (eos) cfg["eos_token"] = tokens[*eos];
  if (!chat_template.empty()) cfg["chat_template"] = chat_template;
  write_text(fs::path(dir) / "tokenizer.json", tj.dump(1) + "\n");
  write_text(fs::path(dir) / "tokenizer_config.json", cfg.dump(2) + "\n");
}

std::string export_merged(const std::string& lizard_dir, const std::string& out, const ExportOptions& o) {
  LZ_CHECK(o.dtype == DType::F32 || o.dtype == DType::BF16, "export: dtype must be f32 or bf16");
  std::error_code ec;
  LZ_CHECK(fs::exists(lizard_dir, ec), "'{}' does not exist", lizard_dir);
  const std::string lizard_file = find_lizard_checkpoint(lizard_dir);
  LZ_CHECK(!lizard_file.empty(), "'{}' is not a Lizard checkpoint (no {})", lizard_dir, kLizardCheckpointFile);
  LZ_CHECK(!out.empty(), "export: no output directory given");
  fs::path outp(out);
  if (outp.filename().empty()) outp = outp.parent_path();
  LZ_CHECK(!fs::exists(outp, ec), "'{}' already exists; export writes a new directory", out);

  const LizardCheckpoint ck = load_lizard_checkpoint(lizard_file);
  const std::string teacher_path = lizard_teacher_path(ck, lizard_file, o.teacher);
  const Checkpoint t = open_checkpoint(teacher_path);
  check_lizard_teacher_shape(ck, t.config);
  const ModelConfig& c = t.config;

  const fs::path tmp = outp.string() + ".tmp";
  fs::remove_all(tmp, ec);  // a leftover of an interrupted export
  fs::create_directories(tmp, ec);
  LZ_CHECK(!ec, "cannot create '{}': {}", tmp.string(), ec.message());
  TreeGuard guard{tmp};

  // Weights: dequantized to fp32, LoRA merged, then stored in the chosen type.
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<TensorToWrite> tw;
  const float scale = static_cast<float>(ck.lora.scale());
  for (const auto& [name, v] : t.tensors) {
    if (name == "rope_freqs.weight") continue;  // GGUF's llama3 factors; config.json's rope_scaling says it
    const int64_t numel = v.numel();
    const int64_t cols = v.shape.empty() ? 1 : v.shape.back();
    const int64_t rows = numel / cols;
    std::vector<float> w(static_cast<size_t>(numel));
    dequantize_rows(v.type, v.data, 0, rows, cols, w.data());
    // blk.N.attn_{q,k,v}.weight: W += (alpha / r) B A, rows in HF order like the adapters'.
    int layer = -1;
    char which = 0;
    if (!ck.lora.empty() && std::sscanf(name.c_str(), "blk.%d.attn_%c.weight", &layer, &which) == 2 &&
        name == fmt::format("blk.{}.attn_{}.weight", layer, which)) {
      auto lit = ck.lora.layers.find(layer);
      if (lit != ck.lora.layers.end())
        if (auto ait = lit->second.find(std::string(1, which)); ait != lit->second.end()) {
          const LoraAdapter& ad = ait->second;
          const int64_t r = ck.lora.rank;
          LZ_CHECK(int64_t(ad.a.size()) == r * cols && int64_t(ad.b.size()) == rows * r,
                   "export: LoRA of blk.{}.{} does not fit {}", layer, which, v.shape_str());
          add_lora_rows(ad, int(r), scale, 0, rows, cols, w.data());
        }
    }
    std::vector<uint8_t> bytes;
    if (o.dtype == DType::F32) {
      bytes.resize(w.size() * 4);
      std::memcpy(bytes.data(), w.data(), bytes.size());
    } else {
      bytes.resize(w.size() * 2);
      for (size_t i = 0; i < w.size(); ++i) {
        const uint16_t h = f32_to_bf16(w[i]);
        std::memcpy(&bytes[i * 2], &h, 2);
      }
    }
    bufs.push_back(std::move(bytes));
    tw.push_back({hf_tensor_name(name), o.dtype, v.shape, bufs.back().data(), bufs.back().size()});
  }
  write_safetensors((tmp / "model.safetensors").string(), tw, {{"format", "pt"}});
  bufs.clear();
  write_text(tmp / "config.json", hf_config_json(c, o.dtype));

  if (t.format == "gguf") {
    GGUFFile g(teacher_path);
    write_gguf_tokenizer(g, tmp.string(), t.chat_template_source);
  } else {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                          "generation_config.json"}) {
      const fs::path src = fs::path(teacher_path) / f;
      if (fs::exists(src, ec)) {
        fs::copy_file(src, tmp / f, ec);
        LZ_CHECK(!ec, "cannot copy '{}': {}", src.string(), ec.message());
      }
    }
  }

  // The Lizard layers, now over the merged weights of this very directory.
  LizardCheckpoint lz = ck;
  lz.lora = {};
  lz.teacher = fingerprint_teacher(tmp.string());
  lz.teacher.path = ".";
  save_lizard_checkpoint((tmp / kLizardCheckpointFile).string(), lz);

  // Open what was written before it takes OUT's name.
  {
    const Checkpoint back = open_checkpoint(tmp.string());
    check_lizard_teacher_shape(lz, back.config);
    LZ_CHECK(back.tokenizer && back.tokenizer->vocab_size() == t.tokenizer->vocab_size(),
             "export: the written tokenizer has {} tokens, the teacher's {}",
             back.tokenizer ? back.tokenizer->vocab_size() : 0, t.tokenizer->vocab_size());
    check_lizard_teacher(lz, tmp.string());
  }
  LZ_CHECK(!fs::exists(outp, ec), "'{}' already exists; export writes a new directory", out);
  fs::rename(tmp, outp, ec);
  LZ_CHECK(!ec, "cannot rename '{}' to '{}': {}", tmp.string(), outp.string(), ec.message());
  guard.p.clear();
  return fmt::format("{}: {} ({} layers, {} Lizard){} from teacher '{}', {} weights, {} tensors", outp.string(),
                     c.name, c.n_layers, ck.layers.size(),
                     ck.lora.empty() ? std::string() : fmt::format(", LoRA rank {} merged", ck.lora.rank),
                     teacher_path, o.dtype == DType::F32 ? "f32" : "bf16", tw.size());
}

}  // namespace lizard
