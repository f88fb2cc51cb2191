// `lizard export --merge-lora`: a Lizard checkpoint plus its teacher become one standalone model
// directory that load_model opens without the original teacher:
//   config.json          Hugging Face config of the teacher's architecture
//   model.safetensors    every teacher weight under HF names, dequantized, with the stage-2 LoRA
//                        merged into W_q/W_k/W_v (W + (alpha/r) B A)
//   lizard.safetensors   the Lizard layers without LoRA; its teacher record is "." (this directory)
//   tokenizer.json, tokenizer_config.json   copied from an HF teacher, or written from a GGUF's
//                        byte-level BPE metadata (SentencePiece GGUFs are refused)
// Built in OUT.tmp, checked by opening it, then renamed to OUT; an existing OUT is refused.
#pragma once
#include <string>

#include "formats/dtype.h"
#include "model/config.h"

namespace lizard {

class GGUFFile;

struct ExportOptions {
  DType dtype = DType::F32;  // of model.safetensors: F32 (exact) or BF16
  std::string teacher;       // overrides the teacher path the checkpoint records
};

// Returns a one-line summary. Throws Error on any problem (OUT is then left untouched).
std::string export_merged(const std::string& lizard_dir, const std::string& out, const ExportOptions& o = {});

// config.json text for c (architectures, sizes, RoPE, tie_word_embeddings, torch_dtype, ...).
std::string hf_config_json(const ModelConfig& c, DType dtype);

// Writes dir/tokenizer.json and dir/tokenizer_config.json (with chat_template when non-empty) that
// Tokenizer::from_json_file reads back to the same ids as Tokenizer::from_gguf(g). Throws Error for
// GGUF tokenizers it cannot express (SentencePiece "llama", unknown pre-tokenizer presets).
void write_gguf_tokenizer(const GGUFFile& g, const std::string& dir, const std::string& chat_template);

}  // namespace lizard
