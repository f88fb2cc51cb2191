#!/usr/bin/env bash
# The whole test suite on a fresh machine: dependencies, default model, build, every test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"
"$root/scripts/fetch_model.sh"
"$root/scripts/build.sh"
cd "$root/build"
# 2 shared cores: OpenMP threads waiting at a barrier must sleep, not spin, or a busy core stalls the rest
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
ctest --output-on-failure -j2 "$@"
