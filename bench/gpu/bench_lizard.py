# Lizard attention (CUDA, this repo) vs flash-linear-attention's chunk_gla / chunk_simple_gla and
# PyTorch SDPA (flash, causal), same run, same card. Medians of triton's do_bench (CUDA events,
# warm-up first). Needs build-dev/liblizard_capi.so (scripts/device_cuda.sh build) and, for FLA, its
# `fla/` package folder in .fla/ (carried; never committed).
#   python3 bench/gpu/bench_lizard.py [--quick] [--with-gla]   (chunk_gla: > 4 min of autotune)
#   python3 bench/gpu/bench_lizard.py --flash [--quick]   (flash attention only: SDPA and this repo's kernels)
#   python3 bench/gpu/bench_lizard.py --gla-fb   (fwd+bwd vs chunk_gla in one run: minutes of FLA autotune)
#   LIZARD_CAPI=other/liblizard_capi.so python3 bench/gpu/bench_lizard.py --quick --lizard-only   (another build)
import ctypes, math, os, sys, time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(root, ".fla"))
# LIZARD_CAPI names another build of the library (to time two builds on one machine)
lib = ctypes.CDLL(os.environ.get("LIZARD_CAPI") or os.path.join(root, "build-dev", "liblizard_capi.so"))
lib.lz_last_error.restype = ctypes.c_char_p
P, I, Fl = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
lib.lz_forward_bf16.argtypes = [P] * 9 + [I] * 9 + [P]
lib.lz_forward_recurrent.argtypes = [P] * 9 + [I] * 10 + [P]
lib.lz_backward_parallel.argtypes = [P] * 17 + [I] * 10 + [P]
lib.lz_backward_chunked.argtypes = [P] * 17 + [I] * 10 + [P]
lib.lz_set_forward_variant.argtypes = [I]
lib.lz_set_forward_split.argtypes = [I]
lib.lz_set_backward_stage_variant.argtypes = [I]
lib.lz_set_backward_state_variant.argtypes = [I]
lib.lz_set_save_window_stats.argtypes = [I]
lib.lz_flash_fwd.argtypes = [P] * 5 + [I] * 5 + [P]
lib.lz_flash_bwd.argtypes = [P] * 10 + [I] * 5 + [P]


def flash_fwd(q, k, v, out):
    """This repo's causal GQA flash attention; q, out [B, L, H, D], k, v [B, L, Hkv, D] bf16."""
    B, L, H, D = q.shape
    check(lib.lz_flash_fwd(ptr(q), ptr(k), ptr(v), ptr(out), None, B, L, H, k.shape[2], D,
                           ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))

class Flash:
    """This repo's causal GQA flash attention forward (saving lse) and backward; bf16 [B, L, H, D]."""

    def __init__(self, q, k, v, do):
        self.q, self.k, self.v, self.do = q, k, v, do
        B, L, H, D = q.shape
        self.out = torch.empty_like(q)
        self.lse = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
        self.delta = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
        self.dq, self.dk, self.dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def fwd(self):
        B, L, H, D = self.q.shape
        check(lib.lz_flash_fwd(ptr(self.q), ptr(self.k), ptr(self.v), ptr(self.out), ptr(self.lse), B, L, H,
                               self.k.shape[2], D, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))
        return self.out

    def fwd_bwd(self):
        self.fwd()
        B, L, H, D = self.q.shape
        check(lib.lz_flash_bwd(ptr(self.q), ptr(self.k), ptr(self.v), ptr(self.out), ptr(self.do), ptr(self.lse),
                               ptr(self.dq), ptr(self.dk), ptr(self.dv), ptr(self.delta), B, L, H,
                               self.k.shape[2], D,
                               ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))


def flash_check_vs_sdpa(q, k, v, do):
    """Forward and gradients of this repo's flash kernel vs SDPA autograd (batch 0, equal heads)."""
    q, k, v, do = (x[:1].detach().contiguous() for x in (q, k, v, do))
    fl = Flash(q, k, v, do)
    fl.fwd_bwd()
    qt, kt, vt = (x.transpose(1, 2).contiguous().requires_grad_(True) for x in (q, k, v))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    o.backward(do.transpose(1, 2).contiguous())
    torch.cuda.synchronize()
    err = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
    return (err(fl.out, o.transpose(1, 2)), err(fl.dq, qt.grad.transpose(1, 2)), err(fl.dk, kt.grad.transpose(1, 2)),
            err(fl.dv, vt.grad.transpose(1, 2)))


def flash_rows(tag, qd, kd, vd, do, H, Hkv, sd_f, sd_fb, row):
    """This repo's flash kernels (one forward, one backward) at one shape, equal heads as SDPA and the
    shape's GQA; one FLASH line each with sdpa ms / ours ms (goal >= 0.8)."""
    try:
        e = flash_check_vs_sdpa(qd, kd, vd, do)
        print(f"  flash cuda vs sdpa (batch 0) rel err: out {e[0]:.2e} dq {e[1]:.2e} dk {e[2]:.2e} dv {e[3]:.2e}",
              flush=True)
        for hkv in sorted({H, Hkv}, reverse=True):
            kk, vv = (kd[:, :, :hkv].contiguous(), vd[:, :, :hkv].contiguous()) if hkv != H else (kd, vd)
            fl = Flash(qd, kk, vv, do)
            f = med(fl.fwd)
            fb = med(fl.fwd_bwd, 10, 50)
            row(tag, f"flash cuda (Hkv={hkv})", f, fb)
            print(f"FLASH {tag:20s} Hkv={hkv:<3d}: ours fwd {f:8.3f} f+b {fb:9.3f} ms | "
                  f"sdpa/ours fwd {sd_f / f:.2f}  fwd+bwd {sd_fb / fb:.2f}  bwd only {(sd_fb - sd_f) / (fb - f):.2f}",
                  flush=True)
            del fl, kk, vv
            torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001
        print("  flash cuda failed:", str(e)[:300], flush=True)


def flash_only():
    """SDPA flash beside this repo's flash kernels at every shape; nothing else."""
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    shapes = [(16, 32, 32, 128, 2048), (8, 9, 3, 64, 2048), (16, 32, 32, 128, 4096), (16, 32, 32, 128, 8192),
              (8, 9, 3, 64, 8192)]
    if "--quick" in sys.argv:
        shapes = shapes[:2]
    rows = []
    row = lambda tag, name, f, fb: rows.append((tag, name, f, fb))
    for (B, H, Hkv, D, L) in shapes:
        tag = f"B{B} H{H} D{D} L{L}"
        q, k, v = (torch.randn(B, L, H, D, device=dev, dtype=bf) for _ in range(3))
        do = torch.randn(B, L, H, D, device=dev, dtype=bf)
        qt, kt, vt = (x.transpose(1, 2).contiguous().requires_grad_(True) for x in (q, k, v))
        dot = do.transpose(1, 2).contiguous()
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            sd_f, sd_fb = fwd_and_bwd("sdpa", lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True), dot)
        row(tag, "sdpa flash causal", sd_f, sd_fb)
        print(f"FLASH {tag:20s} sdpa flash causal: fwd {sd_f:8.3f} f+b {sd_fb:9.3f} ms", flush=True)
        del qt, kt, vt, dot
        torch.cuda.empty_cache()
        flash_rows(tag, q, k, v, do, H, Hkv, sd_f, sd_fb, row)
        del q, k, v, do
        torch.cuda.empty_cache()
    print()
    print(f"{'shape':22s} {'kernel':36s} {'fwd ms':>8s} {'f+b ms':>9s} {'sdpa/this fwd':>14s} {'sdpa/this f+b':>14s}")
    sd = {t: (a, b) for t, n, a, b in rows if n.startswith("sdpa")}
    for t, n, a, b in rows:
        print(f"{t:22s} {n:36s} {a:8.3f} {b:9.3f} {sd[t][0] / a:14.2f} {sd[t][1] / b:14.2f}")


try:
    from fla.ops.gla import chunk_gla
    from fla.ops.simple_gla import chunk_simple_gla
    have_fla = True
except Exception as e:  # noqa: BLE001
    print("FLA not importable:", repr(e)[:200])
    have_fla = False

dev, bf = "cuda", torch.bfloat16
FEAT, WIN, META = 64, 128, 4


def ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def check(rc):
    if rc != 0:
        raise RuntimeError(lib.lz_last_error().decode())


class Lizard:
    def __init__(self, B, L, H, Hkv, D, Fd=FEAT, w=WIN, m=META):
        self.shape = (B, L, H, Hkv, D, Fd, w, m)
        # fwd_bwd_chunked as the trainers run it: the forward keeps the window statistics for the backward
        self.saved_stats = True
        g = torch.Generator(device=dev).manual_seed(1)
        self.q = torch.randn(B, L, H, D, device=dev, dtype=bf, generator=g)
        self.k = torch.randn(B, L, Hkv, D, device=dev, dtype=bf, generator=g)
        self.v = torch.randn(B, L, Hkv, D, device=dev, dtype=bf, generator=g)
        self.lg = F.logsigmoid(torch.randn(B, L, device=dev, generator=g) + 3).float().contiguous()
        self.wq = (torch.randn(H, D, Fd, device=dev, generator=g) / math.sqrt(D)).to(bf)
        self.wk = (torch.randn(H, D, Fd, device=dev, generator=g) / math.sqrt(D)).to(bf)
        self.meta = torch.randn(m, device=dev, generator=g)
        self.alpha = torch.ones(H, device=dev)
        self.y = torch.empty_like(self.q)
        self.dy = torch.randn_like(self.q)

    def fwd(self):
        B, L, H, Hkv, D, Fd, w, m = self.shape
        check(lib.lz_forward_bf16(ptr(self.q), ptr(self.k), ptr(self.v), ptr(self.lg), ptr(self.wq), ptr(self.wk),
                                  ptr(self.meta), ptr(self.alpha), ptr(self.y), B, L, H, Hkv, D, Fd, w, m, 0,
                                  ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))
        return self.y

    def grads(self):
        B, L, H, Hkv, D, Fd, w, m = self.shape
        if not hasattr(self, "g"):
            z = lambda t: torch.empty(t.shape, device=dev, dtype=torch.float32)
            self.g = [z(self.q), z(self.k), z(self.v), z(self.wq), z(self.wk), z(self.lg), z(self.meta), z(self.alpha)]
        return self.g

    def fwd_bwd(self):
        B, L, H, Hkv, D, Fd, w, m = self.shape
        self.fwd()
        g = self.grads()
        check(lib.lz_backward_parallel(ptr(self.q), ptr(self.k), ptr(self.v), ptr(self.lg), ptr(self.wq), ptr(self.wk),
                                       ptr(self.meta), ptr(self.alpha), ptr(self.dy), *[ptr(t) for t in g],
                                       B, L, H, Hkv, D, Fd, w, m, 0, 0,
                                       ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))

    def fwd_bwd_chunked(self):
        B, L, H, Hkv, D, Fd, w, m = self.shape
        check(lib.lz_set_save_window_stats(int(self.saved_stats)))
        try:
            self.fwd()
            g = self.grads()
            check(lib.lz_backward_chunked(ptr(self.q), ptr(self.k), ptr(self.v), ptr(self.lg), ptr(self.wq),
                                          ptr(self.wk), ptr(self.meta), ptr(self.alpha), ptr(self.dy),
                                          *[ptr(t) for t in g], B, L, H, Hkv, D, Fd, w, m, 0, 0,
                                          ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))
        finally:
            check(lib.lz_set_save_window_stats(0))  # fwd() alone: the inference forward

    def fwd_recurrent_f32(self):
        B, L, H, Hkv, D, Fd, w, m = self.shape
        t = [x.float().contiguous() for x in (self.q, self.k, self.v, self.wq, self.wk)]
        y = torch.empty_like(t[0])
        check(lib.lz_forward_recurrent(ptr(t[0]), ptr(t[1]), ptr(t[2]), ptr(self.lg), ptr(t[3]), ptr(t[4]),
                                       ptr(self.meta), ptr(self.alpha), ptr(y), B, L, H, Hkv, D, Fd, w, m, 0, 1,
                                       ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))
        return y


def med(fn, warmup=25, rep=100):
    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def events_ms(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def fla_inputs(B, L, H, D):
    q = torch.randn(B, L, H, D, device=dev, dtype=bf, requires_grad=True)
    k = torch.randn(B, L, H, D, device=dev, dtype=bf, requires_grad=True)
    v = torch.randn(B, L, H, D, device=dev, dtype=bf, requires_grad=True)
    gk = (F.logsigmoid(torch.randn(B, L, H, D, device=dev)) / 16).requires_grad_(True)
    gs = F.logsigmoid(torch.randn(B, L, H, device=dev) + 3).requires_grad_(True)
    do = torch.randn(B, L, H, D, device=dev, dtype=bf)
    return q, k, v, gk, gs, do


def fwd_and_bwd(name, fn, dout, want_bwd=True):
    try:
        f = med(fn)
    except Exception as e:  # noqa: BLE001
        print(f"  {name} forward failed: {str(e).splitlines()[0][:160]}")
        return float("nan"), float("nan")
    if not want_bwd:
        return f, float("nan")
    def fb():
        o = fn()
        o = o[0] if isinstance(o, tuple) else o
        o.backward(dout)
    try:
        return f, med(fb, 10, 50)
    except Exception as e:  # noqa: BLE001
        print(f"  {name} backward refused: {str(e).splitlines()[0][:160]}")
        return f, float("nan")


def final():
    """Every forward variant in one run, SDPA, then FLA forward at the paper shape (FLA compiles last)."""
    card = torch.cuda.get_device_name()
    print(card, torch.__version__, flush=True)
    shapes = [(16, 32, 32, 128, 2048), (16, 32, 32, 128, 4096), (16, 32, 32, 128, 8192), (8, 9, 3, 64, 2048)]
    res = {}
    for (B, H, Hkv, D, L) in shapes:
        tag = f"B{B} H{H} D{D} L{L}"
        z = Lizard(B, L, H, Hkv, D)
        # The forward variants (0: straight-line mma.sync, the fallback; 3 (default): wgmma), interleaved
        # twice; first a same-input check against v0.
        check(lib.lz_set_forward_variant(0))
        y0 = z.fwd().float().clone()
        check(lib.lz_set_forward_variant(3))
        yv = z.fwd().float()
        print(f"  {tag}: lizard fwd v3 vs v0 rel err {((yv - y0).norm() / y0.norm()).item():.2e}", flush=True)
        del y0, yv
        for var, split in ((0, 1), (3, 1), (0, 2)) * 2:
            check(lib.lz_set_forward_variant(var))
            lib.lz_set_forward_split(split)
            t = med(z.fwd)
            res.setdefault((tag, f"lizard fwd v{var} {'split' if split == 2 else 'nosplit'}"), []).append(t)
        check(lib.lz_set_forward_variant(3))  # the default (kForwardVariantDefault)
        lib.lz_set_forward_split(0)
        # fwd+bwd with the default chunked backward (issue 4 (a) asks for every length, not only 2048)
        res[(tag, "lizard fwd+bwd (default chunked)")] = [med(z.fwd_bwd_chunked, warmup=3, rep=10)]
        del z
        torch.cuda.empty_cache()
        q, k, v, gk, gs, do = fla_inputs(B, L, H, D)
        qt, kt, vt = (x.detach().transpose(1, 2).contiguous() for x in (q, k, v))
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            res[(tag, "sdpa flash causal fwd")] = [med(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))]
        qd, kd, vd = (x.detach() for x in (q, k, v))
        out = torch.empty_like(qd)
        res[(tag, "flash cuda (this repo) fwd")] = [med(lambda: flash_fwd(qd, kd, vd, out))]
        ref = F.scaled_dot_product_attention(qt[:1], kt[:1], vt[:1], is_causal=True).transpose(1, 2)
        print(f"  flash cuda vs sdpa (batch 0) rel err {((out[:1].float() - ref.float()).norm() / ref.float().norm()).item():.2e}")
        del qd, kd, vd, out, ref
        for key in [kk for kk in res if kk[0] == tag]:
            print("ROW", key[0], key[1], " ".join(f"{t:.3f}" for t in res[key]), flush=True)
        del q, k, v, gk, gs, do, qt, kt, vt
        torch.cuda.empty_cache()
    if have_fla:
        # every shape (issue 4 (a) asks for 2K/4K/8K and the teacher's); the teacher's first, 8K last
        for (B, H, Hkv, D, L) in [shapes[3], shapes[0], shapes[1], shapes[2]]:
            tag = f"B{B} H{H} D{D} L{L}"
            q, k, v, gk, gs, do = fla_inputs(B, L, H, D)
            with torch.no_grad():
                t0 = time.time()
                res[(tag, "fla chunk_simple_gla fwd")] = [med(lambda: chunk_simple_gla(q, k, v, g=gs)[0])]
                print("ROW", tag, "fla chunk_simple_gla fwd", f"{res[(tag, 'fla chunk_simple_gla fwd')][0]:.3f}",
                      f"({time.time() - t0:.0f} s incl. compile)", flush=True)
                if "--with-gla" in sys.argv:  # chunk_gla compiles/autotunes for minutes on a fresh machine
                    t0 = time.time()
                    res[(tag, "fla chunk_gla fwd")] = [med(lambda: chunk_gla(q, k, v, gk)[0])]
                    print("ROW", tag, "fla chunk_gla fwd", f"{res[(tag, 'fla chunk_gla fwd')][0]:.3f}",
                          f"({time.time() - t0:.0f} s incl. compile)", flush=True)
            del q, k, v, gk, gs, do
            torch.cuda.empty_cache()
    # the forward goal as same-run ratios: chunk_simple_gla time / ours (> 1: ours faster)
    for (B, H, Hkv, D, L) in shapes:
        tag = f"B{B} H{H} D{D} L{L}"
        ours, fla = res.get((tag, "lizard fwd v3 nosplit")), res.get((tag, "fla chunk_simple_gla fwd"))
        if ours and fla:
            print(f"RATIO {tag:20s} chunk_simple_gla / lizard fwd: {fla[0] / min(ours):.3f} "
                  f"({fla[0]:.3f} / {min(ours):.3f} ms)", flush=True)


def gla_fwd_bwd():
    """Issue 4 (a)'s training comparison in one run: our default forward+backward (v3 forward, chunked backward)
    against FLA chunk_gla's forward+backward (the paper's baseline; its backward runs on this stack, unlike
    chunk_simple_gla's). Ours first at every shape (fast); chunk_gla then compiles and autotunes for minutes
    per new shape, so each shape's RATIO line is printed as soon as it is known."""
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    shapes = [(8, 9, 3, 64, 2048), (16, 32, 32, 128, 2048), (16, 32, 32, 128, 8192)]
    ours = {}
    for (B, H, Hkv, D, L) in shapes:
        tag = f"B{B} H{H} D{D} L{L}"
        z = Lizard(B, L, H, Hkv, D)
        ours[tag] = med(z.fwd_bwd_chunked, warmup=3, rep=20)
        print(f"ROW {tag:20s} lizard fwd+bwd (default chunked) {ours[tag]:8.3f} ms", flush=True)
        del z
        torch.cuda.empty_cache()
    if not have_fla:
        print("no FLA (.fla/fla): nothing to compare with")
        return
    for (B, H, Hkv, D, L) in shapes:
        tag = f"B{B} H{H} D{D} L{L}"
        q, k, v, gk, gs, do = fla_inputs(B, L, H, D)
        t0 = time.time()
        f, fb = fwd_and_bwd("gla", lambda: chunk_gla(q, k, v, gk)[0], do)
        print(f"ROW {tag:20s} fla chunk_gla fwd {f:8.3f} fwd+bwd {fb:8.3f} ms ({time.time() - t0:.0f} s incl. "
              f"compile/autotune)", flush=True)
        print(f"RATIO {tag:20s} chunk_gla / lizard fwd+bwd: {fb / ours[tag]:.3f} ({fb:.3f} / {ours[tag]:.3f} ms)",
              flush=True)
        del q, k, v, gk, gs, do
        torch.cuda.empty_cache()


def main():
    if "--gla-fb" in sys.argv:
        return gla_fwd_bwd()
    if "--final" in sys.argv:
        return final()
    if "--flash" in sys.argv:
        return flash_only()
    quick = "--quick" in sys.argv
    lizard_only = "--lizard-only" in sys.argv  # this repo's Lizard rows alone (to compare two builds, LIZARD_CAPI)
    card = torch.cuda.get_device_name()
    print(card, torch.__version__, flush=True)
    shapes = [(16, 32, 32, 128, 2048), (16, 32, 32, 128, 4096), (16, 32, 32, 128, 8192), (8, 9, 3, 64, 2048)]
    if quick:
        shapes = [shapes[0], shapes[3]]
    z = Lizard(1, 1000, 4, 2, 128)
    y1 = z.fwd().float()
    y2 = z.fwd_recurrent_f32()
    torch.cuda.synchronize()
    print(f"spot check B1 L1000 H4/2 D128: chunked bf16 vs recurrent fp32 rel err "
          f"{((y1 - y2).norm() / y2.norm()).item():.3e}", flush=True)
    del z, y1, y2
    try:
        z = Lizard(1, 777, 4, 2, 128)
        z.fwd_bwd()
        gp = [t.clone() for t in z.grads()]
        z.fwd_bwd_chunked()  # the default: stage variant 2, gate state passes + chunk-parallel output passes
        names = ["dq", "dk", "dv", "dwq", "dwk", "dlg", "dmeta", "dalpha"]
        print("spot check B1 L777 H4/2 D128 backward, chunked (default) vs parallel rel err: " + " ".join(
            f"{n} {((a - b).norm() / b.norm()).item():.2e}" for n, a, b in zip(names, z.grads(), gp)), flush=True)
        check(lib.lz_set_backward_stage_variant(1))  # the misaligned-pointer stage kernels
        try:
            z.fwd_bwd_chunked()
        finally:
            check(lib.lz_set_backward_stage_variant(2))
        print("spot check B1 L777 H4/2 D128 backward, chunked (stage variant 1) vs parallel rel err: " + " ".join(
            f"{n} {((a - b).norm() / b.norm()).item():.2e}" for n, a, b in zip(names, z.grads(), gp)), flush=True)
        del z, gp
    except Exception as e:  # noqa: BLE001
        print("spot check of the chunked backward failed:", str(e)[:300], flush=True)
    liz = {}
    liz_fb = {}
    chunked_ok = True
    rows = []

    def row(tag, name, f, fb):
        base = liz.get(tag, float("nan"))
        rows.append((tag, name, f, fb))
        print(f"ROW {tag:20s} {name:28s} fwd {f:8.3f} ms  fwd+bwd {fb:9.3f} ms  (this / lizard fwd: {f / base:5.2f})",
              flush=True)

    def other_variant(z, tag, label, name, fwd_ms, setter, other, default):
        """A non-default variant of the chunked backward: same-input check against the default (max |diff| /
        max |ref| per gradient), its per-stage profile line, then its row; the default is set back after."""
        try:
            z.fwd_bwd_chunked()
            torch.cuda.synchronize()
            ref = [t.clone() for t in z.grads()]
            check(setter(other))
            z.fwd_bwd_chunked()
            torch.cuda.synchronize()
            names = ["dq", "dk", "dv", "dwq", "dwk", "dlg", "dmeta", "dalpha"]
            errs = " ".join(f"{n} {((t - r).abs().max() / r.abs().max().clamp_min(1e-30)).item():.1e}"
                            for n, t, r in zip(names, z.grads(), ref))
            print(f"  {tag}: chunked bwd {name} vs default: {errs}", flush=True)
            del ref
            os.environ["LIZARD_CUDA_BWD_PROFILE"] = "1"
            z.fwd_bwd_chunked()
            torch.cuda.synchronize()
            del os.environ["LIZARD_CUDA_BWD_PROFILE"]
            row(tag, f"{label} {name}", fwd_ms, events_ms(z.fwd_bwd_chunked))
        except Exception as e:  # noqa: BLE001
            os.environ.pop("LIZARD_CUDA_BWD_PROFILE", None)
            print(f"  chunked backward {name} failed:", str(e)[:200])
        finally:
            check(setter(default))

    # 1. Lizard forward at every shape, SDPA flash (fast to set up).
    for (B, H, Hkv, D, L) in shapes:
        tag = f"B{B} H{H} D{D} L{L}"
        z = Lizard(B, L, H, Hkv, D)
        liz[tag] = med(z.fwd)
        # forward variant 0 (mma.sync, the fallback) beside the default (v3, wgmma): same-input check, then time
        y0 = z.fwd().float().clone()
        check(lib.lz_set_forward_variant(0))
        yv = z.fwd().float()
        print(f"  {tag}: lizard fwd v0 vs v3 rel err {((yv - y0).norm() / y0.norm()).item():.2e}", flush=True)
        row(tag, "lizard cuda fwd v0 (mma.sync)", med(z.fwd), float("nan"))
        check(lib.lz_set_forward_variant(3))  # the default (kForwardVariantDefault)
        del y0, yv
        fb = float("nan")
        if B * H * L * L <= 8 * 9 * 2048 * 2048:  # the parallel-form backward is O(L^2): small shape only
            fb = events_ms(z.fwd_bwd)
        row(tag, f"lizard cuda (Hkv={Hkv}) parallel bwd", liz[tag], fb)
        fbc = float("nan")
        if chunked_ok:
            try:  # the default: stage variant 2, gate state passes + chunk-parallel output passes
                fbc = events_ms(z.fwd_bwd_chunked)
                chunked_ok = fbc < 1500  # O(L): skip longer shapes if this one is already slow
            except Exception as e:  # noqa: BLE001
                print("  chunked backward failed:", str(e)[:200])
                chunked_ok = False
        liz_fb[tag] = fbc
        if fbc == fbc:  # one more call with the per-stage breakdown on stderr (feat2 .. dW2, gate2-fstate .. -rout)
            os.environ["LIZARD_CUDA_BWD_PROFILE"] = "1"
            z.fwd_bwd_chunked()
            torch.cuda.synchronize()
            del os.environ["LIZARD_CUDA_BWD_PROFILE"]
        row(tag, f"lizard cuda (Hkv={Hkv}) chunked bwd (default)", liz[tag], fbc)
        if fbc == fbc:  # each non-default variant of the chunked backward against the default, same inputs
            label = f"lizard cuda (Hkv={Hkv}) chunked bwd"
            # stage variant 1: the stage kernels misaligned pointers get
            other_variant(z, tag, label, "stages1", liz[tag], lib.lz_set_backward_stage_variant, 1, 2)
            # the statistics stage recomputing the window statistics (the forward not keeping them)
            other_variant(z, tag, label, "recomputed-stats", liz[tag],
                          lambda on: setattr(z, "saved_stats", not on) or 0, 1, 0)
            # state variant 1: the gate state passes of session 4 (32 columns per CTA, no prefetch)
            other_variant(z, tag, label, "state1", liz[tag], lib.lz_set_backward_state_variant, 1, 2)
        del z
        torch.cuda.empty_cache()
        if lizard_only:
            continue
        q, k, v, gk, gs, do = fla_inputs(B, L, H, D)
        qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_(True) for x in (q, k, v))
        dot = do.transpose(1, 2).contiguous()
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            row(tag, "sdpa flash causal", *fwd_and_bwd("sdpa", lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True), dot))
        sd_f, sd_fb = rows[-1][2], rows[-1][3]
        del qt, kt, vt, dot
        torch.cuda.empty_cache()
        # this repo's flash attention (fwd saving lse; fwd+bwd), equal heads as SDPA, then the shape's GQA
        qd, kd, vd = (x.detach() for x in (q, k, v))
        flash_rows(tag, qd, kd, vd, do, H, Hkv, sd_f, sd_fb, row)
        del q, k, v, gk, gs, do, qd, kd, vd
        torch.cuda.empty_cache()
    # 2. FLA last: its first calls compile and autotune for minutes.
    if have_fla and not lizard_only:
        for (B, H, Hkv, D, L) in [shapes[-1]] + shapes[:-1]:
            tag = f"B{B} H{H} D{D} L{L}"
            q, k, v, gk, gs, do = fla_inputs(B, L, H, D)
            t0 = time.time()
            row(tag, "fla chunk_simple_gla", *fwd_and_bwd("simple_gla", lambda: chunk_simple_gla(q, k, v, g=gs)[0], do, L == 2048))
            if "--with-gla" in sys.argv:  # chunk_gla's first call compiles/autotunes for > 4 minutes
                row(tag, "fla chunk_gla", *fwd_and_bwd("gla", lambda: chunk_gla(q, k, v, gk)[0], do, L == 2048))
            print(f"  ({time.time() - t0:.0f} s for FLA at {tag})", flush=True)
            del q, k, v, gk, gs, do
            torch.cuda.empty_cache()
    print()
    print(card)
    print(f"{'shape':22s} {'kernel':36s} {'fwd ms':>8s} {'f+b ms':>9s} {'this/lizard fwd':>16s} {'this/lizard f+b (default)':>26s}")
    for s_, n, a, b in rows:
        print(f"{s_:22s} {n:36s} {a:8.3f} {b:9.3f} {a / liz.get(s_, float('nan')):16.2f} "
              f"{b / liz_fb.get(s_, float('nan')):26.2f}")


if __name__ == "__main__":
    main()
