#!/usr/bin/env bash
# One call after a kernel change: the whole GPU test suite on the bundle, compute-sanitizer on the small
# cases, then bench_lizard.py --quick (Lizard forward v3 and v0, the default chunked backward with its
# profile line and stage variant 1, flash vs SDPA, FLA chunk_gla / chunk_simple_gla), each under a time limit.
#   here:   scripts/device/build_bundle.sh && scripts/device_cuda.sh build
#   run(command="bash scripts/device/final_check.sh",
#       carry=[".stage/bundle", "build-dev/liblizard_capi.so", ".fla"])
#   env: TEST_TIMEOUT (150 s), SAN_TIMEOUT (90 s each), KB_TIMEOUT (200 s), FINAL=1 also runs --final,
#        LAYER=1 also runs bench_layer (issue 4 (c)), TESTS=0 skips the suite and the sanitizers, QUICK=0 skips
#        bench --quick (a second call on the warm machine: TESTS=0 QUICK=0 FINAL=1 LAYER=1). The capi library and bench_layer together are too big to
#        carry plain beside the bundle: `tar -cJf .stage/extra/extra.tar.xz build-dev/liblizard_capi.so
#        build-dev/bench_layer` here and carry .stage/extra instead of build-dev/liblizard_capi.so.
set -uo pipefail
o=${OUT:-/tmp/out}
g="bash scripts/device/gpu.sh"
$g unpack >/dev/null
[ -f .stage/extra/extra.tar.xz ] && tar -xJf .stage/extra/extra.tar.xz
nvidia-smi --query-gpu=name --format=csv,noheader
t=/tmp/lz/bin/lizard_gpu_tests
if [ "${TESTS:-1}" = 1 ]; then
timeout ${TEST_TIMEOUT:-150} $t --gtest_color=no >"$o/gpu_tests.log" 2>&1
echo "lizard_gpu_tests exit $?"
grep -E "FAILED|PASSED|tests ran" "$o/gpu_tests.log" | head -20
grep -cE "^\[       OK" "$o/gpu_tests.log" | sed 's/^/tests OK: /'
for tool in memcheck racecheck; do
  timeout ${SAN_TIMEOUT:-90} compute-sanitizer --tool $tool $t --gtest_color=no --gtest_filter='*SanitizerSmall*' \
    >"$o/sanitizer_$tool.log" 2>&1
  echo "sanitizer $tool exit $?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$o/sanitizer_$tool.log" | tail -1)"
done
fi
if [ "${QUICK:-1}" = 1 ]; then
PYTHONUNBUFFERED=1 timeout ${KB_TIMEOUT:-200} python3 bench/gpu/bench_lizard.py --quick >"$o/kernels.log" 2>&1
echo "bench --quick exit $?"
grep -E "^ROW|profile|rel err|spot" "$o/kernels.log" | grep -v "flash cuda fwd" | cut -c1-220 | head -60
fi
if [ "${FINAL:-0}" = 1 ]; then
  PYTHONUNBUFFERED=1 timeout ${KB_TIMEOUT:-200} python3 bench/gpu/bench_lizard.py --final >"$o/kernels_final.log" 2>&1
  grep -E "^ROW|^RATIO|rel err" "$o/kernels_final.log" | cut -c1-200 | head -50
fi
if [ "${LAYER:-0}" = 1 ]; then
  LAYER_TIMEOUT=${LAYER_TIMEOUT:-120} bash scripts/device_cuda.sh layer >"$o/layer.log" 2>&1
  echo "bench_layer exit $?"
  grep -vE "^\s*$" "$o/layer.log" | tail -16
fi
