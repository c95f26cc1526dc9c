"""Training checkpoints: written whole or not at all, the last k kept, verified when read back.

No shape letters: this file moves state dicts.

A checkpoint is the folder RUN_DIR/checkpoints/step-NNNNNNN (N = optimizer steps done) holding
  config.json, model.safetensors   the model in mambakit's native format (mambakit.load reads it)
  optimizer.pt                     the full optimizer state, keyed by parameter name
  trainer.pt                       step, samples consumed (the data position), scheduler, config,
                                   elapsed_s (wall time of the run so far)
  rng-rank{r}.pt                   every RNG state of rank r (python, numpy, torch, cuda)
  tokenizer.json                   the run's data.tokenizer (not with "byte"), with the
                                   tokenizer_config.json / special_tokens_map.json beside it: eval,
                                   generate and serve on the folder read text as the model was trained
  manifest.json                    sha256 of each file above; written last
Everything is written into `.tmp-step-NNNNNNN` and renamed into place, so a folder named step-*
is complete; a crash mid-write leaves only a .tmp-* folder, which is never read and is removed by
the next save. On resume every file is checked against the manifest: a damaged checkpoint is a
CheckpointError naming the file, never a half-restored run. Resuming from an older checkpoint moves
the newer step-* folders into checkpoints/abandoned-after-step-NNNNNNN/ (set_aside_newer).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..convert.io import CheckpointError

STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"


RNG_FILE = re.compile(r"^rng-rank\d+\.pt$")


def training_state_files(folder) -> list[Path]:
    """The files of a training checkpoint that only resuming reads (optimizer.pt, trainer.pt, the
    rng-rank*.pt files, manifest.json); [] for a folder that is no training checkpoint (no manifest
    and trainer.pt). What the model needs (config, weights, tokenizer files) is not among them."""
    folder = Path(folder)
    if not ((folder / MANIFEST).is_file() and (folder / "trainer.pt").is_file()):
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name in (MANIFEST, "trainer.pt", "optimizer.pt") or RNG_FILE.match(p.name))


def checkpoints_root(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed into place), oldest first. .tmp-* folders are ignored."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- RNG --------------------------------------------------------------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- writing ----------------------------------------------------------------------------------------
def tmp_dir(run_dir, step: int) -> Path:
    return checkpoints_root(run_dir) / f".tmp-step-{step:07d}"


def final_dir(run_dir, step: int) -> Path:
    return checkpoints_root(run_dir) / f"step-{step:07d}"


def begin(run_dir, step: int) -> Path:
    """Rank 0: a fresh, empty temporary folder for this step; stale ones a crash left (any step) are removed."""
    tmp = tmp_dir(run_dir, step)
    root = checkpoints_root(run_dir)
    if root.is_dir():
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_rng(tmp: Path, rank: int) -> None:
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")


def write_main(tmp: Path, model_config, model_state: dict, optim_state: dict, trainer_state: dict) -> None:
    """Rank 0: the model (native format), the optimizer and the trainer state."""
    from safetensors.torch import save_file

    from ..convert.native import FORMAT_VERSION
    state = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    if model_config.tie_embeddings:
        state.pop("lm_head.weight", None)  # shared with the embedding; mambakit.load re-ties it
    (tmp / "config.json").write_text(json.dumps({"mambakit_format": FORMAT_VERSION,
                                                 "model": model_config.to_dict()}, indent=2))
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    torch.save(optim_state, tmp / "optimizer.pt")
    torch.save(trainer_state, tmp / "trainer.pt")


def write_tokenizer(tmp: Path, spec: str) -> None:
    """Rank 0: the run's tokenizer (data.tokenizer: a tokenizer.json or a folder holding one) into the
    checkpoint, with the files beside it that name its special tokens. Without it, mambakit.eval's
    load_model and the generate CLI take a checkpoint folder's missing tokenizer.json to mean bytes."""
    if not spec or spec == "byte":
        return
    p = Path(spec).expanduser()
    file = p / "tokenizer.json" if p.is_dir() else p
    shutil.copy2(file, tmp / "tokenizer.json")
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (file.parent / name).is_file():
            shutil.copy2(file.parent / name, tmp / name)


def write_manifest(tmp: Path, step: int) -> None:
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != MANIFEST}
    (tmp / (MANIFEST + ".part")).write_text(json.dumps({"step": step, "files": files}, indent=2))
    os.replace(tmp / (MANIFEST + ".part"), tmp / MANIFEST)


def commit(run_dir, step: int, keep_last: int) -> Path:
    """Rank 0: manifest, rename into place, drop all but the newest `keep_last`.

    Only the step-* folders directly in checkpoints/ count and are pruned: an abandoned-after-step-*
    folder (see set_aside_newer) is the user's to keep or delete."""
    tmp, final = tmp_dir(run_dir, step), final_dir(run_dir, step)
    write_manifest(tmp, step)
    if final.exists():  # the same step saved again (e.g. a rerun): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def set_aside_newer(run_dir, step: int) -> tuple[Path | None, list[int]]:
    """Rank 0, on resuming from `step`: move the step-* folders past it (the branch the resume abandons)
    into checkpoints/abandoned-after-step-NNNNNNN/ (-2, -3, ... when that name is taken); return that
    folder (None when there was nothing newer) and the steps moved.

    Left in place they would be the newest step-* folders: a later --resume would go back to the
    abandoned branch, whose metrics rows the resume has already dropped, and keep_last would prune
    the new branch's checkpoints before them. Moved, not deleted: they are the user's data."""
    newer = [(s, p) for s, p in list_checkpoints(run_dir) if s > step]
    if not newer:
        return None, []
    root = checkpoints_root(run_dir)
    dest, k = root / f"abandoned-after-step-{step:07d}", 1
    while dest.exists():
        k += 1
        dest = root / f"abandoned-after-step-{step:07d}-{k}"
    dest.mkdir()
    for _, p in newer:
        os.replace(p, dest / p.name)
    return dest, [s for s, _ in newer]


# --- reading ----------------------------------------------------------------------------------------
def verify(path: Path) -> dict:
    """Check every file against manifest.json; return the manifest."""
    man = path / MANIFEST
    if not man.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST}; this checkpoint is incomplete or not a training checkpoint")
    try:
        manifest = json.loads(man.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{man}: corrupt manifest ({err})") from err
    for name in ("config.json", "model.safetensors", "optimizer.pt", "trainer.pt"):
        if name not in files:
            raise CheckpointError(f"{man}: lists no {name}; expected a complete training checkpoint")
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing from the checkpoint (listed in {MANIFEST})")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f}: corrupt (its sha256 does not match {MANIFEST}); "
                                  "resume from an older checkpoint with --resume PATH")
    return manifest


def read(path, rank: int) -> dict:
    """Everything a resumed run needs, verified: model_state, optim_state, trainer, rng (or None)."""
    from ..convert.io import read_config, read_weights
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder")
    verify(path)
    raw = read_config(path)
    try:
        optim_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        rng_file = path / f"rng-rank{rank}.pt"
        rng = torch.load(rng_file, map_location="cpu", weights_only=True) if rng_file.exists() else None
    except Exception as err:  # torch.load raises several types for damaged files
        raise CheckpointError(f"{path}: cannot read the training state ({err})") from err
    return {"config": raw, "model_state": read_weights(path)[0], "optim_state": optim_state,
            "trainer": trainer, "rng": rng}
