#!/usr/bin/env bash
# lizard vs llama.cpp on the same GGUF and the same cores: prefill (pp128, pp512) and decode (tg128)
# tokens/s, one after the other in one run, with the ratio. llama.cpp is built outside this repo
# and is never committed: point LLAMA_BENCH at its llama-bench binary.
#   LLAMA_BENCH=/path/to/llama-bench scripts/bench_vs_llamacpp.sh [MODEL] [THREADS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${2:-$(nproc)}
: "${LLAMA_BENCH:?set LLAMA_BENCH to a llama-bench binary built outside the repo}"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), threads $threads"
lc=$("$LLAMA_BENCH" -m "$model" -p 128,512 -n 128 -t "$threads" -r 3 -o json 2>/dev/null)
ours=$("$root/build/bench_cpu_model" "$model" --threads "$threads" --json)
python3 - "$lc" "$ours" <<'PY'
import json, sys
lc = json.loads(sys.argv[1]); ours = json.loads(sys.argv[2])
ref = {}
for r in lc:
    key = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
    ref[key] = r["avg_ts"]
print(f"{'test':8s} {'lizard tok/s':>13s} {'llama.cpp tok/s':>16s} {'ratio':>7s}")
for k in ("pp128", "pp512", "tg128"):
    a, b = ours.get(k), ref.get(k)
    if a and b:
        print(f"{k:8s} {a:13.1f} {b:16.1f} {a / b:7.2f}")
PY
