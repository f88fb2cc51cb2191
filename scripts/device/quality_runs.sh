#!/usr/bin/env bash
# Named linearization runs of docs/results.md ("Next runs"), each sized for one device call (<= 600 s on
# an H200) after the teacher and bundle are staged (scripts/device/gpu.sh recv1, recv2, unpack).
#   bash scripts/device/quality_runs.sh NAME        (NAME below; prints the held-out lines, $OUT/NAME.tgz)
# The tuned recipe: stage 1 --lr 3e-2, stage 2 --lr2 2e-3 --train-lizard, configs/lizard_rope_a05.json.
#   yard3 / yard10     the teacher fine-tuned with the same LoRA recipe (configs/teacher_lora.json), 3M / 10M
#   lr2x               Lizard 3M + 3M with stage-2 lr 4e-3 (against 13.34)
#   sweep              w64, gate99, perhead (per-head gate + sinks), meta8: four 3M + 3M pairs in one call
#   combo10            Lizard 10M + 10M with per-head gate + per-head sinks + 8 meta tokens (vs 10.78 / LoLCATs 10.41)
#   mwg3               meta_weights_gate 3M + 3M, shared sinks then per-head sinks (vs 13.34 / LoLCATs 12.32)
#   mwgsweep           3M + 3M variations of mwg + per-head sinks (mwgph3): stage-1 lr 1e-2 / 6e-2, 8 sinks,
#                      per-head gate, alpha init 1
#   mwg10              meta_weights_gate 10M + 10M (configs/lizard_rope_mwg.json: with per-head sinks; MWG_CFG='{...}'
#                      replaces the per-head-sinks option by others,
#                      MWG_NAME names the run, LR1 the stage-1 lr, SEED the seed), resumable like lol10
#                      (vs Lizard 10.78 / LoLCATs 10.41)
#   tput               stage-1 / stage-2 tokens/s of mwg + per-head sinks against shared_normaliser (sn: its
#                      backward adds a per-row pass and a dy copy), short runs one after the other
#   sn10               configs/lizard_rope_sn.json (mwg + per-head sinks + shared_normaliser, gate_init 0.999)
#                      10M + 10M, resumable; NAME (default sn10) and SEED as for mwg10
#   skip10             configs/lizard_rope_sn_skip.json (sn10's config + gate_skips_window: the gated branch over keys
#                      outside the window, as LoLCATs' linear part) 10M + 10M, resumable; NAME (default skip10), SEED
#   plain10            configs/lizard_plainfeat_sn_skip.json: skip10 with the feature maps on the plain (un-rotated) q, k
#                      beside the RoPE'd window (the paper's choice for the gated branch; two q/k sets), resumable
#   lol10              LoLCATs 10M + 10M (NAME, default lol10, and SEED: other seeds of the baseline), resumable: each call goes on where the last stopped (stops with
#                      SIGINT, which checkpoints, before DEADLINE seconds: 560) until lol10-s2 has its report
set -uo pipefail
name=${1:?usage: quality_runs.sh NAME}
lz=/tmp/lz
o=${OUT:-/tmp/out}
lin() { bash scripts/device/gpu.sh x lizard linearize --device cuda --data $lz/data --seq-len 2048 --batch 8 \
  --eval-every 200 "$@" 2>&1 | grep -E "held-out \(|done|error" ; }
lizard_pair() {  # NAME CONFIG_JSON [stage-2 flags...]: 3M + 3M with the tuned recipe (LR1: stage-1 lr)
  local n=$1 cfg=$2; shift 2
  lin --stage 1 --teacher $lz/model.gguf --config "$cfg" --lr ${LR1:-3e-2} --tokens 3000000 --out $lz/$n-s1
  lin --stage 2 --teacher $lz/$n-s1 --lr2 2e-3 --train-lizard --tokens 3000000 --out $lz/$n-s2 "$@"
}
tmpcfg() { local f=$lz/$1.json; python3 -c "import json,sys; c=json.load(open('configs/lizard_rope_a05.json')); c.update(json.loads(sys.argv[1])); json.dump(c, open(sys.argv[2], 'w'))" "$2" "$f"; echo "$f"; }
# A stage that may outlast one call: SIGINT (checkpoint + clean stop) at the deadline, --resume next call.
t0=$(date +%s)
resumable() {  # OUT_NAME ARGS...: skipped once OUT has report.json
  local n=$1; shift
  [ -f $lz/$n/report.json ] && { echo "$n: done already"; return 0; }
  local left=$(( ${DEADLINE:-560} - ($(date +%s) - t0) ))
  [ $left -gt 30 ] || { echo "$n: no time left in this call"; return 0; }
  local r=(); [ -f $lz/$n/train_state.safetensors ] && r=(--resume)
  timeout -s INT $left bash scripts/device/gpu.sh x lizard linearize --device cuda --data $lz/data --seq-len 2048 \
    --batch 8 --eval-every 200 --out $lz/$n "${r[@]}" "$@" 2>&1 | grep -E "held-out \(|done|error|step .*tok/s" | tail -4
}
run10() {  # NAME CONFIG: 10M + 10M with the tuned recipe, both stages resumable (LR1, SEED as for mwg10)
  local n=$1 cfg=$2
  resumable $n-s1 --stage 1 --teacher $lz/model.gguf --config "$cfg" --lr ${LR1:-3e-2} --tokens 10000000 ${SEED:+--seed $SEED}
  [ -f $lz/$n-s1/report.json ] && resumable $n-s2 --stage 2 --teacher $lz/$n-s1 --lr2 2e-3 --train-lizard \
    --tokens 10000000 ${SEED:+--seed $SEED}
}
case "$name" in
  yard3)  lin --stage 2 --teacher $lz/model.gguf --config configs/teacher_lora.json --lr2 2e-3 --tokens 3000000 --out $lz/yard3 ;;
  yard10) lin --stage 2 --teacher $lz/model.gguf --config configs/teacher_lora.json --lr2 2e-3 --tokens 10000000 --out $lz/yard10 ;;
  lol10)  run10 ${NAME:-lol10} configs/lolcats.json ;;
  sn10)   run10 ${NAME:-sn10} configs/lizard_rope_sn.json ;;
  skip10) run10 ${NAME:-skip10} configs/lizard_rope_sn_skip.json ;;
  plain10) run10 ${NAME:-plain10} configs/lizard_plainfeat_sn_skip.json ;;
  combo10) run10 combo10 "$(tmpcfg combo10 '{"gate": "per_head", "meta_per_head": true, "meta_tokens": 8}')" ;;
  mwg3)   for v in 'mwg3 {"meta_weights_gate": true}' 'mwgph3 {"meta_weights_gate": true, "meta_per_head": true}'; do
            echo "== ${v%% *}"; lizard_pair ${v%% *} "$(tmpcfg ${v%% *} "${v#* }")"
          done ;;
  mwgsweep) m='"meta_weights_gate": true, "meta_per_head": true'
          for v in "mlr1 1e-2 {$m}" "mlr6 6e-2 {$m}" "mm8 3e-2 {$m, \"meta_tokens\": 8}" \
                   "mgph 3e-2 {$m, \"gate\": \"per_head\"}" "ma1 3e-2 {$m, \"alpha_init\": 1.0}"; do
            read -r n lr js <<<"$v"
            echo "== $n (stage-1 lr $lr) $js"; LR1=$lr lizard_pair $n "$(tmpcfg $n "$js")"
          done ;;
  mwg10)  extra=${MWG_CFG:-}; [ -n "$extra" ] || extra='{"meta_per_head": true}'; n=${MWG_NAME:-mwg10}
          run10 $n "$(tmpcfg $n "$(python3 -c "import json,sys; c=json.loads(sys.argv[1]); c['meta_weights_gate']=True; print(json.dumps(c))" "$extra")")" ;;
  sweep)  for v in 'w64 {"window": 64}' 'gate99 {"gate_init": 0.99}' 'perhead {"gate": "per_head", "meta_per_head": true}' \
                   'meta8 {"meta_tokens": 8}'; do
            echo "== ${v%% *}"; lizard_pair ${v%% *} "$(tmpcfg ${v%% *} "${v#* }")"
          done ;;
  tput)   for v in 'tmwg {"meta_weights_gate": true, "meta_per_head": true}' \
                   'tsn {"meta_weights_gate": true, "meta_per_head": true, "shared_normaliser": true, "alpha_init": 1.0}'; do
            n=${v%% *}; c=$(tmpcfg $n "${v#* }")
            g=(bash scripts/device/gpu.sh x lizard linearize --device cuda --data $lz/data --seq-len 2048 --batch 8
               --eval-every 100000 --tokens 1500000)
            "${g[@]}" --stage 1 --teacher $lz/model.gguf --config $c --lr 3e-2 --out $lz/$n-s1 2>&1 | grep -E "done|error" | sed "s/^/$n: /"
            "${g[@]}" --stage 2 --teacher $lz/$n-s1 --lr2 2e-3 --train-lizard --out $lz/$n-s2 2>&1 | grep -E "done|error" | sed "s/^/$n: /"
          done ;;
  lr2x)   lin --stage 1 --teacher $lz/model.gguf --config configs/lizard_rope_a05.json --lr 3e-2 --tokens 3000000 --out $lz/lr2x-s1
          lin --stage 2 --teacher $lz/lr2x-s1 --lr2 4e-3 --train-lizard --tokens 3000000 --out $lz/lr2x-s2 ;;
  *) echo "quality_runs.sh: unknown run '$name'"; exit 2 ;;
esac
[ "$name" = mwg10 ] && name=${MWG_NAME:-mwg10}
[ "$name" = lol10 ] || [ "$name" = sn10 ] && name=${NAME:-$name}
(cd $lz && tar czf "$o/$name.tgz" $(ls -d $name* 2>/dev/null | sed 's|$|/report.json|') 2>/dev/null) || true
