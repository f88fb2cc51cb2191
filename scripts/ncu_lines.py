#!/usr/bin/env python3
"""Nsight Compute source counters per CUDA source line, on this machine (no GPU needed).

Input: the per-SASS-instruction CSV that `ncu -i REP --page source --csv --print-source sass` writes on the GPU
machine (scripts/device/fwd_probe.sh keeps it, gzipped), and the object the profiled kernel came from (built
with -lineinfo; the same build). SASS offsets (address minus the kernel's first address) are mapped to source
lines with nvdisasm -gi (scripts/sass_stats.py's sass_lines), and instructions executed and warp-stall
samples are summed per line: where a latency-bound kernel spends its issue slots and its waits.

  python3 scripts/ncu_lines.py fwd3_source.csv.gz build-dev/obj/lizard_attention_fwd.cu.o --kernel fwd3_kernelILi128ELi64E
"""
import argparse
import collections
import csv
import gzip
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sass_stats import sass_lines  # noqa: E402


def offsets_to_lines(obj, kernel):
    """{sass offset: ((file, line), opcode)} for the one kernel matching `kernel`."""
    res = {}
    for off, (f, ln), op in sass_lines(obj, kernel):
        if off in res:
            sys.exit(f"ncu_lines: {kernel!r} matches several kernels in {obj}; name one")
        res[off] = ((os.path.basename(f), ln), op)
    if not res:
        sys.exit(f"ncu_lines: no kernel matching {kernel!r} in {obj} (or no line info: build with -lineinfo)")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("obj")
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    raw = gzip.open(a.csv, "rt").read() if a.csv.endswith(".gz") else open(a.csv).read()
    rows = list(csv.reader(io.StringIO(raw)))
    hdr_i = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    hdr = rows[hdr_i]
    col = {name: hdr.index(name) for name in hdr}
    data = [r for r in rows[hdr_i + 1:] if r and r[0].startswith("0x")]
    base = int(data[0][0], 16)
    m = offsets_to_lines(a.obj, a.kernel)
    per_line = collections.defaultdict(lambda: [0, 0, collections.Counter()])
    per_op = collections.defaultdict(lambda: [0, 0])
    tot_i = tot_s = miss = 0
    for r in data:
        off = int(r[0], 16) - base
        ins = int(r[col["Instructions Executed"]] or 0)
        smp = int(r[col["Warp Stall Sampling (All Samples)"]] or 0)
        tot_i += ins
        tot_s += smp
        if off not in m:
            miss += 1
            continue
        line, op = m[off]
        per_line[line][0] += ins
        per_line[line][1] += smp
        per_line[line][2][op] += ins
        per_op[op.split(".")[0]][0] += ins
        per_op[op.split(".")[0]][1] += smp
    print(f"{len(data)} SASS rows, {miss} unmapped; {tot_i / 1e6:.1f} M warp instructions, {tot_s} stall samples")
    print(f"\n{'instr %':>8s} {'stall %':>8s}  line")
    top = sorted(per_line.items(), key=lambda kv: -(kv[1][0] / max(tot_i, 1) + kv[1][1] / max(tot_s, 1)))
    for (f, ln), (ins, smp, ops) in top[:a.top]:
        try:
            src = open(os.path.join("src/ops/cuda", f)).read().split("\n")[ln - 1].strip()[:70]
        except OSError:
            src = ""
        opstr = " ".join(f"{o}:{n * 100 // max(ins, 1)}" for o, n in ops.most_common(3))
        print(f"{100 * ins / tot_i:8.2f} {100 * smp / max(tot_s, 1):8.2f}  {f}:{ln}  {src}  [{opstr}]")
    print(f"\n{'opcode':12s} {'instr %':>8s} {'stall %':>8s}")
    for op, (ins, smp) in sorted(per_op.items(), key=lambda kv: -kv[1][0])[:25]:
        print(f"{op:12s} {100 * ins / tot_i:8.2f} {100 * smp / max(tot_s, 1):8.2f}")


if __name__ == "__main__":
    main()
