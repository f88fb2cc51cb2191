// lizard's public entry point: what a program embedding lizard needs.
//
//   auto m = lizard::load_model("model.gguf");             // a teacher (GGUF / HF dir) or a Lizard checkpoint
//   auto ids = m.tokenizer()->encode("Hello", /*add_bos=*/true);
//   lizard::GenerateOptions go;                             // sampling, stop ids, length
//   lizard::generate(*m.model, *m.tokenizer(), ids, go,
//                    [](int32_t, std::string_view text) { std::fwrite(text.data(), 1, text.size(), stdout); return true; });
//
// Everything throws lizard::Error (one readable line) for problems a user can cause.
#pragma once

#include "generate/generate.h"     // generate(), GenerateOptions, GenerateStats, sampling
#include "generate/state_io.h"     // save/load a sequence's whole state
#include "model/load_model.h"      // load_model(): teachers and Lizard checkpoints, LoadedModel
#include "model/lizard_config.h"   // LizardConfig: every option of the method
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"            // lizard::Error
