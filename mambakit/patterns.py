"""Layer patterns from ratios, by Megatron-LM's allocation rule.

Letters: none (a pattern is a string with one character per residual block: `M` the SSM
mixer, `*` attention, `-` MLP).

`allocate_pattern(n_layer, attention_ratio, mlp_ratio)` ports `allocate_layers` of
megatron/core/ssm/mamba_hybrid_layer_allocation.py (the `_allocate_auto` half; the override
half is `ModelConfig(layer_pattern=...)`). The rule, step by step as Megatron does it:

1. round(n_layer * attention_ratio) attention layers, spread evenly so that the stack starts
   and ends with SSM layers: the SSM layers are cut into (attention + 1) sections of equal
   (fractional) length, and a running budget places `*` whenever less than half an SSM layer
   is left of the current section.
2. round(n_layer * mlp_ratio) MLP layers replace SSM layers, again spread evenly by a running
   budget over the remaining `M`s ("right-justified": an MLP follows the SSM layers it pairs
   with).

Python's round() is the banker's rounding Megatron uses, so ties go to the even count.
allocate_pattern(56, 0.08, 0.5) is the published 8B hybrid pattern of arXiv 2406.07887.
"""
from __future__ import annotations

SSM, ATTENTION, MLP = "M", "*", "-"


def _check_ratio(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"allocate_pattern: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def allocate_pattern(n_layer: int, attention_ratio: float, mlp_ratio: float) -> str:
    """A pattern of n_layer characters with about the requested shares of `*` and `-`, by Megatron's
    rule (_allocate_auto): round(n_layer * attention_ratio) attention layers; the MLP layers replace
    SSM layers left over, so at large ratios there may be fewer than round(n_layer * mlp_ratio)."""
    if isinstance(n_layer, bool) or not isinstance(n_layer, int) or n_layer < 1:
        raise ValueError(f"allocate_pattern: n_layer must be a positive int, got {n_layer!r}")
    attention_ratio = _check_ratio("attention_ratio", attention_ratio)
    mlp_ratio = _check_ratio("mlp_ratio", mlp_ratio)
    if attention_ratio + mlp_ratio > 1.0:
        raise ValueError(f"allocate_pattern: attention_ratio + mlp_ratio must be <= 1 (the rest is SSM), "
                         f"got {attention_ratio} + {mlp_ratio}")

    layers = [SSM] * n_layer
    # 1. Attention: evenly spaced; first or last only when attention is most of the layers.
    n_attention = round(n_layer * attention_ratio)
    n_ssm = n_layer - n_attention
    section = n_ssm / (n_attention + 1)
    budget = section
    for i in range(n_layer):
        if budget < 0.5:
            layers[i] = ATTENTION
            budget += section
        else:
            budget -= 1

    # 2. MLP: evenly spread over the SSM layers left, not replacing attention.
    n_mlp = round(n_layer * mlp_ratio)
    if n_mlp > 0:
        n_ssm -= n_mlp
        per_mlp = n_ssm / n_mlp
        budget = per_mlp
        for i in range(n_layer):
            if layers[i] == SSM:
                if budget < 0.5:
                    layers[i] = MLP
                    budget += per_mlp
                else:
                    budget -= 1
    return "".join(layers)


def pattern_counts(pattern: str) -> dict[str, int]:
    """How many blocks of each kind: {"M": ..., "*": ..., "-": ...}."""
    return {c: pattern.count(c) for c in (SSM, ATTENTION, MLP)}


__all__ = ["allocate_pattern", "pattern_counts"]
