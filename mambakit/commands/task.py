"""Train or evaluate a model on one of the papers' synthetic tasks; accuracy against length as JSON and a plot.

No shape letters: this file handles options and files.

    mambakit task list
    mambakit task train --task selective_copying --model mamba2-tiny --param length=256 --steps 2000
    mambakit task eval --task induction_heads --model runs/task/model --values 64,256,1024,65536
    mambakit task train --task induction_heads --model mamba-tiny,mamba2-tiny,transformer-tiny --steps 800
    mambakit task train --task phonebook --param num_entries=20 --param min_entries=1 --param num_examples=3 \
        --model hybrid-tiny --train-seconds 180 --eval-seconds 30 --values 1,5,20,40

`--param KEY=VALUE` sets a task parameter (see `mambakit task list`), `--set KEY=VALUE` a field of
the model config of a preset (dotted for sub-configs: --set mamba2.d_state=32). `train` saves the
model to OUT/model (OUT/model-<name> for several), then evaluates; both write OUT/results.json and
OUT/<task>.png. --train-seconds and --eval-seconds bound a run in time (for a fixed GPU slot): it
still evaluates and writes its results.
"""
from __future__ import annotations

import argparse
import sys
import time

from . import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("train", "eval", "list"), help="train a new model, evaluate one, "
                        "or list the tasks and their parameters")
    parser.add_argument("--task", help="selective_copying, induction_heads, mqar or phonebook")
    parser.add_argument("--model", help="a preset (a new model, for train) or a checkpoint folder; several, "
                        "comma-separated, run one after the other into one table and plot")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE", help="a task parameter (repeatable)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="a model config field (repeatable)")
    parser.add_argument("--name", help="the models' names in the table and plot, comma-separated (default: --model)")
    parser.add_argument("--steps", type=positive_int, default=1000)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="linear warm-up steps (default: 50, at most a tenth of --steps, so that a short run decays)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-seconds", type=float, help="stop training after this many seconds (counted from the "
                        "end of the first step, which compiles the kernels) or --steps, whichever comes first; the "
                        "cosine schedule ends with it. For a fixed time slot on a GPU")
    parser.add_argument("--data-workers", type=int, default=0, help="processes making training batches ahead of "
                        "time (the same batches; default 0: made in the training process)")
    parser.add_argument("--values", help="comma-separated values of the task's sweep parameter "
                        "(default: the task's own sweep, e.g. 2^6..2^20 for induction_heads)")
    parser.add_argument("--eval-examples", type=positive_int, default=256, help="examples per evaluation point")
    parser.add_argument("--eval-batch-size", type=positive_int, default=64)
    parser.add_argument("--eval-max-batch-tokens", type=positive_int, default=2 ** 20,
                        help="at most this many tokens per evaluation batch (default 2^20); long examples still "
                        "reach the device --chunk-len tokens at a time, so on a GPU 2^24 puts 16 examples of 2^20 "
                        "tokens in one batch")
    parser.add_argument("--eval-token-budget", type=positive_int, help="at long lengths, fewer examples: at most "
                        "this many tokens per point, but never fewer than 8 examples (e.g. 16777216 for induction "
                        "heads to 2^20)")
    parser.add_argument("--chunk-len", type=positive_int, default=4096, help="tokens per forward at evaluation; "
                        "longer examples stream through the recurrent cache, so memory stays bounded")
    parser.add_argument("--max-attention-length", type=positive_int, default=16384,
                        help="models with attention skip evaluation lengths above this")
    parser.add_argument("--max-attention-scores", type=positive_int, default=2 ** 29, help="models with attention "
                        "score smaller batches at long lengths: batch x heads x length x chunk at most this "
                        "(default 2^29, 2 GiB of fp32 scores should SDPA fall back to its math kernel)")
    parser.add_argument("--eval-seconds", type=float, help="a time slot for the evaluation of each model: once "
                        "used up, the current point stops after 8 examples and later points are marked skipped")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    parser.add_argument("--out", help="output folder (default: task_output/<task>-<model name>)")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def _task(args):
    from ..tasks import get_task
    from ..tasks.runner import parse_overrides
    if not args.task:
        raise ValueError("--task is required (one of: selective_copying, induction_heads, mqar, phonebook)")
    params = parse_overrides(args.param)
    return get_task(args.task, **params)


def _values(args, task) -> list:
    if not args.values:
        return list(task.default_sweep)
    try:
        return [int(v) for v in args.values.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--values must be comma-separated ints, got {args.values!r}") from err


def _list() -> int:
    from ..tasks import TASKS, task_parameters
    for name, cls in TASKS.items():
        params = ", ".join(f"{k}={v}" for k, v in task_parameters(name).items())
        print(f"{name}: {cls.description}\n    parameters: {params}\n    sweep: {cls.sweep_param} "
              f"{list(cls.default_sweep)}; headline metric: {cls.metric}")
    return 0


def run(args) -> int:
    if args.action == "list":
        return _list()
    import torch
    from pathlib import Path
    from ..tasks import report

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not args.model:
        raise ValueError("--model is required: a preset such as mamba2-tiny, or a checkpoint folder")
    if args.action == "eval" and args.set:
        raise ValueError("--set only applies to `task train` (a new model from a preset)")
    task = _task(args)
    values = _values(args, task)
    for v in values:
        task.at(v)  # a value the task refuses fails here, before any training
    specs = [m.strip() for m in args.model.split(",") if m.strip()]
    names = [n.strip() for n in args.name.split(",")] if args.name else [_default_name(s) for s in specs]
    if len(names) != len(specs) or len(set(names)) != len(names):
        raise ValueError(f"--name needs one distinct name per model ({len(specs)}), got {args.name!r}")
    out = Path(args.out or f"task_output/{task.name}-{'-'.join(names)}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if args.train_seconds is not None and not args.train_seconds > 0:
        raise ValueError(f"--train-seconds must be > 0, got {args.train_seconds}")
    if args.data_workers < 0:
        raise ValueError(f"--data-workers must be >= 0, got {args.data_workers}")
    if args.eval_seconds is not None and not args.eval_seconds > 0:
        raise ValueError(f"--eval-seconds must be > 0, got {args.eval_seconds}")
    from ..placement import resolve_device
    device = str(resolve_device(args.device)) if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    results = {"task": task.name, "task_params": task.params(), "sweep_param": task.sweep_param,
               "metric": task.metric, "models": [], "command": report.command_line(),
               "machine": report.machine_info()}
    for spec, name in zip(specs, names):
        results["models"].append(_one_model(args, task, values, spec, name, device,
                                            out / ("model" if len(specs) == 1 else f"model-{name}")))
        # written after every model: a run stopped part way keeps the models it finished
        path = report.write_json(results, out / "results.json")
    if not args.no_eval:
        print(report.format_table(results))
        picture = report.plot(results, out / f"{task.name}.png")
        if picture:
            print(f"plot: {picture}")
    print(f"results: {path}")
    return 0


def _default_name(spec: str) -> str:
    from pathlib import Path
    p = Path(spec)
    return p.parent.name if p.name == "model" and p.parent.name else p.name


def _one_model(args, task, values, spec, name, device, save_to) -> dict:
    """Build (or load), train if asked, save, and evaluate one model; its entry of results.json."""
    from tqdm import tqdm
    from ..tasks.runner import TrainSettings, build_model, evaluate, parse_overrides, train

    model = build_model(spec, task.vocab_size, parse_overrides(args.set), seed=args.seed).to(device)
    entry = {"name": name, "model": spec, "device": device, "num_parameters": model.num_parameters(),
             "config": model.config.to_dict()}
    if args.action == "train":
        warmup = min(args.warmup_steps, args.steps) if args.warmup_steps is not None else min(50, args.steps // 10)
        settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                 weight_decay=args.weight_decay, warmup_steps=warmup,
                                 seed=args.seed, max_seconds=args.train_seconds)
        timed = args.train_seconds is not None  # then the bar counts seconds, so its ETA is the slot's end
        bar = tqdm(total=round(args.train_seconds) if timed else settings.steps, desc=f"train {name}",
                   unit="s" if timed else "step", file=sys.stderr,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total} s [{elapsed}<{remaining}{postfix}]" if timed else None)
        started = time.perf_counter()

        def on_step(step, loss, acc):
            if timed:
                bar.update(min(time.perf_counter() - started, bar.total) - bar.n)
            else:
                bar.update(1)
            if step % 10 == 0 or step == settings.steps:
                bar.set_postfix(step=step, loss=f"{loss:.3f}", acc=f"{acc:.2f}")
        entry["train"] = train(model, task, settings, on_step, workers=args.data_workers)
        bar.close()
        model.save(save_to)
        print(f"model saved to {save_to}")
    if not args.no_eval:
        bar = tqdm(total=len(values), desc=f"eval {name}", unit="point", file=sys.stderr)
        entry["eval"] = evaluate(model, task, values, num_examples=args.eval_examples,
                                 batch_size=args.eval_batch_size, seed=args.seed, chunk_len=args.chunk_len,
                                 max_attention_length=args.max_attention_length,
                                 max_batch_tokens=args.eval_max_batch_tokens,
                                 token_budget=args.eval_token_budget, on_point=lambda r: bar.update(1),
                                 max_attention_scores=args.max_attention_scores, max_seconds=args.eval_seconds)
        bar.close()
    return entry
