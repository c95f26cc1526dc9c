"""fp32 projections on the CPU: F.linear (MKL's sgemm in torch's CPU wheels) against oneDNN's GEMM
(ops/cpu_linear.onednn_linear, what mambakit's inference runs for more than 4 rows).

Letters: m rows (tokens x batch), k inputs, o outputs.

    python benchmarks/cpu_gemm.py [--threads 2] [--rows 5,16,64,256,1024] [--repeats 7]

Shapes: the projections of mamba-130m (in_proj 768 -> 3072, out_proj 1536 -> 768) and mamba2-130m
(in_proj 768 -> 3352), their LM head (768 -> 50280) at 1024 rows, and a 1536 square. The two are
timed alternately, best of --repeats each, after checking that they agree (relative error). Writes
cpu_gemm-<machine>-<date>.json to benchmarks/results (or --out).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import best_of, machine_info, write_result  # noqa: E402
from mambakit.ops.cpu_linear import onednn_linear  # noqa: E402

SHAPES = {"mamba in_proj": (768, 3072), "mamba out_proj": (1536, 768), "mamba2 in_proj": (768, 3352)}


@torch.inference_mode()
def time_pair(m: int, k: int, o: int, repeats: int) -> dict:
    x, w = torch.randn(m, k), torch.randn(o, k) / k ** 0.5
    ref, got = F.linear(x, w), onednn_linear(x, w)
    err = ((got - ref).norm() / ref.norm()).item()
    t_mkl = best_of(lambda: F.linear(x, w), repeats, warmup=2)
    t_dnn = best_of(lambda: onednn_linear(x, w), repeats, warmup=2)
    flops = 2 * m * k * o
    row = {"m": m, "k": k, "o": o, "mkl_ms": 1e3 * t_mkl, "onednn_ms": 1e3 * t_dnn, "speedup": t_mkl / t_dnn,
           "mkl_gflop_s": flops / t_mkl / 1e9, "onednn_gflop_s": flops / t_dnn / 1e9, "rel_error": err}
    print(f"  m {m:5d} k {k:5d} o {o:6d}: F.linear {row['mkl_ms']:8.3f} ms ({row['mkl_gflop_s']:5.0f} GFLOP/s), "
          f"oneDNN {row['onednn_ms']:8.3f} ms ({row['onednn_gflop_s']:5.0f}), {row['speedup']:.2f}x, rel. error {err:.1e}")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rows", default="5,16,64,256,1024")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name, (k, o) in SHAPES.items():
        print(name)
        for m in (int(r) for r in args.rows.split(",")):
            rows.append({"shape": name, **time_pair(m, k, o, args.repeats)})
    print("LM head and a square")
    rows.append({"shape": "lm head", **time_pair(1024, 768, 50280, max(3, args.repeats // 2))})
    rows.append({"shape": "square", **time_pair(1536, 1536, 1536, args.repeats)})
    path = write_result("cpu_gemm", {"machine": machine_info(), "args": vars(args), "rows": rows}, args.out)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
