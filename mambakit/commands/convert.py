"""Convert a checkpoint: mambakit convert SRC DST [--to native|hf] [--dtype auto|float32|bfloat16|float16].

No shape letters: the check runs one small batch of token ids (CHECK_BATCH x CHECK_TOKENS).

SRC is any folder `mambakit.load` reads (mambakit's own, a transformers Mamba / Mamba2 / NemotronH /
Llama folder, a mamba_ssm folder); DST is written as mambakit's native folder or as the transformers
folder of its kind (written to a temporary folder, then renamed). The tokenizer files of SRC come
along, so that DST generates text as SRC did. Then DST is read back and run on a batch of random
tokens next to the model read from SRC: a converted checkpoint that would not reproduce the logits
is reported, not left behind silently (exit status 1).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..placement import DTYPE_NAMES

# Files of a Hugging Face tokenizer that a converted folder keeps (copied when DST lacks them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "generation_config.json")
CHECK_BATCH, CHECK_TOKENS = 2, 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="the checkpoint folder to read")
    parser.add_argument("dst", help="the folder to write (an existing checkpoint folder is replaced)")
    parser.add_argument("--to", default="native", choices=["native", "hf"],
                        help="native (config.json + model.safetensors, default) or hf (transformers)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPE_NAMES],
                        help="weights' dtype in DST (default auto: as SRC stores them)")
    parser.add_argument("--no-check", action="store_true", help="skip reading DST back and comparing logits")


def _note(message: str) -> None:
    print(f"mambakit convert: {message}", file=sys.stderr, flush=True)


def _size(folder: Path) -> str:
    total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return f"{total / 2 ** 20:.1f} MiB"


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy SRC's tokenizer files that DST does not have; -> their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def check_logits(model, dst: Path) -> float:
    """Max |logit difference| between `model` and DST read back in its dtype, on random tokens."""
    import torch

    import mambakit
    param = next(model.parameters())
    again = mambakit.load(dst, dtype=param.dtype)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (CHECK_BATCH, CHECK_TOKENS), generator=gen)
    with torch.inference_mode():
        return (model(ids).float() - again(ids).float()).abs().max().item()


def run(args) -> int:
    import mambakit
    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such checkpoint folder")
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst} is the source folder; write the conversion to another folder")
    model = mambakit.load(src, dtype=args.dtype)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    _note(f"read {src}: {model.num_parameters() / 1e6:.1f}M parameters, {dtype}")
    try:
        model.save(dst, format=args.to)
    except ValueError as err:  # the library names save()'s argument; here it is the command's option
        raise ValueError(str(err).replace("format='native'", "--to native")) from err
    copied = copy_tokenizer(src, dst)
    _note(f"wrote {dst} ({args.to}, {_size(dst)})" + (f"; tokenizer files: {', '.join(copied)}" if copied else ""))
    if args.no_check:
        return 0
    diff = check_logits(model, dst)
    # Same weights, same dtype, same code: the logits agree exactly (a field lost on the way would not)
    if diff != 0.0:
        _note(f"CHECK FAILED: {dst} read back gives logits that differ by up to {diff:.3g} from {src}'s")
        return 1
    _note(f"checked: {dst} read back gives {src}'s logits exactly ({CHECK_BATCH} x {CHECK_TOKENS} random tokens)")
    return 0
