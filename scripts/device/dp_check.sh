#!/usr/bin/env bash
# Data-parallel check on a machine with 2+ GPUs: the same `lizard linearize` stage-1 run (same global
# batch) once with 1 process on 1 GPU and once with 2 processes (torchrun, and mpirun when present);
# prints both loss curves side by side with the largest difference, and the tokens/s ratio.
#   scripts/device/dp_check.sh MODEL DATA [extra linearize flags...]
#   e.g. bash scripts/device/dp_check.sh /tmp/lz/model.gguf /tmp/lz/data --max-data-tokens 400000
# Environment: LIZARD (the binary; default /tmp/lz/bin/lizard, else `lizard` on PATH), STEPS (20),
# BATCH (8, global; must be even), SEQ_LEN (512), DEVICE (cuda), WORK (scratch, default /tmp/dp_check),
# OUT (where the summary goes, default WORK), MPI (auto|0|1).
# One greppable line at the end:
#   [dp] torchrun 2 GPUs vs 1: max |dloss| ... (rel ...) over N steps; tok/s 1 GPU ..., 2 GPUs ... (x...)
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,12p "$0"; exit 2; }
model=$1 data=$2
shift 2
lizard=${LIZARD:-/tmp/lz/bin/lizard}
[ -x "$lizard" ] || lizard=$(command -v lizard)
steps=${STEPS:-20} batch=${BATCH:-8} seq_len=${SEQ_LEN:-512} device=${DEVICE:-cuda}
work=${WORK:-/tmp/dp_check}
out=${OUT:-$work}
mkdir -p "$work" "$out"
. "$(dirname "${BASH_SOURCE[0]}")/env.sh" "$(dirname "$lizard")"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/dp_gpus.txt"
n_gpu=$(wc -l <"$out/dp_gpus.txt")
[ "$n_gpu" -ge 2 ] || { echo "dp_check: needs 2 GPUs, found $n_gpu"; exit 1; }

args=(linearize --teacher "$model" --data "$data" --stage 1 --device "$device" --steps "$steps" --batch "$batch"
      --seq-len "$seq_len" --eval-tokens 0 --val-seqs 1 "$@")
launcher_vars=(-u RANK -u WORLD_SIZE -u LOCAL_RANK -u MASTER_ADDR -u MASTER_PORT -u OMPI_COMM_WORLD_SIZE
               -u PMI_SIZE -u SLURM_NTASKS -u SLURM_PROCID)
runs=()
# CPU threads: all cores for the single process, half each for two (torchrun alone would give
# OMP_NUM_THREADS=1; lizard's -t 0 would give each all cores). Don't pass -t in the extra flags.
cores=$(nproc)
half_cores=$(( cores / 2 ))

echo "== 1 process, 1 GPU"
rm -rf "$work/one"
env "${launcher_vars[@]}" CUDA_VISIBLE_DEVICES=0 "$lizard" "${args[@]}" -t "$cores" --out "$work/one" 2>&1 | tee "$out/dp_one.log" | tail -4
runs+=("1 GPU:$work/one")

if command -v torchrun >/dev/null; then
  echo "== torchrun, 2 processes"
  rm -rf "$work/torchrun"
  env "${launcher_vars[@]}" OMP_NUM_THREADS=$half_cores torchrun --standalone --nproc_per_node 2 --no-python "$lizard" "${args[@]}" -t "$half_cores" \
    --out "$work/torchrun" 2>&1 | tee "$out/dp_torchrun.log" | tail -4 || echo "dp_check: the torchrun run failed (dp_torchrun.log)"
  runs+=("torchrun 2 GPUs:$work/torchrun")
else
  echo "dp_check: no torchrun on PATH; skipped"
fi

mpi=${MPI:-auto}
if [ "$mpi" = 1 ] || { [ "$mpi" = auto ] && command -v mpirun >/dev/null; }; then
  echo "== mpirun, 2 processes (file rendezvous in OUT/.dist)"
  rm -rf "$work/mpirun"
  env "${launcher_vars[@]}" OMP_NUM_THREADS=$half_cores mpirun -np 2 --allow-run-as-root -x NCCL_NVLS_ENABLE \
    -x LD_LIBRARY_PATH -x OMP_WAIT_POLICY -x OMP_NUM_THREADS "$lizard" "${args[@]}" -t "$half_cores" --out "$work/mpirun" 2>&1 | tee "$out/dp_mpirun.log" | tail -4 ||
    echo "dp_check: the mpirun run failed (dp_mpirun.log)"
  runs+=("mpirun 2 GPUs:$work/mpirun")
fi

python3 - "$batch" "$seq_len" "${runs[@]}" <<'EOF' | tee "$out/dp_summary.txt"
import json, statistics, sys
batch, seq_len = int(sys.argv[1]), int(sys.argv[2])
runs = []
for arg in sys.argv[3:]:
    name, path = arg.split(":", 1)
    steps = {}
    try:
        for line in open(path + "/log.jsonl"):
            j = json.loads(line)
            if "loss" in j and "step" in j:
                steps[j["step"]] = j
    except OSError as e:
        print(f"{name}: no log ({e})")
        continue
    runs.append((name, steps))
if len(runs) < 2:
    sys.exit("dp_check: fewer than two runs finished")
base_name, base = runs[0]
def tok_s(steps):  # median step time past the first two (warm-up), global tokens per second
    times = [s["step_s"] for k, s in sorted(steps.items()) if k > 2] or [s["step_s"] for s in steps.values()]
    return batch * seq_len / statistics.median(times)
names = [n for n, _ in runs]
print("step " + " ".join(f"{n:>18}" for n in names) + "   max |diff|")
for k in sorted(base):
    ls = [r[k]["loss"] if k in r else float("nan") for _, r in runs]
    print(f"{k:4d} " + " ".join(f"{l:18.8e}" for l in ls) + f"   {max(abs(l - ls[0]) for l in ls[1:]):.3e}")
t1 = tok_s(base)
for name, r in runs[1:]:
    common = [k for k in base if k in r]
    d = max(abs(r[k]["loss"] - base[k]["loss"]) for k in common)
    rel = max(abs(r[k]["loss"] - base[k]["loss"]) / abs(base[k]["loss"]) for k in common)
    t = tok_s(r)
    print(f"[dp] {name} vs {base_name}: max |dloss| {d:.3e} (rel {rel:.2e}) over {len(common)} steps; "
          f"tok/s {base_name} {t1:.0f}, {name} {t:.0f} (x{t / t1:.2f}, {t / 2:.0f} per GPU); "
          f"batch {batch} x {seq_len}")
EOF
