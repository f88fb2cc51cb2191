#!/usr/bin/env bash
# Two-stage linearization of the staged teacher on the GPU machine (after gpu.sh recv1/recv2/unpack),
# one method per call: stage 1 (attention transfer) then stage 2 (LoRA), the same token budget for
# every method, held-out perplexity and KL at the end of each stage (the trainer's report.json).
#   bash scripts/device/linearize_runs.sh NAME [CONFIG_JSON] [-- extra linearize flags]
#   env: TOKENS1 (default 10M), TOKENS2 (default 10M), SEQ (2048), BATCH (8)
# Writes $OUT/NAME.tgz (reports, logs, loss plots, the final lizard.safetensors) and prints a summary.
set -uo pipefail
name=$1
shift
cfg=
if [ $# -gt 0 ] && [ "$1" != "--" ]; then cfg=$1; shift; fi
[ "${1:-}" = "--" ] && shift
g="bash scripts/device/gpu.sh"
lz=/tmp/lz
o=${OUT:-/tmp/out}
t1=${TOKENS1:-10000000}
t2=${TOKENS2:-10000000}
common="--device cuda --data $lz/data --seq-len ${SEQ:-2048} --batch ${BATCH:-8} --eval-every 200"
rm -rf $lz/$name-s1 $lz/$name-s2
echo "== $name: stage 1 ($t1 tokens)"
$g x lizard linearize --stage 1 --teacher $lz/model.gguf --out $lz/$name-s1 ${cfg:+--config $cfg} --tokens $t1 \
  $common "$@" 2>&1 | grep -vE "^step [0-9]+/" | tail -6
echo "== $name: stage 2 ($t2 tokens)"
$g x lizard linearize --stage 2 --teacher $lz/$name-s1 --out $lz/$name-s2 --tokens $t2 $common "$@" 2>&1 |
  grep -vE "^step [0-9]+/" | tail -6
tar czf "$o/$name.tgz" -C $lz $name-s1/report.json $name-s1/log.jsonl $name-s1/loss.png \
  $name-s2/report.json $name-s2/log.jsonl $name-s2/loss.png $name-s2/lizard.safetensors 2>/dev/null
