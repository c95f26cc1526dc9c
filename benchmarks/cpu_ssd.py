"""The Mamba-2 prefill's non-GEMM parts on the CPU, one layer of a mamba2-130m-shaped model, fp32
inference: the SSD chunk loop in torch (ops/ssd/chunked._ssd_infer) against the C one
(cpu_kernels.ssd_chunks), the causal conv + SiLU (torch op against cpu_kernels.conv_seq) and the
gated RMSNorm (ops.gated_rms_norm against cpu_kernels.gated_norm_), each pair called in turn
--rounds times (medians and minima: a busy neighbour slows both alike).

Letters: b batch, l length, h heads, p head dim, n state dim, e = h p, c conv channels e + 2n.

    python benchmarks/cpu_ssd.py [--threads 2] [--length 1024] [--rounds 20]

Inputs are column slices of one in_proj-shaped output, as the layer passes them. Writes
cpu_ssd-<machine>-<date>.json to benchmarks/results (or --out).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine_info, write_result  # noqa: E402
from mambakit import ops  # noqa: E402
from mambakit.ops import cpu_kernels  # noqa: E402
from mambakit.ops.conv1d import causal_conv1d as conv_torch  # noqa: E402
from mambakit.ops.ssd import chunked  # noqa: E402


def alternate(pairs: dict, rounds: int) -> dict:
    """{name: fn} called in turn `rounds` times after two warm-up calls each -> {name: {median_ms, min_ms}}."""
    times = {k: [] for k in pairs}
    for fn in pairs.values():
        fn(), fn()
    for _ in range(rounds):
        for k, fn in pairs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: {"median_ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3} for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if not cpu_kernels.ssd_chunks_ready():
        print("the C SSD is not available here (no C compiler, MAMBAKIT_CPU_KERNELS=off, or no sgemm_ in torch)")
        return 1
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    b, l, h, p, n, k = 1, a.length, 24, 64, 128, 4
    e, c = h * p, h * p + 2 * n
    zxbcdt = torch.randn(b, l, e + c + h)  # in_proj's output: z, xBC, dt
    z, xbc = zxbcdt[..., :e], zxbcdt[..., e:e + c]
    x, B, C = xbc[..., :e].unflatten(-1, (h, p)), xbc[..., e:e + n], xbc[..., e + n:]
    dt = torch.nn.functional.softplus(torch.randn(b, l, h) * 0.5 - 2)
    A, D = -torch.rand(h) * 4 - 0.5, torch.ones(h)
    conv_w, conv_b, norm_w = torch.randn(c, k) * 0.3, torch.randn(c) * 0.1, torch.randn(e)
    y = torch.randn(b, l, e)
    floor, q = -40.0, chunked.C_CHUNK

    def ssd_torch():
        return chunked._ssd_infer(x.contiguous(), dt, dt * A, B.contiguous(), C.contiguous(), chunked.INFER_CHUNK,
                                  floor, D, None)

    def ssd_c():
        return cpu_kernels.ssd_chunks(x, dt, A, B, C, D, None, q, floor)

    with torch.inference_mode():
        (y0, s0), (y1, s1) = ssd_torch(), ssd_c()
        rel = max(((y1 - y0).norm() / y0.norm()).item(), ((s1 - s0).norm() / s0.norm()).item())
        ssd = alternate({"torch_loop": ssd_torch, "c": ssd_c}, a.rounds)
        conv = alternate({"torch_op": lambda: conv_torch(xbc, conv_w, conv_b, "silu"),
                          "c": lambda: cpu_kernels.conv_seq(xbc, conv_w, conv_b, True)}, a.rounds)
        norm = alternate({"torch": lambda: ops.gated_rms_norm(y, z, norm_w, 1e-5, group_size=e),
                          "c": lambda: cpu_kernels.gated_norm_(y.clone(), z, norm_w, 1e-5, e, False)}, a.rounds)
    shapes = {"batch": b, "length": l, "heads": h, "headdim": p, "d_state": n, "conv_channels": c,
              "ssd_chunk_c": q, "ssd_chunk_torch": chunked.INFER_CHUNK, "threads": a.threads}
    payload = {"machine": machine_info(), "args": vars(a), "shapes": shapes, "ssd_rel_error": rel,
               "ssd": ssd, "conv": conv, "gated_norm": norm,
               "note": "gated_norm's C figure includes a clone of y (the kernel works in place)"}
    for name, r in (("ssd", ssd), ("conv", conv), ("gated_norm", norm)):
        print(name, "  ".join(f"{k}: {v['median_ms']:.2f} ms (min {v['min_ms']:.2f})" for k, v in r.items()))
    print(f"ssd relative difference {rel:.1e}")
    print(f"results: {write_result('cpu_ssd', payload, a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
