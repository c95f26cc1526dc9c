"""The Mamba-1 selective scan on the CPU: the compiled kernel (mambakit/ops/cpu_kernels.py) against
the chunked PyTorch tier, one layer of a mamba-130m-shaped model, fp32 inference.

Letters: b batch, l length, e inner width, n state dim.

    python benchmarks/cpu_scan.py [--threads 2] [--length 1024] [--repeats 7]

Times ops.selective_scan_fn(backend="chunked") and cpu_kernels.selective_scan (softplus, scan,
D skip, gate) on the same inputs, best of --repeats, after checking that they agree. Writes
cpu_scan-<machine>-<date>.json to benchmarks/results (or --out).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import best_of, machine_info, write_result  # noqa: E402
from mambakit import ops  # noqa: E402
from mambakit.ops import cpu_kernels  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--inner", type=int, default=1536)
    ap.add_argument("--state", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if not cpu_kernels.available():
        print("the CPU kernels are not available here (no C compiler, or MAMBAKIT_CPU_KERNELS=off)")
        return 1
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    b, l, e, n = a.batch, a.length, a.inner, a.state
    u, dt, z = torch.randn(b, l, e), torch.randn(b, l, e) - 2, torch.randn(b, l, e)
    B, C = torch.randn(b, l, n), torch.randn(b, l, n)
    A = -torch.rand(e, n) * n - 0.5
    D, bias = torch.randn(e), torch.randn(e) * 0.1

    def torch_tier():
        return ops.selective_scan_fn(u, dt, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                                     backend="chunked")[0]

    def kernel():
        h = torch.zeros(b, e, n)
        return cpu_kernels.selective_scan(u, dt, A, B, C, h, D=D, z=z, delta_bias=bias, delta_softplus=True)

    with torch.inference_mode():
        want, got = torch_tier(), kernel()
        rel = ((got - want).norm() / want.norm()).item()
        if rel > 1e-4:
            print(f"the kernel disagrees with the chunked tier: relative error {rel:.2e}")
            return 1
        t_torch, t_kernel = best_of(torch_tier, a.repeats), best_of(kernel, a.repeats)
    row = {"batch": b, "length": l, "inner": e, "state": n, "threads": a.threads, "rel_error": rel,
           "chunked_ms": t_torch * 1e3, "kernel_ms": t_kernel * 1e3, "speedup": t_torch / t_kernel}
    print(f"b {b} l {l} e {e} n {n}, {a.threads} thread(s): chunked {row['chunked_ms']:.1f} ms, "
          f"kernel {row['kernel_ms']:.1f} ms ({row['speedup']:.1f}x), rel. error {rel:.1e}")
    path = write_result("cpu_scan", {"machine": machine_info(), "args": vars(a), "rows": [row]}, a.out)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
