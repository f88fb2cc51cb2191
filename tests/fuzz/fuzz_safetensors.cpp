// libFuzzer harness for the safetensors reader: any input must open or throw lizard::Error.
#include "formats/safetensors.h"
#include "fuzz_input_file.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = lizard::fuzz::input_path(data, size);
  try {
    lizard::SafeTensorsFile f(path);
    volatile uint8_t sink = 0;
    for (const auto& t : f.tensors()) {
      sink = sink ^ lizard::fuzz::touch(t.data, t.nbytes);
      if (t.nbytes != static_cast<size_t>(t.numel()) * lizard::dtype_info(t.type).block_bytes) __builtin_trap();
      if (f.find_tensor(t.name) == nullptr) __builtin_trap();
    }
    for (const auto& [k, v] : f.metadata()) sink = sink ^ static_cast<uint8_t>(k.size() + v.size());
  } catch (const lizard::Error&) {
  }
  return 0;
}
