#!/usr/bin/env bash
# Fresh machine -> working lizard: Debian packages, the default teacher (verified), a build, and the
# main job on the default teacher.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"
"$root/scripts/fetch_model.sh"
"$root/scripts/build.sh"
"$root/build/lizard" info
"$root/build/lizard" generate --chat -n 64 -p "What is a lizard? Answer in two sentences."
