"""The decode-step GEMV (mambakit/ops/gemv_triton.py) against cuBLAS (F.linear) at the projection
shapes of the 1.3B-class models of benchmarks/gpu_generation.py, bf16.

Letters: m rows (decode batch), k input width, o output width.

    python benchmarks/gpu_gemv.py --out DIR

For each (name, o, k) and m in --rows: median ms of each (triton.testing.do_bench, after the
autotuner's first call), achieved GB/s (weight bytes + x + y over the time), the ratio, and the
largest error of each against an fp32 product. Writes gpu_gemv.json and prints a table.
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

SHAPES = [("mamba2 in_proj", 8480, 2048), ("mamba2 out_proj", 2048, 4096), ("lm_head", 50280, 2048),
          ("mlp up", 8192, 2048), ("mlp down", 2048, 8192), ("attn q/o", 2048, 2048), ("attn k/v", 512, 2048),
          ("mamba1 in_proj 2.8b", 10240, 2560)]


def main(argv=None) -> int:
    import triton
    from mambakit.ops.gemv_triton import gemv_triton
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,4,16")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    a = ap.parse_args(argv)
    rows = []
    torch.manual_seed(0)
    for name, o, k in SHAPES:
        w = torch.randn(o, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
        for m in [int(v) for v in a.rows.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            exact = x.float() @ w.float().t()
            err = {}
            for impl, fn in (("cublas", lambda: F.linear(x, w)), ("triton", lambda: gemv_triton(x, w))):
                err[impl] = (fn().float() - exact).abs().max().item()
            t_cublas = triton.testing.do_bench(lambda: F.linear(x, w), return_mode="median")
            t_triton = triton.testing.do_bench(lambda: gemv_triton(x, w), return_mode="median")
            nbytes = (o * k + m * k + m * o) * 2
            row = {"name": name, "o": o, "k": k, "m": m, "cublas_ms": t_cublas, "triton_ms": t_triton,
                   "cublas_gb_s": nbytes / t_cublas / 1e6, "triton_gb_s": nbytes / t_triton / 1e6,
                   "speedup": t_cublas / t_triton, "max_err": err}
            rows.append(row)
            print(f"{name:22s} o {o:6d} k {k:5d} m {m:3d}: cuBLAS {t_cublas * 1e3:7.1f} us "
                  f"{row['cublas_gb_s']:6.0f} GB/s | triton {t_triton * 1e3:7.1f} us {row['triton_gb_s']:6.0f} GB/s "
                  f"| {row['speedup']:.2f}x | err {err['cublas']:.2e} / {err['triton']:.2e}", flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpu_gemv.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
