"""Generation: padded batches, chunked prefill, sampling, bad input, CUDA-graph logic (stopping and
streaming: test_generation_stopping.py).

Letters: b batch, l prompt length, t new tokens, v vocabulary.
"""
import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

import mambakit
from mambakit import cuda_graphs
from mambakit.generation import prefill, sample_next
from generation_models import SAMPLING, hybrid_config, make_model, model, padded_prompts  # noqa: F401 (model: a fixture)

ROOT = Path(__file__).resolve().parent.parent


# --- padding -----------------------------------------------------------------------------------------
LENGTHS = [1, 2, 6, 9]  # shorter than the conv window (k = 4), longer, and unpadded


def test_left_padded_batch_generates_what_each_prompt_generates_alone(model):
    ids, mask, prompts = padded_prompts(LENGTHS)
    alone = [mambakit.generate(model, p[None], 5)[0, len(p):].tolist() for p in prompts]
    for chunk in (None, 4):  # one-shot prefill, and chunks that end inside the padding
        out = mambakit.generate(model, ids, 5, attention_mask=mask, prefill_chunk=chunk)
        assert out.shape == (4, 9 + 5)
        assert torch.equal(out[:, :9], ids)  # the prompt part is returned as given
        for i, p in enumerate(prompts):
            assert out[i, 9:].tolist() == alone[i], f"row {i} (prompt of {len(p)}), prefill_chunk {chunk}"


def test_right_padding_gives_the_same_tokens_after_each_prompt(model):
    ids, mask, prompts = padded_prompts([1, 6], side="right", fill=255)
    out = mambakit.generate(model, ids, 4, attention_mask=mask)
    for i, p in enumerate(prompts):
        alone = mambakit.generate(model, p[None], 4)[0]
        n = len(p)
        assert out[i, :n + 4].tolist() == alone.tolist()  # prompt, then its new tokens
        assert out[i, n + 4:].tolist() == [255] * (6 - n)  # its padding moved to the end


def test_padding_values_never_matter():
    model = make_model("hybrid")
    ids, mask, _ = padded_prompts([2, 7], fill=0)
    junk = ids.masked_fill(mask == 0, -100)  # even ids outside the vocabulary
    a = mambakit.generate(model, ids, 5, attention_mask=mask)
    b = mambakit.generate(model, junk, 5, attention_mask=mask)
    assert torch.equal(a[:, 7:], b[:, 7:])


def test_all_ones_mask_equals_no_mask():
    model = make_model("mamba2")
    ids = torch.randint(0, 256, (2, 7))
    assert torch.equal(mambakit.generate(model, ids, 5, attention_mask=torch.ones_like(ids)),
                       mambakit.generate(model, ids, 5))


# --- chunked prefill -------------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True])
def test_chunked_prefill_equals_one_shot(model, padded):
    b, l = 2, 13
    ids = torch.randint(0, 256, (b, l))
    pad = torch.tensor([0, 7]) if padded else None
    seq_idx = (torch.arange(l)[None] >= pad[:, None]).long() if padded else None

    def run(chunk):
        cache = model.allocate_cache(b)
        cache.pad_lengths = pad
        with torch.inference_mode():
            logits = prefill(model, ids, cache, seq_idx, pad, chunk)
        return logits, cache

    ref_logits, ref = run(None)
    for chunk in (1, 5):
        logits, cache = run(chunk)
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        assert cache.seqlen_offset == ref.seqlen_offset == l
        for i, (s, r) in enumerate(zip(cache.layers, ref.layers)):
            for name in r:
                if name.endswith("_buffer"):  # storage behind a KV view: its capacity is no state
                    continue
                got, want = s[name], r[name]
                if name in ("k", "v") and padded:  # keys of padding are never read: compare the prompt's
                    got, want = got[1:, 7:], want[1:, 7:]
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5,
                                           msg=lambda m: f"chunk {chunk}, layer {i} {name}: {m}")


def test_padded_prefill_clears_the_padding_once_per_boundary(monkeypatch):
    # The model's document handling clears a padded row's states where its prompt starts (inside a
    # chunk: after it; at a chunk's first token: before it); prefill used to clear again after
    # every chunk near the padding, the same work twice.
    from mambakit.cache import InferenceCache
    calls = []
    real = InferenceCache.clear_padding_
    monkeypatch.setattr(InferenceCache, "clear_padding_", lambda self, pad, n: calls.append(n) or real(self, pad, n))
    model = make_model("mamba2")
    ids = torch.randint(0, 256, (2, 12))
    pad = torch.tensor([0, 8])  # row 1's prompt starts at 8: inside a chunk of 5, at a chunk of 4's start
    seq_idx = (torch.arange(12)[None] >= pad[:, None]).long()
    for chunk, cleared_at in ((None, [12]), (5, [10]), (4, [8])):
        calls.clear()
        cache = model.allocate_cache(2)
        cache.pad_lengths = pad
        with torch.inference_mode():
            prefill(model, ids, cache, seq_idx, pad, chunk)
        assert calls == cleared_at, chunk


@pytest.mark.parametrize("split", [3, 5, 6, 8])
def test_packed_documents_fed_in_chunks_equal_one_forward(model, split):
    """model(ids, cache, seq_idx) in two chunks, then decode steps, against one forward over the
    packed rows: a document that ends inside a chunk (5: within the conv window of the next) or at
    its end (6, row 1: the next chunk starts a new id) leaves nothing to the next one; the same id
    across the cut (3, 8) continues its document."""
    ids = torch.randint(1, 256, (2, 14), generator=torch.Generator().manual_seed(split))
    seq = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])
    with torch.inference_mode():
        full = model(ids, seq_idx=seq)
        cache = model.allocate_cache(2)
        parts = [model(ids[:, :split], cache=cache, seq_idx=seq[:, :split]),
                 model(ids[:, split:12], cache=cache, seq_idx=seq[:, split:12])]
        parts += [model(ids[:, t:t + 1], cache=cache) for t in (12, 13)]  # decode steps go on with doc 2 / 1
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=2e-5, rtol=1e-5)


def test_chunked_prefill_generates_the_same_tokens():
    model = make_model("mamba2")
    ids = torch.randint(0, 256, (2, 70))  # across the SSD chunk of 32
    ref = mambakit.generate(model, ids, 4)
    for chunk in (7, 32, 50):
        assert torch.equal(mambakit.generate(model, ids, 4, prefill_chunk=chunk), ref)


def test_prefill_goes_in_pieces_of_prefill_chunk():
    from mambakit import generation
    model = make_model("hybrid")
    lengths = []
    hook = model.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    try:
        ids = torch.randint(0, 256, (1, 10))
        mambakit.generate(model, ids, 3, prefill_chunk=4)
        assert lengths == [4, 4, 2, 1, 1]  # the prompt in three pieces, then two decode steps
        lengths.clear()
        mambakit.generate(model, ids, 1, prefill_chunk=None)
        assert lengths == [10]
        lengths.clear()
        model2 = make_model("mamba2")  # the default: a prompt one piece longer than DEFAULT_PREFILL_CHUNK
        hook2 = model2.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
        mambakit.generate(model2, torch.randint(0, 256, (1, generation.DEFAULT_PREFILL_CHUNK + 5)), 1)
        hook2.remove()
        assert lengths == [generation.DEFAULT_PREFILL_CHUNK, 5]
    finally:
        hook.remove()


def test_ssm_cache_does_not_grow_with_generated_tokens(monkeypatch):
    def final_nbytes(model, n):
        caches = []
        allocate = model.allocate_cache
        monkeypatch.setattr(model, "allocate_cache", lambda *a, **k: caches.append(allocate(*a, **k)) or caches[-1])
        mambakit.generate(model, torch.randint(0, 256, (1, 5)), n)
        monkeypatch.undo()
        return caches[-1].nbytes

    for kind in ("mamba", "mamba2"):
        ssm = make_model(kind)
        assert final_nbytes(ssm, 2) == final_nbytes(ssm, 15) == ssm.allocate_cache(1).nbytes
    hybrid = make_model("hybrid")  # the measure can tell: a KV cache does grow
    assert final_nbytes(hybrid, 15) > final_nbytes(hybrid, 2)


# --- sampling ----------------------------------------------------------------------------------------------
def test_sampling_with_a_seed_is_reproducible(model):
    ids, mask, _ = padded_prompts([3, 8])

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return mambakit.generate(model, ids, 6, attention_mask=mask, generator=g, **SAMPLING)

    assert torch.equal(sample(123), sample(123))
    assert not torch.equal(sample(123), sample(124))


@pytest.mark.parametrize("knob", [dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)])
def test_filters_that_keep_one_token_are_greedy(knob):
    model = make_model("mamba2")
    ids = torch.randint(0, 256, (2, 6))
    sampled = mambakit.generate(model, ids, 8, temperature=1.0, generator=torch.Generator().manual_seed(0), **knob)
    assert torch.equal(sampled, mambakit.generate(model, ids, 8))


def test_sample_next_stays_inside_top_k_and_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=3, generator=g).tolist()) == {0, 1, 2}
    # softmax: 0.64, 0.23, 0.09, ...: p = 0.8 keeps the first two, enough to pass 0.8
    assert set(sample_next(logits, 1.0, top_p=0.8, generator=g).tolist()) == {0, 1}
    # min_p = 0.3 keeps tokens with at least 0.3 x 0.64
    assert set(sample_next(logits, 1.0, min_p=0.3, generator=g).tolist()) == {0, 1}


def test_repetition_penalty_stops_repeats():
    model = make_model("mamba2")
    ids = torch.randint(0, 256, (1, 4))
    out = mambakit.generate(model, ids, 20, repetition_penalty=1e6)[0].tolist()
    assert len(set(out)) == len(out), "a token of the prompt or of the output came back"
    plain = mambakit.generate(model, ids, 20)[0].tolist()
    assert len(set(plain)) < len(plain)  # without the penalty this model does repeat


def test_repetition_penalty_ignores_padding(model, monkeypatch):
    """The tokens a padded row's penalty sees are its prompt's, never its padding's; and the
    batch generates what each prompt generates alone."""
    from mambakit import generation
    torch.manual_seed(6)
    ids, mask, prompts = padded_prompts([2, 5], fill=9)
    alone = [mambakit.generate(model, p[None], 3, repetition_penalty=5.0)[0, len(p):].tolist() for p in prompts]
    seen_first = []
    sample = generation.sample_next
    monkeypatch.setattr(generation, "sample_next", lambda *a, seen=None, **k: (
        seen_first.append(seen.clone()) if not seen_first else None) or sample(*a, seen=seen, **k))
    out = mambakit.generate(model, ids, 3, attention_mask=mask, repetition_penalty=5.0)
    assert out[:, 5:].tolist() == alone
    for row, p in zip(seen_first[0], prompts):
        assert set(torch.nonzero(row).flatten().tolist()) == set(p.tolist())


# --- bad input ---------------------------------------------------------------------------------------------------
BAD = [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=0), "top_k"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("inf")), "temperature must be a finite number"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty must be a finite number"),
    (dict(min_p=1.5), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(eos_token_id=256), "eos_token_id"),
    (dict(stop_sequences=[[]]), "stop sequences"),
    (dict(pad_token_id=-1), "pad_token_id"),
    (dict(prefill_chunk=0), "prefill_chunk"),
    (dict(prefill_chunk=True), "prefill_chunk"),
    (dict(top_p=True), "top_p"),
    (dict(max_length=True), "max_length"),
    (dict(pad_token_id=True), "pad_token_id"),
    (dict(temperature=True), "temperature"),
    (dict(generator=123), "generator"),
    (dict(attention_mask=torch.ones(2, 5, dtype=torch.long)), "shape of input_ids"),
    (dict(attention_mask=torch.ones(1, 7)), "shape of input_ids"),
    (dict(attention_mask=torch.tensor([[1, 1, 2, 1, 1, 1]])), "1 for real tokens"),
    (dict(attention_mask=torch.tensor([[1, 1, 0, 0, 1, 1]])), "holes"),
    (dict(attention_mask=torch.tensor([[0, 1, 1, 1, 1, 0]])), "holes"),
    (dict(attention_mask=torch.zeros(1, 6, dtype=torch.long)), "no real token"),
]


@pytest.mark.parametrize("kwargs,match", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_a_clear_error(kwargs, match):
    model = make_model("mamba2")
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        mambakit.generate(model, torch.randint(0, 256, (1, 6)), **kwargs)


def test_bad_prompt_ids_are_a_clear_error():
    model = make_model("mamba2")
    with pytest.raises(ValueError, match="token ids"):
        mambakit.generate(model, torch.tensor([[1, 300]]), 2)
    with pytest.raises(ValueError, match="2-d"):
        mambakit.generate(model, torch.tensor([1, 2]), 2)


def test_old_signature_still_works():
    model = make_model("mamba2")
    ids = torch.randint(0, 256, (2, 4))
    out = mambakit.generate(model, ids, 5, 0.0, None, None, None, None)
    assert out.shape == (2, 9) and torch.equal(out[:, :4], ids)
    assert torch.equal(mambakit.generate(model, ids, 0), ids)


# --- CUDA graphs: the fallback, and the bookkeeping with a stand-in for the graph ----------------------------
def test_cuda_graph_on_cpu_falls_back_with_a_warning(caplog):
    model = make_model("mamba2")
    ids = torch.randint(0, 256, (1, 5))
    cuda_graphs._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="mambakit"):
        out = mambakit.generate(model, ids, 5, cuda_graph=True)
    assert torch.equal(out, mambakit.generate(model, ids, 5))
    assert "CUDA graphs need a CUDA device" in caplog.text


def test_graphed_decoding_equals_eager_and_reuses_its_graph(fake_graphs):
    model = make_model("mamba2")
    cuda_graphs.release(model)
    ids, mask, _ = padded_prompts([2, 9, 5])
    kw = dict(attention_mask=mask, generator=torch.Generator().manual_seed(3), **SAMPLING)
    eager = mambakit.generate(model, ids, 7, **kw)
    kw["generator"] = torch.Generator().manual_seed(3)
    graphed = mambakit.generate(model, ids, 7, cuda_graph=True, **kw)
    assert torch.equal(graphed, eager)
    again = mambakit.generate(model, ids[:, 4:], 7, cuda_graph=True)  # same batch: the same graph, emptied
    assert torch.equal(again, mambakit.generate(model, ids[:, 4:], 7))
    assert len(fake_graphs) == 1
    mambakit.generate(model, ids[:2], 3, cuda_graph=True)  # another batch size: its own graph
    assert len(fake_graphs) == 2
    cuda_graphs.release(model)


def test_interleaved_graphed_streams_do_not_share_a_cache(fake_graphs):
    model = make_model("mamba2")
    cuda_graphs.release(model)
    a, b = torch.randint(0, 256, (1, 5)), torch.randint(0, 256, (1, 7))
    sa, sb = (mambakit.stream(model, x, 6, cuda_graph=True) for x in (a, b))
    pairs = list(zip(sa, sb))  # both alive at once: the second decodes eagerly
    assert torch.stack([p for p, _ in pairs], 1).tolist() == mambakit.generate(model, a, 6)[:, 5:].tolist()
    assert torch.stack([q for _, q in pairs], 1).tolist() == mambakit.generate(model, b, 6)[:, 7:].tolist()
    half = mambakit.stream(model, a, 6, cuda_graph=True)
    next(half)
    half.close()  # a stream dropped half-way gives the graph back
    assert not next(iter(model._mambakit_cuda_graphs.values())).busy
    assert len(fake_graphs) == 1
    cuda_graphs.release(model)


@pytest.mark.parametrize("kind,graphs", [("hybrid", 1), ("transformer", 1)])
def test_attention_models_decode_in_one_graph(fake_graphs, kind, graphs):
    # with the static KV cache the whole step is one graph; the segmented fallback (attention
    # eager between graphs) is tested in tests/test_static_kv_cache.py
    model = make_model(kind)
    cuda_graphs.release(model)
    ids, mask, _ = padded_prompts([3, 8])
    eager = mambakit.generate(model, ids, 6, attention_mask=mask)
    assert torch.equal(mambakit.generate(model, ids, 6, attention_mask=mask, cuda_graph=True), eager)
    decoder = next(iter(model._mambakit_cuda_graphs.values()))
    assert decoder.n_graphs == len(fake_graphs) == graphs
    cuda_graphs.release(model)


def test_nothing_to_replay_falls_back_to_eager(fake_graphs, caplog, monkeypatch):
    from mambakit.layers.attention import Attention
    monkeypatch.delattr(Attention, "allocate_static_state")  # no static KV cache: every layer grows
    cfg = hybrid_config("transformer").to_dict()
    cfg.update(layer_pattern="**", n_layer=2)
    model = mambakit.LM(mambakit.ModelConfig.from_dict(cfg)).eval()
    ids = torch.randint(0, 256, (2, 6))
    cuda_graphs._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="mambakit"):
        out = mambakit.generate(model, ids, 4, cuda_graph=True)
    assert torch.equal(out, mambakit.generate(model, ids, 4))
    assert "nothing is left to replay" in caplog.text and not fake_graphs


# --- the GPU benchmark's logic, on the CPU with tiny sizes ------------------------------------------------
def _load_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_generation", ROOT / "benchmarks" / "gpu_generation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_runs_tiny_on_the_cpu(tmp_path, fake_graphs):
    bench = _load_benchmark()
    tiny = ["--device", "cpu", "--dtype", "float32", "--d-model", "32", "--n-layer", "4", "--head-dim", "16",
            "--d-state", "8", "--vocab", "256", "--batches", "1,2", "--prompts", "6", "--new-tokens", "3",
            "--hf-new-tokens", "3", "--out", str(tmp_path)]
    payload = bench.main(tiny + ["--models", "mamba2,hybrid,transformer", "--graphs", "both", "--no-hf"])
    runs = payload["runs"]
    assert [r["impl"] for r in runs] == ["mambakit", "mambakit+graphs"] * 3 * 2
    assert all(r["decode_tok_s"] > 0 and r["steps"] == 2 for r in runs)
    assert len(fake_graphs) >= 3 * 2  # at least one graph per model and batch size
    assert set(payload["summary"]["hybrid_over_transformer"]) == {"b1|l6", "b2|l6"}
    assert json.loads(next(tmp_path.glob("gpu_generation-*.json")).read_text())["runs"] == json.loads(json.dumps(runs))
    picture = bench.main(["--plot-from", str(next(tmp_path.glob("*.json"))), "--plot-to", str(tmp_path / "p.png")])
    assert picture["runs"] == payload["runs"] and (tmp_path / "p.png").stat().st_size > 0
    # bytes a step moves: the state part is what the cache holds (SSM read + written), KV grows with context
    a = bench.parse_args(tiny)
    cfg = bench.mambakit_config("mamba2", a)
    model = mambakit.LM(cfg)
    assert bench.state_bytes(cfg, 2, 100, 4) == 2 * model.allocate_cache(2).nbytes
    hy = bench.mambakit_config("hybrid", a)
    assert "*" in hy.layer_pattern and bench.state_bytes(hy, 1, 10, 4) < bench.state_bytes(hy, 1, 20, 4)
    assert bench.weight_bytes(model) == 4 * model.num_parameters()  # tied: the matrix counts once
    # transformers' side: the same shape built in transformers, timed by its generate
    tr = bench.mambakit_config("transformer", a)
    hf = bench.hf_model("transformer", tr, "cpu", torch.float32)
    assert hf.config.num_hidden_layers == tr.n_layer // 2 and hf.config.vocab_size == tr.vocab_size
    run = bench._record("transformer", "transformers", 1, 6, bench.time_transformers(hf, 1, 6, 3, 256, "cpu"),
                        hf, tr, None)
    assert run["prefill_tok_s"] > 0 and run["bytes_per_step"] > bench.weight_bytes(hf)


def test_a_tiny_temperature_samples_the_greedy_tokens():
    # logits / 1e-45 overflowed to inf and softmax gave NaN ("probability tensor contains inf, nan")
    model = make_model("mamba2")
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(0))
    greedy = mambakit.generate(model, ids, 5)
    tiny = mambakit.generate(model, ids, 5, temperature=1e-45, generator=torch.Generator().manual_seed(1))
    assert torch.equal(tiny, greedy)


def test_top_k_keeps_k_tokens_when_logits_tie():
    # A huge temperature (finite, yet overflowing fp32) sends every logit to 0: a value threshold kept
    # all the tied tokens and top_k=1 sampled the whole vocabulary.
    model = make_model("mamba2")
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(0))
    greedy = mambakit.generate(model, ids, 4)
    hot = mambakit.generate(model, ids, 4, temperature=1e39, top_k=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(hot, greedy)
    tied = torch.zeros(1, 8)
    picks = {int(mambakit.generation.sample_next(tied, 1.0, top_k=2, generator=torch.Generator().manual_seed(i)))
             for i in range(40)}
    assert len(picks) == 2  # exactly two of the eight tied tokens stay


def test_generate_names_a_model_that_is_not_one():
    with pytest.raises(ValueError, match="model must be a mambakit.LM.*got object"):
        mambakit.generate(object(), torch.zeros(1, 3, dtype=torch.long), 2)


def test_a_replaced_parameter_captures_a_new_graph(fake_graphs):
    """A graph reads the weights' addresses: a parameter replaced by assignment (here the head,
    untied) must not replay the old graph, whichever parameter it is."""
    import copy
    model = copy.deepcopy(make_model("mamba2"))
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(4))
    mambakit.generate(model, ids, 4, cuda_graph=True)
    assert len(fake_graphs) == 1
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight + 0.5 * torch.randn_like(model.lm_head.weight))
    graphed = mambakit.generate(model, ids, 4, cuda_graph=True)
    assert len(fake_graphs) == 2
    assert torch.equal(graphed, mambakit.generate(model, ids, 4))
    cuda_graphs.release(model)


def test_an_unbounded_generation_never_gets_a_static_kv_decoder(fake_graphs):
    """graphed_decoder(capacity=None) on a model with attention: a decoder captured with a static KV
    cache of some capacity would run out; one without a capacity is captured instead."""
    model = make_model("hybrid")
    cuda_graphs.release(model)
    try:
        bounded = cuda_graphs.graphed_decoder(model, 1, torch.device("cpu"), capacity=16)
        assert bounded.capacity is not None
        unbounded = cuda_graphs.graphed_decoder(model, 1, torch.device("cpu"))
        assert unbounded is not bounded and unbounded.capacity is None
        # both kept, side by side: asking in turn recaptures nothing
        assert cuda_graphs.graphed_decoder(model, 1, torch.device("cpu"), capacity=16) is bounded
        assert cuda_graphs.graphed_decoder(model, 1, torch.device("cpu")) is unbounded
    finally:
        cuda_graphs.release(model)
