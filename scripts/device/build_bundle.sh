#!/usr/bin/env bash
# Builds, on this (GPU-less) machine, everything a GPU run needs and packs it small enough to carry
# to the lent GPU machine: the lizard CLI and lizard_gpu_tests with the CUDA backend (sm_90a), x86-64
# baseline flags (never -march=native: the GPU machine's CPU differs), libstdc++/libgcc static, and the
# non-system shared libraries they need (OpenBLAS, PCRE2, fmt, cpp-httplib and its deps, ...) beside
# them. CUDA's own libraries (cudart, cuBLASLt, NCCL) are NOT packed: the GPU image has them
# (scripts/device/gpu.sh sets LD_LIBRARY_PATH). Output: .stage/bundle/bundle.tar.xz (git-ignored).
#   scripts/device/build_bundle.sh            # then carry .stage/bundle
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
b=build-bundle
cmake -S . -B $b -G Ninja -DCMAKE_BUILD_TYPE=Release -DLIZARD_NATIVE=OFF -DLIZARD_CUDA=ON -DLIZARD_BENCH=OFF \
  -DLIZARD_TESTS=ON -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc" >/dev/null
ninja -C $b -j${JOBS:-2} lizard_cli lizard_gpu_tests
stage=.stage/bundle
rm -rf $stage.tmp && mkdir -p $stage.tmp/bin/lib
cp $b/lizard $b/lizard_gpu_tests $stage.tmp/bin/
strip $stage.tmp/bin/lizard $stage.tmp/bin/lizard_gpu_tests
# shared libraries outside glibc and CUDA
for exe in $b/lizard $b/lizard_gpu_tests; do
  ldd $exe | awk '/=> \//{print $3}'
done | sort -u | grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libcuda|libcudart|libcublas|libcublasLt|libnccl)\.so' |
  while read -r lib; do cp -L "$lib" $stage.tmp/bin/lib/; done
tar -C $stage.tmp -cJf $stage.tmp/bundle.tar.xz bin
rm -rf $stage.tmp/bin $stage
mv $stage.tmp $stage
ls -la $stage
