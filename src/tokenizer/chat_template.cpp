// Native rendering of the chat templates lizard recognises. Each render reproduces the Jinja
// output of the reference template for system/user/assistant messages:
//  ChatML  (SmolLM2, Qwen):  <|im_start|>{role}\n{content}<|im_end|>\n ... [<|im_start|>assistant\n]
//          with SmolLM2's default system message when the first message is not a system one.
//  Llama-3: [bos]<|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|> ...
//  Llama-2: <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s> ...
#include "tokenizer/chat_template.h"

#include "tokenizer/unicode.h"
#include "util/error.h"

namespace lizard {

namespace {
// Jinja string-literal escapes we may meet inside a default system prompt.
std::string unescape(std::string_view s) {
  std::string r;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[++i];
      r += c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else {
      r += s[i];
    }
  }
  return r;
}

// Text written literally after `marker` up to `end`, if nothing but literal text is between.
std::string literal_after(const std::string& src, const std::string& marker, const std::string& end) {
  for (size_t p = src.find(marker); p != std::string::npos; p = src.find(marker, p + 1)) {
    size_t a = p + marker.size();
    if (src.compare(a, 1, "\n") == 0) a += 1;
    else if (src.compare(a, 2, "\\n") == 0) a += 2;
    else continue;
    size_t e = src.find(end, a);
    if (e == std::string::npos) continue;
    std::string_view body(src.data() + a, e - a);
    if (body.empty() || body.find_first_of("'\"{}") != std::string_view::npos) continue;
    return unescape(body);
  }
  return {};
}

// Python str.strip() (what Jinja's trim filter and .strip() do).
std::string py_strip(std::string_view s) {
  auto ws = [](uint32_t c) { return uni::is_white_space(c) || (c >= 0x1C && c <= 0x1F); };
  size_t a = 0;
  while (a < s.size()) {
    size_t q = a;
    if (!ws(uni::next_cp(s, q))) break;
    a = q;
  }
  size_t b = s.size();
  while (b > a) {
    size_t p = b - 1;
    while (p > a && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
    size_t q = p;
    if (!ws(uni::next_cp(s, q))) break;
    b = p;
  }
  return std::string(s.substr(a, b - a));
}
}  // namespace

ChatTemplate ChatTemplate::from_jinja(const std::string& src) {
  ChatTemplate t;
  if (src.find("<|im_start|>") != std::string::npos) {
    t.format = ChatFormat::ChatML;
    t.default_system = literal_after(src, "<|im_start|>system", "<|im_end|>");
  } else if (src.find("<|start_header_id|>") != std::string::npos) {
    t.format = ChatFormat::Llama3;
    if (src.find("bos_token") != std::string::npos || src.find("<|begin_of_text|>") != std::string::npos)
      t.bos_text = "<|begin_of_text|>";
  } else if (src.find("[INST]") != std::string::npos) {
    t.format = ChatFormat::Llama2;
    if (src.find("bos_token") != std::string::npos || src.find("<s>") != std::string::npos) t.bos_text = "<s>";
    // a template with a built-in system prompt sets it as a literal
    for (const char* q : {"set system_message = '", "set system_message = \""}) {
      size_t p = src.find(q);
      if (p == std::string::npos) continue;
      p += std::string_view(q).size();
      char quote = src[p - 1];
      size_t e = p;
      while (e < src.size() && src[e] != quote) e += src[e] == '\\' ? 2 : 1;
      if (e < src.size()) t.default_system = unescape(std::string_view(src).substr(p, e - p));
      break;
    }
  }
  return t;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  std::string out;
  switch (format) {
    case ChatFormat::ChatML:
      for (size_t i = 0; i < messages.size(); ++i) {
        if (i == 0 && messages[0].role != "system" && !default_system.empty())
          out += "<|im_start|>system\n" + default_system + "<|im_end|>\n";
        out += "<|im_start|>" + messages[i].role + "\n" + messages[i].content + "<|im_end|>\n";
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      return out;
    case ChatFormat::Llama3: {
      std::vector<ChatMessage> msgs;
      if (!default_system.empty() && (messages.empty() || messages[0].role != "system"))
        msgs.push_back({"system", default_system});
      msgs.insert(msgs.end(), messages.begin(), messages.end());
      for (size_t i = 0; i < msgs.size(); ++i) {
        if (i == 0) out += bos_text;
        out += "<|start_header_id|>" + msgs[i].role + "<|end_header_id|>\n\n" + py_strip(msgs[i].content) + "<|eot_id|>";
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    }
    case ChatFormat::Llama2: {
      const std::string bos = bos_text.empty() ? "<s>" : bos_text;
      size_t first = 0;
      std::string system = default_system;
      if (!messages.empty() && messages[0].role == "system") {
        system = messages[0].content;
        first = 1;
      }
      for (size_t i = first; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        bool user_turn = (i - first) % 2 == 0;
        LZ_CHECK((m.role == "user") == user_turn,
                 "Llama-2 chat template: conversation roles must alternate user/assistant/user/... (message {} is {})",
                 i, m.role);
        std::string content = m.content;
        if (i == first && !system.empty()) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
        if (m.role == "user") out += bos + "[INST] " + py_strip(content) + " [/INST]";
        else if (m.role == "assistant") out += " " + py_strip(content) + " </s>";
      }
      return out;
    }
    case ChatFormat::Unknown:
      break;
  }
  fail("unknown chat template: lizard renders ChatML, Llama-3 and Llama-2 templates only");
}

std::vector<std::string> ChatTemplate::stop_texts() const {
  switch (format) {
    case ChatFormat::ChatML: return {"<|im_end|>"};
    case ChatFormat::Llama3: return {"<|eot_id|>", "<|end_of_text|>"};
    case ChatFormat::Llama2: return {"</s>"};
    case ChatFormat::Unknown: break;
  }
  return {};
}

const char* ChatTemplate::name() const {
  switch (format) {
    case ChatFormat::ChatML: return "ChatML";
    case ChatFormat::Llama3: return "Llama-3";
    case ChatFormat::Llama2: return "Llama-2";
    case ChatFormat::Unknown: break;
  }
  return "unknown";
}

}  // namespace lizard
