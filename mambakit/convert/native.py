"""mambakit's own folder: config.json {"mambakit_format": 1, "model": ModelConfig} + model.safetensors."""
from __future__ import annotations

from ..config import ModelConfig

NAME = "native"
FORMAT_VERSION = 1


def detect(raw: dict) -> bool:
    return "mambakit_format" in raw


def to_mambakit(raw: dict, state: dict):
    if raw["mambakit_format"] != FORMAT_VERSION:
        raise ValueError(f"mambakit_format {raw['mambakit_format']} is not supported (expected {FORMAT_VERSION})")
    if not isinstance(raw.get("model"), dict):
        raise ValueError(f"'model' must be an object of ModelConfig fields, got {type(raw.get('model')).__name__}")
    return ModelConfig.from_dict(raw["model"]), state


def from_mambakit(model):
    state = dict(model.state_dict())
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # safetensors refuses shared storage; load re-ties it
    return {"mambakit_format": FORMAT_VERSION, "model": model.config.to_dict()}, state
