// Chat formatting for the templates of the supported model families. Jinja is not interpreted:
// the template text (from GGUF or tokenizer_config.json) is recognised and rendered natively.
#pragma once
#include <string>
#include <vector>

namespace lizard {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

enum class ChatFormat { ChatML, Llama3, Llama2, Unknown };

struct ChatTemplate {
  ChatFormat format = ChatFormat::Unknown;
  std::string default_system;  // e.g. SmolLM2's "You are a helpful AI assistant named SmolLM..."
  std::string bos_text;        // BOS token text the template writes itself (Llama-3), if any

  // Recognise a template from its Jinja source; Unknown if not one lizard knows.
  static ChatTemplate from_jinja(const std::string& source);
  // Render messages; add_generation_prompt appends the assistant header.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt = true) const;
  // Token texts that end an assistant turn (e.g. "<|im_end|>", "<|eot_id|>").
  std::vector<std::string> stop_texts() const;
  const char* name() const;
};

}  // namespace lizard
