// `lizard serve` end to end over real HTTP on 127.0.0.1 (an ephemeral port): a tiny random model
// with a byte-level tokenizer written here (printable ASCII only, so every generated text is
// plain ASCII), and the default model when present.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "llama_fixture.h"
#include "model/lizard_checkpoint.h"
#include "model/llama.h"
#include "model/load_model.h"
#include "server/server.h"

using namespace lizard;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// GPT-2's byte-to-character map for the bytes used here: printable ASCII maps to itself, space
// and newline to U+0120 and U+010A.
std::string byte_char(int b) {
  if (b == ' ') return "\xC4\xA0";
  if (b == '\n') return "\xC4\x8A";
  return std::string(1, static_cast<char>(b));
}

// tokenizer.json + tokenizer_config.json for byte tokens {\n, ' '..'~'} and three specials.
std::string write_tokenizer(const fs::path& dir) {
  fs::create_directories(dir);
  json vocab = json::object();
  int id = 0;
  vocab[byte_char('\n')] = id++;
  for (int b = ' '; b <= '~'; ++b) vocab[byte_char(b)] = id++;
  json added = json::array();
  for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"})
    added.push_back({{"id", id++}, {"content", s}, {"special", true}});
  json tj = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
             {"added_tokens", added},
             {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
             {"decoder", {{"type", "ByteLevel"}}}};
  std::ofstream(dir / "tokenizer.json") << tj.dump();
  std::ofstream(dir / "tokenizer_config.json") << json({{"eos_token", "<|endoftext|>"}}).dump();
  return (dir / "tokenizer.json").string();
}

constexpr int kTinyVocab = 99, kTinyCtx = 8192;

struct TinyServer {
  lizard::testing::Seeded seed;
  lizard::testing::TinyModel tiny;
  std::unique_ptr<Server> server;
  int port = 0;

  TinyServer() {
    const fs::path dir = fs::temp_directory_path() / ("lizard_server_tok_" + std::to_string(::getpid()));
    const std::string tok_path = write_tokenizer(dir);
    lizard::testing::TinySpec sp;
    sp.vocab = kTinyVocab;
    sp.ctx = kTinyCtx;
    tiny = lizard::testing::make_tiny(seed, sp);
    tiny.ck->tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_json_file(tok_path));
    tiny.ck->chat_template.format = ChatFormat::ChatML;
    fs::remove_all(dir);
    ServerOptions opt;
    opt.host = "127.0.0.1";
    opt.port = 0;
    opt.parallel = 2;
    opt.threads = 2;
    opt.model_name = "tiny";
    server = std::make_unique<Server>(std::make_shared<LlamaModel>(tiny.ck), opt);
    server->start();
    port = server->port();
  }
};

TinyServer& tiny_server() {
  static TinyServer s;
  return s;
}

httplib::Client client(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(20, 0);
  c.set_write_timeout(5, 0);
  c.set_connection_timeout(5, 0);
  return c;
}

struct Answer {
  int status = 0;
  json body;
  std::string raw, content_type;
};

Answer post(int port, const std::string& path, const std::string& body,
           const char* content_type = "application/json") {
  auto c = client(port);
  auto r = c.Post(path.c_str(), body, content_type);
  Answer a;
  if (!r) {
    ADD_FAILURE() << "no answer to " << path << ": " << httplib::to_string(r.error());
    return a;
  }
  a.status = r->status;
  a.raw = r->body;
  a.content_type = r->get_header_value("Content-Type");
  if (a.content_type.find("json") != std::string::npos) a.body = json::parse(r->body, nullptr, false);
  return a;
}
Answer post(int port, const std::string& path, const json& body) { return post(port, path, body.dump()); }

Answer get(int port, const std::string& path) {
  auto c = client(port);
  auto r = c.Get(path.c_str());
  Answer a;
  if (!r) {
    ADD_FAILURE() << "no answer to " << path;
    return a;
  }
  a.status = r->status;
  a.raw = r->body;
  a.body = json::parse(r->body, nullptr, false);
  return a;
}

// The `data:` payloads of an SSE body; the last must be [DONE].
std::vector<json> sse_events(const std::string& body, bool* done) {
  std::vector<json> out;
  *done = false;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event";
    if (end == std::string::npos) break;
    std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
    std::string data = ev.substr(6);
    EXPECT_FALSE(*done) << "event after [DONE]";
    if (data == "[DONE]") {
      *done = true;
      continue;
    }
    out.push_back(json::parse(data));
  }
  return out;
}

void expect_error(const Answer& a, int status, const std::string& code = {}, const std::string& mention = {}) {
  EXPECT_EQ(a.status, status) << a.raw;
  ASSERT_TRUE(a.body.is_object()) << a.raw;
  ASSERT_TRUE(a.body.contains("error")) << a.raw;
  const json& e = a.body["error"];
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << a.raw;
  EXPECT_TRUE(e["type"].is_string()) << a.raw;
  EXPECT_TRUE(e.contains("code")) << a.raw;
  if (!code.empty()) {
    EXPECT_EQ(e["code"], code) << a.raw;
  }
  if (!mention.empty()) {
    EXPECT_NE(e["message"].get<std::string>().find(mention), std::string::npos) << a.raw;
  }
}

void expect_usage(const json& u, int64_t prompt, int64_t completion) {
  ASSERT_TRUE(u.is_object());
  if (prompt >= 0) {
    EXPECT_EQ(u["prompt_tokens"], prompt);
  }
  if (completion >= 0) {
    EXPECT_EQ(u["completion_tokens"], completion);
  }
  EXPECT_EQ(u["total_tokens"].get<int64_t>(), u["prompt_tokens"].get<int64_t>() + u["completion_tokens"].get<int64_t>());
}

}  // namespace

TEST(ServerHttp, HealthAndModels) {
  const int port = tiny_server().port;
  Answer h = get(port, "/health");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body["status"], "ok");
  EXPECT_EQ(h.body["slots_total"], 2);
  Answer m = get(port, "/v1/models");
  EXPECT_EQ(m.status, 200);
  EXPECT_EQ(m.body["object"], "list");
  ASSERT_EQ(m.body["data"].size(), 1u);
  EXPECT_EQ(m.body["data"][0]["id"], "tiny");
  EXPECT_EQ(m.body["data"][0]["object"], "model");
  EXPECT_EQ(get(port, "/v1/models/tiny").status, 200);
  expect_error(get(port, "/v1/models/gpt-4"), 404, "model_not_found");
  expect_error(get(port, "/v1/nothing-here"), 404);
}

TEST(ServerHttp, Completion) {
  const int port = tiny_server().port;
  const json req = {{"model", "tiny"}, {"prompt", "Hello"}, {"max_tokens", 12}, {"temperature", 0}, {"ignore_eos", true}};
  Answer a = post(port, "/v1/completions", req);
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.body["object"], "text_completion");
  EXPECT_EQ(a.body["model"], "tiny");
  EXPECT_TRUE(a.body["id"].is_string());
  ASSERT_EQ(a.body["choices"].size(), 1u);
  const json& c = a.body["choices"][0];
  EXPECT_EQ(c["index"], 0);
  EXPECT_EQ(c["finish_reason"], "length");
  const std::string text = c["text"];
  EXPECT_GE(text.size(), 12u);  // a byte per token (a special token is its text)
  expect_usage(a.body["usage"], 5, 12);
  // Greedy is deterministic; seeded sampling too.
  EXPECT_EQ(post(port, "/v1/completions", req).body["choices"][0]["text"], text);
  json sampled = req;
  sampled["temperature"] = 1.0;
  sampled["top_k"] = 20;
  sampled["top_p"] = 0.9;
  sampled["seed"] = 1234;
  Answer s1 = post(port, "/v1/completions", sampled), s2 = post(port, "/v1/completions", sampled);
  ASSERT_EQ(s1.status, 200) << s1.raw;
  EXPECT_EQ(s1.body["choices"][0]["text"], s2.body["choices"][0]["text"]);
  // A prompt given as an array of one string, and null fields (defaults).
  json arr = req;
  arr["prompt"] = json::array({"Hello"});
  arr["stop"] = nullptr;
  arr["seed"] = nullptr;
  EXPECT_EQ(post(port, "/v1/completions", arr).body["choices"][0]["text"], text);
  // Default max_tokens for completions is 16.
  json def = {{"prompt", "Hi"}, {"temperature", 0}, {"ignore_eos", true}};
  expect_usage(post(port, "/v1/completions", def).body["usage"], 2, 16);
}

TEST(ServerHttp, StopSequences) {
  const int port = tiny_server().port;
  json req = {{"prompt", "abc"}, {"max_tokens", 40}, {"temperature", 0}, {"ignore_eos", true}};
  const std::string full = post(port, "/v1/completions", req).body["choices"][0]["text"];
  ASSERT_GE(full.size(), 40u);
  const std::string stop = full.substr(20, 2);
  const std::string want = full.substr(0, full.find(stop));
  req["stop"] = json::array({stop, "\x01never"});
  Answer a = post(port, "/v1/completions", req);
  EXPECT_EQ(a.body["choices"][0]["text"], want);
  EXPECT_EQ(a.body["choices"][0]["finish_reason"], "stop");
  // Streaming never shows part of the stop sequence.
  req["stream"] = true;
  Answer s = post(port, "/v1/completions", req);
  bool done = false;
  std::string joined;
  for (const auto& ev : sse_events(s.raw, &done)) joined += ev["choices"][0]["text"].get<std::string>();
  EXPECT_TRUE(done);
  EXPECT_EQ(joined, want);
}

TEST(ServerHttp, Chat) {
  const int port = tiny_server().port;
  json req = {{"model", "tiny"},
              {"messages", json::array({{{"role", "system"}, {"content", "Be brief."}},
                                        {{"role", "user"}, {"content", "Hi there"}}})},
              {"max_tokens", 10},
              {"temperature", 0}};
  Answer a = post(port, "/v1/chat/completions", req);
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.body["object"], "chat.completion");
  const json& c = a.body["choices"][0];
  EXPECT_EQ(c["message"]["role"], "assistant");
  EXPECT_TRUE(c["message"]["content"].is_string());
  EXPECT_TRUE(c["finish_reason"] == "stop" || c["finish_reason"] == "length");
  const Checkpoint& ck = *tiny_server().tiny.ck;
  const std::string rendered = ck.chat_template.render({{"system", "Be brief."}, {"user", "Hi there"}});
  EXPECT_EQ(rendered, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                      "<|im_start|>assistant\n");
  expect_usage(a.body["usage"], static_cast<int64_t>(ck.tokenizer->encode(rendered).size()), -1);
  // Content as an array of text parts is the same conversation.
  json parts = req;
  parts["messages"][1]["content"] = json::array({{{"type", "text"}, {"text", "Hi "}}, {{"type", "text"}, {"text", "there"}}});
  EXPECT_EQ(post(port, "/v1/chat/completions", parts).body["choices"][0], c);
}

TEST(ServerHttp, StreamingMatchesNonStreaming) {
  const int port = tiny_server().port;
  for (bool chat : {false, true}) {
    SCOPED_TRACE(chat ? "chat" : "completion");
    json req = {{"max_tokens", 15}, {"temperature", 0}, {"ignore_eos", true}};
    if (chat) req["messages"] = json::array({{{"role", "user"}, {"content", "Tell me"}}});
    else req["prompt"] = "Once upon";
    const std::string path = chat ? "/v1/chat/completions" : "/v1/completions";
    Answer plain = post(port, path, req);
    ASSERT_EQ(plain.status, 200) << plain.raw;
    const std::string want = chat ? plain.body["choices"][0]["message"]["content"] : plain.body["choices"][0]["text"];

    req["stream"] = true;
    req["stream_options"] = {{"include_usage", true}};
    Answer s = post(port, path, req);
    ASSERT_EQ(s.status, 200) << s.raw;
    EXPECT_NE(s.content_type.find("text/event-stream"), std::string::npos);
    bool done = false;
    auto events = sse_events(s.raw, &done);
    EXPECT_TRUE(done);
    ASSERT_GE(events.size(), 3u);
    std::string joined, finish;
    int finishes = 0, usages = 0;
    for (const auto& ev : events) {
      EXPECT_EQ(ev["object"], chat ? "chat.completion.chunk" : "text_completion");
      EXPECT_EQ(ev["id"], events[0]["id"]);
      if (ev.contains("usage")) {
        ++usages;
        expect_usage(ev["usage"], plain.body["usage"]["prompt_tokens"], 15);
      }
      if (ev["choices"].empty()) continue;  // the include_usage chunk
      const json& c = ev["choices"][0];
      if (chat) {
        if (c["delta"].contains("content")) joined += c["delta"]["content"].get<std::string>();
      } else {
        joined += c["text"].get<std::string>();
      }
      if (!c["finish_reason"].is_null()) {
        ++finishes;
        finish = c["finish_reason"];
      }
    }
    if (chat) {
      EXPECT_EQ(events[0]["choices"][0]["delta"]["role"], "assistant");
    }
    EXPECT_EQ(joined, want);
    EXPECT_EQ(finishes, 1);
    EXPECT_EQ(finish, "length");
    EXPECT_EQ(usages, 2);  // on the finishing chunk, and the include_usage chunk
    EXPECT_TRUE(events.back()["choices"].empty());
  }
}

TEST(ServerHttp, BadRequests) {
  const int port = tiny_server().port;
  const std::string C = "/v1/completions", CH = "/v1/chat/completions";
  expect_error(post(port, C, std::string("{\"prompt\": \"hi\", ")), 400, "invalid_json");
  expect_error(post(port, C, std::string("not json at all")), 400, "invalid_json");
  expect_error(post(port, C, std::string("[1, 2]")), 400, "invalid_json");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"max_tokens", "5"}}), 400, "invalid_type", "max_tokens");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"max_tokens", 2.5}}), 400, "invalid_type");
  expect_error(post(port, C, json{{"prompt", 5}}), 400, "invalid_type");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"temperature", "hot"}}), 400, "invalid_type");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"stream", "yes"}}), 400, "invalid_type");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"stop", 5}}), 400, "invalid_type");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"model", 3}}), 400, "invalid_type");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"user", 3}}), 400, "invalid_type");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"temperature", -1}}), 400, "invalid_value");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"max_tokens", 0}}), 400, "invalid_value");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"max_tokens", -3}}), 400, "invalid_value");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"n", 2}}), 400, "unsupported", "'n'");
  expect_error(post(port, C, json{{"prompt", json::array({"a", "b"})}}), 400, "unsupported");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"frobnicate", true}}), 400, "unknown_parameter", "frobnicate");
  expect_error(post(port, C, json{{"prompt", "hi"}, {"logprobs", 5}}), 400, "unsupported");
  expect_error(post(port, C, json{{"max_tokens", 3}}), 400, "missing_required_parameter");
  expect_error(post(port, C, json{{"prompt", std::string(kTinyCtx + 50, 'a')}}), 400, "context_length_exceeded",
               "prompt has 8242 tokens, the context is 8192");
  expect_error(post(port, CH, json{{"messages", "hi"}}), 400, "invalid_type");
  expect_error(post(port, CH, json{{"messages", json::array()}}), 400);
  expect_error(post(port, CH, json{{"messages", json::array({{{"role", "wizard"}, {"content", "x"}}})}}), 400,
               "unsupported");
  expect_error(post(port, CH, json{{"messages", json::array({{{"role", "user"}, {"content", 7}}})}}), 400,
               "invalid_type");
  expect_error(post(port, CH, json{{"prompt", "hi"}}), 400, "unknown_parameter");
  // What OpenAI clients commonly send along is accepted.
  Answer ok = post(port, C,
                   json{{"prompt", "hi"}, {"max_tokens", 2}, {"user", "u1"}, {"logprobs", nullptr},
                        {"presence_penalty", 0}, {"frequency_penalty", 0.0}, {"n", 1}, {"logit_bias", json::object()},
                        {"echo", false}, {"best_of", 1}, {"stream", false}, {"suffix", nullptr}});
  EXPECT_EQ(ok.status, 200) << ok.raw;
  Answer okc = post(port, CH,
                    json{{"messages", json::array({{{"role", "user"}, {"content", "x"}}})}, {"max_tokens", 2},
                         {"logprobs", false}, {"tools", json::array()}, {"response_format", {{"type", "text"}}},
                         {"parallel_tool_calls", true}, {"store", false}, {"max_completion_tokens", 2}});
  EXPECT_EQ(okc.status, 200) << okc.raw;
  // curl -d sends JSON as form data: bodies over httplib's 8 KiB form limit are still read as JSON.
  const std::string big = json{{"prompt", "hi"}, {"max_tokens", 2}, {"user", std::string(9000, 'u')}}.dump();
  Answer form = post(port, C, big, "application/x-www-form-urlencoded");
  EXPECT_EQ(form.status, 200) << form.raw;
  // The server is still fine.
  EXPECT_EQ(get(port, "/health").status, 200);
}

TEST(ServerHttp, RandomRequestsGet200Or400) {
  // Known fields with values of every type: each answer is a completion or a 400 error object.
  const int port = tiny_server().port;
  lizard::testing::Seeded rs;
  SCOPED_TRACE(rs.trace());
  const std::vector<std::string> keys = {"model", "prompt", "messages", "max_tokens", "temperature", "top_p",
                                         "top_k", "seed", "stop", "n", "stream", "user", "logprobs",
                                         "presence_penalty", "echo", "stream_options", "response_format", "tools",
                                         "ignore_eos", "max_completion_tokens"};
  const std::vector<json> values = {nullptr, true, false, 0, 1, -1, 3, 0.5, 2.5, "s", "", json::array(),
                                    json::array({"a"}), json::array({"a", "b"}), json::array({1, 2}),
                                    json::object(), json{{"type", "text"}}, json{{"include_usage", true}},
                                    json::array({{{"role", "user"}, {"content", "x"}}})};
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rs.rng); };
  for (int i = 0; i < 60; ++i) {
    json req = {{"max_tokens", 3}};
    const bool chat = i % 2 == 1;
    if (chat) req["messages"] = json::array({{{"role", "user"}, {"content", "hey"}}});
    else req["prompt"] = "hey";
    for (int k = 0; k < 3; ++k) req[keys[pick(keys.size())]] = values[pick(values.size())];
    Answer a = post(port, chat ? "/v1/chat/completions" : "/v1/completions", req);
    ASSERT_TRUE(a.status == 200 || a.status == 400) << a.status << " for " << req.dump() << ": " << a.raw;
    if (a.status == 400) {
      expect_error(a, 400);
    } else if (a.content_type.find("event-stream") != std::string::npos) {
      EXPECT_NE(a.raw.find("data: [DONE]"), std::string::npos) << req.dump();
    } else {
      EXPECT_TRUE(a.body.contains("choices") && a.body.contains("usage")) << req.dump() << ": " << a.raw;
    }
  }
  EXPECT_EQ(get(port, "/health").status, 200);
}

TEST(ServerHttp, ConcurrentRequestsAllAnswered) {
  TinyServer& ts = tiny_server();
  const uint64_t before = ts.server->stats().finished;
  std::vector<std::thread> threads;
  std::vector<Answer> answers(6);
  for (int i = 0; i < 6; ++i)
    threads.emplace_back([&, i] {
      const bool chat = i % 2 == 1;
      json req = {{"max_tokens", 30}, {"temperature", 0.7}, {"seed", i}, {"ignore_eos", true}, {"stream", i >= 4}};
      if (chat) req["messages"] = json::array({{{"role", "user"}, {"content", "thread " + std::to_string(i)}}});
      else req["prompt"] = "thread " + std::to_string(i);
      answers[i] = post(ts.port, chat ? "/v1/chat/completions" : "/v1/completions", req);
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(answers[i].status, 200) << i << ": " << answers[i].raw;
    if (i < 4) {
      expect_usage(answers[i].body["usage"], -1, 30);
    } else {
      EXPECT_NE(answers[i].raw.find("data: [DONE]"), std::string::npos);
    }
  }
  EXPECT_EQ(ts.server->stats().finished, before + 6);
  EXPECT_EQ(ts.server->stats().idle_slots, 2);
}

TEST(ServerHttp, ClientDisconnectMidStream) {
  TinyServer& ts = tiny_server();
  const uint64_t cancelled_before = ts.server->stats().cancelled;
  // A raw socket client: send a long streaming request, read the first event, hang up.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(ts.port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string body =
      json{{"prompt", "go"}, {"max_tokens", kTinyCtx}, {"stream", true}, {"ignore_eos", true}}.dump();
  const std::string http = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  ASSERT_EQ(::send(fd, http.data(), http.size(), MSG_NOSIGNAL), static_cast<ssize_t>(http.size()));
  std::string got;
  char buf[4096];
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  while (got.find("data: ") == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0) << "no stream started";
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_NE(got.find("HTTP/1.1 200"), std::string::npos);
  ::close(fd);
  // The generation stops early (well before its 8K tokens) and the slot comes back.
  const auto t0 = std::chrono::steady_clock::now();
  while (ts.server->stats().cancelled == cancelled_before &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(ts.server->stats().cancelled, cancelled_before + 1);
  while (ts.server->stats().idle_slots != 2 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(ts.server->stats().idle_slots, 2);
  // And the next request is answered normally.
  Answer a = post(ts.port, "/v1/completions", json{{"prompt", "again"}, {"max_tokens", 4}, {"ignore_eos", true}});
  EXPECT_EQ(a.status, 200) << a.raw;
  expect_usage(a.body["usage"], 5, 4);
}

TEST(ServerHttp, StopAndRestart) {
  // A second server on its own port starts and stops cleanly, even with requests in flight.
  lizard::testing::Seeded seed;
  lizard::testing::TinySpec sp;
  sp.vocab = kTinyVocab;
  auto tiny = lizard::testing::make_tiny(seed, sp);
  const fs::path dir = fs::temp_directory_path() / ("lizard_server_tok2_" + std::to_string(::getpid()));
  tiny.ck->tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_json_file(write_tokenizer(dir)));
  fs::remove_all(dir);
  ServerOptions opt;
  opt.port = 0;
  opt.threads = 1;
  auto server = std::make_unique<Server>(std::make_shared<LlamaModel>(tiny.ck), opt);
  server->start();
  const int port = server->port();
  EXPECT_GT(port, 0);
  EXPECT_EQ(get(port, "/health").status, 200);
  // No chat template: the chat endpoint says so.
  expect_error(post(port, "/v1/chat/completions", json{{"messages", json::array({{{"role", "user"}, {"content", "x"}}})}}),
               400, "unsupported");
  server->stop();
  server.reset();
}

TEST(ServerHttp, LizardHybridModel) {
  // A tiny teacher whose layer 1 is an (untrained) Lizard layer: served like any model (chunked
  // prefill, then recurrent decode past the window), and streaming equals non-streaming.
  lizard::testing::Seeded seed;
  SCOPED_TRACE(seed.trace());
  lizard::testing::TinySpec sp;
  sp.vocab = kTinyVocab;
  sp.ctx = 2048;
  auto tiny = lizard::testing::make_tiny(seed, sp);
  const fs::path dir = fs::temp_directory_path() / ("lizard_server_tok3_" + std::to_string(::getpid()));
  tiny.ck->tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_json_file(write_tokenizer(dir)));
  fs::remove_all(dir);
  LizardConfig lc;
  lc.feature_dim = 8;
  lc.window = 16;
  lc.chunk = 8;
  lc.lizard_layers = {1};
  ModelOptions mo;
  mo.n_threads = 1;
  auto model = std::make_shared<LlamaModel>(tiny.ck, mo);
  apply_lizard(*model, init_lizard_checkpoint(lc, tiny.ck->config, seed.rng()));
  ASSERT_NE(model->mixer(1).name().find("lizard"), std::string::npos);
  ServerOptions opt;
  opt.port = 0;
  opt.threads = 1;
  Server server(model, opt);
  server.start();
  const int port = server.port();
  json req = {{"prompt", "The quick brown fox jumps over the lazy dog"}, {"max_tokens", 200}, {"temperature", 0},
              {"ignore_eos", true}};
  Answer a = post(port, "/v1/completions", req);
  ASSERT_EQ(a.status, 200) << a.raw;
  expect_usage(a.body["usage"], 43, 200);
  req["stream"] = true;
  Answer s = post(port, "/v1/completions", req);
  bool done = false;
  std::string joined;
  for (const auto& ev : sse_events(s.raw, &done)) joined += ev["choices"][0]["text"].get<std::string>();
  EXPECT_TRUE(done);
  EXPECT_EQ(joined, a.body["choices"][0]["text"].get<std::string>());
  server.stop();
}

TEST(ServerDefaultModel, ChatAndStream) {
  const std::string path = std::string(LIZARD_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << "default model not present";
  ModelOptions mo;
  mo.context = 1024;
  auto model = std::make_shared<LlamaModel>(std::make_shared<const Checkpoint>(open_checkpoint(path)), mo);
  ServerOptions opt;
  opt.port = 0;
  opt.parallel = 2;
  Server server(model, opt);
  server.start();
  const int port = server.port();
  EXPECT_EQ(get(port, "/v1/models").body["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
  json req = {{"messages", json::array({{{"role", "user"}, {"content", "What is the capital of France?"}}})},
              {"max_tokens", 8},
              {"temperature", 0}};
  Answer a = post(port, "/v1/chat/completions", req);
  ASSERT_EQ(a.status, 200) << a.raw;
  const std::string text = a.body["choices"][0]["message"]["content"];
  EXPECT_FALSE(text.empty());
  expect_usage(a.body["usage"], -1, -1);
  req["stream"] = true;
  Answer s = post(port, "/v1/chat/completions", req);
  bool done = false;
  std::string joined;
  for (const auto& ev : sse_events(s.raw, &done))
    if (!ev["choices"].empty() && ev["choices"][0]["delta"].contains("content"))
      joined += ev["choices"][0]["delta"]["content"].get<std::string>();
  EXPECT_TRUE(done);
  EXPECT_EQ(joined, text);
  server.stop();
}
