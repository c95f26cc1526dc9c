"""transformers MambaForCausalLM folders (model_type "mamba")."""
from __future__ import annotations

from ..config import Mamba1Config, ModelConfig
from .common import add_backbone, backbone_key, check_silu, export_state, has_arch, pad_vocab, strip_backbone

NAME = "transformers MambaForCausalLM"

file_key = backbone_key  # how this format names a mambakit key (for error messages)


def detect(raw: dict) -> bool:
    return has_arch(raw, ("MambaForCausalLM", "MambaModel"), ("mamba",))


def to_mambakit(raw: dict, state: dict):
    check_silu(raw)
    d = raw["hidden_size"]
    expand = raw.get("expand", 2)
    if raw.get("intermediate_size", expand * d) != expand * d:
        raise ValueError(f"intermediate_size {raw['intermediate_size']} != expand * hidden_size")
    config = ModelConfig(
        d_model=d, n_layer=raw["num_hidden_layers"], vocab_size=raw["vocab_size"], ssm_layer="mamba1",
        tie_embeddings=raw.get("tie_word_embeddings", True), norm_eps=raw.get("layer_norm_epsilon", 1e-5),
        residual_in_fp32=raw.get("residual_in_fp32", True),
        mamba1=Mamba1Config(d_state=raw.get("state_size", 16), d_conv=raw.get("conv_kernel", 4), expand=expand,
                            dt_rank=raw.get("time_step_rank", "auto"), conv_bias=raw.get("use_conv_bias", True),
                            bias=raw.get("use_bias", False), dt_min=raw.get("time_step_min", 0.001),
                            dt_max=raw.get("time_step_max", 0.1), dt_init_floor=raw.get("time_step_floor", 1e-4)))
    return config, pad_vocab(strip_backbone(state), config)


def from_mambakit(model):
    c = model.config
    m = c.mamba1
    raw = {
        "architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layer, "vocab_size": c.vocab_size, "state_size": m.d_state,
        "conv_kernel": m.d_conv, "expand": m.expand, "intermediate_size": m.expand * c.d_model,
        "time_step_rank": c.mamba1_dt_rank(), "use_conv_bias": m.conv_bias, "use_bias": m.bias,
        "layer_norm_epsilon": c.norm_eps, "residual_in_fp32": c.residual_in_fp32,
        "tie_word_embeddings": c.tie_embeddings, "hidden_act": "silu",
        "time_step_min": m.dt_min, "time_step_max": m.dt_max, "time_step_floor": m.dt_init_floor,
    }
    return raw, add_backbone(export_state(model, c.vocab_size))
