#!/usr/bin/env bash
# Real English text from Debian's documentation packages, downloaded with `apt-get download` (no root needed),
# unpacked with dpkg -x and written as gzip'd JSONL ({"text": ...} per document) with the package versions and
# checksums in SOURCES.txt. Idempotent.
#   scripts/fetch_data.sh [OUT_DIR]              training text -> data/english: python3.11-doc (the Python
#       manuals as reStructuredText), perl-doc (POD), git-doc (AsciiDoc), one document per source file (so
#       the held-out split has documents to choose from); ~22 MB of text, ~5.5 M SmolLM2 tokens, ~7 MB.
#   scripts/fetch_data.sh --longeval [OUT_DIR]   held-out long documents for long-context evaluation
#       (`lizard eval kl|ppl --ctx 2048..8192`, scripts/device/long_eval.sh) -> data/longeval: the PostgreSQL 15
#       manual (postgresql-doc-15, HTML, PostgreSQL licence; text the training set does not contain), tags
#       stripped, pages grouped by their name's first word (runtime-config-*, functions-*, ...) in file-name
#       order, each group one document; groups of >= 48,000 characters (~12K tokens) kept, cut at 48,000.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
set_name=english
if [ "${1:-}" = --longeval ]; then set_name=longeval; shift; fi
out=${1:-$root/data/$set_name}
if [ $set_name = english ]; then pkgs="python3.11-doc perl-doc git-doc" first=python-docs.jsonl.gz size="23 MB"
else pkgs=postgresql-doc-15 first=postgres-docs.jsonl.gz size="2 MB"; fi
if [ -f "$out/SOURCES.txt" ] && [ -f "$out/$first" ]; then
  echo "data: $out (present)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "data: downloading $pkgs ($size) with apt-get download..."
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
if [ $set_name = english ]; then
  find "$tmp/x/usr/share/doc/python3.11/html/_sources" -name '*.rst.txt' | to_jsonl | gzip -9n >"$out.tmp/python-docs.jsonl.gz"
  find "$tmp/x/usr/share/perl" "$tmp/x/usr/share/doc/perl-doc" -name '*.pod' 2>/dev/null | to_jsonl | gzip -9n >"$out.tmp/perl-docs.jsonl.gz"
  find "$tmp/x/usr/share/doc/git-doc" -name '*.txt' | to_jsonl | gzip -9n >"$out.tmp/git-docs.jsonl.gz"
else
  python3 - "$tmp/x/usr/share/doc/postgresql-doc-15/html" <<'PY' | gzip -9n >"$out.tmp/postgres-docs.jsonl.gz"
import glob, json, os, re, sys
from html.parser import HTMLParser

class Text(HTMLParser):  # visible text; block elements start a new line
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "pre", "dt", "dd", "table"}
    def __init__(self):
        super().__init__()
        self.out, self.skip = [], 0
    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"): self.skip += 1
        if tag in self.BLOCK: self.out.append("\n")
    def handle_endtag(self, tag):
        if tag in ("script", "style"): self.skip -= 1
    def handle_data(self, data):
        if not self.skip: self.out.append(data)

def text_of(path):
    p = Text()
    p.feed(open(path, encoding="utf-8", errors="replace").read())
    t = re.sub(r"[ \t]+\n", "\n", "".join(p.out))
    return re.sub(r"\n{3,}", "\n\n", t).strip()

groups = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.html"))):
    name = os.path.basename(f)[:-5]
    if name in ("bookindex", "index") or name.startswith("release"):  # an index and change lists, not prose
        continue
    groups.setdefault(re.split(r"[-.]", name)[0], []).append(f)
for key in sorted(groups):
    text = "\n\n".join(text_of(f) for f in groups[key])
    if len(text) >= 48000:
        print(json.dumps({"text": text[:48000]}, ensure_ascii=False))
PY
fi
rm -rf "$out"
mv "$out.tmp" "$out"
ls -la "$out"
echo "data: $out"
