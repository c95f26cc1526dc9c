"""Where a decode step's time goes on the GPU: the kernels of one token of the 1.3B-class models of
benchmarks/gpu_generation.py, per kernel name, and the graphed step's wall time against the sum of
its kernels (the difference is launch gaps inside the graph and host work between replays).

Letters: b batch, d model width, l context (tokens already in the cache).

    python benchmarks/gpu_profile_decode.py --out DIR [--models mamba2,hybrid] [--batch 1]
    python benchmarks/gpu_profile_decode.py --out /tmp/p --device cpu --dtype float32 --d-model 64 \
        --n-layer 4 --head-dim 16 --d-state 16 --vocab 256 --context 16 --iters 2     # logic smoke test

For each model: the eager step and the graphed step are each profiled over --iters tokens
(torch.profiler, CUDA activity; kernels inside a CUDA graph are traced by CUPTI), and the graphed
step is also timed alone with CUDA events. Writes gpu_profile_decode.json and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import mambakit  # noqa: E402
import mambakit.cuda_graphs  # noqa: E402
import mambakit.generation  # noqa: E402
from gpu_generation import mambakit_config, nominal_peak, parse_args as generation_args, weight_bytes  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def kernel_table(step, token, iters: int) -> tuple[list[dict], float]:
    """Per-kernel CUDA ms per step over `iters` steps, and the sum over kernels (ms per step)."""
    from torch.profiler import ProfilerActivity, profile
    _sync()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            step(token)
        _sync()
    rows = []
    for ev in prof.key_averages():
        ms = ev.device_time_total / 1e3 / iters
        if ms > 0 and ev.device_type == torch.autograd.DeviceType.CUDA:
            rows.append({"kernel": ev.key[:100], "ms_per_step": ms, "calls_per_step": ev.count / iters})
    rows.sort(key=lambda r: -r["ms_per_step"])
    return rows, sum(r["ms_per_step"] for r in rows)


def wall_ms(step, token, iters: int) -> float:
    _sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step(token)
    _sync()
    return (time.perf_counter() - t0) * 1e3 / iters


def profile_model(family: str, a, gen_args) -> dict:
    cfg = mambakit_config(family, gen_args)
    device = torch.device(gen_args.device)
    torch.manual_seed(0)
    with device:
        model = mambakit.LM(cfg)
    model = model.to(getattr(torch, gen_args.dtype)).eval()
    b = a.batch
    ids = torch.randint(0, cfg.vocab_size, (b, a.context), device=device)
    decoder = mambakit.cuda_graphs.graphed_decoder(model, b, device, capacity=a.context + 4 * a.iters + 64)
    out = {"model": family, "batch": b, "context": a.context, "parameters": model.num_parameters(),
           "weight_bytes": weight_bytes(model)}
    with torch.inference_mode():
        cache = decoder.begin() if decoder is not None else model.allocate_cache(b, device=device)
        token = mambakit.generation.prefill(model, ids, cache, chunk=8192).argmax(-1)[:, None]  # (b, 1)
        steps = {"eager": lambda t: model(t, cache=cache, validate=False)}
        if decoder is not None:  # None off CUDA: the smoke run profiles the eager step only
            steps["graphs"] = decoder.step
        for name, step in steps.items():
            for _ in range(3):
                step(token)
            out[f"{name}_wall_ms"] = wall_ms(step, token, a.iters)
            rows, total = kernel_table(step, token, a.iters)
            out[f"{name}_kernel_sum_ms"] = total
            out[f"{name}_kernels"] = rows
            out[f"{name}_kernels_per_step"] = sum(r["calls_per_step"] for r in rows)
    if decoder is not None:
        decoder.busy = False
    out["peak_bandwidth_nominal"] = peak = nominal_peak(gen_args.device) or 3.35e12  # else: H100 SXM's
    out["weight_floor_ms"] = out["weight_bytes"] / peak * 1e3
    if "graphs_wall_ms" in out:
        out["graphs_fraction_of_peak"] = out["weight_floor_ms"] / out["graphs_wall_ms"]
    model = decoder = steps = cache = None  # freed before the next model (the lambda holds model)
    torch.cuda.empty_cache()
    return out


def use_gemv_configs(path: str) -> None:
    """Override ops.gemv_triton.default_config for the shapes in the file (a tuning experiment)."""
    import mambakit.ops.gemv_triton as gemv
    with open(path) as f:
        table = {tuple(int(v) for v in key.split(",")): tuple(cfg) for key, cfg in json.load(f).items()}
    default = gemv.default_config  # keys o,k,m,prologue (gpu_gemv.py's) first, then o,k,m, then o,k (any rows)

    def tuned(o, k, m=1, prologue=0, conv=False):
        return (table.get((o, k, m, prologue)) or table.get((o, k, m)) or table.get((o, k))
                or default(o, k, m, prologue=prologue, conv=conv))
    gemv.default_config = tuned
    print(f"fused GEMV configs from {path}: {table}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mamba2,hybrid")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--gemv-configs", default=None, help="JSON {'o,k,m,prologue' (or 'o,k,m', "
                    "or 'o,k': any rows): [BO, BK, warps(, RB)]} from gpu_gemv.py --best-out: these fused GEMVs "
                    "use these configs instead of the defaults")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    a, rest = ap.parse_known_args(argv)
    if a.gemv_configs:
        use_gemv_configs(a.gemv_configs)
    gen_args = generation_args(rest)  # model size, dtype, device: gpu_generation.py's options
    results = []
    for family in a.models.split(","):
        r = profile_model(family, a, gen_args)
        results.append(r)
        print(f"\n== {family} b{a.batch} context {a.context}: {r['parameters'] / 1e9:.2f}B params, "
              f"weight floor {r['weight_floor_ms']:.3f} ms/step at {r['peak_bandwidth_nominal'] / 1e12:.2f} TB/s, "
              f"graphed step at {100 * r.get('graphs_fraction_of_peak', float('nan')):.0f}% of it")
        for name in [k for k in ("eager", "graphs") if f"{k}_wall_ms" in r]:
            print(f"{name}: wall {r[f'{name}_wall_ms']:.3f} ms/step, kernels sum {r[f'{name}_kernel_sum_ms']:.3f} ms, "
                  f"{r[f'{name}_kernels_per_step']:.0f} kernels/step")
        for row in r.get("graphs_kernels", r["eager_kernels"])[:25]:
            print(f"  {row['ms_per_step']:8.4f} ms  x{row['calls_per_step']:5.1f}  {row['kernel']}")
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "gpu_profile_decode.json"), "w") as f:
            switches = {v: os.environ.get(v) for v in ("MAMBAKIT_FUSED_DECODE", "MAMBAKIT_PDL")}
            json.dump({"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                       "torch": torch.__version__, "switches": switches, "gemv_configs": a.gemv_configs,
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
