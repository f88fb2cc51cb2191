#!/usr/bin/env python3
"""Static SASS statistics of CUDA objects, on this machine (no GPU needed).

Per kernel: instruction count, SFU exps and their denormal guards, optionally against a baseline object; for
one kernel, the source lines that generate the most instructions. A latency-bound kernel (see the Nsight Compute
profile in docs/cuda_notes.md, session 9) gets faster when its loop bodies get shorter, and this shows that
before a device call. The toolkit here has no cuobjdump / nvdisasm: the first run fetches NVIDIA's PyPI wheels
(nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm) into .tools/ (git-ignored).

  python3 scripts/sass_stats.py build-dev/obj/lizard_attention_fwd.cu.o
  python3 scripts/sass_stats.py NEW.o --base OLD.o            # per-kernel counts, old -> new
  python3 scripts/sass_stats.py NEW.o --kernel 'fwd3_kernelILi128ELi64E' --lines 20
"""
import argparse
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, ".tools", "cuda-bin")
INSN = re.compile(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)")
OFFSET_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)")


def tool(name):
    path = os.path.join(TOOLS, name)
    if os.path.exists(path):
        return path
    os.makedirs(TOOLS, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = {"cuobjdump": "nvidia-cuda-cuobjdump", "nvdisasm": "nvidia-cuda-nvdisasm"}[name]
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--platform", "manylinux2014_x86_64", "-d", tmp, pkg], capture_output=True, text=True)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if r.returncode != 0 or not wheels:
            sys.exit(f"sass_stats: could not fetch {pkg} from PyPI: {r.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            member = next((m for m in z.namelist() if m.endswith("/bin/" + name)), None)
            if member is None:
                sys.exit(f"sass_stats: {pkg}'s wheel has no bin/{name}")
            tmp_path = path + ".tmp"
            with open(tmp_path, "wb") as f:
                f.write(z.read(member))
            os.chmod(tmp_path, 0o755)
            os.replace(tmp_path, path)  # a partial download never looks like a tool
    return path


def per_kernel(obj):
    env = dict(os.environ, NVDISASM_PATH=tool("nvdisasm"))  # cuobjdump -sass runs nvdisasm
    out = subprocess.run([tool("cuobjdump"), "-sass", obj], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"sass_stats: cuobjdump failed on {obj}: {out.stderr.strip()[-300:]}")
    res, fn = {}, None
    for line in out.stdout.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            fn = m.group(1)
            res[fn] = collections.Counter()
            continue
        m = INSN.match(line)
        if m and fn:
            res[fn][m.group(1)] += 1
    return res


def short(fn):
    return re.sub(r"^_ZN.*?_cu_[0-9a-f]+", "", fn)[:64]


def sass_lines(obj, kernel):
    """(offset, (file, line), opcode) for every SASS instruction of the kernels matching `kernel` in `obj`, with the
    source line nvdisasm -gi gives it (the object needs -lineinfo). Offsets restart at 0 for each kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([tool("cuobjdump"), "-xelf", "all", os.path.abspath(obj)], cwd=tmp, capture_output=True)
        for cubin in glob.glob(os.path.join(tmp, "*.cubin")):
            text = subprocess.run([tool("nvdisasm"), "-gi", cubin], capture_output=True, text=True).stdout
            on, cur = False, None
            for line in text.splitlines():
                if line.startswith("//--------------------- .text."):
                    on, cur = re.search(kernel, line) is not None, None
                    continue
                if not on:
                    continue
                m = re.search(r'//## File "([^"]+)", line (\d+)', line)
                if m:
                    cur = (m.group(1), int(m.group(2)))
                    continue
                m = OFFSET_INSN.search(line)
                if m and cur:
                    yield int(m.group(1), 16), cur, m.group(2)


def source_lines(obj, kernel, top):
    hist = collections.Counter(line for _, line, _ in sass_lines(obj, kernel))
    if not hist:
        sys.exit(f"sass_stats: no kernel matching {kernel!r} (or no line info: build with -lineinfo)")
    print(f"\n{sum(hist.values())} instructions in kernels matching {kernel!r}; top source lines (text as in the "
          "working tree now):")
    for (f, ln), n in hist.most_common(top):
        try:
            src = open(f).read().split("\n")[ln - 1].strip()[:90]
        except OSError:
            src = ""
        print(f"{n:6d}  {os.path.basename(f)}:{ln}  {src}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("obj")
    ap.add_argument("--base", help="baseline object: counts shown as base -> obj")
    ap.add_argument("--kernel", default=None, help="regex: only these kernels; with --lines, their source lines")
    ap.add_argument("--lines", type=int, default=0, help="top source lines of the --kernel kernels")
    a = ap.parse_args()
    for p in [a.obj] + ([a.base] if a.base else []):
        if not os.path.exists(p):
            sys.exit(f"sass_stats: no such object: {p}")
    new = per_kernel(a.obj)
    old = per_kernel(a.base) if a.base else {}
    print(f"{'kernel':64s} {'instr':>13s} {'MUFU.EX2':>9s} {'FSETP.GEU':>9s}  (FSETP.GEU: mostly exp2f / __expf guards)")
    for fn, c in new.items():
        if a.kernel and not re.search(a.kernel, fn):
            continue
        n = sum(c.values())
        b = f"{sum(old[fn].values()):6d} -> " if fn in old else ""
        print(f"{short(fn):64s} {b}{n:6d} {c['MUFU.EX2']:9d} {c['FSETP.GEU.AND']:9d}")
    if a.lines and a.kernel:
        source_lines(a.obj, a.kernel, a.lines)


if __name__ == "__main__":
    main()
