"""Checkpoint formats: mambakit's native folder, Hugging Face transformers folders and mamba_ssm
folders. `load` sniffs the folder; `save` writes native or Hugging Face.

A format is a module with
  NAME: str
  detect(raw_config: dict) -> bool
  to_mambakit(raw_config: dict, state: dict) -> (ModelConfig, state with mambakit key names)
  from_mambakit(model) -> (raw_config: dict, state with the format's key names)   [writers only]
Every key and shape is checked before a model is returned (see io.load_checked).
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from ..placement import resolve_device, resolve_dtype
from .common import read_token_ids
from .io import CheckpointError, load_checked, read_config, read_weights, write_folder

_FORMAT_MODULES = ["native", "hf_mamba", "hf_mamba2", "mamba_ssm", "hf_nemotron_h", "hf_llama"]


def formats():
    mods = []
    for name in _FORMAT_MODULES:
        try:
            mods.append(importlib.import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    return mods


def detect_format(raw: dict, path: Path):
    for fmt in formats():
        if fmt.detect(raw):
            return fmt
    arch = raw.get("architectures") or raw.get("model_type")
    raise CheckpointError(f"{path}/config.json: unrecognized checkpoint (architectures/model_type {arch!r}); "
                          "expected a mambakit folder, a transformers Mamba/Mamba2/NemotronH/Llama folder "
                          "or a mamba_ssm folder")


def load(path, dtype=None, device=None):
    """Read a checkpoint folder (any supported format) into an LM; every key and shape checked.

    dtype: None (the model's default, fp32), a floating dtype or its name, or "auto": the dtype the
    file stores most of its floating weights in (a bf16 checkpoint stays bf16)."""
    from ..config import ModelConfig
    from ..presets import PRESETS
    auto = isinstance(dtype, str) and dtype.strip().lower() == "auto"
    try:
        dtype, device = (None if auto else resolve_dtype(dtype)), resolve_device(device)  # before any file is read
    except ValueError as err:
        if isinstance(dtype, str):
            raise ValueError(f"{err}; or 'auto' (as the checkpoint stores its weights)") from None
        raise
    p = Path(path)
    if not p.exists() and str(path) in PRESETS:
        raise CheckpointError(f"{path!r} is a preset name, not a folder; build it with "
                              f"mambakit.LM(mambakit.ModelConfig.from_preset({str(path)!r}))")
    raw = read_config(p)
    fmt = detect_format(raw, p)
    state, sources = read_weights(p)
    if auto:
        dtype = stored_dtype(state)
    try:
        config, converted = fmt.to_mambakit(raw, state)  # formats build new dicts: `state` stays whole
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        what = f"missing field {err}" if isinstance(err, KeyError) else str(err)
        raise CheckpointError(f"{p}/config.json: cannot read this {fmt.NAME} checkpoint: {what}") from err
    assert isinstance(config, ModelConfig)
    if fmt.NAME != "native":  # the other formats name their special tokens beside the model's fields
        config = dataclasses.replace(config, token_ids=read_token_ids(raw))
    return load_checked(config, converted, p, dtype=dtype, device=device,
                        where=_tensor_namer(fmt, state, sources, converted))


def stored_dtype(state: dict):
    """The dtype holding most elements of the floating tensors in `state` (None if there are none)."""
    counts = {}
    for t in state.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else None


def _tensor_namer(fmt, state: dict, sources: dict, converted: dict):
    """where(key) for load_checked's messages: a mambakit key as the file stores it, with the file's
    name. The format's file_key spells it; where the file spells it otherwise (NemotronH's "model."
    prefix), the tensor is traced back by identity, since renaming keeps the tensor objects."""
    origin = {}
    for k, t in state.items():  # `state` holds every original, so ids stay unique
        origin.setdefault(id(t), k)
    n_files = len(set(sources.values()))
    file_key = getattr(fmt, "file_key", lambda key: key)

    def where(key: str) -> str:
        src = file_key(key)
        if src not in sources and key in converted:
            src = origin.get(id(converted[key]), src)
        if src in sources:
            place = sources[src]
        else:
            place = next(iter(sources.values())) if n_files == 1 else f"in none of the {n_files} weight files"
        return f"{src!r} ({place}" + (f"; mambakit's {key!r})" if src != key else ")")
    return where


def save(model, path, format: str = "native") -> None:
    """Write the model as a folder: format "native" (config.json + model.safetensors) or "hf"."""
    if format == "native":
        from . import native as fmt
    elif format == "hf":
        fmt = _hf_writer(model.config)
    else:
        raise ValueError(f"unknown checkpoint format {format!r}; expected 'native' or 'hf'")
    raw, state = fmt.from_mambakit(model)
    if format == "hf":
        raw.update(model.config.token_ids)  # as read from the checkpoint it came from, if any
    write_folder(path, raw, state)


def _hf_writer(config):
    pattern = config.layer_pattern
    if set(pattern) == {"M"} and config.ssm_layer == "mamba1":
        from . import hf_mamba as fmt
    elif set(pattern) == {"M"} and config.ssm_layer == "mamba2":
        from . import hf_mamba2 as fmt
    elif "M" not in pattern:
        fmt = importlib.import_module(f"{__name__}.hf_llama")
    elif config.ssm_layer == "mamba2":
        fmt = importlib.import_module(f"{__name__}.hf_nemotron_h")
    else:
        what = f"a stack of {config.ssm_layer} layers" if set(pattern) == {"M"} else f"a {config.ssm_layer} hybrid"
        raise ValueError(f"no Hugging Face class holds {what}; save with format='native'")
    return fmt


__all__ = ["load", "save", "CheckpointError", "formats"]
