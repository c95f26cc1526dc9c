"""What a model costs in memory, computed without its weights (on the meta device).

Letters: t context length (tokens in the cache), kvh key/value heads, hd head dim.

`parameter_counts(config)`: parameters by kind of block, from the model built on the meta device
(no memory, no init work), so the counts are those of the real model, tied embeddings counted once.

`cache_bytes_per_sequence(config, context_len, dtype)`: the inference cache of one sequence
after `context_len` tokens. The fixed-size states (SSM conv and ssm states) are those that
`LM.allocate_cache(1, dtype, device="meta")` allocates (the SSM state stays fp32 whatever the
dtype, as in real decoding); each attention layer adds keys and values, 2 * t * kvh * hd
elements of `dtype`, for the t tokens it has seen. It is what `InferenceCache.nbytes` reports
after a prefill of `context_len` tokens in that dtype. What decoding allocates can be more: the
growing KV cache doubles its buffer when a step does not fit (up to twice the attention part),
and a static KV cache (allocate_static_cache) holds its whole capacity from the start.
"""
from __future__ import annotations

import functools
import json

import torch


def meta_model(config):
    """LM(config) on the meta device: shapes only. Cached by config (treat the result as read-only)."""
    return _meta_model(config.to_json())


@functools.lru_cache(maxsize=16)
def _meta_model(config_json: str):
    from .config import ModelConfig
    from .model import LM
    with torch.device("meta"):
        return LM(ModelConfig.from_dict(json.loads(config_json)))


_KINDS = {"M": "ssm", "*": "attention", "-": "mlp"}


def parameter_counts(config) -> dict[str, int]:
    """{"total", "embedding" (input embedding + untied head), "ssm", "attention", "mlp", "norm"}."""
    model = meta_model(config)
    counts = {"total": model.num_parameters(), "embedding": model.embedding.weight.numel(),
              "ssm": 0, "attention": 0, "mlp": 0, "norm": model.norm_f.weight.numel()}
    if not config.tie_embeddings:
        counts["embedding"] += model.lm_head.weight.numel()
    for block in model.layers:
        counts[_KINDS[block.kind]] += sum(p.numel() for p in block.mixer.parameters())
        counts["norm"] += sum(p.numel() for p in block.norm.parameters())
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    return counts


def count_parameters(config) -> int:
    return parameter_counts(config)["total"]


def cache_bytes_by_kind(config, context_len: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """Bytes of one sequence's cache after context_len tokens: {"ssm", "attention", "total"}."""
    if isinstance(context_len, bool) or not isinstance(context_len, int) or context_len < 0:
        raise ValueError(f"context_len must be an int >= 0, got {context_len!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    model = meta_model(config)
    cache = model.allocate_cache(1, dtype=dtype, device="meta")
    out = {"ssm": 0, "attention": 0}
    item = torch.empty((), dtype=dtype).element_size()
    for block, state in zip(model.layers, cache.layers):
        held = sum(t.numel() * t.element_size() for t in state.values())
        if block.kind == "*":
            mixer = block.mixer
            out["attention"] += held + 2 * context_len * mixer.n_kv_heads * mixer.head_dim * item
        else:
            out["ssm"] += held  # MLP blocks hold nothing
    out["total"] = out["ssm"] + out["attention"]
    return out


def cache_bytes_per_sequence(config, context_len: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of one sequence's inference cache after context_len tokens, activations in dtype."""
    return cache_bytes_by_kind(config, context_len, dtype)["total"]


__all__ = ["parameter_counts", "count_parameters", "cache_bytes_per_sequence", "cache_bytes_by_kind", "meta_model"]
