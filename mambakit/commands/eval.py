"""Evaluate a model: perplexity, multiple choice (MMLU formats), needle in a haystack, or lm-eval.

No shape letters: this file handles options and files.

    mambakit eval perplexity --model PATH|PRESET --data a.txt b.jsonl [--context N --stride S]
    mambakit eval choice --model PATH --data test.jsonl [--dev dev.jsonl --shots 5] [--format all]
    mambakit eval needle --model PATH --lengths 1024,4096 --depths 0,0.5,1 [--template phonebook] --out DIR
    mambakit eval needle --plot-from A/needle.json B/needle.json --out both.png
    mambakit eval harness --model mambakit --model_args path=PATH --tasks TASKS [lm_eval's options]

Results print as a table and, with --out, are written as JSON (needle: DIR/needle.json and
DIR/needle.png) with the command line, versions and machine. docs/evaluation.md has the details.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from . import add_model_arguments, positive_int

ACTIONS = ("perplexity", "choice", "needle", "harness")


def _model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    add_model_arguments(p, required=required)
    p.add_argument("--seed", type=int, default=0, help="seed of a preset's random weights and of generated data")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward (default 8)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("perplexity", help="token perplexity and bits per byte of text files")
    _model_options(p)
    p.add_argument("--data", nargs="+", required=True, help=".txt files (one document each) or .jsonl files")
    p.add_argument("--text-field", default="text", help="the field of a .jsonl line holding the text (default text)")
    p.add_argument("--context", type=int, help="window length in tokens (default: the whole document through "
                   "the recurrent cache; the model's limit if it has one)")
    p.add_argument("--stride", type=int, help="tokens a window moves (HF convention; default context // 2)")
    p.add_argument("--prefix", default="auto", help="token before each document: auto (BOS, else EOS, else none), "
                   "none, or an id")
    p.add_argument("--chunk", type=int, default=2048, help="tokens per forward within a document (memory bound)")
    p.add_argument("--out", help="write the results as JSON here")

    p = sub.add_parser("choice", help="multiple-choice accuracy in the MMLU formats (standard, choices, cloze)")
    _model_options(p)
    p.add_argument("--data", required=True, help="jsonl of questions (question, choices, answer, subject)")
    p.add_argument("--dev", help="jsonl the k-shot examples come from (the first k of each subject)")
    p.add_argument("--shots", type=int, default=0, help="examples before each question (default 0)")
    p.add_argument("--format", default="standard", help="standard, choices, cloze, comma-separated, or all")
    p.add_argument("--prefill-chunk", type=int, help="prefill prompts this many tokens at a time")
    p.add_argument("--out", help="write the results (with every prediction) as JSON here")

    p = sub.add_parser("needle", help="needle-in-a-haystack accuracy over context length x depth, with a heatmap")
    _model_options(p, required=False)
    p.add_argument("--lengths", default="512,1024,2048", help="context lengths in tokens, comma-separated "
                   "(default 512,1024,2048: every template fits 512 even in bytes)")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths in [0, 1], comma-separated")
    p.add_argument("--examples", type=int, default=8, help="examples per cell (default 8)")
    p.add_argument("--template", default="ruler", help="ruler, phonebook or phonebook-reversed")
    p.add_argument("--needles", type=int, default=1, help="ruler: needles in the haystack (1 queried, others distract)")
    p.add_argument("--haystack", help="ruler: a text file whose sentences fill the haystack instead of the noise line")
    p.add_argument("--prefill-chunk", type=int, default=2048, help="prefill this many tokens at a time (default 2048)")
    p.add_argument("--name", help="the model's name on the plot (default: --model)")
    p.add_argument("--plot-from", nargs="+", metavar="JSON", help="only plot: needle.json files side by side into --out")
    p.add_argument("--out", help="output folder (needle.json, needle.png); with --plot-from, the PNG path")

    # Everything after `harness` goes to lm-eval as it is: '+' as the option prefix keeps argparse
    # from reading lm-eval's --options as ours.
    p = sub.add_parser("harness", prefix_chars="+", add_help=False,
                       help="run lm-evaluation-harness with the 'mambakit' model registered (pip install lm-eval)")
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="lm_eval's own arguments")


def run(args) -> int:
    return {"perplexity": _perplexity, "choice": _choice, "needle": _needle, "harness": _harness}[args.action](args)


# --- shared ---------------------------------------------------------------------------------------
def _load(args):
    import torch

    from ..eval.data import load_model
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, tokenizer, notes = load_model(args.model, args.tokenizer, device=args.device, dtype=args.dtype,
                                         seed=args.seed)
    for note in notes:
        print(f"mambakit eval: {note}", file=sys.stderr)
    return model, tokenizer


def _meta(args, model) -> dict:
    import platform

    import torch

    import mambakit
    from datetime import datetime
    return {"model": args.model, "num_parameters": model.num_parameters(), "command": " ".join(sys.argv),
            "mambakit": mambakit.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "threads": torch.get_num_threads(),
            "date": datetime.now().isoformat(timespec="seconds")}


def _write(payload: dict, path) -> Path:
    from ..tasks.report import write_json
    path = write_json(payload, path)
    print(f"results written to {path}")
    return path


def _fmt(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


# --- actions ----------------------------------------------------------------------------------------
def _perplexity(args) -> int:
    from ..eval.data import load_documents
    from ..eval.perplexity import perplexity
    docs = load_documents(args.data, args.text_field)
    model, tokenizer = _load(args)
    prefix = int(args.prefix) if args.prefix.isdigit() else args.prefix
    result = perplexity(model, tokenizer, docs, context=args.context, stride=args.stride, prefix=prefix,
                        batch_size=args.batch_size, chunk=args.chunk, progress=not args.no_progress)
    files = {}
    for d in result.documents:
        jsonl_line = re.fullmatch(r"(.*):\d+", d.name)  # "file.jsonl:LINE" -> one row per file
        files.setdefault(jsonl_line.group(1) if jsonl_line else d.name, []).append(d)
    rows = {name: result.summary(ds) for name, ds in files.items()}
    total = result.summary()
    width = max([len(n) for n in rows] + [5])
    print(f"{'file':<{width}}  {'docs':>5}  {'tokens':>9}  {'bytes':>9}  {'perplexity':>11}  {'bits/byte':>9}")
    for name, r in list(rows.items()) + [("total", total)]:
        print(f"{name:<{width}}  {r['documents']:>5}  {r['tokens']:>9}  {r['bytes']:>9}  "
              f"{_fmt(r['token_perplexity'], '.3f'):>11}  {_fmt(r['bits_per_byte']):>9}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} document(s) with no token to score: {', '.join(result.skipped[:5])}")
    if args.out:
        _write({"kind": "perplexity", **_meta(args, model), "data": args.data, "context": result.context,
                "stride": result.stride, "prefix": args.prefix, "tokenizer": repr(tokenizer), "total": total,
                "files": rows, "skipped": result.skipped}, args.out)
    return 0


def _choice(args) -> int:
    from ..eval.choice import FORMATS, evaluate_choice
    from ..eval.data import load_questions
    formats = list(FORMATS) if args.format == "all" else [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"--format must be standard, choices, cloze (comma-separated) or all, got {args.format!r}")
    questions = load_questions(args.data)
    dev = load_questions(args.dev) if args.dev else None
    model, tokenizer = _load(args)
    results = {}
    for fmt in formats:
        results[fmt] = evaluate_choice(model, tokenizer, questions, fmt, dev=dev, shots=args.shots,
                                       batch_size=args.batch_size, prefill_chunk=args.prefill_chunk,
                                       progress=not args.no_progress)
    subjects = sorted({q.subject for q in questions})
    width = max(len(s) for s in subjects + ["overall (micro)"])
    print(f"{args.shots}-shot accuracy (length-normalized in brackets)")
    print(f"{'subject':<{width}}  {'n':>5}  " + "  ".join(f"{f:>17}" for f in formats))
    for s in subjects:
        cells = [results[f]["subjects"][s] for f in formats]
        print(f"{s:<{width}}  {cells[0]['n']:>5}  " + "  ".join(
            f"{c['accuracy']:>8.3f} ({c['accuracy_norm']:.3f})" for c in cells))
    print(f"{'overall (micro)':<{width}}  {len(questions):>5}  " + "  ".join(
        f"{results[f]['accuracy']:>8.3f} ({results[f]['accuracy_norm']:.3f})" for f in formats))
    if args.out:
        _write({"kind": "choice", **_meta(args, model), "data": args.data, "dev": args.dev, "shots": args.shots,
                "results": results}, args.out)
    return 0


def _floats(text: str, what: str, cast=float) -> list:
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"--{what} is empty")
    return values


def _needle(args) -> int:
    from ..eval.needle import evaluate_needle, plot_heatmaps
    if args.plot_from:
        if not args.out:
            raise ValueError("--plot-from needs --out, the PNG to write")
        results = []
        for p in args.plot_from:
            try:
                r = json.loads(Path(p).read_text())
            except (OSError, ValueError) as err:
                raise ValueError(f"--plot-from {p}: cannot read it as JSON ({err})") from None
            if not isinstance(r, dict) or not {"lengths", "depths", "accuracy"} <= set(r):
                raise ValueError(f"--plot-from {p}: not a needle result (`mambakit eval needle --out` writes one)")
            results.append(r)
        print(f"heatmap written to {plot_heatmaps(results, args.out)}")
        return 0
    if not args.model:
        raise ValueError("--model is required (or --plot-from to only plot)")
    lengths = _floats(args.lengths, "lengths", int)
    depths = _floats(args.depths, "depths")
    model, tokenizer = _load(args)
    result = evaluate_needle(model, tokenizer, lengths, depths, num_examples=args.examples, template=args.template,
                             num_needles=args.needles, haystack=args.haystack, seed=args.seed,
                             batch_size=args.batch_size, prefill_chunk=args.prefill_chunk,
                             progress=not args.no_progress)
    result["name"] = args.name or Path(args.model).name
    print(f"accuracy, {args.template}, {args.examples} examples per cell (rows: depth, columns: context length)")
    print("depth  " + "  ".join(f"{L:>7}" for L in lengths))
    for d, row in zip(depths, result["accuracy"]):
        print(f"{d:>5.0%}  " + "  ".join(f"{a:>7.2f}" for a in row))
    print(f"mean accuracy {result['mean_accuracy']:.3f}")
    if args.out:
        out = Path(args.out)
        _write({"kind": "needle", **_meta(args, model), **result}, out / "needle.json")
        print(f"heatmap written to {plot_heatmaps([result], out / 'needle.png')}")
    return 0


def _harness(args) -> int:
    try:
        from ..eval import lm_eval_adapter
    except ImportError as err:
        if "lm_eval" not in str(err):
            raise
        raise ValueError("the harness needs lm-evaluation-harness: pip install lm-eval") from None
    return lm_eval_adapter.main(args.lm_eval_args)
