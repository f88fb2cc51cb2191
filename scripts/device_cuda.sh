#!/usr/bin/env bash
# CUDA kernels: build here, check and time on the lent GPU machine in one call.
#
#   scripts/device_cuda.sh build     # on the dev machine (nvcc 13, no GPU): reduced build into build-dev/
#   scripts/device_cuda.sh run       # on the GPU machine: tests, compute-sanitizer, benchmark
#   scripts/device_cuda.sh layer     # on the GPU machine: build-dev/bench_layer (one decoder layer, < 60 s)
#
# Why a reduced build here: it costs no device minutes and does not depend on the rest of the tree
# compiling. (Seen on the H200 image, 2026-11-27: /usr/include/{CLI,fmt,gtest,nlohmann}, OpenBLAS,
# PCRE2 and fmt libraries, cmake 4.4.3 and nvcc 13.0 ARE there, so the full CMake build should also
# work on the device; here the full build needs the CMake 3.25 CUDA20 flags noted below.)
# `build` compiles only what the GPU tests and the benchmark need (src/ops/cuda/*, the CPU Lizard
# reference, its config, tests/gpu/test_*.cpp) here, with fmt header-only and gtest, OpenBLAS,
# gfortran, libgomp, libstdc++ and cudart linked statically: the binaries then need only glibc and
# the NVIDIA driver there. x86-64 baseline flags (-mavx2 -mfma), never -march=native: this machine's
# CPU is not the GPU machine's.
#
# Device call (device tool `run`), carry build-dev and (for the FLA comparison) .fla:
#   run(command="bash scripts/device_cuda.sh run",
#       carry=["build-dev/lizard_gpu_tests", "build-dev/liblizard_capi.so", ".fla"])   (~5 min)
#   `bench` instead of `run`: quick correctness pass + forward timings only (~1.5 min).
# .fla/fla is flash-linear-attention's package folder, extracted from a fetched mirror
# (git archive HEAD fla | tar -x -C .fla); it is git-ignored and never committed.
# Also: CMake 3.25 (this machine) does not know nvcc's C++20 flag; for the full CMake build add
#   -DCMAKE_CUDA20_STANDARD_COMPILE_OPTION=-std=c++20 -DCMAKE_CUDA20_EXTENSION_COMPILE_OPTION=-std=c++20
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-run}
out=build-dev

build() {
  mkdir -p $out/obj $out/log
  local cxx="ccache g++" nvcc="ccache /usr/local/cuda/bin/nvcc"
  command -v ccache >/dev/null || { cxx=g++; nvcc=/usr/local/cuda/bin/nvcc; }
  local cxxflags="-O2 -std=c++20 -mavx2 -mfma -mf16c -fopenmp -fPIC -DFMT_HEADER_ONLY -DLIZARD_HAVE_CUDA=1
    -DLIZARD_SOURCE_DIR=\"$root\" -Isrc -Iinclude -isystem /usr/local/cuda/include -Wall -Wno-unused-parameter"
  local nvflags="-O3 -std=c++20 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo -Xptxas -v -Xcompiler -fPIC
    -Isrc -Iinclude"
  local objs=() jobs=()
  for f in src/ops/cuda/*.cu; do
    local o=$out/obj/$(basename "$f").o
    $nvcc $nvflags -c "$f" -o "$o" >$out/log/$(basename "$f").ptxas 2>&1 &
    jobs+=($!)
    objs+=("$o")
    # at most two compiles at once (shared machine)
    if ((${#jobs[@]} >= 2)); then wait "${jobs[0]}" || { cat $out/log/*.ptxas; exit 1; }; jobs=("${jobs[@]:1}"); fi
  done
  for j in "${jobs[@]}"; do wait "$j" || { cat $out/log/*.ptxas; exit 1; }; done
  local cpu_objs=()
  for f in src/ops/cuda/*.cpp src/ops/cpu/lizard_attention.cpp src/ops/cpu/lizard_chunked.cpp \
           src/ops/cpu/rmsnorm.cpp src/ops/cpu/rope.cpp src/ops/cpu/swiglu.cpp \
           src/model/lizard_config.cpp; do
    [ -f "$f" ] || continue
    local o=$out/obj/$(echo "$f" | tr / _).o
    $cxx $cxxflags -c "$f" -o "$o"
    cpu_objs+=("$o")
  done
  local test_objs=()
  for f in tests/gpu/test_*.cpp; do
    # kernel tests only: the model and training tests need the whole library (scripts/device/build_bundle.sh)
    case $f in */test_cuda_core.cpp | */test_stage1_cuda.cpp | */test_stage2_cuda.cpp | */test_cuda_state.cpp | \
      */test_cuda_eval.cpp | */test_cuda_model.cpp) continue ;; esac
    local o=$out/obj/$(basename "$f").o
    $cxx $cxxflags -c "$f" -o "$o"
    test_objs+=("$o")
  done
  local gcclib=$(dirname "$(g++ -print-libgcc-file-name)")
  # gemm.cu needs cuBLASLt: linked dynamically (the GPU image has libcublasLt.so.13), rpath to its folder
  local cublaslt="-L/usr/local/cuda/lib64 -lcublasLt -Wl,-rpath,/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib"
  local libs="-L/usr/local/cuda/lib64 -lcudart_static -Wl,-Bstatic -lopenblas -lgfortran -lquadmath
    $gcclib/libgomp.a -Wl,-Bdynamic -ldl -lrt -lpthread -static-libstdc++ -static-libgcc"
  g++ -o $out/lizard_gpu_tests "${test_objs[@]}" "${cpu_objs[@]}" "${objs[@]}" \
    -Wl,-Bstatic -lgtest -lgtest_main -Wl,-Bdynamic $libs $cublaslt
  $cxx $cxxflags -c bench/gpu/lizard_capi.cpp -o $out/obj/lizard_capi.o
    # the kernels only (no CPU reference, no OpenBLAS): small, and every symbol resolved
  g++ -shared -Wl,--no-undefined -o $out/liblizard_capi.so $out/obj/lizard_capi.o $out/obj/src_ops_cuda_cuda_error.cpp.o \
    "${objs[@]}" $cublaslt -L/usr/local/cuda/lib64 -lcudart_static -ldl -lrt -lpthread -static-libstdc++ -static-libgcc
  # one decoder layer, teacher and Lizard, fwd and fwd+bwd (issue 4 item c); cuBLASLt linked dynamically
  # (the static library is ~1 GB; the GPU machine's toolkit has libcublasLt.so.13), rpath to its folder
  $nvcc $nvflags -c bench/gpu/bench_layer.cu -o $out/obj/bench_layer.o >$out/log/bench_layer.ptxas 2>&1 ||
    { cat $out/log/bench_layer.ptxas; exit 1; }
  g++ -o $out/bench_layer $out/obj/bench_layer.o $out/obj/src_ops_cuda_cuda_error.cpp.o "${objs[@]}" \
    -L/usr/local/cuda/lib64 -lcublasLt -lcudart_static -ldl -lrt -lpthread -static-libstdc++ -static-libgcc \
    -Wl,-rpath,/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib
  strip $out/lizard_gpu_tests $out/liblizard_capi.so $out/bench_layer
  grep -hE "Compiling entry|registers|spill" $out/log/*.ptxas | sed 's/_ZN6lizard4cuda[^ ]*_cu_[0-9a-f]*//' |
    paste - - - | awk '{print}' > $out/log/ptxas_summary.txt || true
  echo "built: $out/lizard_gpu_tests $out/liblizard_capi.so $out/bench_layer"
  grep -c "spill stores" $out/log/*.ptxas >/dev/null && grep -hE "[1-9][0-9]* bytes spill" $out/log/*.ptxas || true
}

run() {
  local o=${OUT:-/tmp/out}
  mkdir -p "$o"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$o/gpu.txt"
  [ -x $out/lizard_gpu_tests ] || { echo "no $out/lizard_gpu_tests: run 'scripts/device_cuda.sh build' here first"; exit 1; }
  echo "== GPU tests"
  timeout 120 $out/lizard_gpu_tests --gtest_color=no 2>&1 | tee "$o/tests.log" | grep -E "lizard-cuda|OK|FAILED|PASSED|Failure|error|Expected|Which is|rel err" | head -220 || true
  echo "== compute-sanitizer (memcheck, racecheck) on the small cases"
  timeout 100 compute-sanitizer --tool memcheck --leak-check no $out/lizard_gpu_tests --gtest_color=no \
    --gtest_filter='*SanitizerSmall*:*BackwardMatches*' 2>&1 | tail -4 | tee "$o/sanitizer.log" || true
  timeout 100 compute-sanitizer --tool racecheck $out/lizard_gpu_tests --gtest_color=no \
    --gtest_filter='*SanitizerSmall*' 2>&1 | tail -4 | tee -a "$o/sanitizer.log" || true
  echo "== benchmark"
  PYTHONUNBUFFERED=1 timeout ${BENCH_TIMEOUT:-280} python3 bench/gpu/bench_lizard.py 2>&1 | tee "$o/bench.log" || true
}

# Timing only (kernels already checked by `run`): a quick correctness pass, then both forward
# variants, SDPA and FLA forward in one process.
bench() {
  local o=${OUT:-/tmp/out}
  mkdir -p "$o"
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
  timeout 60 $out/lizard_gpu_tests --gtest_color=no --gtest_filter='*ChunkedBf16*:*Refuses*:*Decode*:FlashCuda.*' 2>&1 | grep -E "PASSED|FAILED|rel err" || true
  PYTHONUNBUFFERED=1 timeout ${BENCH_TIMEOUT:-200} python3 bench/gpu/bench_lizard.py --final 2>&1 | tee "$o/bench.log" || true
}

# One decoder layer (teacher and Lizard) fwd and fwd+bwd, tokens/s and fraction of a measured 8192^3 GEMM
# (< 60 s). Device call: run(command="bash scripts/device_cuda.sh layer", carry=["build-dev/bench_layer"])
layer() {
  local o=${OUT:-/tmp/out}
  mkdir -p "$o"
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader || true
  [ -x $out/bench_layer ] || { echo "no $out/bench_layer: run 'scripts/device_cuda.sh build' here first"; exit 1; }
  LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} timeout ${LAYER_TIMEOUT:-90} $out/bench_layer "$@" 2>&1 |
    tee "$o/bench_layer.log"
}

case "$mode" in
  build) build ;;
  run) run ;;
  bench) bench ;;
  layer) shift; layer "$@" ;;
  *) echo "usage: $0 build|run|bench|layer"; exit 2 ;;
esac
