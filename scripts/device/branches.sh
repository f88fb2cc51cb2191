#!/usr/bin/env bash
# Several builds of the CUDA kernels (main and kernel branches) checked and timed on one GPU machine in one
# device call, so a branch's speed is a same-run ratio against main's.
#   here:    scripts/device/branches.sh build main fwd-fast-exp bf16-phi
#            (each ref in a git worktree under build-branches/, built by scripts/device_cuda.sh build there;
#             its lizard_gpu_tests and liblizard_capi.so xz-packed into .stage/branches/<ref>.*.xz)
#   device:  run(command="bash scripts/device/branches.sh run", carry=[".stage/branches", ".fla"])
#            per build: the kernel tests (summary and failures), then bench_lizard.py --quick --lizard-only with
#            LIZARD_CAPI pointing at that build; logs under $OUT/<ref>.{tests,bench}.log.
# The kernel tests only (scripts/device_cuda.sh build): branches that change the trainers or CudaModel also need
# the bundle's suite (scripts/device/build_bundle.sh, gpu.sh tests). Four builds carry ~50 MB.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
stage=.stage/branches
mode=${1:-}
shift || true

build() {
  [ $# -gt 0 ] || { echo "usage: $0 build REF [REF ...]"; exit 2; }
  rm -rf $stage.tmp && mkdir -p $stage.tmp build-branches
  for ref in "$@"; do
    git rev-parse --verify -q "$ref^{commit}" >/dev/null || { echo "branches.sh: no such ref: $ref"; exit 1; }
    local name=${ref//\//_} wt=build-branches/${ref//\//_}
    if [ -d "$wt" ]; then
      git -C "$wt" checkout -q --detach "$ref"
    else
      git worktree add -q --detach "$wt" "$ref"
    fi
    echo "== $ref ($(git -C "$wt" log --oneline -1 | cut -c1-80))"
    bash "$wt/scripts/device_cuda.sh" build >"$stage.tmp/$name.build.log" 2>&1 ||
      { tail -20 "$stage.tmp/$name.build.log"; exit 1; }
    xz -T2 -6 -c "$wt/build-dev/lizard_gpu_tests" >"$stage.tmp/$name.tests.xz"
    xz -T2 -6 -c "$wt/build-dev/liblizard_capi.so" >"$stage.tmp/$name.capi.so.xz"
  done
  rm -rf $stage && mv $stage.tmp $stage  # a half-built stage never looks complete
  du -sh $stage
}

run() {
  local o=${OUT:-/tmp/out} bin=/tmp/branches
  mkdir -p "$o" $bin
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
  local names=()
  for f in $stage/*.tests.xz; do names+=("$(basename "$f" .tests.xz)"); done
  [ ${#names[@]} -gt 0 ] || { echo "no builds in $stage: run '$0 build REF ...' here first"; exit 1; }
  for n in "${names[@]}"; do
    xz -dc "$stage/$n.tests.xz" >$bin/$n.tests && chmod +x $bin/$n.tests
    xz -dc "$stage/$n.capi.so.xz" >$bin/$n.capi.so
  done
  for n in "${names[@]}"; do
    echo "== $n: kernel tests"
    timeout ${TEST_TIMEOUT:-150} $bin/$n.tests --gtest_color=no >"$o/$n.tests.log" 2>&1 || true
    grep -E "^\[  (PASSED|FAILED) |tests ran|Failure" "$o/$n.tests.log" | head -12 || true
  done
  for n in "${names[@]}"; do
    echo "== $n: bench"
    LIZARD_CAPI=$bin/$n.capi.so PYTHONUNBUFFERED=1 timeout ${BENCH_TIMEOUT:-120} \
      python3 bench/gpu/bench_lizard.py --quick --lizard-only >"$o/$n.bench.log" 2>&1 || true
    grep -E "^ROW.*(fwd v0|chunked bwd \(default\))|profile.*stats-saved" "$o/$n.bench.log" | cut -c1-230 || true
  done
}

case "$mode" in
  build) build "$@" ;;
  run) run ;;
  *) echo "usage: $0 build REF [REF ...] | run"; exit 2 ;;
esac
