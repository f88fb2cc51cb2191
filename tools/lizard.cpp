// lizard: command-line front end. Thin: parses flags, calls the library, prints.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "util/error.h"

int main(int argc, char** argv) {
  CLI::App app{"lizard: linearize Llama-family LLMs and generate with constant memory"};
  app.require_subcommand(1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const lizard::Error& e) {
    std::fprintf(stderr, "lizard: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
