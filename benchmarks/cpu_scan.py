"""The Mamba-1 selective scan and the causal conv on the CPU: the compiled kernels
(mambakit/ops/cpu_kernels.py) against the PyTorch paths, one layer of a mamba-130m-shaped model,
fp32 inference.

Letters: b batch, l length, e inner width, n state dim.

    python benchmarks/cpu_scan.py [--threads 2] [--length 1024] [--repeats 7]

Times ops.selective_scan_fn(backend="chunked") and cpu_kernels.selective_scan (softplus, scan,
D skip, gate) on the same inputs, best of --repeats, after checking that they agree; and the causal
conv + SiLU over x as a slice of in_proj's (b, l, 2e) output, the torch op (ops/conv1d.py) against
cpu_kernels.conv_seq, with an initial state and the final state returned (as a prefill). Writes
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


def conv_times(b: int, l: int, e: int, repeats: int) -> dict:
    """Causal conv (k 4) + SiLU with state in and out: torch op against cpu_kernels.conv_seq, ms."""
    from mambakit.ops.conv1d import causal_conv1d as conv_torch
    x = torch.randn(b, l, 2 * e)[..., :e]  # x as in_proj's output holds it: rows of stride 2e
    w, bias, state = torch.randn(e, 4), torch.randn(e), torch.randn(b, e, 4)
    y_torch, _ = conv_torch(x, w, bias, "silu", initial_state=state, return_final_state=True)
    y_kernel = cpu_kernels.conv_seq(x, w, bias, True, state=state.clone())
    torch.testing.assert_close(y_kernel, y_torch, rtol=1e-5, atol=1e-5)
    t_torch = best_of(lambda: conv_torch(x, w, bias, "silu", initial_state=state, return_final_state=True), repeats)
    t_kernel = best_of(lambda: cpu_kernels.conv_seq(x, w, bias, True, state=state.clone()), repeats)
    return {"conv_torch_ms": t_torch * 1e3, "conv_kernel_ms": t_kernel * 1e3}


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
        conv = conv_times(b, l, e, a.repeats)
    row = {"batch": b, "length": l, "inner": e, "state": n, "threads": a.threads, "rel_error": rel,
           "chunked_ms": t_torch * 1e3, "kernel_ms": t_kernel * 1e3, "speedup": t_torch / t_kernel, **conv}
    print(f"b {b} l {l} e {e} n {n}, {a.threads} thread(s): chunked {row['chunked_ms']:.1f} ms, "
          f"kernel {row['kernel_ms']:.1f} ms ({row['speedup']:.1f}x), rel. error {rel:.1e}; conv: torch "
          f"{conv['conv_torch_ms']:.2f} ms, kernel {conv['conv_kernel_ms']:.2f} ms")
    path = write_result("cpu_scan", {"machine": machine_info(), "args": vars(a), "rows": [row]}, a.out)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
