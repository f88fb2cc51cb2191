# One Lizard forward (the inference forward) and one fwd+bwd (as the trainers run it) at the paper's shape, for
# Nsight Compute: one warm-up call of each, then the profiled range (cudaProfilerStart / Stop). On the GPU machine:
#   ncu --clock-control none --profile-from-start off --set full \
#       -k regex:'lizard_fwd3|gate_fwd_out|gate_rev_out|win2|featbwd' python3 bench/gpu/profile_lizard.py > ncu.txt
# (needs build-dev/liblizard_capi.so, as bench_lizard.py, or LIZARD_CAPI). PROFILE_SHAPE="B L H Hkv D" picks another
# shape; PROFILE_PARTS=fwd profiles the inference forward alone (scripts/device/fwd_probe.sh).
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lizard as bl  # noqa: E402

B, L, H, Hkv, D = (int(x) for x in os.environ.get("PROFILE_SHAPE", "16 2048 32 32 128").split())
fwd_only = os.environ.get("PROFILE_PARTS", "all") == "fwd"
z = bl.Lizard(B, L, H, Hkv, D)
for profiled in (False, True):  # a warm-up call of each, then the profiled range
    if profiled:
        torch.cuda.cudart().cudaProfilerStart()
    z.fwd()
    if not fwd_only:
        z.fwd_bwd_chunked()
    torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
print(f"profiled B{B} L{L} H{H}/{Hkv} D{D}", flush=True)
