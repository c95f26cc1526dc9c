"""Attention: against a plain softmax loop, transformers' RoPE, decoding, packing, meta build."""
import math

import pytest
import torch

from mambakit.cache import InferenceCache
from mambakit.config import ModelConfig
from mambakit.layers.attention import Attention, apply_rope, rope_cos_sin


def make(n_heads=4, n_kv_heads=2, rotary_fraction=0.5, d=32, dtype=torch.float64, **kw):
    config = ModelConfig(d_model=d, n_layer=1, vocab_size=16, layer_pattern="*",
                         attention=dict(n_heads=n_heads, n_kv_heads=n_kv_heads, rotary_fraction=rotary_fraction, **kw))
    layer = Attention(config, 0).to(dtype)
    return config, layer


def naive_attention(layer, x, seq_idx=None):
    """Softmax attention written out, one query position at a time."""
    b, l, _ = x.shape
    h, kvh, hd = layer.n_heads, layer.n_kv_heads, layer.head_dim
    q = layer.q_proj(x).view(b, l, h, hd)
    k = layer.k_proj(x).view(b, l, kvh, hd)
    v = layer.v_proj(x).view(b, l, kvh, hd)
    if layer.rotary_dim:
        cos, sin = rope_cos_sin(torch.arange(l), layer.rotary_dim, layer.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out = torch.zeros(b, l, h, hd, dtype=x.dtype)
    for bi in range(b):
        for i in range(l):
            for hi in range(h):
                kv = hi // (h // kvh)
                scores = k[bi, : i + 1, kv] @ q[bi, i, hi] / math.sqrt(hd)  # (i+1,)
                if seq_idx is not None:
                    scores = scores.masked_fill(seq_idx[bi, : i + 1] != seq_idx[bi, i], float("-inf"))
                out[bi, i, hi] = scores.softmax(0) @ v[bi, : i + 1, kv]
    return layer.o_proj(out.reshape(b, l, h * hd))


@pytest.mark.parametrize("n_heads,n_kv_heads,frac", [(4, 4, 0.0), (4, 2, 0.5), (4, 1, 1.0), (2, 2, 0.25)])
def test_matches_naive_softmax(n_heads, n_kv_heads, frac):
    _, layer = make(n_heads, n_kv_heads, frac)
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_attention(layer, x))


def test_rope_matches_transformers_llama():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    hd, l = 16, 9
    q, k = torch.randn(2, l, 3, hd), torch.randn(2, l, 1, hd)
    cos, sin = rope_cos_sin(torch.arange(l), hd, 500.0)
    # transformers lays out (b, heads, l, hd) and takes cos/sin (b, l, hd)
    q_ref, k_ref = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos[None], sin[None])
    torch.testing.assert_close(apply_rope(q, cos, sin), q_ref.transpose(1, 2))
    torch.testing.assert_close(apply_rope(k, cos, sin), k_ref.transpose(1, 2))


def test_partial_rope_leaves_the_rest_and_rotates_by_relative_position():
    cos, sin = rope_cos_sin(torch.arange(20), 8, 10000.0)
    q, k = torch.randn(1, 1, 1, 12, dtype=torch.float64), torch.randn(1, 1, 1, 12, dtype=torch.float64)
    rq = apply_rope(q.expand(1, 20, 1, 12), cos, sin)
    rk = apply_rope(k.expand(1, 20, 1, 12), cos, sin)
    torch.testing.assert_close(rq[..., 8:], q.expand(1, 20, 1, 12)[..., 8:])
    score = lambda i, j: float((rq[0, i, 0] * rk[0, j, 0]).sum())  # noqa: E731
    assert score(5, 2) == pytest.approx(score(15, 12), rel=1e-5)  # same distance, same score
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


def _cache(config, layer, b):
    return InferenceCache(config, b, [layer.allocate_state(b)])


@pytest.mark.parametrize("splits", [[11], [6, 1, 1, 1, 1, 1], [3, 5, 1, 2]])
def test_cache_prefill_steps_and_chunks_equal_full(splits):
    config, layer = make(4, 2, 0.5)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    full = layer(x)
    cache = _cache(config, layer, 2)
    outs, start = [], 0
    for n in splits:
        outs.append(layer(x[:, start:start + n], cache=cache))
        cache.seqlen_offset += n  # the LM advances it after all layers
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full)
    assert cache.layers[0]["k"].shape == (2, 11, 2, 8) and cache.layers[0]["v"].shape == (2, 11, 2, 8)
    # k and v: exact after a one-shot prefill; appends grow the buffers by doubling (at most 2x)
    used = 2 * 2 * 11 * 2 * 8 * 8
    assert cache.nbytes == used if len(splits) == 1 else used <= cache.nbytes <= 2 * used


def test_packed_documents_equal_separate_runs():
    _, layer = make(4, 2, 1.0)
    lengths = [3, 6, 1, 5]
    docs = [torch.randn(1, n, 32, dtype=torch.float64) for n in lengths]
    seq_idx = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], 1)
    packed = layer(torch.cat(docs, 1), seq_idx=seq_idx)
    torch.testing.assert_close(packed, torch.cat([layer(d) for d in docs], 1))
    torch.testing.assert_close(packed, naive_attention(layer, torch.cat(docs, 1), seq_idx))


def test_packed_with_cache_continues_the_first_document():
    config, layer = make(4, 2, 0.5)
    x = torch.randn(1, 10, 32, dtype=torch.float64)
    cache = _cache(config, layer, 1)
    first = layer(x[:, :4], cache=cache)
    cache.seqlen_offset += 4
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1]])  # tokens 4..6 continue doc 0, 7..9 are a new doc
    rest = layer(x[:, 4:], cache=cache, seq_idx=seq_idx)
    whole = layer(x, seq_idx=torch.tensor([[0] * 7 + [1] * 3]))
    torch.testing.assert_close(torch.cat([first, rest], 1), whole)


def test_no_buffers_and_meta_build_loads_exactly():
    config, layer = make(4, 2, 0.5, dtype=torch.float32)
    assert list(layer.buffers()) == []
    assert sorted(layer.state_dict()) == ["k_proj.weight", "o_proj.weight", "q_proj.weight", "v_proj.weight"]
    with torch.device("meta"):
        empty = Attention(config, 0)
    empty = empty.to_empty(device="cpu")
    empty.load_state_dict(layer.state_dict())
    x = torch.randn(1, 5, 32)
    torch.testing.assert_close(empty(x), layer(x), rtol=0, atol=0)


def test_bias_and_head_dim():
    _, layer = make(4, 2, 1.0, head_dim=6, bias=True)
    assert layer.q_proj.weight.shape == (24, 32) and layer.k_proj.bias.shape == (12,)
    assert layer.rotary_dim == 6
    x = torch.randn(1, 4, 32, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_attention(layer, x))


def test_max_seqlen_is_enforced():
    config, layer = make(max_seqlen=6)
    cache = _cache(config, layer, 1)
    layer(torch.randn(1, 5, 32, dtype=torch.float64), cache=cache)
    cache.seqlen_offset += 5
    with pytest.raises(ValueError, match="limit of 6"):
        layer(torch.randn(1, 2, 32, dtype=torch.float64), cache=cache)


def test_out_of_sync_cache_is_an_error():
    config, layer = make()
    cache = _cache(config, layer, 1)
    cache.seqlen_offset = 3  # nothing was cached
    with pytest.raises(ValueError, match="seqlen_offset"):
        layer(torch.randn(1, 1, 32, dtype=torch.float64), cache=cache)


@pytest.mark.parametrize("hd,frac,dtype", [(16, 0.5, torch.float32), (16, 1.0, torch.float64), (12, 0.34, torch.bfloat16)])
def test_cached_rope_tables_equal_apply_rope(hd, frac, dtype):
    from mambakit.layers.attention import apply_rope_table, rope_tables
    r = int(hd * frac) // 2 * 2
    x = torch.randn(2, 5, 3, hd).to(dtype)
    cos, sin = rope_cos_sin(torch.arange(300, 305), r, 500.0)
    ref = apply_rope(x, cos, sin)
    tc, ts, swap = rope_tables(305, hd, r, 500.0, "cpu", dtype)
    assert tc.shape[0] >= 305 and not tc.is_inference()
    assert torch.equal(apply_rope_table(x, tc[300:305], ts[300:305], swap), ref)
    # a longer table (grown) keeps the same rows
    tc2, ts2, _ = rope_tables(2000, hd, r, 500.0, "cpu", dtype)
    assert torch.equal(tc2[:305], tc[:305]) and torch.equal(ts2[:305], ts[:305])


def test_decode_step_left_padding_mask_equals_general_one():
    from mambakit.layers.attention import _mask_left_padding
    pad = torch.tensor([0, 3, 6])
    t = 9
    general = _mask_left_padding(None, pad, 2, t + 1)[:, :, -1:, :t + 1]  # last query of a 2-token call
    step = _mask_left_padding(None, pad, 1, t + 1)
    assert step.shape == (3, 1, 1, t + 1) and torch.equal(step, general)
    assert torch.equal(step[:, 0, 0], torch.arange(t + 1)[None] >= pad[:, None])


def test_kv_cache_grown_under_inference_mode_works_outside_it():
    """Keys appended under torch.inference_mode (generate's steps) into a cache allocated outside it
    can be followed by steps under torch.no_grad: the grown buffers must not be inference tensors."""
    config, layer = make(4, 2, 0.5)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    full = layer(x)
    cache = _cache(config, layer, 2)
    outs = []
    with torch.inference_mode():
        for start, n in ((0, 5), (5, 1)):  # the step grows the buffer (doubling: room for 10 tokens)
            outs.append(layer(x[:, start:start + n], cache=cache).clone())
            cache.seqlen_offset += n
    with torch.no_grad():
        for start in (6, 7, 8):  # these fit in the buffer grown above: written in place
            outs.append(layer(x[:, start:start + 1], cache=cache))
            cache.seqlen_offset += 1
    torch.testing.assert_close(torch.cat(outs, 1), full)
