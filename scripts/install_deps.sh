#!/usr/bin/env bash
# Debian packages lizard builds against. Skips apt when everything is already there.
set -euo pipefail
pkgs=(cmake ninja-build g++ pkg-config libopenblas-dev nlohmann-json3-dev libcli11-dev libcpp-httplib-dev
      libpcre2-dev libfmt-dev zlib1g-dev libgtest-dev libbenchmark-dev python3-pip ccache)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "deps: ok"
