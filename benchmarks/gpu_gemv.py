"""The fused decode GEMV (mambakit/ops/gemv_triton.py) against what it replaces, at the projection
shapes of the 1.3B-class models of benchmarks/gpu_generation.py, bf16, timed inside CUDA graphs.

Letters: m rows (decode batch), k input width, o output width.

    python benchmarks/gpu_gemv.py --out DIR [--rows 1,4] [--sweep]

Each case is timed as a decode step runs it: 20 calls captured in one CUDA graph and replayed
(so no launch overhead from Python), each call on another copy of the weight, with enough copies
(> 200 MB) that the weight comes from HBM and not from the 50 MB L2. Per call, median of 15
replays: cuBLAS F.linear alone; the unfused ops of the block (the norm kernel, F.linear, the
epilogue op); the fused kernel with its default config: as it runs (on sm_90, with programmatic
dependent launch) and without PDL (consecutive calls overlap with it, as a decode step's kernels do); with --sweep, every
config of the sweep and the best. GB/s = weight bytes / time. Writes gpu_gemv.json and prints a table.
(Session 3 timed a Triton GEMV eagerly with do_bench: its ~50 us were Python launch overhead.)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# name, o, k, fused form: the prologue/epilogue each projection has in a block's decode step
SHAPES = [("mamba2 in_proj (norm, conv)", 8512, 2048, "in_proj"), ("mamba2 out_proj (gated norm, +res)", 2048, 4096,
          "out_proj"), ("mlp up (norm, gelu)", 8192, 2048, "up"), ("mlp down (+res)", 2048, 8192, "down"),
          ("attn q (norm)", 2048, 2048, "q"), ("attn k/v (norm)", 512, 2048, "q"), ("attn o (+res)", 2048, 2048, "down")]
FORM_FLAGS = {"in_proj": dict(prologue=1, conv=True), "out_proj": dict(prologue=2), "up": dict(prologue=1),
              "q": dict(prologue=1), "down": {}}  # as default_config takes them
SWEEP = [(bo, bk, w) for bo, bk, w in [(1, 2048, 4), (2, 1024, 4), (2, 2048, 4), (4, 512, 4), (4, 1024, 4),
                                       (4, 2048, 8), (8, 256, 4), (8, 512, 4), (8, 1024, 8), (16, 256, 4),
                                       (16, 512, 8), (32, 128, 4), (2, 512, 2), (4, 256, 2), (8, 2048, 8),
                                       (16, 1024, 8)]] + [  # RB blocks of BO outputs a program, streamed on
    (8, 2048, 8, 2), (8, 2048, 8, 4), (8, 2048, 8, 8), (4, 2048, 4, 4), (4, 2048, 4, 8), (8, 1024, 8, 4),
    (4, 1024, 4, 4), (2, 2048, 4, 8)] + [  # for several rows: x (m, k) is re-read by every program, so
    # programs own more outputs (session 13: (2, 512, 2) at 4 rows read x 4x the weights' bytes)
    (2, 512, 2, 8), (2, 512, 2, 16), (4, 512, 4, 4), (4, 512, 4, 8), (8, 256, 4, 4), (16, 256, 8, 2),
    (32, 128, 8), (16, 128, 4, 2)]


def graph_ms(fn, calls: int = 20, replays: int = 15) -> float:
    """Median ms per call of fn(i), i = 0..calls-1, captured in one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(2):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(i)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) / calls)
    return sorted(times)[len(times) // 2]


def cases(form, o, k, m, dev, dt):
    """(cuBLAS fn(i), unfused fn(i), fused fn(i, config)) for one shape over copies of
    its weight."""
    from mambakit.ops.gemv_triton import fused_gemv
    from mambakit.ops.norm_triton import gated_rms_norm_triton, rms_norm_cast_triton
    from mambakit.ops.conv1d import causal_conv1d_update
    copies = max(2, -(-200_000_000 // (o * k * 2)))
    ws = [torch.randn(o, k, device=dev, dtype=dt) / k ** 0.5 for _ in range(copies)]
    nw = torch.rand(k, device=dev, dtype=dt) + 0.5
    res_in = torch.randn(m, k, device=dev)  # the fp32 residual stream
    x = torch.randn(m, k, device=dev, dtype=dt)
    z = torch.randn(m, k, device=dev, dtype=dt)
    res_out = torch.randn(m, o, device=dev)
    c0, nch = 4096, 4096 + 256  # mamba2-1.3b: z (e 4096), then xBC (e + 2 g n)
    cs = torch.randn(m, nch, 4, device=dev, dtype=dt)
    cw, cb = torch.randn(nch, 4, device=dev, dtype=dt), torch.randn(nch, device=dev, dtype=dt)
    w = lambda i: ws[i % copies]
    if form == "in_proj":
        def unfused(i):
            y = F.linear(rms_norm_cast_triton(res_in, nw), w(i))
            causal_conv1d_update(y[:, c0:c0 + nch], cs, cw, cb, "silu")
        fused = lambda i, cfg: fused_gemv(res_in, w(i), norm=(nw, 1e-5), conv=(c0, cs, cw, cb), config=cfg)
    elif form == "out_proj":
        def unfused(i):
            res_out.add_(F.linear(gated_rms_norm_triton(x, z, nw, 1e-5), w(i)))
        fused = lambda i, cfg: fused_gemv(x, w(i), norm=(nw, 1e-5), gate=(z, k, False), residual=res_out,
                                          config=cfg)
    elif form in ("up", "q"):
        act = "gelu" if form == "up" else None
        def unfused(i):
            y = F.linear(rms_norm_cast_triton(res_in, nw), w(i))
            return F.gelu(y) if act else y
        fused = lambda i, cfg: fused_gemv(res_in, w(i), norm=(nw, 1e-5), activation=act, config=cfg)
    else:
        def unfused(i):
            res_out.add_(F.linear(x, w(i)))
        fused = lambda i, cfg: fused_gemv(x, w(i), residual=res_out, config=cfg)
    return (lambda i: F.linear(x, w(i))), unfused, fused


def main(argv=None) -> int:
    from mambakit.ops.gemv_triton import default_config
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,4")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-rb-only", action="store_true", help="sweep only the configs with RB > 1, and the "
                    "shape's default beside them")
    ap.add_argument("--configs", default=None, help="sweep only these, e.g. '2,512,2;16,256,4' (BO,BK,warps[,RB])")
    ap.add_argument("--forms", default=None, help="only these forms, e.g. in_proj,up (see SHAPES)")
    ap.add_argument("--best-out", default=None, help="with --sweep: write {'o,k,m,prologue': best config} "
                    "here (JSON), for gpu_profile_decode.py --gemv-configs")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    a = ap.parse_args(argv)
    if a.configs and a.sweep_rb_only:
        ap.error("--configs and --sweep-rb-only both choose the configs to sweep: give one")
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    rows = []
    best = {}
    for name, o, k, form in SHAPES:
        if a.forms and form not in a.forms.split(","):
            continue
        for m in [int(v) for v in a.rows.split(",")]:
            cublas, unfused, fused = cases(form, o, k, m, dev, dt)
            wbytes = o * k * 2
            row = {"name": name, "o": o, "k": k, "m": m,
                   "default_config": default_config(o, k, m, **FORM_FLAGS[form]),
                   "cublas_ms": graph_ms(cublas), "unfused_ms": graph_ms(unfused),
                   "fused_ms": graph_ms(lambda i: fused(i, None))}
            os.environ["MAMBAKIT_PDL"] = "0"  # the same kernel launched without programmatic dependent launch
            row["fused_nopdl_ms"] = graph_ms(lambda i: fused(i, None))
            os.environ.pop("MAMBAKIT_PDL")
            if a.sweep:
                timed, row["sweep"] = {}, {}
                configs = SWEEP if not a.sweep_rb_only else [tuple(row["default_config"])] + [
                    c for c in SWEEP if len(c) == 4]
                if a.configs:
                    configs = [tuple(int(v) for v in c.split(",")) for c in a.configs.split(";") if c.strip()]
                for cfg in configs:
                    try:
                        timed[cfg] = row["sweep"][str(cfg)] = graph_ms(lambda i: fused(i, cfg))
                    except Exception as err:  # a config the compiler rejects (registers): recorded
                        row["sweep"][str(cfg)] = repr(err)[:200]
                cfg, row["best_ms"] = min(timed.items(), key=lambda kv: kv[1])
                # keyed by rows and prologue too: attention's q and o share (o, k) and not their tiles
                key = f"{o},{k},{m},{FORM_FLAGS[form].get('prologue', 0)}"
                row["best_config"], best[key] = str(cfg), list(cfg)
            for key in [k_ for k_ in ("cublas_ms", "unfused_ms", "fused_ms", "fused_nopdl_ms", "best_ms") if k_ in row]:
                row[key.replace("_ms", "_gb_s")] = wbytes / row[key] / 1e6
            rows.append(row)
            best_text = f" | best {row['best_ms'] * 1e3:6.1f} us {row['best_config']}" if "best_ms" in row else ""
            print(f"{name:36s} m {m}: cuBLAS {row['cublas_ms'] * 1e3:6.1f} us ({row['cublas_gb_s']:5.0f} GB/s) | "
                  f"unfused {row['unfused_ms'] * 1e3:6.1f} us | fused {row['fused_ms'] * 1e3:6.1f} us "
                  f"({row['fused_gb_s']:5.0f} GB/s) {row['default_config']}, without PDL {row['fused_nopdl_ms'] * 1e3:6.1f} us"
                  f"{best_text}", flush=True)
    os.makedirs(a.out, exist_ok=True)
    if a.best_out:
        with open(a.best_out, "w") as f:
            json.dump(best, f)
    import triton
    with open(os.path.join(a.out, "gpu_gemv.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                   "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
