#!/usr/bin/env bash
# One call on a 2-GPU machine: the data-parallel check (torchrun, 1 vs 2 GPUs, on a small random
# teacher made there), then the GPU generation bench at batch 16 on synthetic SmolLM2 and Llama-3-8B
# shapes (1K..128K), then the kernel bench (Lizard forward variants, backward, flash vs SDPA,
# FLA chunk_simple_gla). Carry: .stage/bundle .stage/tok data/english build-dev/liblizard_capi.so .fla
set -uo pipefail
o=${OUT:-/tmp/out}
g="bash scripts/device/gpu.sh"
$g unpack
mkdir -p /tmp/lz && rm -rf /tmp/lz/data && cp -r data/english /tmp/lz/data
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$o/gpus.txt"
echo "== data-parallel check"
python3 scripts/device/make_tiny_teacher.py .stage/tok/tokenizer.json /tmp/lz/tiny 8 512 2>&1 | tail -1
MPI=0 STEPS=${DP_STEPS:-24} SEQ_LEN=1024 BATCH=16 OUT=$o timeout ${DP_TIMEOUT:-110} \
  bash scripts/device/dp_check.sh /tmp/lz/tiny /tmp/lz/data --max-data-tokens 2000000 2>&1 | tail -8
echo "== bench generate (GPU 0, batch 16, synthetic shapes)"
export CUDA_VISIBLE_DEVICES=0
timeout ${BG_TIMEOUT:-60} $g x lizard bench generate --device cuda --shape smollm2 --batch 16 \
  --contexts 1024,4096,16384,65536,131072 --decode 16 --out /tmp/lz/bg-smollm2 2>&1 | grep -E "^\||^- |GPU:" | head -20
timeout ${BG_TIMEOUT:-75} $g x lizard bench generate --device cuda --shape llama3-8b --batch 16 \
  --contexts 1024,4096,16384,32768,65536,131072 --decode 16 --out /tmp/lz/bg-llama3 2>&1 | grep -E "^\||^- |GPU:" | head -20
cp /tmp/lz/bg-smollm2/bench_generate.png "$o/bg_smollm2.png" 2>/dev/null
cp /tmp/lz/bg-llama3/bench_generate.png "$o/bg_llama3.png" 2>/dev/null
tar czf "$o/bench.tgz" -C /tmp/lz bg-smollm2 bg-llama3 2>/dev/null
echo "== kernel bench"
PYTHONUNBUFFERED=1 timeout ${KB_TIMEOUT:-110} python3 bench/gpu/bench_lizard.py --quick >"$o/kernels.log" 2>&1
grep -E "ROW|FLASH|profile|rel err|H200|H100" "$o/kernels.log" | tail -40
