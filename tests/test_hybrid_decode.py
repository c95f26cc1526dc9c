"""Decoding through mixed layer patterns (M, *, -): prefill + steps, chunked prefill and packed
documents against the full forward; cache bytes and parameter counts without weights."""
import pytest
import torch

import mambakit
from mambakit.config import ModelConfig
from mambakit.memory import cache_bytes_by_kind, cache_bytes_per_sequence, parameter_counts
from mambakit.presets import PRESETS
from mambakit.presets_hybrid import HYBRID_8B_PATTERN, HYBRID_PRESETS
from conftest import perturb_norms_

ALL_PRESETS = {**PRESETS, **HYBRID_PRESETS}

# (preset, overrides): the hybrid with each SSM mixer, and the Transformer
CASES = {
    "mamba2": ("hybrid-tiny", {}),
    "mamba1": ("hybrid-tiny", {"ssm_layer": "mamba1", "mamba1": {"d_state": 8}}),
    "s4d-lin": ("hybrid-tiny", {"ssm_layer": "s4d", "s4d": {"d_state": 8, "init": "lin"}}),
    "transformer": ("transformer-tiny", {}),
}


def hybrid_model(case: str) -> mambakit.LM:
    name, overrides = CASES[case]
    config = ModelConfig.from_dict({**HYBRID_PRESETS[name].to_dict(), **overrides})
    return perturb_norms_(mambakit.LM(config).eval())


@pytest.mark.parametrize("case", list(CASES))
def test_prefill_then_steps_equals_forward(case):
    model = hybrid_model(case)
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        parts = [model(ids[:, :35], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(35, 40)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=2e-5, rtol=2e-5)
    assert cache.seqlen_offset == 40
    for block, state in zip(model.layers, cache.layers):
        if block.kind == "*":
            assert state["k"].shape[:2] == (2, 40)


@pytest.mark.parametrize("case", list(CASES))
def test_chunked_prefill_equals_forward(case):
    model = hybrid_model(case)
    ids = torch.randint(0, 256, (2, 50))  # pieces shorter than, longer than and across the chunk of 32
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        parts = [model(ids[:, a:b], cache=cache) for a, b in [(0, 5), (5, 6), (6, 40), (40, 50)]]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_packed_documents_equal_separate_runs(case):
    model = hybrid_model(case)
    lengths = [9, 33, 1, 6]
    docs = [torch.randint(0, 256, (1, n)) for n in lengths]
    seq_idx = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], 1)
    with torch.no_grad():
        packed = model(torch.cat(docs, 1), seq_idx=seq_idx)
        alone = torch.cat([model(d) for d in docs], 1)
    torch.testing.assert_close(packed, alone, atol=2e-5, rtol=2e-5)


def test_generate_through_a_hybrid_is_greedy():
    model = hybrid_model("mamba2")
    prompt = torch.randint(0, 256, (2, 9))
    out = mambakit.generate(model, prompt, max_new_tokens=4)
    seq = prompt
    with torch.no_grad():
        for _ in range(4):  # the slow way: a full forward per token
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("case", ["mamba2", "s4d-lin", "transformer"])
def test_native_checkpoint_round_trip(case, tmp_path):
    model = hybrid_model(case)
    model.save(tmp_path / "m")
    again = mambakit.load(tmp_path / "m")
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_cache_bytes_match_a_real_cache(case):
    model = hybrid_model(case)
    with torch.no_grad():
        cache = model.allocate_cache(3)
        model(torch.randint(0, 256, (3, 25)), cache=cache)
        assert cache.nbytes == 3 * cache_bytes_per_sequence(model.config, 25, dtype=torch.float32)
        # one more token: the key/value buffers double (amortized O(1) appends), the SSM states stay
        model(torch.randint(0, 256, (3, 1)), cache=cache)
        fixed = 3 * cache_bytes_per_sequence(model.config, 0, dtype=torch.float32)
        kv_25 = 3 * cache_bytes_per_sequence(model.config, 25, dtype=torch.float32) - fixed
        assert cache.nbytes == fixed + 2 * kv_25
        for t in range(26, 50):
            model(torch.randint(0, 256, (3, 1)), cache=cache)
        assert cache.nbytes == fixed + 2 * kv_25  # 50 tokens still fit


def test_8b_cache_bytes_by_formula():
    t, bf16, fp32 = 4096, 2, 4
    hybrid = cache_bytes_by_kind(HYBRID_PRESETS["mamba2-hybrid-8b"], t)
    # 4 attention layers: K and V of 8 heads x 128 per token
    assert hybrid["attention"] == 4 * 2 * t * 8 * 128 * bf16
    # 24 Mamba-2 layers: conv state over x, B, C (8192 + 2 * 8 * 128 channels, width 4) and the
    # fp32 SSM state of 128 heads x 64 x 128
    assert hybrid["ssm"] == 24 * ((8192 + 2 * 8 * 128) * 4 * bf16 + 128 * 64 * 128 * fp32)
    assert cache_bytes_per_sequence(HYBRID_PRESETS["transformer-8b"], t) == 32 * 2 * t * 32 * 128 * bf16
    pure = cache_bytes_by_kind(PRESETS["mamba2-8b"], 131072)
    assert pure["attention"] == 0 and pure["ssm"] == cache_bytes_by_kind(PRESETS["mamba2-8b"], 1)["ssm"]


def test_8b_parameter_counts_by_formula():
    d, v = 4096, 256000
    hybrid = parameter_counts(HYBRID_PRESETS["mamba2-hybrid-8b"])
    assert hybrid["embedding"] == 2 * v * d  # untied
    assert hybrid["attention"] == 4 * (2 * d * 4096 + 2 * d * 1024)  # q, o: 32 x 128; k, v: 8 x 128
    assert hybrid["mlp"] == 28 * 2 * d * 16384
    in_proj = d * (2 * 8192 + 2 * 8 * 128 + 128)
    conv = (8192 + 2048) * 5  # width 4 + bias
    assert hybrid["ssm"] == 24 * (in_proj + conv + 3 * 128 + 8192 + 8192 * d)
    transformer = parameter_counts(HYBRID_PRESETS["transformer-8b"])
    assert transformer["attention"] == 32 * 4 * d * d and transformer["mlp"] == 32 * 2 * d * 16384
    assert sum(v for k, v in transformer.items() if k != "total") == transformer["total"]


def test_presets_follow_the_study():
    h8 = HYBRID_PRESETS["mamba2-hybrid-8b"]
    assert h8.layer_pattern == HYBRID_8B_PATTERN and h8.n_layer == 56
    assert (h8.attention.n_heads, h8.attention.n_kv_heads, h8.attention.head_dim) == (32, 8, 128)
    assert h8.attention.rotary_fraction == 0.0 and not h8.tie_embeddings and h8.vocab_size == 256000
    m2 = h8.mamba2
    assert (m2.d_state, m2.headdim, m2.ngroups, m2.chunk_size, m2.expand) == (128, 64, 8, 128, 2)
    t8 = HYBRID_PRESETS["transformer-8b"]
    assert t8.layer_pattern == "*-" * 32 and t8.attention.rotary_fraction > 0
    for name in ("mamba2-hybrid-130m", "mamba2-hybrid-370m"):
        c = HYBRID_PRESETS[name]
        pure = PRESETS[name.replace("-hybrid", "")]
        assert (c.d_model, c.n_layer) == (pure.d_model, pure.n_layer)
        assert c.layer_pattern.count("*") == round(0.08 * c.n_layer)
    assert set("M*-") <= set(HYBRID_PRESETS["hybrid-tiny"].layer_pattern)
