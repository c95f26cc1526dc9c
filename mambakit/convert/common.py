"""Key renaming and vocabulary padding shared by the Hugging Face and mamba_ssm formats.

Letters: v vocabulary, d model width.

transformers and mamba_ssm prefix the trunk with `backbone.` and name the embedding
`embeddings` (transformers) or `embedding` (mamba_ssm); inside a layer (`norm`, `mixer.*`) the
names are already mambakit's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def strip_backbone(state: dict, embedding_key: str = "embeddings") -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            key = key[len("backbone."):]
            if key.startswith(embedding_key + "."):
                key = "embedding." + key[len(embedding_key) + 1:]
        out[key] = value
    return out


def add_backbone(state: dict, embedding_key: str = "embeddings") -> dict:
    out = {}
    for key, value in state.items():
        if key == "lm_head.weight":
            out[key] = value
            continue
        if key.startswith("embedding."):
            key = embedding_key + key[len("embedding"):]
        out["backbone." + key] = value
    return out


def backbone_key(key: str, embedding_key: str = "embeddings") -> str:
    """The name add_backbone gives one mambakit key (a format's file_key, for error messages)."""
    return next(iter(add_backbone({key: None}, embedding_key)))


def pad_vocab(state: dict, config) -> dict:
    """Zero rows up to the padded vocabulary for the embedding and the head, when a file holds
    exactly config.vocab_size rows (transformers' layout). Any other row count is left as it is,
    so the shape check names the tensor instead of padding a short one silently."""
    padded = config.padded_vocab_size
    for key in ("embedding.weight", "lm_head.weight"):
        if key in state and state[key].shape[0] == config.vocab_size < padded:
            state[key] = F.pad(state[key], (0, 0, 0, padded - state[key].shape[0]))
    return state


def trim_vocab(state: dict, vocab: int) -> dict:
    for key in ("embedding.weight", "lm_head.weight"):
        if key in state:
            state[key] = state[key][:vocab]
    return state


def export_state(model, vocab: int | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors with the head dropped when tied and, if vocab is given, the padding trimmed."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return trim_vocab(state, vocab) if vocab is not None else state


def json_float(v) -> float:
    """A float from config.json; transformers >= 5 writes inf as {"__float__": "Infinity"}."""
    if isinstance(v, dict) and "__float__" in v:
        v = v["__float__"]
    return float(v)


def read_token_ids(raw: dict) -> dict:
    """The special-token ids a transformers config.json names, for ModelConfig.token_ids: a key it
    has but sets to none (null, or -1 as some configs write) is kept as None, so that a writer
    states "none" too rather than leave the reader's class default; a malformed id is left out."""
    from ..config import TOKEN_ID_KEYS, check_token_ids
    out = {}
    for key in TOKEN_ID_KEYS:
        if key not in raw:
            continue
        v = None if raw[key] is None or (isinstance(raw[key], int) and raw[key] < 0) else raw[key]
        try:
            check_token_ids({key: v})
        except ValueError:
            continue
        out[key] = v
    return out


def check_silu(raw: dict) -> None:
    """transformers' Mamba and Mamba2 mixers apply config.hidden_act; mambakit's apply SiLU."""
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {raw['hidden_act']!r} is not supported (mambakit's mixers use 'silu')")


def has_arch(raw: dict, names: tuple, model_types: tuple) -> bool:
    return bool(set(raw.get("architectures") or []) & set(names)) or raw.get("model_type") in model_types
