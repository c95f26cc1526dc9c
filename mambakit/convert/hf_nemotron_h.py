"""transformers NemotronHForCausalLM folders (model_type "nemotron_h"): the hybrid M / * / - family.

Letters: d model width, e Mamba-2 inner width (mamba_num_heads * mamba_head_dim), v vocabulary.

The layer pattern is `layers_block_type` (transformers >= 5: "mamba" / "linear_attention" = M,
"attention" / "full_attention" = *, "mlp" = -) or the older `hybrid_override_pattern` string;
MoE blocks ("moe", "E") have no mambakit counterpart and are refused. Blocks map one to one:
`{prefix}.layers.{i}.norm` and `.mixer.*` already carry mambakit's names (Mamba-2: in_proj,
conv1d, dt_bias, A_log, D, norm, out_proj; attention: q/k/v/o_proj; MLP: up_proj, down_proj).
The prefix is `backbone.` in NVIDIA's folders and in what transformers' save_pretrained writes,
`model.` in transformers' module names; both are read, `backbone.` is written.

What transformers' NemotronH computes, and how it maps:
- Mamba-2 mixer: gated RMSNorm per group of e / n_groups channels (mambakit's Mamba2Mixer does
  the same), norm after the gate; dt clamped to time_step_limit (transformers 5's NemotronH mixer,
  default (0, inf)) = mambakit's dt_limit. time_step_min / max / floor are dt's init range only.
- Attention: no position embedding, no biases; GQA with head_dim.
- MLP: up_proj -> mlp_hidden_act -> down_proj, not gated: relu2 (squared ReLU) or gelu.
- RMSNorm everywhere with layer_norm_epsilon; the embedding and head are untied unless
  tie_word_embeddings (the head is written either way, transformers' NemotronH never ties).
"""
from __future__ import annotations

import math

import torch

from ..config import AttentionConfig, Mamba2Config, MLPConfig, ModelConfig
from .common import backbone_key, export_state, has_arch, json_float, pad_vocab

NAME = "transformers NemotronHForCausalLM"

_BLOCK_TYPES = {"mamba": "M", "linear_attention": "M", "M": "M", "attention": "*", "full_attention": "*",
                "*": "*", "mlp": "-", "-": "-"}
_WRITE_TYPES = {"M": "mamba", "*": "attention", "-": "mlp"}
_ACTIVATIONS = {"relu2": "relu2", "gelu": "gelu"}

file_key = backbone_key  # how this format names a mambakit key (for error messages)


def detect(raw: dict) -> bool:
    return has_arch(raw, ("NemotronHForCausalLM", "NemotronHModel"), ("nemotron_h",))


def _get(raw: dict, name: str, alias: str, default):
    """A config field under its current name or its older `mamba_*` alias."""
    return raw[name] if name in raw else raw.get(alias, default)


def _pattern(raw: dict) -> str:
    types = raw.get("layers_block_type") or raw.get("layer_types")
    if types is None:
        pattern = raw.get("hybrid_override_pattern")
        if not isinstance(pattern, str):
            raise ValueError("config.json has neither layers_block_type nor hybrid_override_pattern")
        types = list(pattern)
    unknown = sorted({t for t in types if t not in _BLOCK_TYPES})
    if unknown:
        raise ValueError(f"NemotronH block types {unknown} are not supported (mambakit holds Mamba-2, "
                         f"attention and MLP blocks; MoE blocks have no counterpart)")
    return "".join(_BLOCK_TYPES[t] for t in types)


def _rename_in(key: str) -> str | None:
    for prefix in ("backbone.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix):]
            return "embedding." + key[len("embeddings."):] if key.startswith("embeddings.") else key
    if key.startswith("mtp."):
        return None  # multi-token prediction heads: transformers ignores them too
    return key


def to_mambakit(raw: dict, state: dict):
    d = raw["hidden_size"]
    pattern = _pattern(raw)
    heads, headdim = raw.get("mamba_num_heads", 128), raw.get("mamba_head_dim", 64)
    e = heads * headdim
    if "M" in pattern and e % d:
        raise ValueError(f"mamba_num_heads * mamba_head_dim = {e} is not a multiple of hidden_size {d}")
    if raw.get("mamba_hidden_act", "silu") != "silu":
        raise ValueError(f"mamba_hidden_act {raw['mamba_hidden_act']!r} is not supported (expected 'silu')")
    act = raw.get("mlp_hidden_act", "relu2")
    if "-" in pattern and act not in _ACTIVATIONS:
        raise ValueError(f"mlp_hidden_act {act!r} is not supported (expected one of {sorted(_ACTIVATIONS)})")
    t_min = json_float(_get(raw, "time_step_min", "mamba_dt_min", 0.001))
    n_heads = raw.get("num_attention_heads", 32)
    out = {}
    for key, value in state.items():
        new = _rename_in(key)
        if new is not None:
            out[new] = value
    # transformers' NemotronH never ties: a head that differs from the embedding is the one it uses.
    tie = bool(raw.get("tie_word_embeddings", False))
    if tie and "lm_head.weight" in out and "embedding.weight" in out \
            and not torch.equal(out["lm_head.weight"], out["embedding.weight"]):
        tie = False
    config = ModelConfig(
        d_model=d, n_layer=len(pattern), vocab_size=raw["vocab_size"], layer_pattern=pattern, ssm_layer="mamba2",
        tie_embeddings=tie, norm_eps=raw.get("layer_norm_epsilon", 1e-5),
        residual_in_fp32=raw.get("residual_in_fp32", False),
        mamba2=Mamba2Config(
            d_state=raw.get("ssm_state_size", 128), d_conv=_get(raw, "conv_kernel", "mamba_d_conv", 4),
            expand=max(1, e // d), headdim=headdim, ngroups=_get(raw, "n_groups", "mamba_n_groups", 8),
            chunk_size=_get(raw, "chunk_size", "mamba_chunk_size", 128),
            dt_min=t_min if t_min > 0 else 0.001, dt_max=json_float(_get(raw, "time_step_max", "mamba_dt_max", 0.1)),
            dt_init_floor=json_float(_get(raw, "time_step_floor", "mamba_dt_init_floor", 1e-4)),
            dt_limit=tuple(json_float(v) for v in _get(raw, "time_step_limit", "mamba_dt_limit", (0.0, math.inf))),
            conv_bias=_get(raw, "use_conv_bias", "mamba_conv_bias", True),
            bias=raw.get("use_bias", False)),
        attention=AttentionConfig(n_heads=n_heads, n_kv_heads=raw.get("num_key_value_heads") or n_heads,
                                  head_dim=raw.get("head_dim") or d // n_heads, rotary_fraction=0.0, bias=False),
        mlp=MLPConfig(hidden_size=raw.get("intermediate_size", 21504), activation=_ACTIVATIONS.get(act, "relu2"),
                      bias=raw.get("mlp_bias", False)))
    return config, pad_vocab(out, config)


def _check_writable(c: ModelConfig) -> None:
    p = c.layer_pattern
    problems = []
    if "M" in p and c.ssm_layer != "mamba2":
        problems.append(f"its SSM blocks are {c.ssm_layer}, NemotronH holds mamba2")
    if "M" in p and c.mamba2.norm_before_gate:
        problems.append("mamba2.norm_before_gate=True (NemotronH gates before the norm)")
    if "*" in p and c.attention.rotary_fraction > 0:
        problems.append("its attention uses RoPE (NemotronH attention has no position embedding)")
    if "*" in p and c.attention.bias:
        problems.append("its attention has biases (NemotronH's has none)")
    if "-" in p and c.mlp.activation not in _ACTIVATIONS:
        problems.append(f"its MLP is {c.mlp.activation} (NemotronH MLPs are not gated: relu2 or gelu)")
    if problems:
        raise ValueError("cannot write this model as NemotronHForCausalLM: " + "; ".join(problems)
                         + "; save with format='native'")


def from_mambakit(model):
    c = model.config
    _check_writable(c)
    m, a = c.mamba2, c.attention
    n_heads = a.n_heads
    raw = {
        "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
        "hidden_size": c.d_model, "vocab_size": c.vocab_size, "num_hidden_layers": c.n_layer,
        "hybrid_override_pattern": c.layer_pattern,
        "layers_block_type": [_WRITE_TYPES[k] for k in c.layer_pattern],
        "tie_word_embeddings": c.tie_embeddings, "layer_norm_epsilon": c.norm_eps,
        "residual_in_fp32": c.residual_in_fp32,
        # Mamba-2
        "ssm_state_size": m.d_state, "mamba_num_heads": m.expand * c.d_model // m.headdim,
        "mamba_head_dim": m.headdim, "n_groups": m.ngroups, "conv_kernel": m.d_conv, "expand": m.expand,
        "chunk_size": m.chunk_size, "use_conv_bias": m.conv_bias, "use_bias": m.bias, "mamba_hidden_act": "silu",
        "time_step_min": m.dt_min, "time_step_max": m.dt_max, "time_step_floor": m.dt_init_floor,
        "time_step_limit": [m.dt_limit[0], m.dt_limit[1]],  # json writes inf as Infinity, which transformers reads
        # attention
        "num_attention_heads": n_heads, "num_key_value_heads": a.n_kv_heads or n_heads,
        "head_dim": a.head_dim_for(c.d_model), "attention_bias": False,
        "max_position_embeddings": a.max_seqlen or 4096,
        # MLP
        "intermediate_size": c.mlp.hidden_size or 4 * c.d_model, "mlp_hidden_act": c.mlp.activation,
        "mlp_bias": c.mlp.bias,
    }
    state = export_state(model, c.vocab_size)
    if c.tie_embeddings:  # written out: transformers' NemotronH does not tie its head
        state["lm_head.weight"] = state["embedding.weight"].clone()
    out = {}
    for key, value in state.items():
        if key == "lm_head.weight":
            out[key] = value
        elif key.startswith("embedding."):
            out["backbone.embeddings." + key[len("embedding."):]] = value
        else:
            out["backbone." + key] = value
    return raw, out
