#!/usr/bin/env bash
# Training text for linearization: real English prose from Debian's documentation packages
# (python3.11-doc: the Python manuals as reStructuredText; perl-doc: the Perl manuals as POD;
# git-doc: the Git manuals as AsciiDoc text). Downloaded with `apt-get download` (no root needed),
# unpacked with dpkg -x, and written as three gzip'd JSONL files (one {"text": ...} document per
# source file, so the held-out split has documents to choose from) into data/english/, with the
# package versions and checksums in
# data/english/SOURCES.txt. About 22 MB of text, ~5.5 M SmolLM2 tokens, ~7 MB compressed. Idempotent.
#   scripts/fetch_data.sh [OUT_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/data/english}
if [ -f "$out/SOURCES.txt" ] && [ -f "$out/python-docs.jsonl.gz" ]; then
  echo "data: $out (present)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pkgs="python3.11-doc perl-doc git-doc"
echo "data: downloading $pkgs (23 MB) with apt-get download..."
(cd "$tmp" && apt-get download $pkgs >/dev/null 2>&1) || {
  echo "error: apt-get download $pkgs failed (needs Debian 12 package lists: apt-get update)" >&2
  exit 1
}
mkdir -p "$tmp/x" "$out.tmp"
: >"$out.tmp/SOURCES.txt"
for deb in "$tmp"/*.deb; do
  dpkg -x "$deb" "$tmp/x"
  echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version) sha256 $(sha256sum "$deb" | cut -d' ' -f1)" \
    >>"$out.tmp/SOURCES.txt"
done
# JSONL, one {"text": ...} per source file (the loader's unit for the held-out split), stable order
to_jsonl() {
  python3 -c 'import json, sys
for f in sorted(l.strip() for l in sys.stdin if l.strip()):
    t = open(f, encoding="utf-8", errors="replace").read().strip()
    if t: print(json.dumps({"text": t}, ensure_ascii=False))'
}
find "$tmp/x/usr/share/doc/python3.11/html/_sources" -name '*.rst.txt' | to_jsonl | gzip -9n >"$out.tmp/python-docs.jsonl.gz"
find "$tmp/x/usr/share/perl" "$tmp/x/usr/share/doc/perl-doc" -name '*.pod' 2>/dev/null | to_jsonl | gzip -9n >"$out.tmp/perl-docs.jsonl.gz"
find "$tmp/x/usr/share/doc/git-doc" -name '*.txt' | to_jsonl | gzip -9n >"$out.tmp/git-docs.jsonl.gz"
rm -rf "$out"
mv "$out.tmp" "$out"
ls -la "$out"
echo "data: $out"
