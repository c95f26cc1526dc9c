"""Train or evaluate a model on one of the papers' synthetic tasks; accuracy against length as JSON and a plot.

No shape letters: this file handles options and files.

    mambakit task list
    mambakit task train --task selective_copying --model mamba2-tiny --param length=256 --steps 2000
    mambakit task eval --task induction_heads --model runs/task/model --values 64,256,1024,65536

`--param KEY=VALUE` sets a task parameter (see `mambakit task list`), `--set KEY=VALUE` a field of
the model config of a preset (dotted for sub-configs: --set mamba2.d_state=32). `train` saves the
model to OUT/model, then evaluates; both write OUT/results.json and OUT/<task>.png.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("train", "eval", "list"), help="train a new model, evaluate one, "
                        "or list the tasks and their parameters")
    parser.add_argument("--task", help="selective_copying, induction_heads, mqar or phonebook")
    parser.add_argument("--model", help="a preset (a new model, for train) or a checkpoint folder")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE", help="a task parameter (repeatable)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="a model config field (repeatable)")
    parser.add_argument("--name", help="the model's name in the table and plot (default: --model)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--values", help="comma-separated values of the task's sweep parameter "
                        "(default: the task's own sweep, e.g. 2^6..2^20 for induction_heads)")
    parser.add_argument("--eval-examples", type=int, default=256, help="examples per evaluation point")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--chunk-len", type=int, default=4096, help="tokens per forward at evaluation; longer "
                        "examples stream through the recurrent cache, so memory stays bounded")
    parser.add_argument("--max-attention-length", type=int, default=16384,
                        help="models with attention skip evaluation lengths above this")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    parser.add_argument("--out", help="output folder (default: task_output/<task>-<model name>)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")


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
    from tqdm import tqdm
    from ..tasks import report
    from ..tasks.runner import TrainSettings, build_model, evaluate, parse_overrides, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model:
        raise ValueError("--model is required: a preset such as mamba2-tiny, or a checkpoint folder")
    if args.action == "eval" and args.set:
        raise ValueError("--set only applies to `task train` (a new model from a preset)")
    task = _task(args)
    values = _values(args, task)
    spec = Path(args.model)
    name = args.name or (spec.parent.name if spec.name == "model" and spec.parent.name else spec.name)
    out = Path(args.out or f"task_output/{task.name}-{name}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    model = build_model(args.model, task.vocab_size, parse_overrides(args.set), seed=args.seed)
    entry = {"name": name, "model": args.model, "num_parameters": model.num_parameters(),
             "config": model.config.to_dict()}
    if args.action == "train":
        settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                 weight_decay=args.weight_decay, warmup_steps=min(args.warmup_steps, args.steps),
                                 seed=args.seed)
        bar = tqdm(total=settings.steps, desc=f"train {name}", unit="step", file=sys.stderr)

        def on_step(step, loss, acc):
            bar.update(1)
            if step % 10 == 0 or step == settings.steps:
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}")
        entry["train"] = train(model, task, settings, on_step)
        bar.close()
        model.save(out / "model")
        print(f"model saved to {out / 'model'}")
    if not args.no_eval:
        bar = tqdm(total=len(values), desc=f"eval {name}", unit="point", file=sys.stderr)
        entry["eval"] = evaluate(model, task, values, num_examples=args.eval_examples,
                                 batch_size=args.eval_batch_size, seed=args.seed, chunk_len=args.chunk_len,
                                 max_attention_length=args.max_attention_length, on_point=lambda r: bar.update(1))
        bar.close()
    results = {"task": task.name, "task_params": task.params(), "sweep_param": task.sweep_param,
               "metric": task.metric, "models": [entry], "command": report.command_line(),
               "machine": report.machine_info()}
    path = report.write_json(results, out / "results.json")
    if "eval" in entry:
        print(report.format_table(results))
        picture = report.plot(results, out / f"{task.name}.png")
        if picture:
            print(f"plot: {picture}")
    print(f"results: {path}")
    return 0
