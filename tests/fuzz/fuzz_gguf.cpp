// libFuzzer harness for the GGUF reader: any input must open or throw lizard::Error.
#include <variant>

#include "formats/gguf.h"
#include "fuzz_input_file.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = lizard::fuzz::input_path(data, size);
  try {
    lizard::GGUFFile f(path);
    volatile uint8_t sink = 0;
    for (const auto& t : f.tensors()) {
      sink = sink ^ lizard::fuzz::touch(t.data, t.nbytes);
      if (f.find_tensor(t.name) == nullptr) __builtin_trap();
      (void)t.shape_str();
    }
    // Exercise the typed getters on every key; wrong types must throw Error too.
    for (const auto& [k, v] : f.metadata()) {
      try { (void)f.find_int(k); } catch (const lizard::Error&) {}
      try { (void)f.find_float(k); } catch (const lizard::Error&) {}
      try { (void)f.find_string(k); } catch (const lizard::Error&) {}
      try { (void)f.get_strings(k); } catch (const lizard::Error&) {}
      try { (void)f.get_floats(k); } catch (const lizard::Error&) {}
    }
  } catch (const lizard::Error&) {
  }
  return 0;
}
