"""End-to-end training step on the GPU: tokens/s and model FLOPs utilization (MFU).

Letters: b batch, l length, d model width, v vocabulary.

For each model and backend: AdamW (fused) on fp32 parameters, bf16 autocast, next-token loss over
(b, l) random tokens; the median of --steps timed steps after --warmup. Backends: "triton" (the
default dispatch on CUDA) and "torch" (MAMBAKIT_BACKEND=torch: the chunked PyTorch path), each also
as "NAME+ckpt": with LM.activation_checkpointing (each block recomputed in the backward).
Model FLOPs per token = 6 x (matmul weights, the head included) + 3 x the forward's SSD chunk
matmuls + 3 x attention's score and value matmuls (causal: half), as in the PaLM MFU convention.

    python benchmarks/gpu_training_step.py --models mamba2-370m mamba-370m --out $OUT
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mambakit  # noqa: E402
from common import machine_info, write_result  # noqa: E402

# dense bf16 tensor-core peaks (no sparsity), by device name
BF16_PEAK = {"H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
             "H200": 989e12, "A100": 312e12}


def bf16_peak() -> float:
    name = torch.cuda.get_device_name()
    for key, value in BF16_PEAK.items():
        if key in name:
            return value
    return float("nan")


def model_flops_per_token(model, seqlen: int) -> float:
    c = model.config
    matmul = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    extra = 0.0
    for kind in c.layer_pattern:
        if kind == "M" and c.ssm_layer == "mamba2":
            m = c.mamba2
            h = m.expand * c.d_model // m.headdim
            extra += m.chunk_size * (m.ngroups * m.d_state + h * m.headdim) + 4 * h * m.headdim * m.d_state
        elif kind == "*":
            a = c.attention
            hd = a.head_dim or c.d_model // a.n_heads
            extra += 2 * 2 * a.n_heads * hd * seqlen / 2  # QK^T and PV, causal half
    return 3 * (matmul + extra)


def run_one(preset: str, backend: str, args) -> dict:
    kernels, _, option = backend.partition("+")
    if kernels not in ("triton", "torch") or option not in ("", "ckpt"):
        raise ValueError(f"unknown backend {backend!r}; expected triton or torch, optionally with +ckpt")
    os.environ["MAMBAKIT_BACKEND"] = "auto" if kernels == "triton" else "torch"
    torch.manual_seed(0)
    config = mambakit.ModelConfig.from_preset(preset)
    model = mambakit.LM(config).cuda().train()
    model.activation_checkpointing = option == "ckpt"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seqlen + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids[:, :-1], validate=False)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    t = statistics.median(times)
    tokens = args.batch * args.seqlen
    flops = model_flops_per_token(model, args.seqlen) * tokens
    row = {"model": preset, "backend": backend, "batch": args.batch, "seqlen": args.seqlen,
           "params": sum(p.numel() for p in model.parameters()), "step_s": t, "tokens_per_s": tokens / t,
           "mfu": flops / t / bf16_peak(), "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
           "loss": float(loss.detach())}
    print(f"{preset:22s} {backend:10s} {row['tokens_per_s']:10.0f} tok/s  MFU {100 * row['mfu']:5.1f}%  "
          f"step {1e3 * t:8.1f} ms  mem {row['peak_mem_gib']:.1f} GiB", flush=True)
    del model, opt
    torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mamba2-370m", "mamba2-hybrid-370m", "mamba-370m"])
    parser.add_argument("--backends", nargs="+", default=["triton", "torch"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 1
    rows = []

    def save():  # after every row, so a run cut short by a time limit keeps what it measured
        return write_result("gpu_training_step", {"machine": machine_info(), "bf16_peak_flop_s": bf16_peak(),
                                                  "args": vars(args), "rows": rows}, args.out)
    for preset in args.models:
        for backend in args.backends:
            try:
                rows.append(run_one(preset, backend, args))
            except torch.cuda.OutOfMemoryError as err:
                print(f"{preset} {backend}: out of memory ({err})", flush=True)
                rows.append({"model": preset, "backend": backend, "error": "out of memory"})
                torch.cuda.empty_cache()
            except Exception as err:  # noqa: BLE001 - keep the other rows' numbers
                print(f"{preset} {backend}: {err!r}", flush=True)
                rows.append({"model": preset, "backend": backend, "error": repr(err)[:500]})
                torch.cuda.empty_cache()
            save()
    path = save()
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
