"""Summarize the runs of benchmarks/multi_gpu_training.sh: throughput per GPU, scaling efficiency,
MFU, peak memory, loss agreement with the 1-GPU run, and the resumed run; JSON, a table and a plot.

No shape letters: this file reads scalars from metrics.jsonl files.

    python benchmarks/multi_gpu_report.py RUN_FOLDER --gpu "NVIDIA H200" --out benchmarks/results/NAME

RUN_FOLDER holds NAME.metrics.jsonl for each run (the script's $OUT/r, unpacked from multi_gpu.tgz).
Throughput is the median of the per-step tokens/s after the first --skip steps (compiles and the
allocator's growth happen there). MFU counts model FLOPs as benchmarks/gpu_training_step.py does.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mambakit  # noqa: E402
from gpu_training_step import BF16_PEAK, model_flops_per_token  # noqa: E402
from mambakit.train.metrics import read_metrics  # noqa: E402

# run name -> (GPUs, strategy); the 1-GPU run of the same precision is the reference of each group
RUNS = {"bf16-1gpu": (1, "single"), "bf16-2gpu-ddp": (2, "DDP"), "bf16-2gpu-fsdp": (2, "FSDP2"),
        "fp32-1gpu": (1, "single"), "fp32-2gpu-ddp": (2, "DDP"), "fp32-2gpu-fsdp": (2, "FSDP2")}
RESUMED = ("bf16-fsdp-resumed-1gpu", "bf16-2gpu-fsdp")  # (the resumed run, the run it continues)


def load_run(folder: Path, name: str) -> tuple[dict, dict] | None:
    """{step: training row}, {step: val_loss} of one run, or None if it did not finish."""
    path = folder / f"{name}.metrics.jsonl"
    if not path.is_file():
        return None
    tmp = folder / f".{name}"  # read_metrics reads RUN_DIR/metrics.jsonl
    tmp.mkdir(exist_ok=True)
    shutil.copy(path, tmp / "metrics.jsonl")
    rows = read_metrics(tmp)
    shutil.rmtree(tmp)
    train = {r["step"]: r for r in rows if "loss" in r}
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    return train, val


def loss_gap(a: dict, b: dict) -> dict:
    """Absolute training-loss differences over the steps both runs logged."""
    steps = sorted(set(a) & set(b))
    gaps = [abs(a[s]["loss"] - b[s]["loss"]) for s in steps]
    return {"steps": [steps[0], steps[-1]], "max": max(gaps), "mean": statistics.mean(gaps),
            "first_5_steps_max": max(gaps[:5])}


def summarize(folder: Path, gpu: str, skip: int, flops_per_token: float) -> dict:
    peak = next((v for k, v in BF16_PEAK.items() if k in gpu), float("nan"))
    out = {"gpu": gpu, "bf16_peak_flops": peak, "model_flops_per_token": flops_per_token,
           "skip_steps": skip, "runs": {}, "missing": []}
    runs = {}
    for name, (n_gpu, strategy) in RUNS.items():
        got = load_run(folder, name)
        if got is None:
            out["missing"].append(name)
            continue
        runs[name] = got
        train, val = got
        rates = [r["tokens_per_s"] for s, r in train.items() if s > skip]
        tok_s = statistics.median(rates)
        row = {"gpus": n_gpu, "strategy": strategy, "steps": max(train), "tokens_per_s": tok_s,
               "tokens_per_s_per_gpu": tok_s / n_gpu,
               "mfu": tok_s / n_gpu * flops_per_token / peak if name.startswith("bf16") else None,
               "max_mem_gib_rank0": max(r.get("max_mem_gib", float("nan")) for r in train.values()),
               "val_loss": val, "final_train_loss": train[max(train)]["loss"]}
        ref = name.split("-")[0] + "-1gpu"
        if n_gpu > 1 and ref in runs:
            row["scaling_efficiency"] = row["tokens_per_s_per_gpu"] / out["runs"][ref]["tokens_per_s_per_gpu"]
            row["loss_gap_vs_1gpu"] = loss_gap(train, runs[ref][0])
        out["runs"][name] = row
    resumed, base = RESUMED
    got = load_run(folder, resumed)
    if got is not None and base in runs:
        out["resumed"] = {"run": resumed, "continues": base, "gpus": 1, "from_step": min(got[0]) - 1,
                          "loss_gap": loss_gap(got[0], runs[base][0]), "val_loss": got[1],
                          "val_loss_of_continued_run": {s: runs[base][1][s] for s in got[1] if s in runs[base][1]}}
    else:
        out["missing"].append(resumed)
    return out


def table(summary: dict) -> str:
    lines = ["| run | GPUs | tokens/s | per GPU | scaling | MFU | peak mem rank 0 (GiB) | val loss (last) | max / mean loss gap vs 1 GPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary["runs"].items():
        gap = r.get("loss_gap_vs_1gpu")
        last_val = r["val_loss"][max(r["val_loss"])] if r["val_loss"] else float("nan")
        scaling = f"{r['scaling_efficiency']:.1%}" if "scaling_efficiency" in r else "-"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        gap_text = f"{gap['max']:.4f} / {gap['mean']:.4f}" if gap else "-"
        lines.append(f"| {name} | {r['gpus']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} | {scaling} | "
                     f"{mfu} | {r['max_mem_gib_rank0']:.1f} | {last_val:.4f} | {gap_text} |")
    return "\n".join(lines)


def plot(folder: Path, summary: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    base = load_run(folder, "bf16-1gpu")[0]
    for name in [n for n in summary["runs"] if n.startswith("bf16")] + [RESUMED[0]]:
        got = load_run(folder, name)
        if got is None:
            continue
        steps = sorted(got[0])
        ax.plot(steps, [got[0][s]["loss"] for s in steps], label=name, lw=1, ls="--" if name == RESUMED[0] else "-")
        ref = load_run(folder, RESUMED[1])[0] if name == RESUMED[0] else base
        if name != "bf16-1gpu":
            both = [s for s in steps if s in ref]
            label = f"{name} vs {RESUMED[1]}" if name == RESUMED[0] else f"{name} vs bf16-1gpu"
            gap_ax.semilogy(both, [max(abs(got[0][s]["loss"] - ref[s]["loss"]), 1e-6) for s in both], label=label, lw=1)
    ax.set(xlabel="optimizer step", ylabel="training loss (nats/token)", title="mamba2-hybrid-370m, 16 x 2048 tokens/step",
           ylim=(1.0, 4.0))
    gap_ax.set(xlabel="optimizer step", ylabel="|loss difference|", title="agreement of the training losses")
    for a in (ax, gap_ax):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--gpu", required=True, help="the GPU's name as torch reports it (selects the bf16 peak)")
    p.add_argument("--config", default="examples/train_hybrid_370m.toml")
    p.add_argument("--skip", type=int, default=10)
    p.add_argument("--out", type=Path, required=True, help="path prefix: writes PREFIX.json and PREFIX.png")
    args = p.parse_args()
    from mambakit.train import TrainConfig
    cfg = TrainConfig.from_toml(args.config)
    with torch.device("meta"):
        model = mambakit.LM(cfg.model_config(256))
    summary = summarize(args.folder, args.gpu, args.skip, model_flops_per_token(model, cfg.train.seq_len))
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    summary["config"] = args.config
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    plot(args.folder, summary, args.out.with_suffix(".png"))
    print(table(summary))
    if "resumed" in summary:
        r = summary["resumed"]
        print(f"\n{r['run']} (from step {r['from_step']} on 1 GPU) vs {r['continues']}: max loss gap "
              f"{r['loss_gap']['max']:.2e}, mean {r['loss_gap']['mean']:.2e}")
    print("missing:", summary["missing"] or "none")


if __name__ == "__main__":
    main()
