"""The demo: selective copying, a time-invariant SSM (S4D) against selective ones (Mamba-1, Mamba-2).

No shape letters: this file handles options, processes and files (mambakit/tasks has the data).

The Mamba paper's first experiment (arXiv 2312.00752, Section 3.1, Table 1): data tokens are
scattered among noise tokens at random positions and must be reproduced, in order, at the end.
A time-invariant model (S4D: the same convolution at every position) cannot tell data from noise
by content; a selective model chooses, token by token, what enters its state. Three models of the
same small size (2 layers, width 64, about 60k parameters) train on the same batches and are
scored on fresh examples at the training length and at 2x, 4x and 8x that length (more noise).

Each model trains in its own process with one thread: as fast as two threads per model on two
cores, and the numbers do not depend on the machine's core count (thread count changes the order
of float sums). Writes OUT/demo.json and OUT/demo.png (matplotlib) and prints a table.
"""
from __future__ import annotations

import argparse
import sys
import time

from . import positive_int

MODELS = {  # name -> (preset, config overrides); all d_model 64, 2 layers, the task's vocabulary
    "S4D": ("mamba2-tiny", {"ssm_layer": "s4d", "s4d": {"d_state": 32}}),
    "Mamba-1": ("mamba-tiny", {"mamba1": {"d_state": 16}}),
    "Mamba-2": ("mamba2-tiny", {"mamba2": {"d_state": 32}}),
}
FULL = {"length": 64, "num_tokens": 3, "vocab_size": 16, "steps": 800, "batch_size": 32, "lr": 1e-2,
        "eval_examples": 256, "eval_lengths": [64, 128, 256, 512]}
COST = {"S4D": 0.4, "Mamba-1": 1.3, "Mamba-2": 1.0}  # relative time per step, measured on a CPU
QUICK = {"length": 16, "num_tokens": 2, "vocab_size": 8, "steps": 3, "batch_size": 4, "lr": 1e-2,
         "eval_examples": 8, "eval_lengths": [16, 32]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", help="folder for demo.json and demo.png (default: ./demo_output)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: check the plumbing end to end "
                        "(tiny task, 3 steps per model, one process; the accuracies mean nothing)")
    parser.add_argument("--steps", type=positive_int, help=f"training steps per model (default: {FULL['steps']})")
    parser.add_argument("--seed", type=int, default=0, help="seeds the models' init and the data (default 0)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--jobs", type=positive_int, help="models trained at once, one process and one thread each "
                        "(default: min(2, cores); 1 with --quick)")


def _train_one(name: str, plan: dict, seed: int, report_step=None) -> dict:
    """Build, train and score one model (runs in a worker process, or inline for --quick)."""
    import torch

    from ..tasks.runner import TrainSettings, build_model, evaluate, train

    torch.set_num_threads(1)
    task = _task(plan)
    preset, overrides = MODELS[name]
    model = build_model(preset, task.vocab_size, overrides, seed=seed)
    settings = TrainSettings(steps=plan["steps"], batch_size=plan["batch_size"], lr=plan["lr"],
                             warmup_steps=min(50, plan["steps"] // 10), seed=seed)
    report = report_step or (lambda *a: _QUEUE.put(a))
    summary = train(model, task, settings, lambda step, loss, acc: report(name, step, loss))
    rows = evaluate(model, task, plan["eval_lengths"], num_examples=plan["eval_examples"], batch_size=128,
                    seed=seed)
    return {"name": name, "model": preset, "overrides": overrides, "num_parameters": model.num_parameters(),
            "config": model.config.to_dict(), "train": summary, "eval": rows}


_QUEUE = None


def _init_worker(queue) -> None:
    global _QUEUE
    _QUEUE = queue


def _task(plan: dict):
    from ..tasks import get_task
    return get_task("selective_copying", vocab_size=plan["vocab_size"], num_tokens=plan["num_tokens"],
                    length=plan["length"])


def run(args) -> int:
    import os
    from pathlib import Path

    from tqdm import tqdm

    from ..tasks import report

    t_start = time.perf_counter()
    plan = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        plan["steps"] = args.steps
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise ValueError(f"--models: unknown {unknown or 'empty list'}; choose from {', '.join(MODELS)}")
    jobs = min(len(names), args.jobs or (1 if args.quick else min(2, os.cpu_count() or 1)))
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} exists and is not a folder")
    task = _task(plan)
    chance = 1 / (task.vocab_size - 2)
    print(f"Selective copying (Mamba paper, Section 3.1): {task.num_tokens} data tokens (ids 1..{task.vocab_size - 2}) "
          f"at random positions among {task.length - 2 * task.num_tokens} noise tokens, then {task.num_tokens} "
          f"markers; at the markers the model must output the data tokens in order. Chance: {100 * chance:.0f}% "
          "per token.")
    print(f"Models: {', '.join(names)}; 2 layers, width 64 each. Each trains {plan['steps']} steps x "
          f"{plan['batch_size']} examples (the same batches for all) at length {task.length}, seed {args.seed}; "
          f"{jobs} at a time, one thread each.", flush=True)

    bar = tqdm(total=plan["steps"] * len(names), unit="step", file=sys.stderr, dynamic_ncols=True, desc="training")
    latest: dict[str, str] = {}

    def on_step(name, step, loss):
        bar.update(1)
        latest[name] = f"{step}/{plan['steps']}"
        if step % 10 == 0 or step == plan["steps"]:
            bar.set_postfix_str(" ".join(f"{k} {v}" for k, v in latest.items()))

    if jobs == 1:
        entries = [_train_one(name, plan, args.seed, on_step) for name in names]
    else:
        entries = _train_in_processes(names, plan, args.seed, jobs, on_step)
    bar.close()

    results = {"task": task.name, "task_params": task.params(), "sweep_param": task.sweep_param,
               "metric": task.metric, "chance_token_accuracy": chance, "quick": bool(args.quick), "plan": plan,
               "seed": args.seed, "jobs": jobs, "models": entries, "command": report.command_line(),
               "machine": report.machine_info()}
    print()
    print(format_table(results))
    out = Path(args.out)
    png = _plot(results, out / "demo.png")
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    json_path = report.write_json(results, out / "demo.json")
    print()
    print(_reading(results))
    print(f"\nresults: {json_path}" + (f"\nplot:    {png}" if png else ""))
    print(f"wall time: {results['wall_seconds']:.0f} s")
    return 0


def _train_in_processes(names, plan, seed, jobs, on_step) -> list[dict]:
    import multiprocessing
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked thread pools
    progress = ctx.Queue()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(progress,)) as pool:
        # the slowest first, so that the other worker takes the two faster ones
        order = sorted(names, key=lambda n: -COST.get(n, 1.0))
        futures = {name: pool.submit(_train_one, name, plan, seed) for name in order}
        while not all(f.done() for f in futures.values()):
            try:
                on_step(*progress.get(timeout=0.2))
            except queue_mod.Empty:
                pass
        while True:  # what arrived after the last future finished
            try:
                on_step(*progress.get_nowait())
            except queue_mod.Empty:
                break
        return [futures[name].result() for name in names]


def format_table(results: dict) -> str:
    lengths = [r["length"] for r in results["models"][0]["eval"]]
    train_len = results["task_params"]["length"]
    head = "| model | parameters | " + " | ".join(
        f"length {l}" + (" (trained)" if l == train_len else "") for l in lengths) + \
        f" | all {results['task_params']['num_tokens']} right at {train_len} | train time* |"
    lines = [head, "|" + "---|" * (len(lengths) + 4)]
    for m in results["models"]:
        accs = " | ".join(f"{100 * r['token_accuracy']:.1f}%" for r in m["eval"])
        first = next(r for r in m["eval"] if r["length"] == train_len) if train_len in lengths else m["eval"][0]
        lines.append(f"| {m['name']} | {m['num_parameters']:,} | {accs} | {100 * first['exact_match']:.1f}% | "
                     f"{m['train']['seconds']:.0f} s |")
    n = results["models"][0]["eval"][0]["examples"]
    lines.append(f"Token accuracy on {n} fresh examples per length (chance "
                 f"{100 * results['chance_token_accuracy']:.0f}%); 'all right': examples copied entirely right. "
                 f"*wall time, {results['jobs']} model(s) training at once.")
    return "\n".join(lines)


def _reading(results: dict) -> str:
    """What the run shows, from its own numbers (and saying so when it does not show the point)."""
    if results["quick"]:
        return "--quick: the plumbing works; the models trained 3 steps, so these accuracies mean nothing."
    p, plan = results["task_params"], results["plan"]
    by_name = {m["name"]: m["eval"] for m in results["models"]}
    at = {n: next(r for r in rows if r["length"] == p["length"]) for n, rows in by_name.items()}
    scale = (f"Scale: length {p['length']}, {p['num_tokens']} tokens to copy, {plan['steps']} steps of "
             f"{plan['batch_size']} on a CPU, one seed ({results['seed']}); the paper used length 4096, 16 tokens and "
             "far longer training (S4 18.3%, Mamba 99.8%). This is a small version of that experiment, not a "
             "reproduction of its numbers. Other seeds give other numbers (docs/results.md lists three); at this "
             "step budget a selective model can end lower.")
    selective = [n for n in by_name if n != "S4D"]
    if "S4D" not in by_name or not selective:
        return scale
    s4d, longest = at["S4D"], by_name["S4D"][-1]
    worst = min(at[n]["token_accuracy"] for n in selective)
    sel = ", ".join(f"{n} {100 * at[n]['token_accuracy']:.1f}%" for n in selective)
    facts = (f"At the training length: {sel}; S4D {100 * s4d['token_accuracy']:.1f}% "
             f"({100 * s4d['exact_match']:.1f}% of examples entirely right). With more noise, S4D falls to "
             f"{100 * longest['token_accuracy']:.1f}% at length {longest['length']} "
             f"(chance {100 * results['chance_token_accuracy']:.0f}%).")
    if worst >= 0.9 and s4d["token_accuracy"] < worst - 0.2:
        verdict = ("What this shows: trained on the same batches, the selective models learn to pick the data out "
                   "of the noise and the time-invariant S4D does not get close, as the paper found. ")
    else:
        verdict = ("This run does not show the paper's gap clearly (a selective model did not reach 90%, or S4D came "
                   "within 20 points); try another --seed or more --steps. ")
    return verdict + facts + "\n" + scale


def _plot(results: dict, path):
    """Left: training curves. Right: accuracy against evaluation length."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        from ..tasks.report import PLOT_MISSING
        print(PLOT_MISSING, file=sys.stderr)
        return None
    p = results["task_params"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    for m in results["models"]:
        hist = m["train"]["history"]
        acc = hist["token_accuracy"]
        w = max(1, len(acc) // 25)
        smooth = [100 * sum(acc[max(0, i - w + 1): i + 1]) / len(acc[max(0, i - w + 1): i + 1]) for i in range(len(acc))]
        line, = ax1.plot(hist["step"], smooth, label=f"{m['name']} ({m['num_parameters'] / 1000:.0f}k params)")
        ax2.plot([r["length"] for r in m["eval"]], [100 * r["token_accuracy"] for r in m["eval"]], marker="o",
                 color=line.get_color(), label=m["name"])
    for ax in (ax1, ax2):
        ax.axhline(100 * results["chance_token_accuracy"], color="gray", linestyle=":", label="chance")
        ax.set_ylim(-3, 103)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_title(f"training at length {p['length']} (smoothed batch accuracy)", fontsize=10)
    ax1.set_xlabel("training step")
    ax1.set_ylabel("token accuracy (%)")
    ax2.set_title(f"fresh examples, {results['models'][0]['eval'][0]['examples']} per length", fontsize=10)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("sequence length (more noise, same 4 data tokens)".replace("4", str(p["num_tokens"])))
    ax2.set_ylabel("token accuracy (%)")
    names = [m["name"] for m in results["models"]]
    fig.suptitle(f"Selective copying: {', '.join(names)}; {p['num_tokens']} tokens, vocabulary {p['vocab_size']}",
                 fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
