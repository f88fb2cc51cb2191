#!/usr/bin/env bash
# Teacher parity on the GPU machine (which has torch + transformers), in three device calls because
# the 98 MB GGUF is larger than one call carries (scripts/device/README.md):
#   stage1: carry .stage/m1 (first 50 MB of the GGUF)      -> kept in /tmp/lizard_stage
#   stage2: carry .stage/m2 (the rest)                       -> kept in /tmp/lizard_stage
#   run:    carry .stage/bin (portable lizard + libs + prompts.json): reassemble, verify, compare
set -euo pipefail
mode=$1
st=/tmp/lizard_stage
mkdir -p $st
case $mode in
  stage1) cp .stage/m1/partaa $st/ ; ls -la $st ;;
  stage2) cp .stage/m2/partab $st/ ; ls -la $st ;;
  run)
    cat $st/partaa $st/partab > $st/model.gguf
    echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $st/model.gguf" | sha256sum -c
    export LD_LIBRARY_PATH=$PWD/.stage/bin/lib
    .stage/bin/lizard info $st/model.gguf | head -3
    .stage/bin/lizard debug-logits -m $st/model.gguf --prompts .stage/bin/prompts.json --out $st/lz
    PYTHONUNBUFFERED=1 python3 scripts/device/hf_parity.py $st/model.gguf .stage/bin/prompts.json $st/lz "${OUT:-/tmp/out}"
    ;;
esac
