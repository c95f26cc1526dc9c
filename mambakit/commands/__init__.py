"""Subcommands of the `mambakit` command, one module each (see cli.py)."""
from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--model, --tokenizer, --device and --dtype, as eval.data.load_model takes them."""
    from ..placement import DTYPE_NAMES
    parser.add_argument("--model", required=required, help="a checkpoint folder, or a preset name (random weights)")
    parser.add_argument("--tokenizer", default=None,
                        help="'byte', or a tokenizer.json (or its folder); default: the model folder's, else byte")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", type=str.lower, choices=["auto", *DTYPE_NAMES],
                        help="weights' dtype (default auto: bfloat16 on CUDA, float32 on CPU)")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (argparse turns the error into its usage message and exit code 2)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {n}")
    return n
