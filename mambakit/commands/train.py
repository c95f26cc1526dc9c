"""Train a model from a TOML config: mambakit train CONFIG.toml [--section.key VALUE ...] [--resume [CKPT]].

No shape letters: this file parses arguments.

Overrides use the config's dotted names (`--train.steps 200 --optim.lr 1e-3 --model.d_model 128`);
values are read as TOML literals, so 1e-3, true and [0.9, 0.95] mean what they say. The same
command under `torchrun --nproc_per_node N` trains on N processes (train.distributed = ddp|fsdp).
"""
from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a TOML file (see examples/train_tiny.toml and docs/training.md)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                        help="continue from the newest complete checkpoint of out_dir, or from CKPT")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="--section.key VALUE pairs that replace the file's values")


def split_resume(overrides: list[str], resume):
    """--resume may also come after the overrides (argparse hands everything after CONFIG to us)."""
    rest, i = [], 0
    while i < len(overrides):
        arg = overrides[i]
        if arg == "--resume":
            nxt = overrides[i + 1] if i + 1 < len(overrides) else None
            if nxt is not None and not nxt.startswith("--"):
                resume, i = nxt, i + 2
            else:
                resume, i = "latest", i + 1
        elif arg.startswith("--resume="):
            resume, i = arg.split("=", 1)[1], i + 1
        else:
            rest.append(arg)
            i += 1
    return rest, resume


def run(args) -> int:
    from ..train import TrainConfig, train
    overrides, resume = split_resume(list(args.overrides or []), args.resume)
    print_config = args.print_config or "--print-config" in overrides
    overrides = [a for a in overrides if a != "--print-config"]
    cfg = TrainConfig.from_toml(args.config, overrides)
    if print_config:
        print(cfg.to_toml(), end="")
        return 0
    last = train(cfg, resume=resume)
    if last and os.environ.get("RANK", "0") == "0":
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items()
                          if k in ("step", "loss", "val_loss", "val_ppl", "tokens_per_s"))
        print(f"done: {shown}; checkpoints in {cfg.out_dir}/checkpoints", flush=True)
    return 0
