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
