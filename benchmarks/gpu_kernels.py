"""GPU benchmark of the Mamba-2 kernels: SSD (Triton) vs mamba_ssm and torch SDPA, the fused
decode step, and the conv1d / gated-norm kernels against torch.

Letters: b batch, l length, h heads, p head dim, n state dim, g groups, c conv channels,
k conv width, e inner width.

SSD shapes of PEERS.md: h 32, p 64, n 128, g 1 and 8; b x l = 8x1024, 4x4096, 1x16384,
1x65536; bf16, chunk 256, dt bias + softplus, D (what the Mamba-2 layer passes). Forward
(no autograd) and forward+backward median ms (triton.testing.do_bench), achieved GB/s over
the fewest bytes the op must move (inputs read once, outputs written once), the copy
bandwidth measured in the same run, and mamba_ssm's mamba_chunk_scan_combined (when
importable: PYTHONPATH=.carry) and SDPA causal attention (16 heads x 128) side by side.

    python benchmarks/gpu_kernels.py --out DIR [--sections ssd,decode,conv,norm] [--sweep]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import types

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SSD_SHAPES = [(8, 1024), (4, 4096), (1, 16384), (1, 65536)]
H, P, N = 32, 64, 128


def bench(fn, grad_to_none=None):
    import triton
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write counted)."""
    a = torch.empty(2 ** 28, device="cuda", dtype=torch.float32)
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a))
    return 2 * a.numel() * 4 / (ms * 1e-3)


def mamba_ssm_fn():
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        return mamba_chunk_scan_combined
    except Exception as exc:  # noqa: BLE001 - report why the peer is missing
        print("mamba_ssm unavailable:", repr(exc)[:200])
        return None


def ssd_inputs(b, l, g, grad, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=gen)
    ins = dict(x=rnd(b, l, H, P).bfloat16(), dt=(0.5 * rnd(b, l, H) - 1).bfloat16(),
               A=-torch.empty(H, device="cuda").uniform_(1, 16), B=rnd(b, l, g, N).bfloat16(),
               C=rnd(b, l, g, N).bfloat16(), D=torch.ones(H, device="cuda"), dt_bias=0.5 * rnd(H) - 3)
    for v in ins.values():
        v.requires_grad_(grad)
    return ins


def ssd_bytes(b, l, g):
    x = b * l * H * P * 2
    bc = 2 * b * l * g * N * 2
    dt = b * l * H * 2
    fwd = 2 * x + bc + dt                      # read x, B, C, dt; write y
    bwd = 3 * x + 2 * bc + 2 * dt              # read x, dy, B, C, dt; write dx, dB, dC, ddt
    return fwd, fwd + bwd


def run_ssd(res, peer, quick):
    from mambakit.ops.ssd.triton import ssd_triton
    rows = []
    for g in (1, 8):
        for b, l in SSD_SHAPES[:2] if quick else SSD_SHAPES:
            row = dict(g=g, b=b, l=l)
            fb, fbb = ssd_bytes(b, l, g)
            ins = ssd_inputs(b, l, g, grad=False)
            ours = lambda: ssd_triton(**ins, chunk_size=256, dt_softplus=True)
            row["ours_fwd_ms"] = bench(ours)
            if peer is not None:
                theirs = lambda: peer(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 256, D=ins["D"],
                                      dt_bias=ins["dt_bias"], dt_softplus=True)
                y1 = ours()[0].float()
                y2 = theirs().float()
                row["rel_diff_vs_mamba_ssm"] = ((y1 - y2).norm() / y2.norm()).item()
                row["mamba_ssm_fwd_ms"] = bench(theirs)
            insg = ssd_inputs(b, l, g, grad=True)
            gy = torch.randn(b, l, H, P, device="cuda", dtype=torch.bfloat16)
            leaves = list(insg.values())

            def ours_fb():
                y, _ = ssd_triton(**insg, chunk_size=256, dt_softplus=True)
                y.backward(gy)
            row["ours_fwdbwd_ms"] = bench(ours_fb, grad_to_none=leaves)
            if peer is not None:
                def theirs_fb():
                    y = peer(insg["x"], insg["dt"], insg["A"], insg["B"], insg["C"], 256, D=insg["D"],
                             dt_bias=insg["dt_bias"], dt_softplus=True)
                    y.backward(gy)
                row["mamba_ssm_fwdbwd_ms"] = bench(theirs_fb, grad_to_none=leaves)
            del ins, insg, leaves
            if g == 1:  # SDPA does not depend on g
                q, k, v = (torch.randn(b, 16, l, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                           for _ in range(3))
                with torch.no_grad():
                    row["sdpa_fwd_ms"] = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                go = torch.randn_like(q)
                row["sdpa_fwdbwd_ms"] = bench(
                    lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(go), grad_to_none=[q, k, v])
                del q, k, v, go
            row["fwd_GBps"] = fb / (row["ours_fwd_ms"] * 1e-3) / 1e9
            row["fwdbwd_GBps"] = fbb / (row["ours_fwdbwd_ms"] * 1e-3) / 1e9
            if "mamba_ssm_fwdbwd_ms" in row:
                row["speedup_fwd"] = row["mamba_ssm_fwd_ms"] / row["ours_fwd_ms"]
                row["speedup_fwdbwd"] = row["mamba_ssm_fwdbwd_ms"] / row["ours_fwdbwd_ms"]
            torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            rows.append(row)
    res["ssd"] = rows


SWEEP = [{}, {"state_impl": "fused"}, {"state_warps": 4}, {"scan_bp": 32}, {"scan_bp": 32, "scan_warps": 4},
         {"scan_warps": 4}, {"stages": 3}, {"dx_warps": 4, "dbdc_warps": 4}, {"bm_bwd": 32}]


def _warm_one(job):
    """Compile (and run once) one configuration in a worker process: fills triton's disk cache."""
    kind, var, g, b, l = job
    sys.path.insert(0, ROOT)
    try:
        if kind == "ours":
            from mambakit.ops.ssd import triton as T
            T.CONFIG.update(var)
            ins = ssd_inputs(b, l, g, grad=False)
            T.ssd_triton(**ins, chunk_size=256, dt_softplus=True)
            insg = ssd_inputs(b, l, g, grad=True)
            T.ssd_triton(**insg, chunk_size=256, dt_softplus=True)[0].sum().backward()
        elif kind == "peer":
            peer = mamba_ssm_fn()
            if peer is not None:
                insg = ssd_inputs(b, l, g, grad=True)
                peer(insg["x"], insg["dt"], insg["A"], insg["B"], insg["C"], 256, D=insg["D"],
                     dt_bias=insg["dt_bias"], dt_softplus=True).sum().backward()
        torch.cuda.synchronize()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{job}: {exc!r}"[:400]


def warm(sweep, quick, workers=8):
    import multiprocessing as mp
    jobs = [("peer", {}, g, 1, 16384) for g in (1, 8)]
    jobs += [("ours", {}, g, b, l) for g in (1, 8) for b, l in (SSD_SHAPES[:2] if quick else SSD_SHAPES)]
    if sweep:
        jobs += [("ours", v, 1, 1, 65536) for v in SWEEP[1:]]
    t0 = time.time()
    with mp.get_context("spawn").Pool(workers) as pool:
        errs = [e for e in pool.map(_warm_one, jobs, chunksize=1) if e]
    print(f"warm-up of {len(jobs)} jobs: {time.time() - t0:.1f} s", errs, flush=True)
    return errs


def run_sweep(res):
    """Launch settings of the SSD kernels at 1 x 65536, g 1 (fwd and fwd+bwd ms)."""
    from mambakit.ops.ssd import triton as T
    base = dict(T.CONFIG)
    variants = SWEEP
    out = []
    b, l, g = 1, 65536, 1
    ins = ssd_inputs(b, l, g, grad=False)
    insg = ssd_inputs(b, l, g, grad=True)
    gy = torch.randn(b, l, H, P, device="cuda", dtype=torch.bfloat16)
    for var in variants:
        T.CONFIG.clear()
        T.CONFIG.update(base, **var)
        try:
            fwd = bench(lambda: T.ssd_triton(**ins, chunk_size=256, dt_softplus=True))

            def fb():
                T.ssd_triton(**insg, chunk_size=256, dt_softplus=True)[0].backward(gy)
            fwdbwd = bench(fb, grad_to_none=list(insg.values()))
            row = dict(variant=var, fwd_ms=fwd, fwdbwd_ms=fwdbwd)
        except Exception as exc:  # noqa: BLE001
            row = dict(variant=var, error=repr(exc)[:300])
        print(json.dumps(row), flush=True)
        out.append(row)
    T.CONFIG.clear()
    T.CONFIG.update(base)
    res["ssd_sweep_1x65536_g1"] = out


def decode_eager(xbc, dt, conv_state, ssm_state, w, cb, A, D, dtb, g, p):
    """The same step in eager PyTorch (what a layer without the kernel does)."""
    b, c = xbc.shape
    h = dt.shape[1]
    n = ssm_state.shape[-1]
    e = h * p
    conv_state.copy_(torch.roll(conv_state, -1, -1))
    conv_state[:, :, -1] = xbc
    u = F.silu((conv_state * w).sum(-1) + cb)
    x = u[:, :e].view(b, h, p)
    B = u[:, e:e + g * n].view(b, g, 1, n).expand(b, g, h // g, n).reshape(b, h, n)
    C = u[:, e + g * n:].view(b, g, 1, n).expand(b, g, h // g, n).reshape(b, h, n)
    d = F.softplus(dt.float() + dtb)
    ssm_state.mul_(torch.exp(d * A)[..., None, None]).add_((d[..., None] * x)[..., None] * B[:, :, None].float())
    y = (ssm_state @ C.float()[..., None]).squeeze(-1) + D[:, None] * x
    return y.to(xbc.dtype)


def run_decode(res, bw):
    from mambakit.ops.decode_triton import mamba2_decode_step_triton
    rows = []
    k = 4
    for g in (1, 8):
        for b in (1, 16, 128):
            e = H * P
            c = e + 2 * g * N
            xbc = torch.randn(b, c, device="cuda", dtype=torch.bfloat16)
            dt = torch.randn(b, H, device="cuda", dtype=torch.bfloat16)
            conv = torch.randn(b, c, k, device="cuda", dtype=torch.bfloat16)
            ssm = torch.randn(b, H, P, N, device="cuda")
            w, cb = torch.randn(c, k, device="cuda"), torch.randn(c, device="cuda")
            A, D, dtb = -torch.rand(H, device="cuda") - 1, torch.ones(H, device="cuda"), torch.randn(H, device="cuda")
            args = (xbc, dt, conv, ssm, w, cb, A, D, dtb)
            ms = bench(lambda: mamba2_decode_step_triton(*args, True, (0.0, float("inf")), g, P))
            wb, cbb = w.bfloat16(), cb.bfloat16()
            ms_eager = bench(lambda: decode_eager(xbc, dt, conv, ssm, wb, cbb, A, D, dtb, g, P))
            nbytes = 2 * ssm.numel() * 4 + 2 * conv.numel() * 2 + xbc.numel() * 2 + dt.numel() * 2 + b * e * 2
            row = dict(g=g, b=b, ms=ms, eager_ms=ms_eager, GBps=nbytes / (ms * 1e-3) / 1e9,
                       frac_of_copy_bw=nbytes / (ms * 1e-3) / bw)
            print(json.dumps(row), flush=True)
            rows.append(row)
    res["decode"] = rows


def run_conv_norm(res):
    """Causal conv1d + SiLU and gated RMSNorm: Triton vs the torch ops, fwd and fwd+bwd, at the
    mamba2-370m layer shape (e 2048, n 128, k 4; b x l = 8 x 2048), bf16 activations, fp32 params."""
    from mambakit.ops.conv1d import causal_conv1d
    from mambakit.ops.conv1d_triton import causal_conv1d_triton
    from mambakit.ops.norm import gated_rms_norm
    from mambakit.ops.norm_triton import gated_rms_norm_triton
    rows = []
    b, l, e, k = 8, 2048, 2048, 4
    for g in (1, 8):
        c = e + 2 * g * N
        x = torch.randn(b, l, c, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(c, k, device="cuda", requires_grad=True)
        bias = torch.randn(c, device="cuda", requires_grad=True)
        gy = torch.randn(b, l, c, device="cuda", dtype=torch.bfloat16)
        nbytes = 2 * x.numel() * 2
        for name, fn in (("torch", lambda: causal_conv1d(x, w, bias, activation="silu")),
                         ("triton", lambda: causal_conv1d_triton(x, w, bias, activation="silu"))):
            with torch.no_grad():
                fwd = bench(fn)
            fb = bench(lambda: fn().backward(gy), grad_to_none=[x, w, bias])
            row = dict(op="conv1d_silu", impl=name, g=g, b=b, l=l, c=c, fwd_ms=fwd, fwdbwd_ms=fb,
                       fwd_GBps=nbytes / (fwd * 1e-3) / 1e9, fwdbwd_GBps=(nbytes + 3 * x.numel() * 2) / (fb * 1e-3) / 1e9)
            print(json.dumps(row), flush=True)
            rows.append(row)
        xn = torch.randn(b, l, e, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        zn = torch.randn(b, l, e, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        wn = torch.randn(e, device="cuda", requires_grad=True)
        gyn = torch.randn(b, l, e, device="cuda", dtype=torch.float32)
        nb_f = xn.numel() * (2 + 2 + 4)
        for name, fn in (("torch", lambda: gated_rms_norm(xn, zn, wn, group_size=e // g)),
                         ("triton", lambda: gated_rms_norm_triton(xn, zn, wn, group_size=e // g))):
            with torch.no_grad():
                fwd = bench(fn)
            fb = bench(lambda: fn().backward(gyn), grad_to_none=[xn, zn, wn])
            row = dict(op="gated_rms_norm", impl=name, g=g, b=b, l=l, e=e, fwd_ms=fwd, fwdbwd_ms=fb,
                       fwd_GBps=nb_f / (fwd * 1e-3) / 1e9, fwdbwd_GBps=(nb_f + xn.numel() * (2 + 2 + 4 + 4)) / (fb * 1e-3) / 1e9)
            print(json.dumps(row), flush=True)
            rows.append(row)
    res["conv_norm"] = rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--sections", default="ssd,decode,convnorm")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--warm", action="store_true", help="compile everything in parallel worker processes first")
    ap.add_argument("--warm-only", action="store_true", help="only the parallel compile step")
    args = ap.parse_args()
    import triton
    from benchmarks.common import machine_info
    res = dict(machine=machine_info(), torch=torch.__version__, triton=triton.__version__,
               gpu=torch.cuda.get_device_name())
    sections = args.sections.split(",")
    if (args.warm or args.warm_only) and "ssd" in sections:
        res["warm_errors"] = warm(args.sweep, args.quick)
        if args.warm_only:
            return
    res["copy_GBps"] = copy_bandwidth() / 1e9
    print("copy bandwidth GB/s", res["copy_GBps"], flush=True)
    peer = mamba_ssm_fn() if "ssd" in sections else None
    res["mamba_ssm"] = peer is not None
    todo = [("ssd", lambda: run_ssd(res, peer, args.quick)), ("decode", lambda: run_decode(res, res["copy_GBps"] * 1e9)),
            ("convnorm", lambda: run_conv_norm(res))]
    if args.sweep:
        todo.insert(0, ("sweep", lambda: run_sweep(res)))
    for name, fn in todo:
        if name not in sections and not (name == "sweep" and args.sweep):
            continue
        t0 = time.time()
        try:
            fn()
        except Exception:  # noqa: BLE001 - keep the other sections' numbers
            res[name + "_error"] = traceback.format_exc()[-2000:]
            print(res[name + "_error"], flush=True)
        print(f"section {name}: {time.time() - t0:.1f} s", flush=True)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_kernels.json"), "w") as f:
            json.dump(res, f, indent=1)
    print_table(res)


def print_table(res):
    print(f"\n{res['gpu']}  torch {res['torch']}  triton {res['triton']}  copy {res['copy_GBps']:.0f} GB/s")
    for r in res.get("ssd", []):
        print("g{g} {b}x{l}: fwd {ours_fwd_ms:.3f} ms ({fwd_GBps:.0f} GB/s)  fwd+bwd {ours_fwdbwd_ms:.3f} ms".format(**r),
              " | mamba_ssm {} / {}".format(r.get("mamba_ssm_fwd_ms"), r.get("mamba_ssm_fwdbwd_ms")),
              " | sdpa {} / {}".format(r.get("sdpa_fwd_ms"), r.get("sdpa_fwdbwd_ms")))
    for r in res.get("conv_norm", []):
        print("{op} {impl} g{g}: fwd {fwd_ms:.3f} ms ({fwd_GBps:.0f} GB/s)  fwd+bwd {fwdbwd_ms:.3f} ms".format(**r))
    for r in res.get("decode", []):
        print("decode g{g} b{b}: {ms:.4f} ms {GBps:.0f} GB/s ({frac_of_copy_bw:.2f} of copy), eager {eager_ms:.3f} ms".format(**r))


if __name__ == "__main__":
    main()
