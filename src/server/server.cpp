#include "server/server.h"

#include <httplib.h>
#include <omp.h>
#include <signal.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "generate/generate.h"
#include "util/error.h"

namespace lizard {

namespace {

using json = nlohmann::json;

// Invalid UTF-8 (a model may emit any bytes) becomes U+FFFD instead of throwing.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// A request the client got wrong: answered with 400 (or `status`) and an OpenAI error object.
struct BadRequest : Error {
  std::string param, code;
  int status;
  BadRequest(std::string msg, std::string param_ = {}, std::string code_ = "invalid_request", int status_ = 400)
      : Error(std::move(msg)), param(std::move(param_)), code(std::move(code_)), status(status_) {}
};

json error_body(const std::string& message, const std::string& type, const std::string& param,
                const std::string& code) {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& param = {},
                const std::string& code = {}) {
  const char* type = status >= 500 ? "server_error" : status == 404 ? "not_found_error" : "invalid_request_error";
  res.status = status;
  res.set_content(dump(error_body(message, type, param, code)), "application/json");
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

[[noreturn]] void wrong_type(const std::string& key, const char* want, const json& v) {
  throw BadRequest(fmt::format("'{}' must be {}, got {}", key, want, type_name(v)), key, "invalid_type");
}

// What a request asks for, validated.
struct Request {
  bool chat = false;
  std::string prompt;
  std::optional<std::vector<int32_t>> prompt_ids;  // a prompt given as token ids
  std::vector<ChatMessage> messages;
  std::optional<int64_t> max_tokens;
  double temperature = 1.0, top_p = 1.0, repetition_penalty = 1.0;
  int top_k = 0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false, include_usage = false, ignore_eos = false;
};

std::string text_content(const json& c, const std::string& key) {
  if (c.is_null()) return {};
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) wrong_type(key, "a string or an array of content parts", c);
  std::string out;
  for (const auto& part : c) {
    if (!part.is_object()) wrong_type(key, "an array of content parts", part);
    auto t = part.find("type");
    if (t == part.end() || !t->is_string() || *t != "text")
      throw BadRequest(fmt::format("'{}': only text content parts are supported", key), key, "unsupported");
    auto tx = part.find("text");
    if (tx == part.end() || !tx->is_string()) wrong_type(key + ".text", "a string", tx == part.end() ? json() : *tx);
    out += tx->get<std::string>();
  }
  return out;
}

Request parse_request(const json& body, bool chat) {
  if (!body.is_object()) throw BadRequest("the request body must be a JSON object", "", "invalid_json");
  Request r;
  r.chat = chat;
  bool have_input = false;
  auto number = [](const std::string& k, const json& v) {
    if (!v.is_number()) wrong_type(k, "a number", v);
    return v.get<double>();
  };
  auto integer = [](const std::string& k, const json& v) {
    if (!v.is_number_integer()) wrong_type(k, "an integer", v);
    return v.get<int64_t>();
  };
  auto boolean = [](const std::string& k, const json& v) {
    if (!v.is_boolean()) wrong_type(k, "a boolean", v);
    return v.get<bool>();
  };
  auto string = [](const std::string& k, const json& v) {
    if (!v.is_string()) wrong_type(k, "a string", v);
    return v.get<std::string>();
  };
  auto unsupported = [](const std::string& k, const std::string& what) {
    throw BadRequest(fmt::format("'{}': {} is not supported by this server", k, what), k, "unsupported");
  };
  auto token_ids = [](const std::string& k, const json& v) {
    std::vector<int32_t> ids;
    for (const auto& x : v) {
      if (!x.is_number_integer()) wrong_type(k, "a string, an array of one string or an array of token ids", v);
      const auto id = x.get<int64_t>();
      if (id < 0 || id > INT32_MAX) throw BadRequest(fmt::format("'{}': token id {} is out of range", k, id), k);
      ids.push_back(static_cast<int32_t>(id));
    }
    return ids;
  };

  for (const auto& [k, v] : body.items()) {
    if (v.is_null() && k != "prompt" && k != "messages") continue;  // null: the default
    if (k == "model") {
      string(k, v);  // one model per server: any name is accepted
    } else if (k == "prompt" && !chat) {
      have_input = true;
      if (v.is_string()) {
        r.prompt = v.get<std::string>();
      } else if (v.is_array()) {
        if (v.empty()) throw BadRequest("'prompt' is an empty array", k);
        if (v[0].is_number_integer()) {
          r.prompt_ids = token_ids(k, v);
        } else {
          if (v.size() != 1)
            throw BadRequest(fmt::format("'prompt' has {} prompts; this server answers one per request", v.size()), k,
                             "unsupported");
          if (v[0].is_string()) r.prompt = v[0].get<std::string>();
          else if (v[0].is_array() && !v[0].empty()) r.prompt_ids = token_ids(k, v[0]);
          else wrong_type(k, "a string, an array of one string or an array of token ids", v[0]);
        }
      } else {
        wrong_type(k, "a string or an array of strings", v);
      }
    } else if (k == "messages" && chat) {
      have_input = true;
      if (!v.is_array()) wrong_type(k, "an array of messages", v);
      if (v.empty()) throw BadRequest("'messages' is empty", k);
      for (size_t i = 0; i < v.size(); ++i) {
        const json& m = v[i];
        const std::string where = fmt::format("messages[{}]", i);
        if (!m.is_object()) wrong_type(where, "an object", m);
        auto role = m.find("role");
        if (role == m.end() || !role->is_string()) wrong_type(where + ".role", "a string", role == m.end() ? json() : *role);
        std::string rs = role->get<std::string>();
        if (rs == "developer") rs = "system";
        if (rs != "system" && rs != "user" && rs != "assistant")
          throw BadRequest(fmt::format("{}.role '{}' is not supported (system, user, assistant)", where, rs),
                           where + ".role", "unsupported");
        auto content = m.find("content");
        if (content == m.end()) throw BadRequest(fmt::format("{} has no content", where), where + ".content");
        if (auto tc = m.find("tool_calls"); tc != m.end() && !tc->is_null() && !tc->empty())
          unsupported(where + ".tool_calls", "tool calling");
        r.messages.push_back({rs, text_content(*content, where + ".content")});
      }
    } else if (k == "max_tokens" || k == "max_completion_tokens") {
      const int64_t n = integer(k, v);
      if (n <= 0) throw BadRequest(fmt::format("'{}' must be at least 1, got {}", k, n), k, "invalid_value");
      r.max_tokens = n;
    } else if (k == "temperature") {
      r.temperature = number(k, v);
      if (!(r.temperature >= 0 && r.temperature <= 2))
        throw BadRequest(fmt::format("'temperature' must be between 0 and 2, got {}", r.temperature), k, "invalid_value");
    } else if (k == "top_p") {
      r.top_p = number(k, v);
      if (!(r.top_p > 0 && r.top_p <= 1))
        throw BadRequest(fmt::format("'top_p' must be above 0 and at most 1, got {}", r.top_p), k, "invalid_value");
    } else if (k == "top_k") {  // extension
      const int64_t n = integer(k, v);
      if (n < 0 || n > INT32_MAX) throw BadRequest(fmt::format("'top_k' must be 0 (off) or more, got {}", n), k, "invalid_value");
      r.top_k = static_cast<int>(n);
    } else if (k == "repetition_penalty") {  // extension
      r.repetition_penalty = number(k, v);
      if (!(r.repetition_penalty > 0 && r.repetition_penalty <= 10))
        throw BadRequest("'repetition_penalty' must be above 0", k, "invalid_value");
    } else if (k == "ignore_eos") {  // extension
      r.ignore_eos = boolean(k, v);
    } else if (k == "seed") {
      r.seed = static_cast<uint64_t>(integer(k, v));
    } else if (k == "stop") {
      if (v.is_string()) {
        r.stop.push_back(v.get<std::string>());
      } else if (v.is_array()) {
        if (v.size() > 16) throw BadRequest("'stop' has more than 16 sequences", k, "invalid_value");
        for (const auto& s : v) r.stop.push_back(string(k, s));
      } else {
        wrong_type(k, "a string or an array of strings", v);
      }
      std::erase(r.stop, std::string());
    } else if (k == "n" || k == "best_of") {
      const int64_t n = integer(k, v);
      if (n != 1) throw BadRequest(fmt::format("'{}' must be 1 (one choice per request), got {}", k, n), k, "unsupported");
    } else if (k == "stream") {
      r.stream = boolean(k, v);
    } else if (k == "stream_options") {
      if (!v.is_object()) wrong_type(k, "an object", v);
      if (auto u = v.find("include_usage"); u != v.end() && !u->is_null()) r.include_usage = boolean(k + ".include_usage", *u);
    // Fields clients commonly send: checked, and accepted where they ask for nothing we lack.
    } else if (k == "user" || k == "service_tier" || k == "reasoning_effort") {
      string(k, v);
    } else if (k == "store" || k == "parallel_tool_calls") {
      boolean(k, v);
    } else if (k == "metadata") {
      if (!v.is_object()) wrong_type(k, "an object", v);
    } else if (k == "presence_penalty" || k == "frequency_penalty") {
      if (number(k, v) != 0) unsupported(k, "a non-zero value");
    } else if (k == "logprobs") {
      if (!v.is_boolean() && !v.is_number_integer()) wrong_type(k, "a boolean or an integer", v);
      if (v.is_boolean() ? v.get<bool>() : v.get<int64_t>() != 0) unsupported(k, "returning log probabilities");
    } else if (k == "top_logprobs") {
      if (integer(k, v) != 0) unsupported(k, "returning log probabilities");
    } else if (k == "logit_bias") {
      if (!v.is_object()) wrong_type(k, "an object", v);
      if (!v.empty()) unsupported(k, "a logit bias");
    } else if (k == "echo" && !chat) {
      if (boolean(k, v)) unsupported(k, "echoing the prompt");
    } else if (k == "suffix" && !chat) {
      if (!string(k, v).empty()) unsupported(k, "a suffix");
    } else if (k == "response_format") {
      if (!v.is_object()) wrong_type(k, "an object", v);
      if (v.value("type", json("text")) != "text") unsupported(k, "a response format other than text");
    } else if (k == "tools" || k == "functions") {
      if (!v.is_array()) wrong_type(k, "an array", v);
      if (!v.empty()) unsupported(k, "tool calling");
    } else if (k == "tool_choice" || k == "function_call") {
      if (!(v.is_string() || v.is_object())) wrong_type(k, "a string or an object", v);
      if (!(v.is_string() && (v == "none" || v == "auto"))) unsupported(k, "tool calling");
    } else {
      throw BadRequest(fmt::format("unrecognized request argument: '{}'", k), k, "unknown_parameter");
    }
  }
  if (!have_input)
    throw BadRequest(chat ? "'messages' is required" : "'prompt' is required", chat ? "messages" : "prompt",
                     "missing_required_parameter");
  return r;
}

// Cuts generated text at the first stop sequence. Text that could be the start of one is held back
// until it is known not to be, so a streaming client never sees part of a stop sequence.
class StopMatcher {
 public:
  explicit StopMatcher(const std::vector<std::string>& stops) : stops_(stops) {}
  // Adds text; `out` gets what may be emitted now. Returns true once a stop sequence is complete.
  bool push(std::string_view text, std::string& out) {
    held_ += text;
    size_t best = std::string::npos;
    for (const auto& s : stops_) best = std::min(best, held_.find(s));
    if (best != std::string::npos) {
      out = held_.substr(0, best);
      held_.clear();
      return true;
    }
    size_t keep = 0;
    for (const auto& s : stops_)
      for (size_t k = std::min(s.size() - 1, held_.size()); k > keep; --k)
        if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
          keep = k;
          break;
        }
    out = held_.substr(0, held_.size() - keep);
    held_.erase(0, held_.size() - keep);
    return false;
  }
  std::string flush() { return std::exchange(held_, {}); }

 private:
  const std::vector<std::string>& stops_;
  std::string held_;
};

struct Job {
  Request req;
  std::vector<int32_t> ids;
  GenerateOptions go;
  std::string id;
  int64_t created = 0;
};

struct Outcome {
  std::string text, finish = "length";
  int64_t prompt_tokens = 0, completion_tokens = 0;
  bool cancelled = false;
  json usage() const {
    return {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}};
  }
};

}  // namespace

struct Server::Impl {
  ServerOptions opt;
  std::shared_ptr<LlamaModel> model;
  const Tokenizer* tok = nullptr;
  const ChatTemplate* tmpl = nullptr;
  std::string name;
  httplib::Server http;
  std::vector<LlamaState> states;
  std::vector<int> free_slots;
  mutable std::mutex mu;
  std::condition_variable cv;
  std::atomic<bool> stopping{false};
  std::atomic<uint64_t> n_requests{0}, n_finished{0}, n_cancelled{0}, n_ids{0};
  int port = -1;
  std::thread thread;
  std::mt19937_64 id_rng{std::random_device{}()};

  // Holds a slot for one generation.
  struct Slot {
    Impl& s;
    int i;
    explicit Slot(Impl& s_) : s(s_), i(-1) {
      std::unique_lock lock(s.mu);
      s.cv.wait(lock, [&] { return !s.free_slots.empty() || s.stopping; });
      if (s.stopping) fail("the server is shutting down");
      i = s.free_slots.back();
      s.free_slots.pop_back();
    }
    ~Slot() {
      {
        std::lock_guard lock(s.mu);
        s.free_slots.push_back(i);
      }
      s.cv.notify_one();
    }
  };

  std::string new_id(const char* prefix) {
    std::lock_guard lock(mu);
    return fmt::format("{}-{:016x}{:04x}", prefix, id_rng(), ++n_ids & 0xffff);
  }

  Job prepare(const std::string& text, bool chat) {
    json body;
    try {
      body = json::parse(text);
    } catch (const json::parse_error& e) {
      throw BadRequest(fmt::format("the request body is not valid JSON ({})", e.what()), "", "invalid_json");
    }
    Job job;
    job.req = parse_request(body, chat);
    const Request& r = job.req;
    if (chat) {
      if (tmpl->format == ChatFormat::Unknown)
        throw BadRequest("this model has no chat template lizard knows; use /v1/completions", "messages",
                         "unsupported");
      // The template writes BOS itself where the model wants one.
      job.ids = tok->encode(tmpl->render(r.messages, /*add_generation_prompt=*/true), /*add_bos=*/false);
      job.go.stop_ids = chat_stop_ids(*tok, *tmpl);
    } else if (r.prompt_ids) {
      job.ids = *r.prompt_ids;
      for (int32_t id : job.ids)
        if (id >= model->vocab_size())
          throw BadRequest(fmt::format("token id {} is out of range (vocabulary of {})", id, model->vocab_size()),
                           "prompt");
    } else {
      job.ids = tok->encode(r.prompt, /*add_bos=*/true);
    }
    const int64_t n = static_cast<int64_t>(job.ids.size()), ctx = model->context_length();
    if (n == 0) throw BadRequest("the prompt is empty", chat ? "messages" : "prompt");
    if (n > ctx)
      throw BadRequest(fmt::format("prompt has {} tokens, the context is {}", n, ctx), chat ? "messages" : "prompt",
                       "context_length_exceeded");
    // OpenAI's defaults: 16 tokens for completions, the rest of the context for chat.
    const int64_t max_new = r.max_tokens.value_or(chat ? ctx : 16);
    job.go.max_new_tokens = static_cast<int>(std::min<int64_t>(max_new, ctx - n + 1));
    if (r.ignore_eos) {
      job.go.stop_at_eos = false;
      job.go.stop_ids.clear();
    }
    job.go.sampling.temperature = static_cast<float>(r.temperature);
    job.go.sampling.top_p = static_cast<float>(r.top_p);
    job.go.sampling.top_k = r.top_k;
    job.go.sampling.repetition_penalty = static_cast<float>(r.repetition_penalty);
    job.go.sampling.seed = r.seed ? *r.seed : std::random_device{}();
    job.id = new_id(chat ? "chatcmpl" : "cmpl");
    job.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    return job;
  }

  // Generates for a job on a free slot (waiting for one). emit(text) gets text as it becomes
  // final (possibly empty, once per token) and returns false when the client has gone away.
  Outcome run(const Job& job, const std::function<bool(std::string_view)>& emit) {
    ++n_requests;
    Outcome o;
    o.prompt_tokens = static_cast<int64_t>(job.ids.size());
    Slot slot(*this);
    LlamaState& st = states[slot.i];
    st.reset();
    StopMatcher stops(job.req.stop);
    bool hit_stop = false;
    GenerateStats gs = generate(*model, st, *tok, job.ids, job.go, [&](int32_t, std::string_view text) {
      if (hit_stop || o.cancelled) return false;
      if (stopping) {
        o.cancelled = true;
        return false;
      }
      std::string out;
      hit_stop = stops.push(text, out);
      o.text += out;
      if (!emit(out)) {
        o.cancelled = true;
        return false;
      }
      return !hit_stop;
    });
    if (!hit_stop && !o.cancelled) {
      const std::string rest = stops.flush();
      if (!rest.empty()) {
        o.text += rest;
        if (!emit(rest)) o.cancelled = true;
      }
    }
    o.completion_tokens = gs.new_tokens;
    o.finish = hit_stop || gs.stop_reason == "eos" || gs.stop_reason == "stop" ? "stop" : "length";
    ++(o.cancelled ? n_cancelled : n_finished);
    return o;
  }

  json choice_final(const Job& job, const Outcome& o) const {
    json c = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", o.finish}};
    if (job.req.chat) c["message"] = {{"role", "assistant"}, {"content", o.text}};
    else c["text"] = o.text;
    return c;
  }

  json envelope(const Job& job, bool chunk) const {
    const char* object = job.req.chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    return {{"id", job.id}, {"object", object}, {"created", job.created}, {"model", name}};
  }

  json chunk(const Job& job, const std::string* text, const char* finish, bool role = false) const {
    json j = envelope(job, true);
    json c = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish ? json(finish) : json(nullptr)}};
    if (job.req.chat) {
      json delta = json::object();
      if (role) delta["role"] = "assistant";
      if (text) delta["content"] = *text;
      c["delta"] = delta;
    } else {
      c["text"] = text ? *text : std::string();
    }
    j["choices"] = json::array({c});
    return j;
  }

  void log(const httplib::Request& req, int status, const std::string& extra = {}) const {
    if (opt.log) std::fprintf(stderr, "%s %s -> %d %s\n", req.method.c_str(), req.path.c_str(), status, extra.c_str());
  }

  void handle_generate(const httplib::Request& hreq, const std::string& body, httplib::Response& res, bool chat) {
    auto job = std::make_shared<Job>(prepare(body, chat));
    if (!job->req.stream) {
      const Outcome o = run(*job, [this](std::string_view) { return !stopping.load(); });
      json j = envelope(*job, false);
      j["choices"] = json::array({choice_final(*job, o)});
      j["usage"] = o.usage();
      res.set_content(dump(j), "application/json");
      log(hreq, 200, fmt::format("{}+{} tokens, {}", o.prompt_tokens, o.completion_tokens, o.finish));
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", [this, job, hreq_path = hreq.path](size_t, httplib::DataSink& sink) {
      auto send = [&](const json& j) {
        const std::string s = "data: " + dump(j) + "\n\n";
        return sink.write(s.data(), s.size());
      };
      try {
        if (job->req.chat && !send(chunk(*job, nullptr, nullptr, /*role=*/true))) return false;
        const Outcome o = run(*job, [&](std::string_view text) {
          if (text.empty()) return sink.is_writable();
          const std::string t(text);
          return send(chunk(*job, &t, nullptr));
        });
        if (o.cancelled) {
          if (opt.log) std::fprintf(stderr, "POST %s -> cancelled after %lld tokens\n", hreq_path.c_str(),
                                    static_cast<long long>(o.completion_tokens));
          return false;
        }
        json last = chunk(*job, nullptr, o.finish.c_str());  // no more text: the reason, and usage
        last["usage"] = o.usage();
        if (!send(last)) return false;
        if (job->req.include_usage) {
          json u = envelope(*job, true);
          u["choices"] = json::array();
          u["usage"] = o.usage();
          if (!send(u)) return false;
        }
        static const std::string done = "data: [DONE]\n\n";
        if (!sink.write(done.data(), done.size())) return false;
        sink.done();
        if (opt.log) std::fprintf(stderr, "POST %s -> 200 stream, %lld+%lld tokens, %s\n", hreq_path.c_str(),
                                  static_cast<long long>(o.prompt_tokens), static_cast<long long>(o.completion_tokens),
                                  o.finish.c_str());
        return true;
      } catch (const std::exception& e) {
        // Headers are gone already: report in the stream, then end it.
        send(error_body(e.what(), "server_error", "", ""));
        static const std::string done = "data: [DONE]\n\n";
        sink.write(done.data(), done.size());
        sink.done();
        return true;
      }
    });
  }

  json model_json() const {
    return {{"id", name}, {"object", "model"}, {"created", 0}, {"owned_by", "lizard"},
            {"context_length", model->context_length()}};
  }

  void routes() {
    auto guarded = [this](auto fn) {
      return [this, fn](const httplib::Request& req, httplib::Response& res) {
        try {
          fn(req, res);
        } catch (const BadRequest& e) {
          send_error(res, e.status, e.what(), e.param, e.code);
          log(req, e.status, e.what());
        } catch (const Error& e) {
          send_error(res, 400, e.what(), "", "invalid_request");
          log(req, 400, e.what());
        } catch (const std::exception& e) {
          send_error(res, 500, e.what());
          log(req, 500, e.what());
        }
      };
    };
    // The body is read here rather than by httplib, which caps bodies sent as form data (curl -d
    // without a JSON Content-Type) at 8 KiB; every body is taken as JSON.
    auto generation = [this, guarded](bool chat) {
      return [this, guarded, chat](const httplib::Request& q, httplib::Response& r, const httplib::ContentReader& read) {
        std::string body;
        bool too_large = q.get_header_value<uint64_t>("Content-Length") > opt.max_body_bytes, ok = false;
        if (!too_large)
          ok = read([&](const char* d, size_t n) {
            too_large = body.size() + n > opt.max_body_bytes;
            if (!too_large) body.append(d, n);
            return !too_large;
          });
        guarded([&](const httplib::Request& q2, httplib::Response& r2) {
          if (too_large)
            throw BadRequest(fmt::format("the request body is too large (over {} bytes)", opt.max_body_bytes), "",
                             "request_too_large", 413);
          if (!ok) throw BadRequest("the request body could not be read", "", "invalid_body");
          handle_generate(q2, body, r2, chat);
        })(q, r);
      };
    };
    http.Post("/v1/completions", generation(false));
    http.Post("/v1/chat/completions", generation(true));
    http.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& r) {
      r.set_content(dump({{"object", "list"}, {"data", json::array({model_json()})}}), "application/json");
    }));
    http.Get(R"(/v1/models/(.+))", guarded([this](const httplib::Request& q, httplib::Response& r) {
      if (q.matches[1] != name) return send_error(r, 404, fmt::format("model '{}' does not exist", std::string(q.matches[1])), "model", "model_not_found");
      r.set_content(dump(model_json()), "application/json");
    }));
    http.Get("/health", guarded([this](const httplib::Request&, httplib::Response& r) {
      const ServerStats s = stats();
      r.set_content(dump({{"status", "ok"}, {"slots_idle", s.idle_slots}, {"slots_total", s.slots}}),
                    "application/json");
    }));
    // Anything else (unknown path, body too large...): an error object unless a handler wrote one.
    http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      const std::string msg = res.status == 404   ? fmt::format("no route for {} {}", req.method, req.path)
                              : res.status == 413 ? std::string("the request body is too large")
                                                  : fmt::format("HTTP {}", res.status);
      send_error(res, res.status, msg);
      log(req, res.status);
    });
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string msg = "internal error";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        msg = e.what();
      } catch (...) {
      }
      send_error(res, 500, msg);
    });
  }

  ServerStats stats() const {
    ServerStats s;
    s.requests = n_requests;
    s.finished = n_finished;
    s.cancelled = n_cancelled;
    std::lock_guard lock(mu);
    s.idle_slots = static_cast<int>(free_slots.size());
    s.slots = static_cast<int>(states.size());
    return s;
  }
};

Server::Server(std::shared_ptr<LlamaModel> model, const ServerOptions& opt) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  LZ_CHECK(model != nullptr, "no model given");
  LZ_CHECK(model->checkpoint().tokenizer != nullptr, "model '{}' has no tokenizer", model->checkpoint().path);
  LZ_CHECK(opt.parallel >= 1 && opt.parallel <= 256, "--parallel must be between 1 and 256, got {}", opt.parallel);
  s.opt = opt;
  s.model = std::move(model);
  s.tok = s.model->checkpoint().tokenizer.get();
  s.tmpl = &s.model->checkpoint().chat_template;
  s.name = opt.model_name;
  if (s.name.empty()) s.name = std::filesystem::path(s.model->checkpoint().path).stem().string();
  if (s.name.empty()) s.name = "lizard";
  // N slots must not oversubscribe the cores: each forward gets its share.
  const int total = opt.threads > 0 ? opt.threads : omp_get_num_procs();
  s.model->set_threads(std::max(1, total / opt.parallel));
  for (int i = 0; i < opt.parallel; ++i) {
    s.states.push_back(s.model->new_state());
    s.free_slots.push_back(opt.parallel - 1 - i);
  }
  // Request threads: one per slot plus room for queued requests and cheap GETs.
  const int pool = opt.parallel + 16;
  s.http.new_task_queue = [pool] { return new httplib::ThreadPool(static_cast<size_t>(pool)); };
  s.http.set_payload_max_length(opt.max_body_bytes);
  s.http.set_keep_alive_timeout(5);
  s.routes();
}

Server::~Server() { stop(); }

int Server::bind() {
  Impl& s = *impl_;
  if (s.port >= 0) return s.port;
  if (s.opt.port == 0) {
    s.port = s.http.bind_to_any_port(s.opt.host);
    LZ_CHECK(s.port > 0, "cannot listen on {} (any port)", s.opt.host);
  } else {
    LZ_CHECK(s.opt.port > 0 && s.opt.port < 65536, "port {} is out of range", s.opt.port);
    LZ_CHECK(s.http.bind_to_port(s.opt.host, s.opt.port), "cannot listen on {}:{} (in use, or not an address here?)",
             s.opt.host, s.opt.port);
    s.port = s.opt.port;
  }
  return s.port;
}

void Server::listen() {
  // A client that disconnects must not kill the process with SIGPIPE.
  struct sigaction sa {};
  if (sigaction(SIGPIPE, nullptr, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, nullptr);
  }
  bind();
  impl_->http.listen_after_bind();
}

void Server::start() {
  bind();
  impl_->thread = std::thread([this] { listen(); });
  // Ready once the accept loop runs.
  for (int i = 0; i < 2000 && !impl_->http.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

void Server::stop() {
  Impl& s = *impl_;
  {
    std::lock_guard lock(s.mu);
    s.stopping = true;
  }
  s.cv.notify_all();
  s.http.stop();
  if (s.thread.joinable()) s.thread.join();
}

int Server::port() const { return impl_->port; }
const std::string& Server::model_name() const { return impl_->name; }
ServerStats Server::stats() const { return impl_->stats(); }

}  // namespace lizard
