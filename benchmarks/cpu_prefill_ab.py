"""A switch's effect on the CPU prefill, measured fairly on a shared machine: one process per model,
the switch (an environment variable mambakit reads at each call) flipped between rounds, so both
settings meet the same neighbours.

Letters: l prompt length.

    python benchmarks/cpu_prefill_ab.py [--env MAMBAKIT_ONEDNN --values 0,1] [--presets mamba-130m,mamba2-130m]
                                        [--length 1024] [--rounds 7] [--threads 2]

Random weights, batch 1, the full logits (as cpu_generation.py's prefill). Prints and writes the
minimum and median seconds of each setting: cpu_prefill_ab-<machine>-<date>.json (or --out).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import mambakit  # noqa: E402
from common import machine_info, write_result  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="MAMBAKIT_ONEDNN")
    ap.add_argument("--values", default="0,1")
    ap.add_argument("--presets", default="mamba-130m,mamba2-130m")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    values = a.values.split(",")
    rows = []
    for preset in a.presets.split(","):
        model = mambakit.LM(mambakit.ModelConfig.from_preset(preset)).eval()
        ids = torch.randint(0, model.config.vocab_size, (1, a.length))
        times = {v: [] for v in values}
        with torch.inference_mode():
            model(ids, cache=model.allocate_cache(1))  # warm-up: kernels built, pages touched
            for _ in range(a.rounds):
                for v in values:
                    os.environ[a.env] = v
                    t0 = time.perf_counter()
                    model(ids, cache=model.allocate_cache(1))
                    times[v].append(time.perf_counter() - t0)
        os.environ.pop(a.env, None)
        row = {"preset": preset, "length": a.length,
               **{f"{a.env}={v}": {"min_s": min(t), "median_s": sorted(t)[len(t) // 2], "all_s": t}
                  for v, t in times.items()}}
        rows.append(row)
        print(preset, ", ".join(f"{a.env}={v}: min {min(t):.3f} s, median {sorted(t)[len(t) // 2]:.3f} s"
                                for v, t in times.items()))
    path = write_result("cpu_prefill_ab", {"machine": machine_info(), "args": vars(a), "rows": rows}, a.out)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
