#!/usr/bin/env bash
# Where the v3 Lizard forward spends its instructions and stalls, on the GPU machine (run from the repo root):
# Nsight Compute source counters of one inference forward at the paper shape (instructions executed and
# warp-stall samples per SASS instruction), exported as CSV for scripts/ncu_lines.py, which maps them to CUDA
# source lines here (needs the object of the same build: build-dev/obj/lizard_attention_fwd.cu.o).
#   device: LIZARD_CAPI=path/to/liblizard_capi.so bash scripts/device/fwd_probe.sh   -> $OUT/fwd3_source.csv.gz
#   here:   python3 scripts/ncu_lines.py fwd3_source.csv.gz build-dev/obj/lizard_attention_fwd.cu.o \
#             --kernel fwd3_kernelILi128ELi64E
# PROFILE_SHAPE="B L H Hkv D" picks another shape (default 16 2048 32 32 128; bench/gpu/profile_lizard.py runs it).
set -uo pipefail
o=${OUT:-/tmp/out}
mkdir -p "$o" /tmp/probe
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
PROFILE_PARTS=fwd timeout 240 ncu --clock-control none --profile-from-start off -k regex:lizard_fwd3 \
  --section SourceCounters --section WarpStateStats --section LaunchStats --section Occupancy --section SpeedOfLight \
  -o /tmp/probe/fwd3 -f python3 bench/gpu/profile_lizard.py 2>&1 | tail -2
ncu -i /tmp/probe/fwd3.ncu-rep --page details 2>&1 |
  grep -E "Duration|Executed Ipc|Warp Cycles Per Issued|Registers Per|Achieved Active Warps" | head -8
ncu -i /tmp/probe/fwd3.ncu-rep --page source --csv --print-source sass 2>/dev/null | gzip >"$o/fwd3_source.csv.gz"
ls -la "$o/fwd3_source.csv.gz"
