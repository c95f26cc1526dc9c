"""The `mambakit` command. Each subcommand lives in mambakit/commands/<name>.py with
`add_arguments(parser)` and `run(args) -> int`, imported only when used so `mambakit --help`
stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": "run the built-in demonstration (the README's first command)",
    "generate": "generate text from a checkpoint or a preset",
    "train": "train a model from a TOML config",
    "plot": "plot the loss and learning-rate curves of a training run",
    "task": "train or evaluate on the papers' synthetic tasks",
    "eval": "evaluate: perplexity, multiple choice, needle in a haystack, lm-evaluation-harness tasks",
    "convert": "convert a checkpoint folder (transformers, mamba_ssm, native) to native or transformers",
    "serve": "serve completions over HTTP (a subset of OpenAI's /v1/completions, with streaming)",
}


def _module(name: str):
    try:
        return importlib.import_module(f"mambakit.commands.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"mambakit.commands.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mambakit", description="Mamba-family language models on CPU and GPU.")
    parser.add_argument("--version", action="version", version=f"mambakit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        mod = _module(name)
        if mod is None:
            continue
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip().splitlines()[0])
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _version() -> str:
    from . import __version__
    return __version__


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"mambakit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
