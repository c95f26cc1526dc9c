"""Reading and writing checkpoint folders safely.

Weights are read from model.safetensors, sharded *.safetensors with an index, or
pytorch_model.bin; a truncated or corrupt file is a CheckpointError naming it. Folders are
written under a temporary name and renamed, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, corrupt, or not matching its config."""


def read_config(path: Path) -> dict:
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder (expected a folder with config.json and weights)")
    cfg = path / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"{cfg}: missing; a checkpoint folder needs config.json")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg}: not valid JSON ({err})") from err


def _read_safetensors(f: Path) -> dict:
    from safetensors.torch import load_file
    try:
        return load_file(str(f))
    except Exception as err:  # safetensors raises its own error types for truncation
        raise CheckpointError(f"{f}: cannot read safetensors file (truncated or corrupt?): {err}") from err


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").exists():
        return _read_safetensors(path / "model.safetensors")
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for name in files:
            state.update(_read_safetensors(path / name))
        return state
    for name in ("pytorch_model.bin", "model.pt"):
        f = path / name
        if f.exists():
            try:
                return torch.load(f, map_location="cpu", weights_only=True)
            except Exception as err:
                raise CheckpointError(f"{f}: cannot read weights (truncated or corrupt?): {err}") from err
    raise CheckpointError(f"{path}: no weights found (expected model.safetensors, an index of shards, "
                          "or pytorch_model.bin)")


def load_checked(config, state: dict, path: Path, dtype=None, device=None):
    """Build LM(config) and fill it from `state`; any missing, unexpected or misshapen key is an error."""
    from ..model import LM
    with torch.device("meta"):
        model = LM(config)
    expected = {k: v for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight", None)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise CheckpointError(f"{path}: weights do not match config.json: " + "; ".join(parts))
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CheckpointError(f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                                  f"config.json implies {tuple(ref.shape)}")
    model = model.to_empty(device=device or "cpu")
    if config.tie_embeddings:
        model.lm_head.weight = model.embedding.weight
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key in state:  # the tied head is filled through the embedding
                tensor.copy_(state[key].to(tensor.dtype))
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def write_folder(path: Path, raw_config: dict, state: dict[str, torch.Tensor]) -> None:
    """Write config.json + model.safetensors into `path` atomically (temp folder, then rename)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(raw_config, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
