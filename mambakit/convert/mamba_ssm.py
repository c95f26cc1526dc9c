"""mamba_ssm folders: config.json with d_model / n_layer / ssm_cfg / pad_vocab_size_multiple and
pytorch_model.bin with keys `backbone.embedding.weight`, `backbone.layers.{i}.mixer.*`, ...

ssm_cfg.layer picks the mixer ("Mamba1" when absent, or "Mamba2"). Blocks with an MLP inside
(d_intermediate > 0) or attention layers (attn_layer_idx) are mamba_ssm's hybrid layout, which
this reader does not take yet: it says so instead of loading something else.
"""
from __future__ import annotations

from ..config import Mamba1Config, Mamba2Config, ModelConfig
from .common import backbone_key, json_float, pad_vocab, strip_backbone

NAME = "mamba_ssm"

_M1_KEYS = {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor", "conv_bias", "bias"}
_M2_KEYS = {"d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "dt_min", "dt_max",
            "dt_init_floor", "dt_limit", "A_init_range", "conv_bias", "bias", "norm_before_gate"}
# Options of mamba_ssm's mixers that do not change the weights or the math.
_IGNORED = {"layer", "use_fast_path", "dt_scale", "dt_init", "rmsnorm", "d_ssm", "D_has_hdim", "activation",
            "sequence_parallel", "process_group", "use_mem_eff_path", "learnable_init_states"}
# mamba_ssm's MambaConfig fields (and the model's norm_epsilon), plus metadata other tools add.
_TOP_KEYS = {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg",
             "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings",
             "norm_epsilon", "architectures", "model_type", "torch_dtype", "transformers_version"}


def file_key(key: str) -> str:
    """How this format names a mambakit key (for error messages)."""
    return backbone_key(key, embedding_key="embedding")


def detect(raw: dict) -> bool:
    return "d_model" in raw and "n_layer" in raw and "mambakit_format" not in raw


def to_mambakit(raw: dict, state: dict):
    unknown = sorted(k for k in set(raw) - _TOP_KEYS if not k.startswith("_"))
    if unknown:
        raise ValueError(f"fields mambakit does not know: {unknown} (a mamba_ssm config holds {sorted(_TOP_KEYS)})")
    if raw.get("d_intermediate", 0) or raw.get("attn_layer_idx"):
        raise ValueError("mamba_ssm hybrid layouts (d_intermediate > 0 or attn_layer_idx) are not supported yet")
    if not raw.get("rms_norm", True):
        raise ValueError("mamba_ssm checkpoints with LayerNorm (rms_norm=false) are not supported")
    ssm_cfg = dict(raw.get("ssm_cfg") or {})
    layer = ssm_cfg.get("layer", "Mamba1")
    if ssm_cfg.get("D_has_hdim"):
        raise ValueError("ssm_cfg.D_has_hdim=true is not supported")
    if layer not in ("Mamba1", "Mamba2"):
        raise ValueError(f"ssm_cfg.layer {layer!r} is not supported (expected 'Mamba1' or 'Mamba2')")
    allowed = _M1_KEYS if layer == "Mamba1" else _M2_KEYS
    unknown = sorted(set(ssm_cfg) - allowed - _IGNORED)
    if unknown:
        raise ValueError(f"ssm_cfg has fields mambakit does not know: {unknown}")
    sub = {k: v for k, v in ssm_cfg.items() if k in allowed}
    if "dt_limit" in sub:
        sub["dt_limit"] = tuple(json_float(v) for v in sub["dt_limit"])
    common = dict(d_model=raw["d_model"], n_layer=raw["n_layer"], vocab_size=raw["vocab_size"],
                  pad_vocab_size_multiple=raw.get("pad_vocab_size_multiple", 8),
                  tie_embeddings=raw.get("tie_embeddings", True), residual_in_fp32=raw.get("residual_in_fp32", True),
                  norm_eps=raw.get("norm_epsilon", 1e-5))
    if layer == "Mamba1":
        config = ModelConfig(ssm_layer="mamba1", mamba1=Mamba1Config(**sub), **common)
    else:
        config = ModelConfig(ssm_layer="mamba2", mamba2=Mamba2Config(**sub), **common)
    return config, pad_vocab(strip_backbone(state, embedding_key="embedding"), config)

