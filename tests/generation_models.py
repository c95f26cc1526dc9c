"""Models and prompts shared by the generation tests (test_generation.py, test_generation_stopping.py).

Letters: b batch, l prompt length.
"""
import pytest
import torch

import mambakit
from conftest import tiny_model


def hybrid_config(kind: str):
    """The tiny hybrid / Transformer presets (from presets_hybrid until they are merged into PRESETS)."""
    if f"{kind}-tiny" in mambakit.PRESETS:
        return mambakit.ModelConfig.from_preset(f"{kind}-tiny")
    from mambakit.presets_hybrid import HYBRID_PRESETS
    return mambakit.ModelConfig.from_dict(HYBRID_PRESETS[f"{kind}-tiny"].to_dict())


def make_model(kind: str, **attention):
    if kind in ("mamba", "mamba2"):
        return tiny_model(kind)
    if kind == "s4d":  # the LTI mixer: same padding machinery (seq_idx, state cleared)
        return tiny_model("mamba2", ssm_layer="s4d", s4d={"d_state": 16, "expand": 2})
    cfg = hybrid_config("hybrid" if kind == "hybrid_mamba1" else kind).to_dict()
    if kind == "hybrid_mamba1":  # attention and MLP blocks around Mamba-1 mixers
        cfg["ssm_layer"] = "mamba1"
    cfg["attention"].update(attention)
    return mambakit.LM(mambakit.ModelConfig.from_dict(cfg)).eval()


KINDS = ["mamba", "mamba2", "s4d", "hybrid", "hybrid_mamba1", "transformer"]
_MODELS = {}


@pytest.fixture(params=KINDS)
def model(request):
    if request.param not in _MODELS:
        torch.manual_seed(1)
        _MODELS[request.param] = make_model(request.param)
    return _MODELS[request.param]


def padded_prompts(lengths, side="left", l=None, fill=None):
    """Random prompts of the given lengths, padded to l with junk ids; -> ids (b, l), mask (b, l), prompts."""
    l = l or max(lengths)
    prompts = [torch.randint(0, 256, (n,)) for n in lengths]
    ids = torch.randint(0, 256, (len(lengths), l)) if fill is None else torch.full((len(lengths), l), fill)
    mask = torch.zeros(len(lengths), l, dtype=torch.long)
    for i, p in enumerate(prompts):
        span = slice(l - len(p), l) if side == "left" else slice(0, len(p))
        ids[i, span], mask[i, span] = p, 1
    return ids, mask, prompts


SAMPLING = dict(temperature=1.0, top_k=50, top_p=0.9, min_p=0.02, repetition_penalty=1.3)
