"""Plot a training run's curves: mambakit plot RUN_DIR [--out DIR] writes loss.png and lr.png.

No shape letters: this file draws scalars.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run's out_dir (the folder holding metrics.jsonl)")
    parser.add_argument("--out", default=None, help="folder for the PNG files (default: RUN_DIR)")


def run(args) -> int:
    from ..train.plot import plot_run
    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0
