"""The static KV cache (cache.allocate_static_cache) == the growing one, and its decode step is
CUDA-graph safe; CUDA-graph decoding of hybrid and Transformer models as one graph (stand-ins for
the CUDA calls, as in test_generation.py).

Letters: b batch, l prompt length, t new tokens, v vocabulary, T capacity.

What a real graph needs and a CPU can check: the decode step takes nothing from the host (no
_local_scalar_dense, i.e. no .item()/bool()/int() of a tensor, no nonzero), has the same ops and
shapes at every position, and keeps every cache tensor at its address; its result does not depend
on cache.seqlen_offset (frozen in a replayed graph) but only on the device-side position.
"""
import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import mambakit
from mambakit import cuda_graphs
from mambakit.cache import allocate_static_cache, supports_static_kv
from mambakit.generation import prefill
from mambakit.layers.attention import Attention
from mambakit.presets_hybrid import HYBRID_PRESETS

KINDS = ["hybrid", "transformer"]  # hybrid-tiny M*-M-* (no RoPE), transformer-tiny *-*- (partial RoPE, GQA)
_MODELS = {}


def make_model(kind: str) -> mambakit.LM:
    if kind not in _MODELS:
        torch.manual_seed(0)
        model = mambakit.LM(mambakit.ModelConfig.from_dict(HYBRID_PRESETS[f"{kind}-tiny"].to_dict())).eval()
        with torch.no_grad():  # norms away from 1, so that a wrong key or position cannot hide
            for name, p in model.named_parameters():
                if name.endswith(("norm.weight", "norm_f.weight")):
                    p.add_(0.2 * torch.randn_like(p))
        _MODELS[kind] = model
    return _MODELS[kind]


def padded(lengths, l=None, seed=0):
    """Left-padded prompts of the given lengths: ids (b, l), pad_lengths (b,) or None, attention_mask."""
    g = torch.Generator().manual_seed(seed)
    l = l or max(lengths)
    ids = torch.randint(1, 256, (len(lengths), l), generator=g)
    pad = torch.tensor([l - n for n in lengths])
    mask = (torch.arange(l)[None] >= pad[:, None]).long()
    return ids * mask, (pad if bool((pad > 0).any()) else None), mask


@torch.inference_mode()
def run_steps(model, ids, pad, cache, tokens, chunk=None):
    """Prefill ids (b, l) into cache, then one step per column of tokens (b, t): logits (b, 1 + t, v)."""
    cache.pad_lengths = pad
    seq_idx = None if pad is None else (torch.arange(ids.shape[1])[None] >= pad[:, None]).long()
    out = [prefill(model, ids, cache, seq_idx, pad, chunk=chunk)]
    for i in range(tokens.shape[1]):
        out.append(model(tokens[:, i:i + 1], cache=cache, validate=False)[:, -1])
    return torch.stack(out, 1)


# --- static == dynamic -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths,chunk", [([1], None), ([5, 5], None), ([3, 9, 6], None), ([17, 2], 4)])
def test_logits_step_by_step_equal_the_growing_cache(kind, lengths, chunk):
    model = make_model(kind)
    ids, pad, _ = padded(lengths)
    b, l = ids.shape
    tokens = torch.randint(0, 256, (b, 7), generator=torch.Generator().manual_seed(1))
    dynamic = run_steps(model, ids, pad, model.allocate_cache(b), tokens, chunk)
    cache = allocate_static_cache(model, b, l + 7 + 3)  # a few positions never written
    static = run_steps(model, ids, pad, cache, tokens, chunk)
    torch.testing.assert_close(static, dynamic, atol=2e-5, rtol=1e-5)
    for state in cache.layers:
        if "pos" in state:  # advanced by every step, in place, and equal to the host's count
            assert state["pos"].tolist() == [cache.seqlen_offset] == [l + 7]


def test_kv_heads_repeated_without_enable_gqa(monkeypatch):
    """The route CUDA takes in fp32 (kv heads expanded, not enable_gqa) gives the same logits."""
    import mambakit.layers.attention as attention
    model = make_model("transformer")
    ids, pad, _ = padded([4, 9])
    tokens = torch.randint(0, 256, (2, 4))
    dynamic = run_steps(model, ids, pad, model.allocate_cache(2), tokens)
    monkeypatch.setattr(attention, "_SDPA_HAS_GQA", False)
    static = run_steps(model, ids, pad, allocate_static_cache(model, 2, 16), tokens)
    torch.testing.assert_close(static, dynamic, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_equals_the_growing_cache(kind):
    model = make_model(kind)
    for lengths in ([4], [2, 7], [9, 1, 5]):
        ids, pad, mask = padded(lengths, seed=len(lengths))
        b, l = ids.shape
        expected = mambakit.generate(model, ids, 8, attention_mask=mask)[:, l:]
        cache = allocate_static_cache(model, b, l + 8)
        with torch.inference_mode():
            cache.pad_lengths = pad
            seq_idx = None if pad is None else (torch.arange(l)[None] >= pad[:, None]).long()
            token = prefill(model, ids, cache, seq_idx, pad).argmax(-1)
            new = [token]
            for _ in range(7):
                token = model(token[:, None], cache=cache, validate=False)[:, -1].argmax(-1)
                new.append(token)
        assert torch.equal(torch.stack(new, 1), expected), lengths


@pytest.mark.parametrize("kind", KINDS)
def test_reset_empties_the_static_cache_for_a_new_sequence(kind):
    model = make_model(kind)
    ids, _, _ = padded([6, 6])
    tokens = torch.randint(0, 256, (2, 3))
    cache = allocate_static_cache(model, 2, 16)
    first = run_steps(model, ids, None, cache, tokens)
    attn = [s for s in cache.layers if "pos" in s]
    table = [s.get("rope_cos") for s in attn]
    addresses = {name: t.data_ptr() for s in attn for name, t in s.items()}
    cache.reset()
    assert all(int(s["pos"]) == 0 and not s["k_static"].any() and not s["v_static"].any() for s in attn)
    assert [s.get("rope_cos") for s in attn] == table and cache.seqlen_offset == 0  # constants kept
    assert {name: t.data_ptr() for s in attn for name, t in s.items()} == addresses
    torch.testing.assert_close(run_steps(model, ids, None, cache, tokens), first, atol=0, rtol=0)


# --- graph safety of the decode step -------------------------------------------------------------------------
class _Recorder(TorchDispatchMode):
    """Every aten op run under it, with its output shapes."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = tuple(tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        self.ops.append((str(func), shapes))
        return out


_HOST_SYNC = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "is_nonzero", ".item")


@pytest.mark.parametrize("kind", KINDS)
def test_decode_step_has_no_host_sync_fixed_shapes_and_addresses(kind):
    model = make_model(kind)
    ids, pad, _ = padded([3, 8])
    cache = allocate_static_cache(model, 2, 24)
    run_steps(model, ids, pad, cache, torch.zeros(2, 0, dtype=torch.long))
    addresses = {(i, n): t.data_ptr() for i, s in enumerate(cache.layers) for n, t in s.items()}
    traces = []
    with torch.inference_mode():
        for step in range(4):
            with _Recorder() as rec:
                model(torch.full((2, 1), 7 + step), cache=cache, validate=False)
            traces.append(rec.ops)
    synced = sorted({op for op, _ in traces[0] if any(s in op for s in _HOST_SYNC)})
    assert not synced, f"host syncs in the decode step: {synced}"
    assert all(t == traces[0] for t in traces[1:]), "the decode step's ops or shapes change with the position"
    assert {(i, n): t.data_ptr() for i, s in enumerate(cache.layers) for n, t in s.items()} == addresses


@pytest.mark.parametrize("kind", KINDS)
def test_decode_step_reads_the_position_from_the_device_only(kind):
    """A replayed graph runs no Python: cache.seqlen_offset frozen at its capture value changes nothing."""
    model = make_model(kind)
    ids, pad, _ = padded([5, 2])
    tokens = torch.randint(0, 256, (2, 6))
    expected = run_steps(model, ids, pad, allocate_static_cache(model, 2, 16), tokens)[:, 1:]
    cache = allocate_static_cache(model, 2, 16)
    run_steps(model, ids, pad, cache, tokens[:, :0])
    frozen, out = cache.seqlen_offset, []
    with torch.inference_mode():
        for i in range(tokens.shape[1]):
            out.append(model(tokens[:, i:i + 1], cache=cache, validate=False)[:, -1])
            cache.seqlen_offset = frozen
    torch.testing.assert_close(torch.stack(out, 1), expected, atol=0, rtol=0)


# --- capacity ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_capacity_overflow_is_a_clear_error_and_writes_nothing(kind):
    model = make_model(kind)
    ids = torch.randint(0, 256, (2, 6))
    with pytest.raises(ValueError, match="capacity of 5"):
        run_steps(model, ids, None, allocate_static_cache(model, 2, 5), ids[:, :0])
    cache = allocate_static_cache(model, 2, 7)
    run_steps(model, ids, None, cache, ids[:, :1])  # 7 tokens: full
    attn = [s for s in cache.layers if "pos" in s]
    before = [s["k_static"].clone() for s in attn]
    with pytest.raises(ValueError, match="8 tokens exceed the static KV cache's capacity of 7"):
        with torch.inference_mode():
            model(ids[:, :1], cache=cache, validate=False)
    assert all(int(s["pos"]) == 7 and torch.equal(s["k_static"], k) for s, k in zip(attn, before))


def test_allocate_static_cache_checks_its_arguments():
    model = make_model("transformer")
    for bad in (0, -3, 2.5, True, None):
        with pytest.raises(ValueError, match="capacity must be a positive int"):
            allocate_static_cache(model, 1, bad)
    cfg = HYBRID_PRESETS["transformer-tiny"].to_dict()
    cfg["attention"]["max_seqlen"] = 32
    limited = mambakit.LM(mambakit.ModelConfig.from_dict(cfg))
    with pytest.raises(ValueError, match="exceeds this model's limit of 32"):
        allocate_static_cache(limited, 1, 33)
    assert allocate_static_cache(limited, 1, 32).capacity == 32
    assert model.allocate_cache(1).capacity is None


# --- CUDA-graph decoding with stand-ins for the CUDA calls ----------------------------------------------------
# (fake_graphs, in conftest.py, cannot catch host state frozen at capture: the tests above do)


@pytest.mark.parametrize("kind", KINDS)
def test_graphed_generation_is_one_graph_and_equals_eager(fake_graphs, kind):
    model = make_model(kind)
    cuda_graphs.release(model)
    try:
        for lengths in ([3, 8], [5, 5], [1, 6]):
            ids, _, mask = padded(lengths, seed=sum(lengths))
            eager = mambakit.generate(model, ids, 6, attention_mask=mask)
            assert torch.equal(mambakit.generate(model, ids, 6, attention_mask=mask, cuda_graph=True), eager)
        decoder = next(iter(model._mambakit_cuda_graphs.values()))
        assert decoder.n_graphs == len(fake_graphs) == 1 and decoder.n_eager == 0
        assert decoder.capacity == cuda_graphs.CAPACITY_ROUND  # 14 tokens, rounded up; one capture served all
    finally:
        cuda_graphs.release(model)


def test_a_longer_generation_captures_a_larger_decoder(fake_graphs, monkeypatch):
    model = make_model("transformer")
    cuda_graphs.release(model)
    monkeypatch.setattr(cuda_graphs, "CAPACITY_ROUND", 8)
    try:
        ids = torch.randint(0, 256, (1, 5))
        assert torch.equal(mambakit.generate(model, ids, 3, cuda_graph=True), mambakit.generate(model, ids, 3))
        first = next(iter(model._mambakit_cuda_graphs.values()))
        assert first.capacity == 8
        long = mambakit.generate(model, ids, 20, cuda_graph=True)  # 25 tokens: recaptured, >= 2 x 8
        assert torch.equal(long, mambakit.generate(model, ids, 20))
        second = next(iter(model._mambakit_cuda_graphs.values()))
        assert second is not first and second.capacity == 32 and len(fake_graphs) == 2
        mambakit.generate(model, ids, 2, cuda_graph=True)  # fits: the larger one is kept
        assert next(iter(model._mambakit_cuda_graphs.values())) is second and len(fake_graphs) == 2
    finally:
        cuda_graphs.release(model)


def test_a_much_shorter_generation_gets_a_decoder_of_its_size(fake_graphs, monkeypatch):
    """Attention reads the whole static cache at every step: a short generation must not run in a
    cache OVERSIZE times longer than it needs, and the long decoder stays for the next long one."""
    model = make_model("transformer")
    cuda_graphs.release(model)
    monkeypatch.setattr(cuda_graphs, "CAPACITY_ROUND", 8)
    try:
        ids = torch.randint(0, 256, (1, 5))
        long = mambakit.generate(model, ids, 60, cuda_graph=True)  # 65 tokens: capacity 72
        assert torch.equal(long, mambakit.generate(model, ids, 60))
        assert [d.capacity for d in model._mambakit_cuda_graphs.values()] == [72] and len(fake_graphs) == 1
        short = mambakit.generate(model, ids, 3, cuda_graph=True)  # 8 tokens: 72 > 4 x 8
        assert torch.equal(short, mambakit.generate(model, ids, 3))
        assert sorted(d.capacity for d in model._mambakit_cuda_graphs.values()) == [8, 72] and len(fake_graphs) == 2
        mambakit.generate(model, ids, 15, cuda_graph=True)  # 20 tokens: 72 <= 4 x 24, the long one serves
        mambakit.generate(model, ids, 60, cuda_graph=True)
        assert len(fake_graphs) == 2
    finally:
        cuda_graphs.release(model)


def test_graphed_step_past_the_capacity_is_refused(fake_graphs):
    model = make_model("transformer")
    cuda_graphs.release(model)
    try:
        decoder = cuda_graphs.graphed_decoder(model, 1, torch.device("cpu"), capacity=3)
        cap = decoder.capacity
        with torch.inference_mode():
            cache = decoder.begin()
            prefill(model, torch.randint(0, 256, (1, cap - 1)), cache)
            decoder.step(torch.zeros(1, 1, dtype=torch.long))  # the last position
            with pytest.raises(ValueError, match=f"holds {cap} tokens and all are used"):
                decoder.step(torch.zeros(1, 1, dtype=torch.long))
        with pytest.raises(ValueError, match="capacity must be a positive int"):
            cuda_graphs.graphed_decoder(model, 2, torch.device("cpu"), capacity=0)
    finally:
        decoder.busy = False
        cuda_graphs.release(model)


def test_without_a_static_form_attention_runs_eagerly_between_graphs(fake_graphs, monkeypatch, caplog):
    """The fallback: a KV-caching layer with no static form keeps the segmented plan."""
    model = make_model("hybrid")
    cuda_graphs.release(model)
    monkeypatch.delattr(Attention, "allocate_static_state")
    assert not supports_static_kv(model)
    try:
        ids, _, mask = padded([3, 8])
        eager = mambakit.generate(model, ids, 6, attention_mask=mask)
        with caplog.at_level(logging.INFO, logger="mambakit"):
            assert torch.equal(mambakit.generate(model, ids, 6, attention_mask=mask, cuda_graph=True), eager)
        decoder = next(iter(model._mambakit_cuda_graphs.values()))
        # hybrid-tiny M*-M-*: [embed M] * [- M -] * [head]
        assert decoder.capacity is None and decoder.n_graphs == 3 and decoder.n_eager == 2
        assert "grow their cache and run eagerly" in caplog.text
    finally:
        cuda_graphs.release(model)


def test_a_cache_in_another_dtype_rotates_with_the_model_dtype_table():
    """An fp32 model with a bf16 static cache: the keys are stored rounded in both caches, but q and
    k are rotated with the same fp32 table rows (a bf16 table would move the logits by ~3e-4)."""
    model = make_model("transformer")  # the kind with RoPE
    ids, pad, _ = padded([6, 6])
    tokens = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(2))
    dynamic = run_steps(model, ids, pad, model.allocate_cache(2, dtype=torch.bfloat16), tokens)
    static = run_steps(model, ids, pad, allocate_static_cache(model, 2, 12, dtype=torch.bfloat16), tokens)
    torch.testing.assert_close(static, dynamic, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("static", [False, True])
def test_a_batch_other_than_the_cache_is_a_clear_error_that_writes_nothing(static):
    model = make_model("transformer")
    ids = torch.randint(0, 256, (2, 5))
    with torch.inference_mode():
        cache = allocate_static_cache(model, 2, 16) if static else model.allocate_cache(2)
        model(ids, cache=cache)
        before = [{k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for s in cache.layers]
        with pytest.raises(ValueError, match="allocated for batch 2, got 1 rows"):
            model(ids[:1, :1], cache=cache, validate=False)
    for state, saved in zip(cache.layers, before):
        for name, value in saved.items():
            assert torch.equal(state[name], value), name


def test_capacity_overflow_leaves_a_hybrids_ssm_states_untouched():
    """The overflow error says nothing was written; a hybrid's cache must then go on as if the call
    had not been made (model(...) with its default validate=True)."""
    model = make_model("hybrid")  # M*-M-*: a Mamba-2 layer runs before the first attention layer
    ids = torch.randint(0, 256, (1, 10))
    with torch.inference_mode():
        full = model(ids)
        cache = allocate_static_cache(model, 1, 10)
        model(ids[:, :8], cache=cache)
        with pytest.raises(ValueError, match="capacity of 10"):
            model(torch.randint(0, 256, (1, 4)), cache=cache)
        rest = model(ids[:, 8:], cache=cache)
    torch.testing.assert_close(rest, full[:, 8:], atol=1e-4, rtol=1e-4)
