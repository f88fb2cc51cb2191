#!/usr/bin/env bash
# Teacher parity on the GPU machine (which has torch + transformers), after the teacher and the bundle
# are staged with scripts/device/gpu.sh (recv1, recv2, unpack: /tmp/lz/model.gguf, /tmp/lz/bin):
#   run(command="bash scripts/device/gpu.sh unpack && bash scripts/device/parity.sh", carry=[.stage/bundle])
# The prompts are the token ids of the CI fixtures (tests/fixtures/parity/fixture_<name>.json), so the
# comparison is the one CI replays; hf_parity.py writes parity.json and fresh fixtures to $OUT.
set -euo pipefail
lz=/tmp/lz
out=${OUT:-/tmp/out}
[ -f $lz/model.gguf ] && [ -x $lz/bin/lizard ] || { echo "parity.sh: stage the teacher and bundle first (scripts/device/gpu.sh recv1, recv2, unpack)" >&2; exit 1; }
mkdir -p $lz/parity "$out"
python3 - "$lz/parity/prompts.json" <<'PY'
import glob, json, os, sys
prompts = []
for f in sorted(glob.glob("tests/fixtures/parity/fixture_*.json")):
    name = os.path.basename(f)[len("fixture_"):-len(".json")]
    prompts.append({"name": name, "ids": json.load(open(f))["prompt_ids"]})
json.dump(prompts, open(sys.argv[1], "w"))
print(f"{len(prompts)} prompts from the CI fixtures")
PY
bash scripts/device/gpu.sh x lizard debug-logits -m $lz/model.gguf --prompts $lz/parity/prompts.json --out $lz/parity
PYTHONUNBUFFERED=1 python3 scripts/device/hf_parity.py $lz/model.gguf $lz/parity/prompts.json $lz/parity "$out"
