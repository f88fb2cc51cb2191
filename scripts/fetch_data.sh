#!/usr/bin/env bash
# Training text for linearization: real English prose from Debian's documentation packages
# (python3.11-doc: the Python manuals as reStructuredText; perl-doc: the Perl manuals as POD;
# git-doc: the Git manuals as AsciiDoc text). Downloaded with `apt-get download` (no root needed),
# unpacked with dpkg -x, and written as three gzip'd plain-text files (one document per source file,
# documents separated by blank lines) into data/english/, with the package versions and checksums in
# data/english/SOURCES.txt. About 22 MB of text, ~5.5 M SmolLM2 tokens, ~7 MB compressed. Idempotent.
#   scripts/fetch_data.sh [OUT_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/data/english}
if [ -f "$out/SOURCES.txt" ] && [ -f "$out/python-docs.txt.gz" ]; then
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
# one document per file, blank line between documents, files in a stable order
emit() { sort | while read -r f; do cat "$f"; printf '\n\n'; done; }
find "$tmp/x/usr/share/doc/python3.11/html/_sources" -name '*.rst.txt' | emit | gzip -9n >"$out.tmp/python-docs.txt.gz"
find "$tmp/x/usr/share/perl" "$tmp/x/usr/share/doc/perl-doc" -name '*.pod' 2>/dev/null | emit | gzip -9n >"$out.tmp/perl-docs.txt.gz"
find "$tmp/x/usr/share/doc/git-doc" -name '*.txt' | emit | gzip -9n >"$out.tmp/git-docs.txt.gz"
rm -rf "$out"
mv "$out.tmp" "$out"
ls -la "$out"
echo "data: $out"
