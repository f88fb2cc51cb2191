// Chat templates: recognised from their Jinja source and rendered natively. Expected strings are
// what the Jinja templates produce (worked out from the template text, checked with jinja2).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "formats/gguf.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

using namespace lizard;
namespace fs = std::filesystem;

namespace {

// SmolLM2-135M-Instruct's tokenizer.chat_template (GGUF metadata).
const char* kSmolTemplate =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\n' }}{% endif %}";

// Llama-2-chat's template.
const char* kLlama2Template =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
    "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] "
    "== 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

const std::vector<ChatMessage> kUser = {{"user", "Hi there!"}};
const std::vector<ChatMessage> kSys = {{"system", "Be brief."}, {"user", "What is 2+2?"}};
const std::vector<ChatMessage> kMulti = {
    {"system", "Be brief."}, {"user", " What is 2+2? "}, {"assistant", "4\n"}, {"user", "And 3+3?"}};
const std::vector<ChatMessage> kNoSysMulti = {{"user", "a"}, {"assistant", "b"}, {"user", "c"}};

std::optional<std::string> config_template(const std::string& name) {
  const char* e = std::getenv("LIZARD_TOKENIZERS_DIR");
  std::string p = std::string(e ? e : "/work/shared/data/tokenizers") + "/" + name + "/tokenizer_config.json";
  if (!fs::exists(p)) return std::nullopt;
  std::ifstream f(p);
  auto j = nlohmann::json::parse(f);
  if (!j.contains("chat_template") || !j["chat_template"].is_string()) return std::nullopt;
  return j["chat_template"].get<std::string>();
}

const std::string kSmolSys = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

}  // namespace

TEST(ChatTemplate, SmolLM2ChatML) {
  ChatTemplate t = ChatTemplate::from_jinja(kSmolTemplate);
  EXPECT_EQ(t.format, ChatFormat::ChatML);
  EXPECT_STREQ(t.name(), "ChatML");
  EXPECT_EQ(t.default_system, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(t.render(kUser), kSmolSys + "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render(kUser, false), kSmolSys + "<|im_start|>user\nHi there!<|im_end|>\n");
  EXPECT_EQ(t.render(kSys), "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                            "<|im_start|>assistant\n");
  EXPECT_EQ(t.render(kMulti, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n What is 2+2? <|im_end|>\n"
            "<|im_start|>assistant\n4\n<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n");
  EXPECT_EQ(t.render(kNoSysMulti), kSmolSys + "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
                                              "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render({}, true), "<|im_start|>assistant\n");  // the loop writes nothing, not even the default
  EXPECT_EQ(t.stop_texts(), std::vector<std::string>{"<|im_end|>"});
}

TEST(ChatTemplate, SmolLM2FromGGUFTokenizesAsHF) {
  std::string path = std::string(LIZARD_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << "no " << path;
  GGUFFile f(path);
  ChatTemplate t = ChatTemplate::from_jinja(f.get_string("tokenizer.chat_template"));
  ASSERT_EQ(t.format, ChatFormat::ChatML);
  EXPECT_EQ(t.default_system, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  Tokenizer tok = Tokenizer::from_gguf(f);
  auto ids = tok.encode(t.render(kUser), true);  // SmolLM2 adds no BOS: the template starts with <|im_start|>
  const std::vector<int32_t> hf = {1,    9690, 198,   2683, 359,  253,   5356, 5646, 11173, 3365, 3511,
                                   308,  34519, 28,   7018, 411,  407,   19712, 8182, 2,    198,  1,
                                   4093, 198,  26843, 665,  17,   2,     198,  1,     520,  9531, 198};
  EXPECT_EQ(ids, hf);
  EXPECT_EQ(tok.decode(ids), t.render(kUser));
  EXPECT_EQ(*tok.token_id("<|im_end|>"), 2);
}

TEST(ChatTemplate, Qwen3IsChatMLWithoutDefaultSystem) {
  auto src = config_template("qwen3");
  if (!src) GTEST_SKIP();
  ChatTemplate t = ChatTemplate::from_jinja(*src);
  EXPECT_EQ(t.format, ChatFormat::ChatML);
  EXPECT_EQ(t.default_system, "");
  EXPECT_EQ(t.render(kUser), "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render(kMulti),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n What is 2+2? <|im_end|>\n"
            "<|im_start|>assistant\n4\n<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, Llama3) {
  auto src = config_template("llama3");
  if (!src) GTEST_SKIP();
  ChatTemplate t = ChatTemplate::from_jinja(*src);
  EXPECT_EQ(t.format, ChatFormat::Llama3);
  EXPECT_EQ(t.bos_text, "<|begin_of_text|>");
  EXPECT_EQ(t.render(kUser), "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // content is trimmed
  EXPECT_EQ(t.render(kMulti),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(t.stop_texts().front(), "<|eot_id|>");
}

TEST(ChatTemplate, Llama2) {
  ChatTemplate t = ChatTemplate::from_jinja(kLlama2Template);
  EXPECT_EQ(t.format, ChatFormat::Llama2);
  EXPECT_EQ(t.bos_text, "<s>");
  EXPECT_EQ(t.default_system, "");
  EXPECT_EQ(t.render(kUser), "<s>[INST] Hi there! [/INST]");
  EXPECT_EQ(t.render(kSys), "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST]");
  // strip() applies to the whole first content, so the user's leading space stays after <</SYS>>
  EXPECT_EQ(t.render(kMulti, false),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n What is 2+2? [/INST] 4 </s><s>[INST] And 3+3? [/INST]");
  EXPECT_EQ(t.render(kNoSysMulti), "<s>[INST] a [/INST] b </s><s>[INST] c [/INST]");
  EXPECT_THROW(t.render({{"assistant", "x"}}), Error);
}

TEST(ChatTemplate, UnknownTemplate) {
  ChatTemplate t = ChatTemplate::from_jinja("{{ messages[0]['content'] }}");
  EXPECT_EQ(t.format, ChatFormat::Unknown);
  EXPECT_STREQ(t.name(), "unknown");
  EXPECT_THROW(t.render(kUser), Error);
}
