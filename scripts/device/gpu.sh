#!/usr/bin/env bash
# Driver for runs on the lent GPU machine (device tool), over several calls on one warm machine.
# The teacher (98 MB) is larger than one call carries (64 MiB with the tree), so it travels in two
# halves, and the bundle (~20 MB) in a third call:
#   here:    scripts/device/build_bundle.sh && scripts/device/gpu.sh split     (makes .stage/m1, .stage/m2)
#   call 1:  carry [.stage/m1]                          command: bash scripts/device/gpu.sh recv1
#   call 2:  carry [.stage/m2, data/english]            command: bash scripts/device/gpu.sh recv2
#   call 3:  carry [.stage/bundle]                      command: bash scripts/device/gpu.sh unpack && ...
#   later:   the same as call 3 after a rebuild (while the machine stays warm: 30 s idle)
# Everything lands in /tmp/lz (kept while the machine stays warm): model.gguf, data/, bin/.
#   gpu.sh tests                 GPU test suite + compute-sanitizer on the small cases
#   gpu.sh x CMD ARGS...         run bin/CMD with the right library path (e.g. gpu.sh x lizard info ...)
set -euo pipefail
lz=/tmp/lz
out=${OUT:-/tmp/out}
mkdir -p $lz "$out"
. "$(dirname "${BASH_SOURCE[0]}")/env.sh" $lz/bin
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mode=${1:-}
shift || true
case "$mode" in
  split)  # here: the two halves of the GGUF
    rm -rf .stage/m1 .stage/m2 && mkdir -p .stage/m1 .stage/m2
    split -b 52000000 models/SmolLM2-135M-Instruct.Q4_1.gguf .stage/m1/part
    mv .stage/m1/partab .stage/m2/ ;;
  recv1)
    cp .stage/m1/partaa $lz/
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ;;
  recv2)
    cp .stage/m2/partab $lz/
    cat $lz/partaa $lz/partab >$lz/model.gguf
    echo "$gguf_sha  $lz/model.gguf" | sha256sum -c
    rm -rf $lz/data && cp -r data/english $lz/data ;;
  unpack)
    rm -rf $lz/bin && tar -C $lz -xJf .stage/bundle/bundle.tar.xz
    [ -f $lz/model.gguf ] || echo "note: no $lz/model.gguf (recv1/recv2 first)" ;;
  tests)
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
    set +e
    # the whole log to a file first: a pipe that closes early (head) would kill the test binary
    timeout ${TEST_TIMEOUT:-240} $lz/bin/lizard_gpu_tests --gtest_color=no "$@" >"$out/gpu_tests.log" 2>&1
    echo "lizard_gpu_tests exit $?"
    grep -E "OK \]|FAILED|PASSED|Failure|tests ran" "$out/gpu_tests.log" | grep -vE "^\[       OK" | head -60
    grep -cE "^\[       OK" "$out/gpu_tests.log" | sed 's/^/tests OK: /'
    echo "== compute-sanitizer memcheck (small cases)"
    timeout 120 compute-sanitizer --tool memcheck --leak-check no $lz/bin/lizard_gpu_tests --gtest_color=no \
      --gtest_filter='*SanitizerSmall*' 2>&1 | tail -3 | tee "$out/sanitizer.log"
    echo "== compute-sanitizer racecheck (small cases)"
    timeout 120 compute-sanitizer --tool racecheck $lz/bin/lizard_gpu_tests --gtest_color=no \
      --gtest_filter='*SanitizerSmall*' 2>&1 | tail -3 | tee -a "$out/sanitizer.log"
    set -e ;;
  x)
    cmd=$1
    shift
    exec $lz/bin/$cmd "$@" ;;
  *) echo "usage: $0 split|recv1|recv2|unpack|tests|x CMD ..."; exit 2 ;;
esac
