"""What a fresh large CPU tensor costs in page faults: filling a new tensor against refilling one
kept, at sizes below and above glibc's 32 MB mmap ceiling, and the LM head of a mamba-130m-shaped
model (1024 tokens, vocabulary 50280) into fresh logits against a kept buffer. fp32.

Letters: l tokens, d model width, v vocabulary.

    python benchmarks/cpu_fresh_pages.py [--threads 2] [--out DIR]

Why: glibc serves allocations above its mmap threshold (dynamic, at most 32 MB) with fresh pages
from the kernel, and each 4 KB page faults when first written; below it, freed memory is reused.
A prefill's intermediates above that size (the full-sequence logits; a 1.3B model's in_proj
output) pay this on every call. Writes cpu_fresh_pages-cpu-<date>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, machine_info, write_result  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for mb in (6, 35, 206):
        n = mb * 2 ** 20 // 4
        kept = torch.empty(n)
        fresh_ms = 1e3 * best_of(lambda: torch.empty(n).fill_(1.0), a.repeats, warmup=2)
        kept_ms = 1e3 * best_of(lambda: kept.fill_(1.0), a.repeats, warmup=2)
        rows.append({"case": f"fill {mb} MB", "fresh_ms": fresh_ms, "kept_ms": kept_ms})
    l, d, v = 1024, 768, 50280
    h, emb = torch.randn(1, l, d), torch.randn(v, d)
    logits = torch.empty(1, l, v)
    rows.append({"case": f"LM head ({l} x {d}) @ ({d} x {v})",
                 "fresh_ms": 1e3 * best_of(lambda: F.linear(h, emb), max(3, a.repeats // 3), warmup=1),
                 "kept_ms": 1e3 * best_of(lambda: torch.matmul(h, emb.t(), out=logits), max(3, a.repeats // 3),
                                          warmup=1)})
    for r in rows:
        print(f"{r['case']:40s} fresh {r['fresh_ms']:8.3f} ms   kept {r['kept_ms']:8.3f} ms")
    path = write_result("cpu_fresh_pages", {"machine": machine_info(), "rows": rows}, a.out)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
