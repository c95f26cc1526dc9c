"""transformers Mamba2ForCausalLM folders (model_type "mamba2")."""
from __future__ import annotations

import math

from ..config import Mamba2Config, ModelConfig
from .common import (add_backbone, backbone_key, check_silu, export_state, has_arch, json_float, pad_vocab,
                     strip_backbone)

NAME = "transformers Mamba2ForCausalLM"

file_key = backbone_key  # how this format names a mambakit key (for error messages)


def detect(raw: dict) -> bool:
    return has_arch(raw, ("Mamba2ForCausalLM", "Mamba2Model"), ("mamba2",))


def to_mambakit(raw: dict, state: dict):
    check_silu(raw)
    d = raw["hidden_size"]
    expand = raw.get("expand", 2)
    headdim = raw.get("head_dim", 64)
    if raw.get("num_heads", expand * d // headdim) * headdim != expand * d:
        raise ValueError(f"num_heads * head_dim != expand * hidden_size ({raw.get('num_heads')} * {headdim} "
                         f"vs {expand} * {d})")
    limit = tuple(json_float(v) for v in raw.get("time_step_limit", (0.0, math.inf)))
    config = ModelConfig(
        d_model=d, n_layer=raw["num_hidden_layers"], vocab_size=raw["vocab_size"], ssm_layer="mamba2",
        tie_embeddings=raw.get("tie_word_embeddings", False), norm_eps=raw.get("layer_norm_epsilon", 1e-5),
        residual_in_fp32=raw.get("residual_in_fp32", True),
        mamba2=Mamba2Config(d_state=raw.get("state_size", 128), d_conv=raw.get("conv_kernel", 4), expand=expand,
                            headdim=headdim, ngroups=raw.get("n_groups", 8), chunk_size=raw.get("chunk_size", 256),
                            dt_limit=limit, conv_bias=raw.get("use_conv_bias", True), bias=raw.get("use_bias", False),
                            dt_min=raw.get("time_step_min", 0.001), dt_max=raw.get("time_step_max", 0.1),
                            dt_init_floor=raw.get("time_step_floor", 1e-4)))
    return config, pad_vocab(strip_backbone(state), config)


def from_mambakit(model):
    c = model.config
    m = c.mamba2
    if m.norm_before_gate:  # transformers' gated norm always gates first: it would compute another model
        raise ValueError("cannot write this model as Mamba2ForCausalLM: mamba2.norm_before_gate=True "
                         "(transformers gates before the norm); save with format='native'")
    e = m.expand * c.d_model
    raw = {
        "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layer, "vocab_size": c.vocab_size, "state_size": m.d_state,
        "conv_kernel": m.d_conv, "expand": m.expand, "head_dim": m.headdim, "num_heads": e // m.headdim,
        "n_groups": m.ngroups, "chunk_size": m.chunk_size, "use_conv_bias": m.conv_bias, "use_bias": m.bias,
        "time_step_limit": list(m.dt_limit),  # json writes inf as Infinity, which transformers reads
        "time_step_min": m.dt_min, "time_step_max": m.dt_max, "time_step_floor": m.dt_init_floor,
        "layer_norm_epsilon": c.norm_eps, "residual_in_fp32": c.residual_in_fp32, "rms_norm": True,
        "tie_word_embeddings": c.tie_embeddings, "hidden_act": "silu",
    }
    return raw, add_backbone(export_state(model, c.vocab_size))
