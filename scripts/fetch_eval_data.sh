#!/usr/bin/env bash
# Held-out long documents for long-context evaluation (`lizard eval ppl|kl --ctx 2048..8192`): English prose
# that the training text (scripts/fetch_data.sh: Python, Perl, Git manuals) does not contain -- the
# PostgreSQL 15 manual from Debian's postgresql-doc-15 (HTML, PostgreSQL licence). Downloaded with
# `apt-get download`, unpacked with dpkg -x, tags stripped; the manual's pages are grouped by their name's
# first word (runtime-config-*, functions-*, sql-*, ...) in file-name order and each group joined into one
# document; groups of at least 48,000 characters (~12K SmolLM2 tokens) are kept, cut at 48,000. Written as
# data/longeval/postgres-docs.jsonl.gz (one {"text": ...} per document) with the package version and
# checksum in data/longeval/SOURCES.txt. Idempotent.
#   scripts/fetch_eval_data.sh [OUT_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/data/longeval}
if [ -f "$out/SOURCES.txt" ] && [ -f "$out/postgres-docs.jsonl.gz" ]; then
  echo "eval data: $out (present)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pkg=postgresql-doc-15
echo "eval data: downloading $pkg (2 MB) with apt-get download..."
(cd "$tmp" && apt-get download $pkg >/dev/null 2>&1) || {
  echo "error: apt-get download $pkg failed (needs Debian 12 package lists: apt-get update)" >&2
  exit 1
}
mkdir -p "$tmp/x" "$out.tmp"
deb=$(ls "$tmp"/*.deb)
dpkg -x "$deb" "$tmp/x"
echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version) sha256 $(sha256sum "$deb" | cut -d' ' -f1)" \
  >"$out.tmp/SOURCES.txt"
python3 - "$tmp/x/usr/share/doc/$pkg/html" "$out.tmp/postgres-docs.jsonl" <<'PY'
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

src, dst = sys.argv[1], sys.argv[2]
groups = {}
for f in sorted(glob.glob(os.path.join(src, "*.html"))):
    name = os.path.basename(f)[:-5]
    if name in ("bookindex", "index") or name.startswith("release"):  # an index and change lists, not prose
        continue
    groups.setdefault(re.split(r"[-.]", name)[0], []).append(f)
n = 0
with open(dst, "w", encoding="utf-8") as o:
    for key in sorted(groups):
        text = "\n\n".join(text_of(f) for f in groups[key])
        if len(text) >= 48000:
            o.write(json.dumps({"text": text[:48000]}, ensure_ascii=False) + "\n")
            n += 1
print(f"eval data: {n} documents of 48,000 characters")
PY
gzip -9n "$out.tmp/postgres-docs.jsonl"
rm -rf "$out"
mv "$out.tmp" "$out"
ls -la "$out"
