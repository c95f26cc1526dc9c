"""Matrix-vector products of CPU decoding: torch's F.linear against mambakit's C loop.

Letters: m rows of x (the batch of a decode step), o out features, i in features.

A decode step of a 130M-shaped model reads the 24 layers' in_proj (3072 x 768) and out_proj
(768 x 1536) and the tied head (50280 x 768): 515 MB, cold in cache (the weights together are far
larger than the L3). This times one pass over all of them, for m rows of x, with F.linear and with
`mambakit.ops.cpu_linear.linear` (the library takes its loop up to LINEAR_MAX_ROWS rows; here
max_rows lets it run at any m, to show where the BLAS overtakes the loop). Best of --repeats passes.

    python benchmarks/cpu_matvec.py --threads 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, machine_info, write_result  # noqa: E402

from mambakit.ops import cpu_kernels, cpu_linear  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")
    args = parser.parse_args(argv)
    if not cpu_kernels.available():
        raise SystemExit("the mambakit CPU kernels are off (no C compiler, or MAMBAKIT_CPU_KERNELS=off)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights = [torch.randn(3072, 768) for _ in range(24)] + [torch.randn(768, 1536) for _ in range(24)]
    weights.append(torch.randn(50280, 768))
    nbytes = sum(w.numel() * 4 for w in weights)
    rows = []
    for m in args.rows:
        xs = {i: torch.randn(m, i) for i in {w.shape[1] for w in weights}}
        for w in weights:  # the loop computes what F.linear does
            torch.testing.assert_close(cpu_linear.linear(xs[w.shape[1]], w, max_rows=m), F.linear(xs[w.shape[1]], w),
                                       rtol=1e-4, atol=1e-3)
        t_torch = best_of(lambda: [F.linear(xs[w.shape[1]], w) for w in weights], args.repeats)
        t_loop = best_of(lambda: [cpu_linear.linear(xs[w.shape[1]], w, max_rows=m) for w in weights], args.repeats)
        rows.append({"rows": m, "torch_s": t_torch, "mambakit_s": t_loop, "torch_bytes_s": nbytes / t_torch,
                     "mambakit_bytes_s": nbytes / t_loop, "speedup": t_torch / t_loop,
                     "used_by_library": m <= cpu_linear.LINEAR_MAX_ROWS})
        print(f"m {m:3d}: F.linear {t_torch * 1e3:7.1f} ms ({nbytes / t_torch / 1e9:5.1f} GB/s)   "
              f"C loop {t_loop * 1e3:7.1f} ms ({nbytes / t_loop / 1e9:5.1f} GB/s)   {t_torch / t_loop:.2f}x")
    payload = {"machine": machine_info(), "weight_bytes": nbytes, "threads": torch.get_num_threads(), "rows": rows}
    print(f"written: {write_result('cpu_matvec', payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
