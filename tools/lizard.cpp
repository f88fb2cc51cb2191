// lizard: command-line front end. Thin: parses flags, calls the library, prints.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <sstream>

#include "eval/eval_cli.h"
#include "formats/gguf.h"
#include "generate/bench_generate.h"
#include "generate/cuda_generate.h"
#include "generate/generate.h"
#include "generate/state_io.h"
#include "model/checkpoint.h"
#include "model/export.h"
#include "model/lizard_checkpoint.h"
#include "model/llama.h"
#include "model/load_model.h"
#include "server/server.h"
#include "tokenizer/tokenizer.h"
#include "train/linearize_cli.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace lizard;

namespace {

std::string model_or_default(const std::string& m) { return m.empty() ? default_model_path() : m; }

std::string human_count(int64_t n) {
  if (n >= 1000000000) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1000000) return fmt::format("{:.1f}M", n / 1e6);
  if (n >= 1000) return fmt::format("{:.1f}K", n / 1e3);
  return std::to_string(n);
}

// ---- info -------------------------------------------------------------------------------------
void cmd_info(const std::string& model_arg, const std::string& teacher_arg) {
  // A Lizard checkpoint: its teacher's summary, then the Lizard part.
  const std::string path = model_or_default(model_arg);
  const std::string lizard_file = find_lizard_checkpoint(path);
  std::optional<LizardCheckpoint> lz;
  if (!lizard_file.empty()) lz = load_lizard_checkpoint(lizard_file);
  Checkpoint ck = open_checkpoint(lz ? lizard_teacher_path(*lz, lizard_file, teacher_arg) : path);
  if (lz) check_lizard_teacher_shape(*lz, ck.config);
  const ModelConfig& c = ck.config;
  std::map<std::string, int> types;
  int64_t bytes = 0;
  for (auto& [name, t] : ck.tensors) {
    types[dtype_name(t.type)]++;
    bytes += static_cast<int64_t>(t.nbytes);
  }
  std::string type_list;
  for (auto& [n, k] : types) type_list += fmt::format("{}{} x{}", type_list.empty() ? "" : ", ", n, k);
  fmt::print("model:          {}\n", ck.path);
  fmt::print("format:         {}\n", ck.format);
  fmt::print("name:           {}\n", c.name);
  fmt::print("architecture:   {}\n", c.arch);
  fmt::print("parameters:     {} ({})\n", human_count(c.param_count()), c.param_count());
  fmt::print("layers:         {}\n", c.n_layers);
  fmt::print("d_model:        {}\n", c.d_model);
  fmt::print("heads:          {} query, {} key/value, head dim {}\n", c.n_heads, c.n_kv_heads, c.head_dim);
  fmt::print("ffn:            {} (SwiGLU)\n", c.d_ff);
  if (lz && static_cast<int>(lz->layers.size()) == c.n_layers)
    fmt::print("context length: unbounded (every layer is Lizard; the teacher was trained to {})\n", c.max_seq_len);
  else
    fmt::print("context length: {}\n", c.max_seq_len);
  std::string scaling = c.rope_scaling.kind == RopeScaling::Kind::Llama3   ? fmt::format(", llama3 scaling x{}", c.rope_scaling.factor)
                        : c.rope_scaling.kind == RopeScaling::Kind::Linear ? fmt::format(", linear scaling x{}", c.rope_scaling.factor)
                                                                             : std::string();
  fmt::print("rope:           theta {}{}\n", c.rope_theta, scaling);
  fmt::print("norm eps:       {}\n", c.rms_eps);
  fmt::print("embeddings:     {}\n", c.tied_embeddings ? "tied" : "separate output head");
  if (c.qkv_bias) fmt::print("qkv bias:       yes\n");
  fmt::print("tensors:        {} ({}), {:.1f} MiB\n", ck.tensors.size(), type_list, bytes / 1048576.0);
  if (ck.tokenizer) {
    const Tokenizer& t = *ck.tokenizer;
    fmt::print("tokenizer:      {}, {} tokens, pre-tokenizer {}, bos {}, eos {}\n", t.kind(), t.vocab_size(),
               t.pretokenizer(), t.bos_id() ? t.token_text(*t.bos_id()) : "none",
               t.eos_id() ? t.token_text(*t.eos_id()) : "none");
  }
  fmt::print("chat template:  {}\n", ck.chat_template.name());
  if (!lz) return;
  const LizardConfig& z = lz->config;
  int64_t n_new = 0;
  for (const auto& [l, p] : lz->layers) n_new += static_cast<int64_t>(p.numel());
  fmt::print("\nlizard:         {}\n", lizard_file);
  fmt::print("lizard layers:  {} of {} ({}{})\n", lz->layers.size(), c.n_layers, lizard_layers_text(z),
             z.no_lizard_layers      ? ": the teacher's softmax attention everywhere"
             : z.lizard_layers.empty() ? ""
                                       : "; the rest softmax");
  if (!z.no_lizard_layers)  // else the options are unused
    fmt::print("lizard config:  combine {}, F {} ({}), w {}, m {}{}, gate {} (init {}), chunk {}\n",
               to_string(z.combine), z.feature_dim, to_string(z.feature_act), z.window, z.meta_tokens,
               z.meta_per_head ? " per head" : "", to_string(z.gate), z.gate_init, z.chunk);
  fmt::print("new parameters: {} ({}), {:.3f}% of the teacher\n", human_count(n_new), n_new,
             100.0 * static_cast<double>(n_new) / static_cast<double>(std::max<int64_t>(1, c.param_count())));
  fmt::print("\n{}", describe_lizard_checkpoint(*lz));
}

// ---- tokenize ---------------------------------------------------------------------------------
Tokenizer load_tokenizer(const std::string& model_arg, const std::string& tokenizer_json) {
  if (!tokenizer_json.empty()) return Tokenizer::from_json_file(tokenizer_json);
  std::string path = model_or_default(model_arg);
  if (fs::is_directory(path)) {
    auto tj = fs::path(path) / "tokenizer.json";
    LZ_CHECK(fs::exists(tj), "'{}' has no tokenizer.json", path);
    return Tokenizer::from_json_file(tj.string());
  }
  GGUFFile f(path);  // the tokenizer lives in the metadata; no need to touch the weights
  return Tokenizer::from_gguf(f);
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::string cleaned = s;
  for (char& ch : cleaned)
    if (ch == '[' || ch == ']' || ch == ',') ch = ' ';
  std::istringstream in(cleaned);
  std::string tok;
  while (in >> tok) {
    char* end = nullptr;
    long v = std::strtol(tok.c_str(), &end, 10);
    LZ_CHECK(end && *end == 0, "not a token id: '{}'", tok);
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

void check_ids(const Tokenizer& t, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) LZ_CHECK(id >= 0 && id < t.vocab_size(), "token id {} is out of range [0, {})", id, t.vocab_size());
}

void cmd_tokenize(const std::string& model_arg, const std::string& tokenizer_json, bool jsonl, bool decode, bool bos) {
  Tokenizer t = load_tokenizer(model_arg, tokenizer_json);
  if (!jsonl) {
    std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    if (decode) {
      auto ids = parse_ids(input);
      check_ids(t, ids);
      std::cout << t.decode(ids);
    } else {
      std::cout << nlohmann::json(t.encode(input, bos)).dump() << "\n";
    }
    return;
  }
  std::string line;
  size_t lineno = 0;
  while (std::getline(std::cin, line)) {
    ++lineno;
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception&) {
      fail("stdin line {}: not valid JSON", lineno);
    }
    if (decode) {
      LZ_CHECK(j.is_array(), "stdin line {}: expected a JSON array of token ids", lineno);
      std::vector<int32_t> ids;
      for (auto& v : j) {
        LZ_CHECK(v.is_number_integer(), "stdin line {}: expected integer token ids", lineno);
        ids.push_back(v.get<int32_t>());
      }
      check_ids(t, ids);
      std::cout << nlohmann::json(t.decode(ids)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    } else {
      LZ_CHECK(j.is_string(), "stdin line {}: expected a JSON string", lineno);
      std::cout << nlohmann::json(t.encode(j.get<std::string>(), bos)).dump() << "\n";
    }
  }
}

// ---- generate ---------------------------------------------------------------------------------
struct GenerateArgs {
  std::string model, prompt, prompt_file, system;
  int n = 256, threads = 0, top_k = 40;
  int64_t ctx = 0;
  float temp = 0.8f, top_p = 0.95f, repeat_penalty = 1.0f;
  uint64_t seed = 0;
  bool seed_set = false, chat = false, quiet = false, exact = false;
  std::string save_state, load_state;  // --save-state / --load-state FILE
  std::string teacher;                 // --teacher: where a Lizard checkpoint's teacher lives now
  std::string device = "cpu";          // cpu | cuda
  int batch = 1;                       // cuda: sequences of the same prompt, seeds seed, seed+1, ...
};

// --device cuda: the same sampling, streaming and stop logic (generate/generate.h) on the GPU model.
// state: the CPU form of the sequence (generate/state_io.h): a loaded one is continued on the GPU, and
// with --save-state the GPU's final state comes back into it. Returns the stats of a single sequence.
std::optional<GenerateStats> generate_cuda(const GenerateArgs& a, const LoadedModel& lm, const Tokenizer& tok,
                                           const std::string& prompt, const std::vector<int32_t>& ids,
                                           const GenerateOptions& go, LlamaState& state) {
  cuda::CudaModel gm(lm);
  // Softmax layers' caches are sized for what this run can reach; all-Lizard models hold no cache.
  const int64_t ctx = std::min<int64_t>(lm.model->context_length(),
                                        state.n_past() + static_cast<int64_t>(ids.size()) + std::max(a.n, 1));
  const std::string gpu = cuda::device_name();
  if (a.batch == 1) {
    CudaSequence seq(gm, ctx);
    if (state.n_past() > 0) seq.upload(state);
    if (!a.chat && !a.quiet) std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    std::fflush(stdout);
    GenerateStats st = generate(seq, ids, go, [&tok](int32_t id) { return tok.token_bytes(id); }, tok.eos_id(),
                                [](int32_t, std::string_view text) {
                                  std::fwrite(text.data(), 1, text.size(), stdout);
                                  std::fflush(stdout);
                                  return true;
                                });
    std::fputc('\n', stdout);
    std::fprintf(stderr, "[%lld prompt tokens at %.1f tok/s, %lld generated at %.1f tok/s, stop: %s; %s, %.1f MiB "
                 "weights, %.1f MiB sequence state]\n",
                 static_cast<long long>(st.prompt_tokens), st.prefill_tokens_per_s(),
                 static_cast<long long>(st.new_tokens), st.decode_tokens_per_s(), st.stop_reason.c_str(), gpu.c_str(),
                 static_cast<double>(gm.weight_bytes()) / 1048576.0, static_cast<double>(seq.batch().bytes()) / 1048576.0);
    if (!a.save_state.empty()) seq.download(state);
    return st;
  }
  CudaBatchModel bm(gm, a.batch, ctx);
  std::vector<uint64_t> seeds;
  for (int i = 0; i < a.batch; ++i) seeds.push_back(go.sampling.seed + static_cast<uint64_t>(i));
  std::vector<std::string> texts(static_cast<size_t>(a.batch));
  const BatchGenerateStats bs =
      generate_batch(bm, ids, go, seeds, [&tok](int32_t id) { return tok.token_bytes(id); }, tok.eos_id(),
                     [&](int slot, int32_t, std::string_view text) {
                       texts[static_cast<size_t>(slot)].append(text);
                       return true;
                     });
  for (int i = 0; i < a.batch && !a.quiet; ++i) {
    const GenerateStats& s = bs.sequences[static_cast<size_t>(i)];
    std::printf("--- sequence %d (seed %llu, %lld tokens, stop: %s) ---\n", i,
                static_cast<unsigned long long>(seeds[static_cast<size_t>(i)]), static_cast<long long>(s.new_tokens),
                s.stop_reason.c_str());
    if (!a.chat) std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    std::printf("%s\n", texts[static_cast<size_t>(i)].c_str());
  }
  std::fflush(stdout);
  std::fprintf(stderr, "[%d sequences of %zu prompt tokens: prefill %.1f tok/s (once, copied to every slot), decode "
               "%.1f tok/s summed over the batch (%lld tokens in %lld steps); %s, %.1f MiB weights, %.1f MiB batch "
               "state]\n",
               a.batch, ids.size(), bs.sequences.front().prefill_tokens_per_s(), bs.decode_tokens_per_s(),
               static_cast<long long>(bs.decoded_tokens), static_cast<long long>(bs.batch_steps), gpu.c_str(),
               static_cast<double>(gm.weight_bytes()) / 1048576.0, static_cast<double>(bm.batch().bytes()) / 1048576.0);
  return std::nullopt;
}

std::string read_stdin() { return std::string((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>()); }

void cmd_generate(const GenerateArgs& a) {
  std::string prompt = a.prompt;
  if (!a.prompt_file.empty()) {
    std::ifstream in(a.prompt_file, std::ios::binary);
    LZ_CHECK(in.good(), "cannot read prompt file '{}'", a.prompt_file);
    prompt.assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  } else if (prompt.empty()) {
    prompt = read_stdin();
  }
  LZ_CHECK(!prompt.empty() || !a.load_state.empty(), "empty prompt: give -p TEXT, -f FILE or text on stdin");
  LZ_CHECK(a.device == "cpu" || a.device == "cuda", "--device must be cpu or cuda, got '{}'", a.device);
  LZ_CHECK(a.batch == 1 || a.device == "cuda", "--batch is for --device cuda");
  LZ_CHECK(a.batch == 1 || (a.load_state.empty() && a.save_state.empty()),
           "--save-state and --load-state work with one sequence (--batch 1)");

  ModelOptions mo;
  mo.n_threads = a.threads;
  mo.context = a.ctx;
  mo.exact = a.exact;
  const LoadedModel lm = load_model(a.model, mo, a.teacher);  // a teacher or a Lizard checkpoint
  const auto& ck = lm.teacher;
  LZ_CHECK(ck->tokenizer != nullptr, "model '{}' has no tokenizer", ck->path);
  const Tokenizer& tok = *ck->tokenizer;
  const LlamaModel& model = *lm.model;
  // --load-state: continue a saved conversation; the new prompt is appended to it.
  LlamaState state = model.new_state();
  SavedSequence saved;
  if (!a.load_state.empty()) saved = load_state(a.load_state, model, state);

  GenerateOptions go;
  go.max_new_tokens = a.n;
  go.sampling.temperature = a.temp;
  go.sampling.top_k = a.top_k;
  go.sampling.top_p = a.top_p;
  go.sampling.repetition_penalty = a.repeat_penalty;
  go.sampling.seed = a.seed_set ? a.seed : std::random_device{}();

  std::vector<int32_t> ids;
  if (a.chat) {
    const ChatTemplate& tmpl = ck->chat_template;
    LZ_CHECK(tmpl.format != ChatFormat::Unknown,
             "model '{}' has no chat template lizard knows (ChatML, Llama-3, Llama-2); drop --chat", ck->path);
    std::vector<ChatMessage> msgs;
    if (!a.system.empty()) msgs.push_back({"system", a.system});
    msgs.push_back({"user", prompt});
    if (a.load_state.empty()) {
      // The template writes BOS itself where the model wants one.
      ids = tok.encode(tmpl.render(msgs, /*add_generation_prompt=*/true), /*add_bos=*/false);
    } else {
      // A further turn: no BOS, no default system message. An answer cut off by -n is closed
      // first; ChatML separates turns with a newline.
      ChatTemplate turn = tmpl;
      turn.default_system.clear();
      turn.bos_text.clear();
      const auto stops = chat_stop_ids(tok, tmpl);
      std::string text;
      if (!saved.tokens.empty() && std::find(stops.begin(), stops.end(), saved.tokens.back()) == stops.end() &&
          !tmpl.stop_texts().empty())
        text = tmpl.stop_texts().front();
      if (turn.format == ChatFormat::ChatML) text += "\n";
      ids = tok.encode(text + turn.render(msgs, true), false);
    }
    go.stop_ids = chat_stop_ids(tok, tmpl);
  } else {
    ids = tok.encode(prompt, /*add_bos=*/a.load_state.empty());
  }
  const std::vector<int32_t> run = continuation(saved, state, ids);  // saved tokens not yet run first
  LZ_CHECK(!run.empty(), "nothing to continue from in '{}': give a prompt", a.load_state);
  LZ_CHECK(state.n_past() + static_cast<int64_t>(run.size()) < model.context_length(),
           "prompt has {} tokens, the context is {} (raise it with --ctx)", state.n_past() + run.size(),
           model.context_length());

  GenerateStats st;
  if (a.device == "cuda") {
    const std::optional<GenerateStats> one = generate_cuda(a, lm, tok, prompt, run, go, state);
    if (!one) return;  // a batch: nothing to save
    st = *one;
  } else {
    if (!a.chat && !a.quiet) {
      std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    }
    std::fflush(stdout);
    st = generate(model, state, tok, run, go, [](int32_t, std::string_view text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::fputc('\n', stdout);
    std::fprintf(stderr, "[%lld prompt tokens at %.1f tok/s, %lld generated at %.1f tok/s, stop: %s]\n",
                 static_cast<long long>(st.prompt_tokens), st.prefill_tokens_per_s(),
                 static_cast<long long>(st.new_tokens), st.decode_tokens_per_s(), st.stop_reason.c_str());
  }
  if (!a.save_state.empty()) {
    // The whole context: what was loaded, the prompt and the generated tokens.
    saved.tokens.insert(saved.tokens.end(), ids.begin(), ids.end());
    saved.tokens.insert(saved.tokens.end(), st.tokens.begin(), st.tokens.end());
    saved.seed = go.sampling.seed;
    save_state(a.save_state, model, state, saved);
    std::fprintf(stderr, "[state saved to %s: %zu tokens, %.2f MiB]\n", a.save_state.c_str(), saved.tokens.size(),
                 static_cast<double>(std::filesystem::file_size(a.save_state)) / 1048576.0);
  }
}

// ---- serve: OpenAI-compatible HTTP API ----------------------------------------------------------
struct ServeArgs {
  std::string model, host = "127.0.0.1", alias;
  int port = 8080, parallel = 1, threads = 0;
  int64_t ctx = 0;
  bool quiet = false;
  std::string teacher;
};

int g_stop_pipe[2] = {-1, -1};
void on_stop_signal(int) {
  const char c = 1;
  [[maybe_unused]] const ssize_t r = ::write(g_stop_pipe[1], &c, 1);
}

void cmd_serve(const ServeArgs& a) {
  ModelOptions mo;
  mo.context = a.ctx;
  const LoadedModel lm = load_model(a.model, mo, a.teacher);
  auto model = lm.model;
  ServerOptions so;
  so.host = a.host;
  so.port = a.port;
  so.parallel = a.parallel;
  so.threads = a.threads;
  so.model_name = a.alias;
  if (so.model_name.empty() && lm.is_lizard())  // default: the checkpoint's name, not the teacher's
    so.model_name = fs::path(lm.lizard_file).parent_path().filename().string();
  so.log = !a.quiet;
  // Ctrl-C / SIGTERM stop cleanly: the handler (on whichever thread: OpenBLAS and OpenMP threads
  // exist already) writes to a pipe this thread waits on. An inherited "ignore SIGINT" (a
  // background job of a script) is kept.
  LZ_CHECK(::pipe2(g_stop_pipe, O_CLOEXEC) == 0, "cannot create a pipe: {}", std::strerror(errno));
  struct sigaction sa {}, old {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGINT, nullptr, &old) == 0 && old.sa_handler != SIG_IGN) sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  Server server(model, so);
  const int port = server.bind();
  server.start();
  std::fprintf(stderr, "lizard: serving %s as '%s' on http://%s:%d (%d slot%s, %d threads each, context %lld)\n",
               lm.path.c_str(), server.model_name().c_str(), a.host.c_str(), port, a.parallel,
               a.parallel == 1 ? "" : "s", model->n_threads(), static_cast<long long>(model->context_length()));
  char c = 0;
  while (::read(g_stop_pipe[0], &c, 1) < 0 && errno == EINTR) {
  }
  std::fprintf(stderr, "lizard: stopping\n");
  server.stop();
}

// ---- debug-logits: full-vocabulary logits and greedy ids, for parity checks against other tools ----
void cmd_debug_logits(const std::string& model_arg, const std::string& teacher, const std::string& prompts_json,
                      const std::string& out_dir, int greedy_n) {
  std::ifstream in(prompts_json);
  LZ_CHECK(in.good(), "cannot read '{}'", prompts_json);
  nlohmann::json prompts = nlohmann::json::parse(in);
  ModelOptions mo;
  mo.exact = true;  // parity checks compare arithmetic, not the 8-bit fast path
  const LoadedModel lm = load_model(model_arg, mo, teacher);
  const LlamaModel& model = *lm.model;
  fs::create_directories(out_dir);
  for (auto& p : prompts) {
    auto name = p.at("name").get<std::string>();
    auto ids = p.at("ids").get<std::vector<int32_t>>();
    LlamaState st = model.new_state();
    auto logits = model.forward(ids, 0, st, /*all_logits=*/true);
    std::ofstream(fs::path(out_dir) / (name + ".logits.f32"), std::ios::binary)
        .write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
    GenerateOptions go;
    go.max_new_tokens = greedy_n;
    go.sampling.temperature = 0;
    go.stop_at_eos = false;
    LlamaState st2 = model.new_state();
    auto gs = generate(model, st2, ids, go, [](int32_t) { return std::string(); }, std::nullopt);
    std::ofstream(fs::path(out_dir) / (name + ".greedy.json")) << nlohmann::json(gs.tokens).dump() << "\n";
    fmt::print("{}: {} tokens\n", name, ids.size());
  }
}

// ---- init-lizard: a freshly initialised (untrained) Lizard checkpoint ---------------------------
void cmd_init_lizard(const std::string& model_arg, const std::string& out, const std::string& config_file, uint64_t seed) {
  const std::string teacher = fs::absolute(model_or_default(model_arg)).lexically_normal().string();
  const Checkpoint ck = open_checkpoint(teacher);
  LizardConfig c;
  if (!config_file.empty()) {
    std::ifstream in(config_file);
    LZ_CHECK(in.good(), "cannot read '{}'", config_file);
    c = lizard_config_from_string(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()));
  }
  require_lizard_layers(c, ck.config.n_layers, "init-lizard");
  LizardCheckpoint lz = init_lizard_checkpoint(c, ck.config, seed);
  lz.teacher = fingerprint_teacher(teacher);
  save_lizard_dir(out, lz);
  fmt::print("wrote {}\n{}", (fs::path(out) / kLizardCheckpointFile).string(), describe_lizard_checkpoint(lz));
}

// --device of every subcommand that has one: cpu or cuda (whether CUDA was built in is checked later).
CLI::Option* add_device_option(CLI::App* app, std::string& device, const char* help) {
  return app->add_option("--device", device, help)->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
}

// --batch of generate and bench-generate: sequences decoded together on the GPU.
CLI::Option* add_decode_batch_option(CLI::App* app, int& batch, const char* help) {
  return app->add_option("--batch", batch, help)->capture_default_str()->check(CLI::Range(1, 4096));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lizard: linearize Llama-family LLMs and generate with constant memory"};
  app.require_subcommand(1);
  // One line for a bad flag, as for every other error.
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return std::string("lizard: error: ") + e.what() + " (see --help)\n";
  });
  app.set_version_flag("--version", "lizard 0.1.0");

  std::string model;
  auto* info = app.add_subcommand("info", "Describe a model: architecture, size, tensor types, tokenizer");
  info->add_option("model", model,
                   "GGUF file, Hugging Face directory or Lizard checkpoint directory (default: the bundled teacher)");
  info->add_option("-m,--model", model, "same as the positional MODEL");
  std::string teacher;
  info->add_option("--teacher", teacher, "teacher of a Lizard checkpoint, if moved from its recorded path");

  std::string tokenizer_json;
  bool jsonl = false, decode = false, bos = false;
  auto* tok = app.add_subcommand("tokenize", "Text on stdin -> token ids (or back with --decode)");
  tok->add_option("-m,--model", model, "model whose tokenizer to use (default: the bundled teacher)");
  tok->add_option("--tokenizer", tokenizer_json, "a tokenizer.json file instead of a model")->check(CLI::ExistingFile);
  tok->add_flag("--jsonl", jsonl, "each input line is a JSON string; each output line a JSON array of ids");
  tok->add_flag("--decode", decode, "ids -> text");
  tok->add_flag("--bos", bos, "add the BOS token where the tokenizer's config adds it");

  GenerateArgs g;
  auto* gen = app.add_subcommand("generate", "Generate text, streaming tokens as they come");
  gen->add_option("-m,--model", g.model,
                  "GGUF file, Hugging Face directory or Lizard checkpoint directory (default: the bundled teacher)");
  gen->add_option("--teacher", g.teacher, "teacher of a Lizard checkpoint, if moved from its recorded path");
  gen->add_option("-p,--prompt", g.prompt, "prompt text (default: -f FILE or stdin)");
  gen->add_option("-f,--file", g.prompt_file, "read the prompt from a file");
  gen->add_option("-n,--n-predict", g.n, "tokens to generate")->capture_default_str()->check(CLI::Range(0, 1 << 30));
  gen->add_option("--temp", g.temp, "sampling temperature; 0 = greedy")->capture_default_str()->check(CLI::Range(0, 1 << 30));
  gen->add_option("--top-k", g.top_k, "keep the k most likely tokens (0 = all)")->capture_default_str();
  gen->add_option("--top-p", g.top_p, "nucleus sampling threshold")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  gen->add_option("--repeat-penalty", g.repeat_penalty, "repetition penalty (1 = off)")->capture_default_str();
  gen->add_option("--seed", g.seed, "random seed (default: random)")->each([&](const std::string&) { g.seed_set = true; });
  gen->add_flag("--chat", g.chat, "wrap the prompt in the model's own chat template");
  gen->add_option("--system", g.system, "system message for --chat (default: the template's own)");
  gen->add_option("-t,--threads", g.threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 1 << 30));
  gen->add_option("--ctx", g.ctx, "context length (default: the model's)")->check(CLI::Range(0, 1 << 30));
  gen->add_flag("--exact", g.exact, "fp32 activations in decoding (matches reference implementations; slower)");
  gen->add_flag("-q,--quiet", g.quiet, "do not echo the prompt (--batch: print only the timing)");
  add_device_option(gen, g.device, "cpu or cuda (the GPU model: bf16 weights, fp32 accumulation)");
  add_decode_batch_option(gen, g.batch, "with --device cuda: N sequences of the prompt in one batch, seeds seed..seed+N-1");
  gen->add_option("--save-state", g.save_state, "after generating, save the whole context (prompt + output) to FILE");
  gen->add_option("--load-state", g.load_state, "continue the context saved in FILE; the prompt is appended")
      ->check(CLI::ExistingFile);

  ServeArgs sv;
  auto* serve = app.add_subcommand("serve", "OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)");
  serve->add_option("-m,--model", sv.model,
                    "GGUF file, Hugging Face directory or Lizard checkpoint directory (default: the bundled teacher)");
  serve->add_option("--teacher", sv.teacher, "teacher of a Lizard checkpoint, if moved from its recorded path");
  serve->add_option("--host", sv.host, "address to listen on")->capture_default_str();
  serve->add_option("--port", sv.port, "port (0: any free one)")->capture_default_str()->check(CLI::Range(0, 65535));
  serve->add_option("--parallel", sv.parallel, "requests generated at once (more wait)")->capture_default_str()
      ->check(CLI::Range(1, 256));
  serve->add_option("-t,--threads", sv.threads, "CPU threads in all, shared by the slots (default: all cores)")
      ->check(CLI::Range(0, 1 << 30));
  serve->add_option("--ctx", sv.ctx, "context length (default: the model's)")->check(CLI::Range(0, 1 << 30));
  serve->add_option("--alias", sv.alias, "model id in the API (default: the model file's name)");
  serve->add_flag("-q,--quiet", sv.quiet, "do not log requests");

  std::string prompts_json, out_dir;
  int greedy_n = 64;
  auto* dbg = app.add_subcommand("debug-logits", "Write all-position logits and greedy ids (parity checks)");
  dbg->group("");  // for developers: not listed in --help
  dbg->add_option("-m,--model", model, "model");
  dbg->add_option("--teacher", teacher, "teacher of a Lizard checkpoint, if moved");
  dbg->add_option("--prompts", prompts_json, "JSON [{name, ids}]")->required();
  dbg->add_option("--out", out_dir, "output folder")->required();
  dbg->add_option("--greedy", greedy_n, "greedy tokens to generate");

  // ---- eval: the paper's measurements (src/eval) ----
  EvalArgs ea;
  auto* ev = app.add_subcommand("eval", "Evaluate: ppl, kl, passkey, mqar, mc (or --compare result files)");
  ev->add_option("task", ea.task, "ppl | kl | passkey | mqar | mc");
  ev->add_option("data", ea.data, "text files/folders (ppl, kl) or the JSONL file (mc); same as --data");
  ev->add_option("-m,--model", ea.model, "model to evaluate, the teacher for kl (default: the bundled teacher)");
  ev->add_option("--student", ea.student, "second model: the student for kl; other tasks evaluate it too");
  ev->add_option("--name", ea.name, "label of -m in reports (default: its file name)");
  ev->add_option("--student-name", ea.student_name, "label of --student in reports");
  ev->add_option("-d,--data", ea.data, "text files/folders (ppl, kl) or the JSONL file (mc)");
  ev->add_option("--out", ea.out_dir, "folder for the JSON and markdown results")->capture_default_str();
  ev->add_option("--compare", ea.compare, "print these result JSON files side by side (no task)")->expected(1, -1);
  ev->add_option("--ctx", ea.ctx, "ppl/kl window length in tokens (default: min(2048, model context))");
  ev->add_option("--stride", ea.stride, "ppl/kl window advance (default: ctx / 2)");
  ev->add_option("--max-tokens", ea.max_tokens, "ppl/kl: read at most this many tokens of text (0: all)");
  ev->add_option("--lengths", ea.lengths, "passkey prompt lengths in tokens")->delimiter(',')->capture_default_str();
  ev->add_option("--depths", ea.depths, "passkey depths in percent")->delimiter(',')->capture_default_str();
  ev->add_option("--samples", ea.samples, "prompts per passkey cell / MQAR setting")->capture_default_str();
  ev->add_option("--pairs", ea.pairs, "MQAR key-value pairs")->delimiter(',')->capture_default_str();
  ev->add_option("--seq-len", ea.seq_lens, "MQAR prompt lengths in tokens, padded with filler (0: none)")
      ->delimiter(',')->capture_default_str();
  ev->add_option("--queries", ea.queries, "MQAR keys asked per prompt (0: all)");
  ev->add_option("--keys", ea.keys, "MQAR keys: letters | words")->capture_default_str();
  ev->add_option("--task-format", ea.task_format, "mc: mmlu | piqa | arc | hellaswag | winogrande");
  ev->add_option("--shots", ea.shots, "mc: few-shot examples (MMLU: 5)");
  ev->add_option("--fewshot-file", ea.fewshot_file, "mc: JSONL of labelled examples (e.g. MMLU dev)");
  ev->add_option("--limit", ea.limit, "mc: score only the first N documents");
  ev->add_flag("--bos", ea.bos, "mc: start each request with BOS (lm-eval's default adds none)");
  ev->add_option("--seed", ea.seed, "seed of the synthetic prompts")->capture_default_str();
  ev->add_option("-t,--threads", ea.threads, "CPU threads (default: all cores)");
  add_device_option(ev, ea.device, "cpu or cuda (GPU logits, same windows and metrics)");
  ev->add_flag("-q,--quiet", ea.quiet, "no progress lines");
  ev->add_option("--teacher", ea.teacher, "teacher of Lizard checkpoints (-m/--student), if moved");

  std::string init_out, init_config;
  uint64_t init_seed = 0;
  auto* initl = app.add_subcommand("init-lizard", "Write a freshly initialised (untrained) Lizard checkpoint");
  initl->group("");  // for tests, demos and as training's starting point: not listed in --help
  initl->add_option("-m,--model", model, "teacher: GGUF file or Hugging Face directory (default: the bundled one)");
  initl->add_option("--out", init_out, "checkpoint directory to write")->required();
  initl->add_option("--config", init_config, "Lizard config JSON (default: LIZARD.md's defaults)")
      ->check(CLI::ExistingFile);
  initl->add_option("--seed", init_seed, "initialisation seed")->capture_default_str();

  // ---- bench generate: speed and memory against the context length (src/generate/bench_generate) ----
  BenchGenerateArgs bg;
  auto* bench = app.add_subcommand("bench", "Measure: generate (speed and memory against the context length)");
  bench->require_subcommand(1);
  auto* bgen = bench->add_subcommand("generate", "Prefill/decode tokens/s, state memory and peak RSS, teacher vs Lizard");
  bgen->add_option("-m,--model", bg.model, "teacher: GGUF file or Hugging Face directory (default: the bundled one)");
  bgen->add_option("--lizard", bg.lizard, "Lizard checkpoint (default: an untrained all-layer one, made in a temp dir)");
  bgen->add_option("--teacher", bg.teacher, "teacher of --lizard, if moved from its recorded path");
  bgen->add_option("--contexts", bg.contexts, "tokens to prefill")->delimiter(',')->capture_default_str()
      ->check(CLI::PositiveNumber);
  bgen->add_option("--decode", bg.decode, "single-token steps timed after each prefill")->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  bgen->add_option("--out", bg.out, "folder for bench_generate.{json,md,png}")->capture_default_str();
  bgen->add_option("--time-limit", bg.time_limit, "seconds per (model, context) run; longer ones are killed")
      ->capture_default_str()->check(CLI::PositiveNumber);
  bgen->add_option("-t,--threads", bg.threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 1 << 30));
  bgen->add_option("--seed", bg.seed, "seed of the random prompt tokens")->capture_default_str();
  bgen->add_flag("-q,--quiet", bg.quiet, "no progress lines");
  add_device_option(bgen, bg.device, "cpu or cuda (GPU: device memory, batched decode)");
  add_decode_batch_option(bgen, bg.batch, "with --device cuda: sequences decoded together");
  bgen->add_option("--shape", bg.shape,
                   "with --device cuda: smollm2 | llama3-8b, a synthetic model of that shape with random weights "
                   "(speed and memory only; default: the model's own)");

  // ---- linearize: stage 1 attention transfer (src/train) ----
  LinearizeArgs la;
  auto* lin = app.add_subcommand("linearize", "Linearize a teacher: stage 1 attention transfer, stage 2 LoRA fine-tuning");
  lin->add_option("--teacher", la.teacher, "teacher: GGUF file or Hugging Face directory (default: the bundled one)");
  lin->add_option("--data", la.data, "text / JSONL files or folders to train on")->expected(1, -1)->required();
  lin->add_option("--out", la.out, "output folder: the Lizard model, training state, log.jsonl, loss.png")->required();
  lin->add_option("--config", la.config,
                  "Lizard layer config (JSON; default: LIZARD.md's defaults; \"lizard_layers\": \"none\" with "
                  "--stage 2: LoRA on the teacher itself)")
      ->check(CLI::ExistingFile);
  lin->add_option("--stage", la.stage,
                  "1: attention transfer; 2: LoRA fine-tuning (from --teacher when it is a Lizard model); "
                  "both: 1 into OUT/stage1, then 2 into OUT")
      ->capture_default_str();
  lin->add_option("--lora-rank", la.lora_rank, "stage 2: LoRA rank")->capture_default_str()->check(CLI::Range(1, 64));
  lin->add_option("--lora-alpha", la.lora_alpha, "stage 2: LoRA alpha (delta = alpha/rank B A)")->capture_default_str();
  lin->add_option("--lora-targets", la.lora_targets, "stage 2: projections with LoRA (of q,k,v)")->capture_default_str();
  lin->add_option("--lr2", la.lr2, "stage 2: peak learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  lin->add_flag("--recompute", la.recompute, "stage 2: recompute each layer's activations in the backward (less memory)");
  lin->add_flag("--train-lizard", la.train_lizard, "stage 2: also train the Lizard parameters");
  lin->add_option("--steps", la.steps, "optimizer steps (default: 20M tokens' worth)")->check(CLI::PositiveNumber);
  lin->add_option("--tokens", la.tokens, "training tokens instead of --steps")->check(CLI::PositiveNumber);
  lin->add_option("--seq-len", la.seq_len, "tokens per sequence")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  lin->add_option("--batch", la.batch, "sequences per step")->capture_default_str()->check(CLI::PositiveNumber);
  lin->add_option("--lr", la.lr, "peak learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  lin->add_option("--weight-decay", la.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  lin->add_option("--clip", la.clip, "global gradient-norm clip (0: off)")->capture_default_str();
  lin->add_option("--warmup", la.warmup, "fraction of steps of linear warm-up")->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  lin->add_option("--final-lr", la.final_lr, "cosine decay ends at this fraction of --lr")->capture_default_str();
  add_device_option(lin, la.device, "cpu or cuda");
  lin->add_flag("--resume", la.resume, "continue the run saved in --out (same optimizer state, data position, RNG)");
  lin->add_option("--save-every", la.save_every, "checkpoint every N steps (0: at the end and on Ctrl-C)");
  lin->add_option("--eval-every", la.eval_every, "held-out loss every N steps (0: at the end)");
  lin->add_option("--val-seqs", la.val_seqs, "held-out sequences for the held-out loss")->capture_default_str();
  lin->add_option("--eval-tokens", la.eval_tokens, "held-out tokens for the final perplexity and KL (0: skip)")
      ->capture_default_str();
  lin->add_option("--val-fraction", la.val_fraction, "share of documents held out")->capture_default_str()
      ->check(CLI::Range(0.0, 0.5));
  lin->add_option("--max-data-tokens", la.max_data_tokens, "read at most about this many tokens of data (0: all)");
  lin->add_option("--seed", la.seed, "seed of the initialisation and the data order")->capture_default_str();
  lin->add_option("-t,--threads", la.threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 1 << 30));
  lin->add_flag("-q,--quiet", la.quiet, "no progress lines");

  std::string exp_dir, exp_out, exp_dtype = "f32", exp_teacher;
  auto* exp = app.add_subcommand("export", "Write a Lizard checkpoint as a standalone model directory");
  exp->add_option("--merge-lora", exp_dir, "Lizard checkpoint directory; its LoRA is merged into W_q, W_k, W_v")
      ->required();
  exp->add_option("--out", exp_out, "new directory (config.json, model.safetensors, lizard.safetensors, tokenizer)")
      ->required();
  exp->add_option("--dtype", exp_dtype, "weights in the output: f32 (exact) or bf16")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  exp->add_option("--teacher", exp_teacher, "the teacher, if moved from the path the checkpoint records");

  try {
    app.parse(argc, argv);
    if (*exp) {
      ExportOptions eo;
      eo.dtype = exp_dtype == "bf16" ? DType::BF16 : DType::F32;
      eo.teacher = exp_teacher;
      std::printf("%s\n", export_merged(exp_dir, exp_out, eo).c_str());
      return 0;
    }
    if (*info) cmd_info(model, teacher);
    else if (*tok) cmd_tokenize(model, tokenizer_json, jsonl, decode, bos);
    else if (*gen) cmd_generate(g);
    else if (*serve) cmd_serve(sv);
    else if (*dbg) cmd_debug_logits(model, teacher, prompts_json, out_dir, greedy_n);
    else if (*ev) run_eval(ea);
    else if (*lin) return run_linearize(la);
    else if (*initl) cmd_init_lizard(model, init_out, init_config, init_seed);
    else if (*bgen) return run_bench_generate_cli(bg);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const Error& e) {
    std::fprintf(stderr, "lizard: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "lizard: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lizard: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
