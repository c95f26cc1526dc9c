"""Generation: padded batches, sampling, stopping, streaming, chunked prefill, CUDA-graph logic, bad input.

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
from conftest import tiny_model

ROOT = Path(__file__).resolve().parent.parent


def _hybrid_config(kind: str):
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
    cfg = _hybrid_config("hybrid" if kind == "hybrid_mamba1" else kind).to_dict()
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


def _padded(lengths, side="left", l=None, fill=None):
    """Random prompts of the given lengths, padded to l with junk ids; -> ids (b, l), mask (b, l), prompts."""
    l = l or max(lengths)
    prompts = [torch.randint(0, 256, (n,)) for n in lengths]
    ids = torch.randint(0, 256, (len(lengths), l)) if fill is None else torch.full((len(lengths), l), fill)
    mask = torch.zeros(len(lengths), l, dtype=torch.long)
    for i, p in enumerate(prompts):
        span = slice(l - len(p), l) if side == "left" else slice(0, len(p))
        ids[i, span], mask[i, span] = p, 1
    return ids, mask, prompts


# --- padding -----------------------------------------------------------------------------------------
LENGTHS = [1, 2, 6, 9]  # shorter than the conv window (k = 4), longer, and unpadded


def test_left_padded_batch_generates_what_each_prompt_generates_alone(model):
    ids, mask, prompts = _padded(LENGTHS)
    alone = [mambakit.generate(model, p[None], 5)[0, len(p):].tolist() for p in prompts]
    for chunk in (None, 4):  # one-shot prefill, and chunks that end inside the padding
        out = mambakit.generate(model, ids, 5, attention_mask=mask, prefill_chunk=chunk)
        assert out.shape == (4, 9 + 5)
        assert torch.equal(out[:, :9], ids)  # the prompt part is returned as given
        for i, p in enumerate(prompts):
            assert out[i, 9:].tolist() == alone[i], f"row {i} (prompt of {len(p)}), prefill_chunk {chunk}"


def test_right_padding_gives_the_same_tokens_after_each_prompt(model):
    ids, mask, prompts = _padded([1, 6], side="right", fill=255)
    out = mambakit.generate(model, ids, 4, attention_mask=mask)
    for i, p in enumerate(prompts):
        alone = mambakit.generate(model, p[None], 4)[0]
        n = len(p)
        assert out[i, :n + 4].tolist() == alone.tolist()  # prompt, then its new tokens
        assert out[i, n + 4:].tolist() == [255] * (6 - n)  # its padding moved to the end


def test_padding_values_never_matter():
    model = make_model("hybrid")
    ids, mask, _ = _padded([2, 7], fill=0)
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
SAMPLING = dict(temperature=1.0, top_k=50, top_p=0.9, min_p=0.02, repetition_penalty=1.3)


def test_sampling_with_a_seed_is_reproducible(model):
    ids, mask, _ = _padded([3, 8])

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
    ids, mask, prompts = _padded([2, 5], fill=9)
    alone = [mambakit.generate(model, p[None], 3, repetition_penalty=5.0)[0, len(p):].tolist() for p in prompts]
    seen_first = []
    sample = generation.sample_next
    monkeypatch.setattr(generation, "sample_next", lambda *a, seen=None, **k: (
        seen_first.append(seen.clone()) if not seen_first else None) or sample(*a, seen=seen, **k))
    out = mambakit.generate(model, ids, 3, attention_mask=mask, repetition_penalty=5.0)
    assert out[:, 5:].tolist() == alone
    for row, p in zip(seen_first[0], prompts):
        assert set(torch.nonzero(row).flatten().tolist()) == set(p.tolist())


# --- stopping ----------------------------------------------------------------------------------------------
def _first(seq, value):
    return seq.index(value) if value in seq else None


def _eos_finishing_rows_apart(free, after=0):
    """A token whose first occurrences in the rows of `free` (lists of new tokens) differ, the last one
    after step `after` (or never in some row): rows then stop at different steps."""
    firsts = {}
    for tok in sorted({t for row in free for t in row}):
        steps = [_first(row, tok) for row in free]
        known = [i for i in steps if i is not None]
        if len(set(steps)) == len(steps) and (None in steps or max(known) > after):
            firsts[tok] = steps
    assert firsts, "no token stops these rows at different steps: change the seed"
    return min(firsts.items(), key=lambda kv: min(i for i in kv[1] if i is not None))


def test_eos_finishes_rows_and_pads_them():
    model = make_model("mamba2")
    torch.manual_seed(3)
    ids, mask, _ = _padded([3, 6])
    free = mambakit.generate(model, ids, 12, attention_mask=mask)[:, 6:].tolist()
    eos, steps = _eos_finishing_rows_apart(free)
    out = mambakit.generate(model, ids, 12, attention_mask=mask, eos_token_id=[eos, 255], pad_token_id=7)
    new = out[:, 6:].tolist()
    padded_rows = 0
    for row, ref in zip(new, free):
        stop = min(i for i in (_first(ref, eos), _first(ref, 255), len(ref) - 1) if i is not None)
        assert row[:stop + 1] == ref[:stop + 1]
        assert row[stop + 1:] == [7] * (len(row) - stop - 1)
        padded_rows += len(row) - stop - 1 > 0
    assert padded_rows >= 1  # at least one row stopped early and was padded while another went on
    # one row: generation ends at its eos
    row = 0 if steps[0] is not None else 1
    single = mambakit.generate(model, ids[row:row + 1, 6 - (3, 6)[row]:], 12, eos_token_id=eos)
    assert single.shape[1] == (3, 6)[row] + steps[row] + 1 and single[0, -1] == eos


def test_generate_stops_where_every_row_stopped_despite_lazy_checks():
    """generate checks for "all rows stopped" on the host only every few steps; its output still
    ends at the step where the last row stopped, as stream (checked every step) does."""
    from mambakit.generation import _STOP_CHECK_EVERY
    model = make_model("mamba2")
    torch.manual_seed(4)
    ids, mask, _ = _padded([3, 6])
    n = 3 * _STOP_CHECK_EVERY
    free = mambakit.generate(model, ids, n, attention_mask=mask)[:, 6:].tolist()
    both = [t for t in set(free[0]) & set(free[1])
            if max(_first(free[0], t), _first(free[1], t)) > _STOP_CHECK_EVERY
            and _first(free[0], t) != _first(free[1], t)]
    assert both, "no token both rows reach late and apart: change the seed"
    eos = both[0]
    last = max(_first(free[0], eos), _first(free[1], eos))
    out = mambakit.generate(model, ids, n, attention_mask=mask, eos_token_id=eos)
    streamed = torch.stack(list(mambakit.stream(model, ids, n, attention_mask=mask, eos_token_id=eos)), 1)
    assert torch.equal(out[:, 6:], streamed)
    assert out.shape[1] == 6 + last + 1 < 6 + n  # trimmed to the step where the last row stopped


def test_stop_sequences_finish_rows():
    model = make_model("mamba2")
    torch.manual_seed(5)
    ids = torch.randint(0, 256, (1, 5))
    free = mambakit.generate(model, ids, 24)[0, 5:].tolist()
    # A stop whose last token came earlier after another token: only the whole sequence may stop.
    j = next((j for j in range(2, len(free))
              if any(free[i] == free[j] and free[i - 1] != free[j - 1] for i in range(1, j))), None)
    assert j is not None, "no stop whose last token came earlier after another token: change the seed"
    stop = free[j - 1:j + 1]
    out = mambakit.generate(model, ids, 24, stop_sequences=[stop, [255, 255, 255]])[0, 5:].tolist()
    end = next(i for i in range(1, len(free)) if free[i - 1:i + 1] == stop)
    assert end == j and out == free[:end + 1]


@pytest.mark.parametrize("stops,match", [([5, 6], "flat list"), (torch.tensor([5, 6]), "2-d"),
                                         ("ab", "token-id lists")])
def test_stop_sequences_must_be_lists_of_lists(stops, match):
    model = make_model("mamba2")
    with pytest.raises(ValueError, match=match):
        mambakit.generate(model, torch.zeros(1, 3, dtype=torch.long), 2, stop_sequences=stops)
    # a 2-d tensor or numpy array: one sequence a row; numpy integers are ids like Python's
    import numpy as np
    for seqs in (torch.tensor([[5, 6], [7, 8]]), np.array([[5, 6], [7, 8]])):
        assert mambakit.generate(model, torch.zeros(1, 3, dtype=torch.long), 2, stop_sequences=seqs,
                                 eos_token_id=np.int64(9)).shape[0] == 1


def test_max_length_caps_prompt_plus_new_tokens():
    model = make_model("mamba2")
    ids = torch.randint(0, 256, (1, 5))
    assert mambakit.generate(model, ids, 20, max_length=8).shape == (1, 8)
    with pytest.raises(ValueError, match="max_length"):
        mambakit.generate(model, ids, 2, max_length=4)


def test_a_models_context_limit_is_checked_before_any_work(monkeypatch):
    model = make_model("hybrid", max_seqlen=16)
    monkeypatch.setattr(model, "allocate_cache", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match="limit of 16"):
        mambakit.generate(model, torch.randint(0, 256, (1, 10)), 7)
    with pytest.raises(ValueError, match="limit of 16"):
        mambakit.stream(model, torch.randint(0, 256, (1, 17)), 0)
    monkeypatch.undo()
    assert mambakit.generate(model, torch.randint(0, 256, (1, 10)), 6).shape == (1, 16)


# --- streaming -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stopping", ["eos", "stop_sequence"])
def test_stream_yields_what_generate_returns(model, stopping):
    ids, mask, _ = _padded([2, 7])
    kw = dict(attention_mask=mask, **SAMPLING)

    def both(**more):
        whole = mambakit.generate(model, ids, 8, generator=torch.Generator().manual_seed(5), **kw, **more)
        pieces = list(mambakit.stream(model, ids, 8, generator=torch.Generator().manual_seed(5), **kw, **more))
        assert all(p.shape == (2,) for p in pieces)
        return whole[:, 7:], torch.stack(pieces, 1)

    free, streamed = both()
    assert torch.equal(streamed, free)
    row0 = free[0].tolist()  # row 0 stops at step 2, with the same draws as before it
    more = dict(eos_token_id=row0[2]) if stopping == "eos" else dict(stop_sequences=[row0[1:3]])
    whole, streamed = both(**more, pad_token_id=3)
    assert torch.equal(streamed, whole)
    assert whole[0, :3].tolist() == row0[:3] and set(whole[0, 3:].tolist()) <= {3}


def test_stream_checks_its_arguments_when_called():
    model = make_model("mamba2")
    with pytest.raises(ValueError, match="max_new_tokens"):
        mambakit.stream(model, torch.zeros(1, 3, dtype=torch.long), -1)  # no next() needed


# --- bad input ---------------------------------------------------------------------------------------------------
BAD = [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=0), "top_k"),
    (dict(temperature=-1.0), "temperature"),
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
    ids, mask, _ = _padded([2, 9, 5])
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
    ids, mask, _ = _padded([3, 8])
    eager = mambakit.generate(model, ids, 6, attention_mask=mask)
    assert torch.equal(mambakit.generate(model, ids, 6, attention_mask=mask, cuda_graph=True), eager)
    decoder = next(iter(model._mambakit_cuda_graphs.values()))
    assert decoder.n_graphs == len(fake_graphs) == graphs
    cuda_graphs.release(model)


def test_nothing_to_replay_falls_back_to_eager(fake_graphs, caplog, monkeypatch):
    from mambakit.layers.attention import Attention
    monkeypatch.delattr(Attention, "allocate_static_state")  # no static KV cache: every layer grows
    cfg = _hybrid_config("transformer").to_dict()
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
