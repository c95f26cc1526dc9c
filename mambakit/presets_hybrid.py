"""Presets of the 8B study (arXiv 2406.07887): the Mamba-2-Hybrid, its Transformer baseline, and
small members of both families. The lead merges HYBRID_PRESETS into presets.PRESETS.

Letters: d model width, n state dim, p head dim, g groups, h attention heads, kvh key/value heads.

mamba2-hybrid-8b, as published (paper, Megatron-LM examples/mamba/run_text_gen_server_8b.sh,
NVIDIA's nvidia/mamba2-hybrid-8b-3t-4k): d 4096, 56 blocks = 24 Mamba-2 + 4 attention + 28 MLP
in the pattern below (Megatron's allocation with attention 0.08, MLP 0.5); attention 32 heads,
8 KV groups, head dim 128, no position embedding (--position-embedding-type none); Mamba-2
with n 128, p 64, g 8 (gated norm per group), chunk 128, expand 2; MLP hidden 16384 with
Megatron's default activation, exact GeLU (the run scripts pass neither --squared-relu nor
--swiglu); RMSNorm; no biases; untied embeddings; vocabulary 256000 (the 256K SentencePiece).

transformer-8b, the study's baseline (examples/mamba/run_text_gen_server_8b_gpt3.sh, "the 8B
reference Transformer"): 32 Transformer layers = 64 blocks "*-" * 32, d 4096, 32 heads of 128
with no GQA (the script has no --group-query-attention), RoPE on half of each head
(--rotary-percent 0.5, base 10000), squared-ReLU MLP of 16384 (4 d, --squared-relu), no biases,
untied, vocabulary 256000. One difference: Megatron normalizes it with LayerNorm (-1p); mambakit
has RMSNorm only, so this preset has RMSNorm (parameter counts differ by 4096 biases a norm).

Small members keep the proportions and change the size: the hybrids follow mamba2-130m/370m
(d 768 x 24 blocks, d 1024 x 48 blocks; Mamba-2 n 128, p 64, g 1 as those models), with the
8B's allocation rule for their pattern, attention heads of 64 with kvh = h / 4 (the 8B's 32/8),
MLP 4 d GeLU; the Transformers follow GPT-3 Small/Medium depths (12 and 24 layers) with the
baseline's choices (MHA, RoPE on half of each head, squared ReLU 4 d). The small ones use the
GPT-NeoX vocabulary and tied embeddings, like the small Mamba presets, so that families of one
size differ only in their blocks.

hybrid-tiny and transformer-tiny are for tests and demos on a CPU.
"""
from __future__ import annotations

from .config import AttentionConfig, Mamba2Config, MLPConfig, ModelConfig
from .patterns import allocate_pattern

NEOX_VOCAB = 50277
VOCAB_256K = 256000
HYBRID_8B_PATTERN = "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-"


def _hybrid(d_model: int, n_layer: int, head_dim: int = 64, vocab_size: int = NEOX_VOCAB, tie: bool = True,
            pattern: str | None = None, **mamba2) -> ModelConfig:
    n_heads = d_model // head_dim
    return ModelConfig(
        d_model=d_model, n_layer=n_layer, vocab_size=vocab_size, tie_embeddings=tie, ssm_layer="mamba2",
        layer_pattern=pattern or allocate_pattern(n_layer, 0.08, 0.5),
        mamba2=Mamba2Config(**{"d_state": 128, "headdim": 64, "chunk_size": 128, **mamba2}),
        attention=AttentionConfig(n_heads=n_heads, n_kv_heads=n_heads // 4, head_dim=head_dim, rotary_fraction=0.0),
        mlp=MLPConfig(hidden_size=4 * d_model, activation="gelu"))


def _transformer(d_model: int, n_layers: int, head_dim: int = 64, vocab_size: int = NEOX_VOCAB,
                 tie: bool = True) -> ModelConfig:
    """n_layers Transformer layers, each an attention block and an MLP block."""
    return ModelConfig(
        d_model=d_model, n_layer=2 * n_layers, vocab_size=vocab_size, tie_embeddings=tie,
        layer_pattern="*-" * n_layers,
        attention=AttentionConfig(n_heads=d_model // head_dim, n_kv_heads=None, head_dim=head_dim,
                                  rotary_fraction=0.5, rope_theta=10000.0),
        mlp=MLPConfig(hidden_size=4 * d_model, activation="relu2"))


HYBRID_PRESETS: dict[str, ModelConfig] = {
    # The 8B study (arXiv 2406.07887)
    "mamba2-hybrid-8b": _hybrid(4096, 56, head_dim=128, vocab_size=VOCAB_256K, tie=False,
                                pattern=HYBRID_8B_PATTERN, ngroups=8),
    "transformer-8b": _transformer(4096, 32, head_dim=128, vocab_size=VOCAB_256K, tie=False),
    # Small members with the same proportions
    "mamba2-hybrid-130m": _hybrid(768, 24),
    "mamba2-hybrid-370m": _hybrid(1024, 48),
    "transformer-130m": _transformer(768, 12),
    "transformer-370m": _transformer(1024, 24),
    # Tiny models for tests: every block kind, GQA, grouped Mamba-2 norm, partial RoPE
    "hybrid-tiny": ModelConfig(
        d_model=64, n_layer=6, vocab_size=256, layer_pattern="M*-M-*", ssm_layer="mamba2",
        mamba2=Mamba2Config(d_state=16, headdim=16, ngroups=2, chunk_size=32),
        attention=AttentionConfig(n_heads=4, n_kv_heads=2, head_dim=16, rotary_fraction=0.0),
        mlp=MLPConfig(hidden_size=128, activation="gelu")),
    "transformer-tiny": ModelConfig(
        d_model=64, n_layer=4, vocab_size=256, layer_pattern="*-*-",
        attention=AttentionConfig(n_heads=4, n_kv_heads=2, head_dim=16, rotary_fraction=0.5),
        mlp=MLPConfig(hidden_size=128, activation="relu2")),
}

# The rule reproduces the published pattern; keep it that way.
assert allocate_pattern(56, 0.08, 0.5) == HYBRID_8B_PATTERN
