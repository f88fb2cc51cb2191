// UTF-8 and Unicode helpers for the tokenizers: decoding, NFC, Rust-style lossy conversion.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace lizard::uni {

// Length of the UTF-8 sequence starting with byte b (1 for invalid lead bytes).
inline int utf8_len(unsigned char b) {
  return b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 1;
}
// Decodes one code point at s[i] (input assumed valid UTF-8) and advances i.
uint32_t next_cp(std::string_view s, size_t& i);
void append_utf8(std::string& out, uint32_t cp);
// Unicode White_Space (what Rust's char::is_whitespace and Oniguruma's \s use).
bool is_white_space(uint32_t cp);
bool valid_utf8(std::string_view s);
// Rust String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string utf8_lossy(std::string_view s);
// Canonical composition (NFC).
std::string nfc(std::string_view s);

}  // namespace lizard::uni
