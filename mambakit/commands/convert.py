"""Convert a checkpoint: mambakit convert SRC DST [--to native|hf] [--dtype auto|float32|bfloat16|float16].

No shape letters: the check runs one small batch of token ids (CHECK_BATCH x CHECK_TOKENS).

SRC is any folder `mambakit.load` reads (mambakit's own, a transformers Mamba / Mamba2 / NemotronH /
Llama folder, a mamba_ssm folder); DST becomes mambakit's native folder or the transformers folder
of its kind, with SRC's other files and folders (tokenizer, README, ...) beside the weights. The
conversion is written to a temporary folder beside DST, read back and run on a batch of random tokens
next to the model read from SRC; only if the logits agree bit for bit does it take DST's place. DST
may be new, empty, or a checkpoint folder: then its weights are replaced, its other files kept
unless SRC has files of the same names (as model.save does). Otherwise DST is left as it was and the
exit status is 1.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..placement import DTYPE_NAMES

CHECK_BATCH, CHECK_TOKENS = 2, 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="the checkpoint folder to read")
    parser.add_argument("dst", help="the folder to write: new, empty, or a checkpoint folder (replaced whole)")
    parser.add_argument("--to", default="native", choices=["native", "hf"],
                        help="native (config.json + model.safetensors, default) or hf (transformers)")
    parser.add_argument("--dtype", default="auto", type=str.lower, choices=["auto", *DTYPE_NAMES],
                        help="weights' dtype in DST (default auto: as SRC stores them)")
    parser.add_argument("--no-check", action="store_true", help="skip reading DST back and comparing logits")


def _note(message: str) -> None:
    print(f"mambakit convert: {message}", file=sys.stderr, flush=True)


def _size(folder: Path) -> str:
    total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return f"{total / 2 ** 20:.1f} MiB"


def _check_destination(dst: Path, src: Path) -> None:
    """DST may be new, an empty folder, or a checkpoint folder (replaced); nothing else is overwritten."""
    from ..convert.io import check_replaceable
    if dst == src or dst in src.parents:  # replacing DST would remove SRC
        raise ValueError(f"{dst} is {'the source folder' if dst == src else 'a folder around the source folder'} "
                         f"{src}; write the conversion to a folder of its own")
    blocking = next((p for p in [dst, *dst.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{blocking} is a file; DST is a folder (new, empty, or a checkpoint folder to replace)")
    check_replaceable(dst)


def same_logits(model, folder: Path) -> tuple[bool, str]:
    """Read `folder` back in the model's dtype and run both on random tokens -> (bit for bit equal, detail)."""
    import torch

    import mambakit
    again = mambakit.load(folder, dtype=next(model.parameters()).dtype)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (CHECK_BATCH, CHECK_TOKENS), generator=gen)
    with torch.inference_mode():
        a, b = model(ids), again(ids)
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    if torch.equal(a.view(bits), b.view(bits)):  # NaN == NaN here: a copy is exact whatever the values
        bad = (~torch.isfinite(a)).sum().item()
        return True, f"; {bad} of the logits are not finite (in SRC too)" if bad else ""
    return False, f"they differ by up to {(a.float() - b.float()).abs().nan_to_num(float('inf')).max().item():.3g}"


def run(args) -> int:
    import mambakit
    from ..convert.io import copy_other_files, new_folder_mode, replace_folder
    from ..train.checkpoint import training_state_files
    # real paths: a link to a checkpoint folder converts into the folder it points to (as model.save)
    src, dst = Path(os.path.realpath(args.src)), Path(os.path.realpath(args.dst))
    if not src.exists():
        raise FileNotFoundError(f"{args.src}: no such folder")
    _check_destination(dst, src)
    model = mambakit.load(src, dtype=args.dtype)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    _note(f"read {args.src}: {model.num_parameters() / 1e6:.1f}M parameters, {dtype}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.convert-", dir=dst.parent))
    try:
        work = work_dir / dst.name
        try:
            model.save(work, format=args.to)
        except ValueError as err:  # the library names save()'s argument; here it is the command's option
            raise ValueError(str(err).replace("format='native'", "--to native")) from err
        # a training checkpoint's optimizer, trainer and RNG state (and the manifest of them, which
        # the converted folder would no longer match) stay behind: they resume a run, not a model
        state = training_state_files(src)
        copied = copy_other_files(src, work, overwrite=True, skip_hidden=True, leave=(dst, *state))
        if dst.is_dir():  # DST's own other files stay, where SRC brings none of that name (as model.save)
            copy_other_files(dst, work, link=True)
        os.chmod(work, dst.stat().st_mode & 0o7777 if dst.is_dir() else new_folder_mode())
        if not args.no_check:
            same, detail = same_logits(model, work)
            if not same:
                _note(f"CHECK FAILED: the conversion read back does not give the logits of {args.src} read in "
                      f"{dtype}: {detail}; {args.dst} is left as it was")
                return 1
            _note(f"checked: read back, it gives the logits of {args.src} read in {dtype} bit for bit "
                  f"({CHECK_BATCH} x {CHECK_TOKENS} random tokens){detail}")
        replace_folder(work, dst)  # a failed swap puts DST back as it was
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    _note(f"wrote {args.dst} ({args.to}, {_size(dst)})" + (f"; from {args.src} also: {', '.join(copied)}"
                                                            if copied else ""))
    if state:
        _note(f"left out {args.src}'s training state ({', '.join(p.name for p in state)}): it resumes the run there")
    return 0
