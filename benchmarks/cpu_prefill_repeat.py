"""How steady a CPU prefill is: one model's prefill timed many times in a row in one process.

Letters: l prompt length.

    python benchmarks/cpu_prefill_repeat.py --threads 2 [--presets mamba-130m,mamba2-130m] [--blocks 6]

For each preset (random weights): --blocks blocks of 3 prefills of --length tokens (all logits), the
best of each block in tok/s, and the matmul floor (benchmarks/common.py: matmul_rate) measured
before and after, as the percentage of it each block reached. On a shared machine the blocks show
whether one run's percentage is the code's or the machine's (docs/benchmarks.md, session 8).
Writes cpu_prefill_repeat-cpu-<date>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import mambakit  # noqa: E402
from common import machine_info, matmul_rate, write_result  # noqa: E402
from cpu_generation import matmul_flops_per_token  # noqa: E402


@torch.inference_mode()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="mamba-130m,mamba2-130m")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for preset in a.presets.split(","):
        torch.manual_seed(0)
        model = mambakit.LM(mambakit.ModelConfig.from_preset(preset)).eval()
        ids = torch.randint(0, model.config.vocab_size, (1, a.length))
        model(ids[:, :64])
        rate0 = matmul_rate()
        blocks = []
        for _ in range(a.blocks):
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                out = model(ids)
                best = min(best, time.perf_counter() - t)
                del out
            blocks.append(a.length / best)
        rate1 = matmul_rate()
        floor = (rate0 + rate1) / 2 / matmul_flops_per_token(model)
        row = {"preset": preset, "block_tok_s": blocks, "matmul_flop_s": [rate0, rate1], "floor_tok_s": floor,
               "percent_of_floor": [100 * v / floor for v in blocks]}
        rows.append(row)
        print(f"{preset}: floor {floor:.0f} tok/s ({rate0 / 1e9:.1f}, {rate1 / 1e9:.1f} GFLOP/s); blocks "
              + " ".join(f"{v:.0f} ({p:.0f}%)" for v, p in zip(blocks, row["percent_of_floor"])), flush=True)
    path = write_result("cpu_prefill_repeat", {"machine": machine_info(), "threads": torch.get_num_threads(),
                                               "length": a.length, "rows": rows}, a.out)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
