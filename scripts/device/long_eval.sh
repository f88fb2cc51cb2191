#!/usr/bin/env bash
# Held-out KL and perplexity of trained students (quality_runs.sh) against the teacher on long documents the
# training text does not contain (data/longeval: scripts/fetch_data.sh --longeval, carried with the tree), at
# several window lengths: the same tokens, ctx 2048 (the training length) up to 8192 (the teacher's own).
#   bash scripts/device/long_eval.sh STUDENT_DIR...     (e.g. /tmp/lz/skip10-s2; after gpu.sh recv2, unpack)
#   CTXS="2048 8192" (windows, stride ctx / 2), MAX_TOKENS=120000 (tokens read)
# Prints the markdown report of each (student, ctx); JSON and markdown land in $OUT/longeval/.
set -uo pipefail
lz=/tmp/lz
o=${OUT:-/tmp/out}/longeval
mkdir -p "$o"
[ -d $lz/longeval ] || cp -r data/longeval $lz/longeval
for dir in "$@"; do
  for ctx in ${CTXS:-2048 8192}; do
    n=$(basename "$dir")-ctx$ctx
    bash scripts/device/gpu.sh x lizard eval kl --device cuda -m $lz/model.gguf --student "$dir" --data $lz/longeval/postgres-docs.jsonl.gz \
      --ctx "$ctx" --max-tokens "${MAX_TOKENS:-120000}" --out "$o/$n" >"$o/$n.md" 2>"$o/$n.log"
    echo "== $n (exit $?)"
    grep -vE "^\s*$|written" "$o/$n.md" | head -20
    grep -iE "error" "$o/$n.log" | head -3
  done
done
