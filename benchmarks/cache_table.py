"""Parameters and inference-cache bytes per sequence of the 8B study's models, computed without weights.

Letters: t context length (tokens in the cache).

For each model: the parameter count (the model built on the meta device, tied weights once) and
the bytes one sequence's cache holds after t tokens (mambakit.memory.cache_bytes_per_sequence):
SSM conv and ssm states (fixed size; the ssm state is fp32 whatever the dtype) plus the keys and
values of every attention layer (growing with t), activations in --dtype (bf16 by default).
Nothing here is timed: the numbers follow from the configurations alone, so the result file has
no hardware in its name.

    python benchmarks/cache_table.py                      # writes benchmarks/results/cache_table.json
    python benchmarks/cache_table.py --models mamba2-130m mamba2-hybrid-130m transformer-130m
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mambakit.memory import cache_bytes_by_kind, parameter_counts  # noqa: E402
from mambakit.presets import PRESETS  # noqa: E402
from mambakit.presets_hybrid import HYBRID_PRESETS  # noqa: E402

MODELS_8B = ["mamba2-8b", "mamba2-hybrid-8b", "transformer-8b"]
MODELS_SMALL = ["mamba2-130m", "mamba2-hybrid-130m", "transformer-130m",
                "mamba2-370m", "mamba2-hybrid-370m", "transformer-370m"]
CONTEXTS = [4096, 32768, 131072]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def human(n: float, unit: str = "B") -> str:
    for prefix, scale in (("Gi", 2 ** 30), ("Mi", 2 ** 20), ("Ki", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}"


def row(name: str, contexts: list[int], dtype: torch.dtype) -> dict:
    config = {**PRESETS, **HYBRID_PRESETS}[name]
    counts = parameter_counts(config)
    return {"model": name, "layer_pattern": config.layer_pattern, "parameters": counts,
            "cache_bytes": {str(t): cache_bytes_by_kind(config, t, dtype) for t in contexts}}


def markdown(rows: list[dict], contexts: list[int], dtype_name: str) -> str:
    head = "| model | blocks (M / * / -) | parameters | " + " | ".join(
        f"cache at {t // 1024}K ({dtype_name})" for t in contexts) + " |"
    lines = [head, "|" + "---|" * (3 + len(contexts))]
    for r in rows:
        p = r["layer_pattern"]
        blocks = f"{p.count('M')} / {p.count('*')} / {p.count('-')}"
        cells = [human(r["cache_bytes"][str(t)]["total"]) for t in contexts]
        lines.append(f"| {r['model']} | {blocks} | {r['parameters']['total'] / 1e9:.3f} B | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS_8B + MODELS_SMALL)
    ap.add_argument("--contexts", nargs="+", type=int, default=CONTEXTS)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cache_table.json"))
    args = ap.parse_args(argv)
    known = {**PRESETS, **HYBRID_PRESETS}
    unknown = [m for m in args.models if m not in known]
    if unknown:
        raise SystemExit(f"unknown presets {unknown}; known: {', '.join(known)}")
    rows = [row(m, args.contexts, DTYPES[args.dtype]) for m in args.models]
    print(markdown(rows, args.contexts, args.dtype))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"what": "parameters and inference-cache bytes per sequence (batch 1), computed from the configs",
               "activation_dtype": args.dtype, "ssm_state_dtype": "fp32", "contexts": args.contexts,
               "torch": torch.__version__, "models": rows}
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
