#!/usr/bin/env bash
# One device call (< 10 min) after gpu.sh recv1/recv2: unpack the bundle, run the GPU test suite
# (+ compute-sanitizer), then short real runs on the staged teacher: generation on CPU and GPU,
# stage 1 and stage 2 on the GPU (throughput), and a short GPU generation bench.
#   run(command="bash scripts/device/smoke.sh", carry=[".stage/bundle"])
set -uo pipefail
g="bash scripts/device/gpu.sh"
lz=/tmp/lz
o=${OUT:-/tmp/out}
mkdir -p "$o"
$g unpack || exit 1
TEST_TIMEOUT=${TEST_TIMEOUT:-210} $g tests ${TEST_FILTER:+--gtest_filter=$TEST_FILTER}
[ -n "${TESTS_ONLY:-}" ] && exit 0
m=$lz/model.gguf
p="The capital of France is"
echo "== generate (CPU --exact, then GPU), greedy 40 tokens"
timeout 60 $g x lizard generate -m $m -p "$p" -n 40 --temp 0 --exact 2>&1 | tail -3
timeout 60 $g x lizard generate -m $m -p "$p" -n 40 --temp 0 --device cuda 2>&1 | tail -3
timeout 60 $g x lizard generate -m $m -p "Once upon a time" -n 32 --device cuda --batch 16 --seed 1 2>&1 | tail -2
echo "== stage 1 on the GPU (seq 2048, batch 8, 12 steps)"
rm -rf $lz/s1
timeout -s INT 120 $g x lizard linearize --device cuda --stage 1 --teacher $m --data $lz/data --out $lz/s1 \
  --seq-len 2048 --batch 8 --steps 12 --eval-every 0 --eval-tokens 0 2>&1 | grep -vE "^\s*$" | tail -12
echo "== stage 2 on the GPU from it (seq 2048, batch 8, 8 steps)"
rm -rf $lz/s2
timeout -s INT 90 $g x lizard linearize --device cuda --stage 2 --teacher $lz/s1 --data $lz/data --out $lz/s2 \
  --seq-len 2048 --batch 8 --steps 8 --eval-every 0 --eval-tokens 0 2>&1 | grep -vE "^\s*$" | tail -10
cp $lz/s1/log.jsonl "$o/s1_log.jsonl" 2>/dev/null
cp $lz/s2/log.jsonl "$o/s2_log.jsonl" 2>/dev/null
echo "== bench generate on the GPU (batch 16, 1K and 16K)"
timeout 100 $g x lizard bench generate -m $m --device cuda --batch 16 --contexts 1024,16384 --out $lz/bg 2>&1 | tail -14
timeout 60 $g x lizard generate -m $lz/s1 -p "$p" -n 24 --temp 0 --device cuda 2>&1 | tail -2
