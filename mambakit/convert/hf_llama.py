"""transformers LlamaForCausalLM folders (model_type "llama"): the Transformer as a "*-" pattern.

Letters: d model width, f MLP hidden width, v vocabulary.

A Llama layer i is two mambakit blocks: 2i = attention (its input_layernorm as the block norm),
2i+1 = SwiGLU MLP (post_attention_layernorm as the block norm). Both are pre-norm residual
blocks, x + attn(norm1(x)) then x + mlp(norm2(x)), exactly Llama's layer. RoPE covers the whole
head (rotary_fraction 1, theta from rope_parameters / rope_theta; transformers' Llama ignores a
partial_rotary_factor, and so does this reader); only the default RoPE type is taken, scaled
variants (linear, dynamic, yarn, llama3) are refused. No hard length limit is set:
max_position_embeddings is a training length, not a limit of the model.

    model.embed_tokens.weight                     <-> embedding.weight
    model.layers.{i}.input_layernorm.weight       <-> layers.{2i}.norm.weight
    model.layers.{i}.self_attn.{q,k,v,o}_proj.*   <-> layers.{2i}.mixer.{q,k,v,o}_proj.*
    model.layers.{i}.post_attention_layernorm.*   <-> layers.{2i+1}.norm.weight
    model.layers.{i}.mlp.{gate,up,down}_proj.*    <-> layers.{2i+1}.mixer.{gate,up,down}_proj.*
    model.norm.weight                             <-> norm_f.weight
    lm_head.weight                                <-> lm_head.weight
"""
from __future__ import annotations

import re

from ..config import AttentionConfig, MLPConfig, ModelConfig
from .common import export_state, has_arch, json_float, pad_vocab

NAME = "transformers LlamaForCausalLM"

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm|self_attn|mlp)\.(.+)$")


def detect(raw: dict) -> bool:
    return has_arch(raw, ("LlamaForCausalLM", "LlamaModel"), ("llama",))


def _rope_theta(raw: dict) -> float:
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    for source in (params, scaling):
        kind = source.get("rope_type", source.get("type", "default"))
        if kind != "default":
            raise ValueError(f"RoPE type {kind!r} is not supported (only the default, unscaled RoPE)")
    return json_float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))


def _rename_in(key: str) -> str | None:
    if key == "model.embed_tokens.weight":
        return "embedding.weight"
    if key == "model.norm.weight":
        return "norm_f.weight"
    m = _LAYER.match(key)
    if m is None:
        return key  # lm_head.weight, or something load_checked reports as unexpected
    i, part, rest = int(m.group(1)), m.group(2), m.group(3)
    if part == "self_attn" and rest == "rotary_emb.inv_freq":
        return None  # a buffer older transformers saved; recomputed from theta
    block = 2 * i if part in ("input_layernorm", "self_attn") else 2 * i + 1
    return f"layers.{block}.norm.{rest}" if part.endswith("layernorm") else f"layers.{block}.mixer.{rest}"


def to_mambakit(raw: dict, state: dict):
    d, n = raw["hidden_size"], raw["num_hidden_layers"]
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {raw['hidden_act']!r} is not supported (Llama's MLP is SwiGLU: 'silu')")
    n_heads = raw["num_attention_heads"]
    config = ModelConfig(
        d_model=d, n_layer=2 * n, vocab_size=raw["vocab_size"], layer_pattern="*-" * n,
        tie_embeddings=raw.get("tie_word_embeddings", False), norm_eps=raw.get("rms_norm_eps", 1e-6),
        residual_in_fp32=False,  # Llama keeps its residual stream in the activation dtype
        attention=AttentionConfig(n_heads=n_heads, n_kv_heads=raw.get("num_key_value_heads") or n_heads,
                                  head_dim=raw.get("head_dim") or d // n_heads, rotary_fraction=1.0,
                                  rope_theta=_rope_theta(raw), bias=raw.get("attention_bias", False)),
        mlp=MLPConfig(hidden_size=raw["intermediate_size"], activation="swiglu", bias=raw.get("mlp_bias", False)))
    out = {}
    for key, value in state.items():
        new = _rename_in(key)
        if new is not None:
            out[new] = value
    return config, pad_vocab(out, config)


def _check_writable(c: ModelConfig) -> int:
    p = c.layer_pattern
    n = len(p) // 2
    problems = []
    if p != "*-" * n or len(p) % 2:
        problems.append(f"its pattern {p!r} is not attention/MLP pairs '*-' * n")
    if c.attention.rotary_fraction != 1.0:
        problems.append(f"its RoPE covers {c.attention.rotary_fraction} of each head (Llama rotates all of it)")
    if c.mlp.activation != "swiglu":
        problems.append(f"its MLP is {c.mlp.activation} (Llama's is SwiGLU)")
    if problems:
        raise ValueError("cannot write this model as LlamaForCausalLM: " + "; ".join(problems)
                         + "; save with format='native'")
    return n


def _rename_out(key: str) -> str:
    if key == "embedding.weight":
        return "model.embed_tokens.weight"
    if key == "norm_f.weight":
        return "model.norm.weight"
    if not key.startswith("layers."):
        return key
    _, block, kind, rest = key.split(".", 3)
    i, second = divmod(int(block), 2)
    if kind == "norm":
        return f"model.layers.{i}.{'post_attention_layernorm' if second else 'input_layernorm'}.{rest}"
    return f"model.layers.{i}.{'mlp' if second else 'self_attn'}.{rest}"


file_key = _rename_out  # how this format names a mambakit key (for error messages)


def from_mambakit(model):
    c = model.config
    n = _check_writable(c)
    a = c.attention
    theta = float(a.rope_theta)
    raw = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
        "hidden_size": c.d_model, "intermediate_size": c.mlp.hidden_size or 4 * c.d_model,
        "num_hidden_layers": n, "num_attention_heads": a.n_heads, "num_key_value_heads": a.n_kv_heads or a.n_heads,
        "head_dim": a.head_dim_for(c.d_model), "hidden_act": "silu",
        "max_position_embeddings": a.max_seqlen or 4096, "rms_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings, "attention_bias": a.bias, "mlp_bias": c.mlp.bias,
        "rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta},
    }
    state = export_state(model, c.vocab_size)
    return raw, {_rename_out(k): v for k, v in state.items()}
