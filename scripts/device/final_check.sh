#!/usr/bin/env bash
# A short last call: the whole GPU test suite on the final bundle, then the Lizard forward variants
# and the backward against FLA chunk_simple_gla (bench_lizard.py --final), each under a time limit.
#   run(command="bash scripts/device/final_check.sh", carry=[".stage/bundle", "build-dev/liblizard_capi.so", ".fla"])
set -uo pipefail
o=${OUT:-/tmp/out}
g="bash scripts/device/gpu.sh"
$g unpack >/dev/null
nvidia-smi --query-gpu=name --format=csv,noheader
timeout ${TEST_TIMEOUT:-100} /tmp/lz/bin/lizard_gpu_tests --gtest_color=no >"$o/gpu_tests.log" 2>&1
echo "lizard_gpu_tests exit $?"
grep -E "FAILED|PASSED|tests ran" "$o/gpu_tests.log" | head -20
grep -cE "^\[       OK" "$o/gpu_tests.log" | sed 's/^/tests OK: /'
grep -E "sweep variant|dalpha per" "$o/gpu_tests.log" | head -4 | cut -c1-400
PYTHONUNBUFFERED=1 timeout ${KB_TIMEOUT:-60} python3 bench/gpu/bench_lizard.py --quick >"$o/kernels.log" 2>&1
grep -E "ROW.*(lizard|sdpa)|profile|spot" "$o/kernels.log" | cut -c1-300 | head -24
PYTHONUNBUFFERED=1 timeout ${KB_TIMEOUT:-60} python3 bench/gpu/bench_lizard.py --final >"$o/kernels_final.log" 2>&1
grep -E "ROW|rel err" "$o/kernels_final.log" | cut -c1-200 | head -24
