"""Named model configurations with the published sizes.

Letters: d model width, n state dim, p head dim, g groups.

Mamba-1 sizes are those of the Mamba paper's released models (state-spaces/mamba-*), Mamba-2 those
of arXiv 2405.21060 (state-spaces/mamba2-*), all with the GPT-NeoX vocabulary (50277, padded to a
multiple of 8) and tied embeddings. mamba2-8b is the pure Mamba-2 model of the 8B study
(arXiv 2406.07887): 56 layers, 256K vocabulary, untied embeddings.
"""
from __future__ import annotations

from .config import Mamba1Config, Mamba2Config, ModelConfig

NEOX_VOCAB = 50277


def _mamba1(d_model: int, n_layer: int) -> ModelConfig:
    return ModelConfig(d_model=d_model, n_layer=n_layer, vocab_size=NEOX_VOCAB, ssm_layer="mamba1",
                       mamba1=Mamba1Config())


def _mamba2(d_model: int, n_layer: int, **kw) -> ModelConfig:
    extra = {k: kw.pop(k) for k in list(kw) if k in ("vocab_size", "tie_embeddings")}
    return ModelConfig(d_model=d_model, n_layer=n_layer, vocab_size=extra.get("vocab_size", NEOX_VOCAB),
                       tie_embeddings=extra.get("tie_embeddings", True), ssm_layer="mamba2",
                       mamba2=Mamba2Config(**kw))


PRESETS: dict[str, ModelConfig] = {
    # Mamba-1 (arXiv 2312.00752, Table 12 sizes)
    "mamba-130m": _mamba1(768, 24),
    "mamba-370m": _mamba1(1024, 48),
    "mamba-790m": _mamba1(1536, 48),
    "mamba-1.4b": _mamba1(2048, 48),
    "mamba-2.8b": _mamba1(2560, 64),
    # Mamba-2 (arXiv 2405.21060): n 128, p 64, g 1, chunk 256, expand 2
    "mamba2-130m": _mamba2(768, 24),
    "mamba2-370m": _mamba2(1024, 48),
    "mamba2-780m": _mamba2(1536, 48),
    "mamba2-1.3b": _mamba2(2048, 48),
    "mamba2-2.7b": _mamba2(2560, 64),
    # The 8B study's pure Mamba-2 model (arXiv 2406.07887)
    "mamba2-8b": _mamba2(4096, 56, ngroups=8, chunk_size=128, vocab_size=256000, tie_embeddings=False),
    # Tiny models for tests, demos and quick experiments on a CPU
    "mamba-tiny": ModelConfig(d_model=64, n_layer=2, vocab_size=256, ssm_layer="mamba1",
                              mamba1=Mamba1Config(d_state=8)),
    "mamba2-tiny": ModelConfig(d_model=64, n_layer=2, vocab_size=256, ssm_layer="mamba2",
                               mamba2=Mamba2Config(d_state=16, headdim=16, chunk_size=32)),
}

# The 8B study's hybrid and Transformer baseline, with small members of both families.
from .presets_hybrid import HYBRID_PRESETS  # noqa: E402

PRESETS.update(HYBRID_PRESETS)
