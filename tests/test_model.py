"""LM behaviour shared by every family: decoding == full forward, packed sequences, bad input, init."""
import math

import pytest
import torch

import mambakit
from conftest import tiny_model

KINDS = ["mamba", "mamba2"]


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_steps_equals_forward(kind):
    model = tiny_model(kind)
    ids = torch.randint(0, 256, (3, 45))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(3)
        parts = [model(ids[:, :30], cache=cache)]
        parts += [model(ids[:, t:t + 1], cache=cache) for t in range(30, 45)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.seqlen_offset == 45


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_in_three_pieces_equals_forward(kind):
    model = tiny_model(kind)
    ids = torch.randint(0, 256, (2, 77))  # pieces longer than, shorter than and across the chunk of 32
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        parts = [model(ids[:, a:b], cache=cache) for a, b in [(0, 5), (5, 50), (50, 77)]]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_packed_documents_equal_separate_runs(kind):
    model = tiny_model(kind)
    lengths = [9, 40, 14]
    docs = [torch.randint(0, 256, (1, n)) for n in lengths]
    seq_idx = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], 1)
    with torch.no_grad():
        packed = model(torch.cat(docs, 1), seq_idx=seq_idx)
        alone = torch.cat([model(d) for d in docs], 1)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_logits_have_the_unpadded_vocabulary(kind):
    model = tiny_model(kind, vocab_size=250)
    assert model.embedding.weight.shape[0] == 256
    assert model(torch.randint(0, 250, (1, 4))).shape == (1, 4, 250)


@pytest.mark.parametrize("bad,match", [
    (lambda: torch.rand(1, 4), "token ids as torch.long"),
    (lambda: torch.zeros(1, 4, dtype=torch.int8), r"token ids as torch.long .*got dtype torch.int8"),
    (lambda: torch.zeros(1, 4, dtype=torch.uint8), r"got dtype torch.uint8; convert them with input_ids.long\(\)"),
    (lambda: torch.zeros(1, 2, 3, dtype=torch.long), "2-d"),
    (lambda: torch.tensor([[1, -1]]), r"in \[0, 256\)"),
    (lambda: torch.tensor([[1, 256]]), r"in \[0, 256\)"),
    (lambda: torch.zeros(1, 0, dtype=torch.long), "empty"),
    (lambda: [[1, 2]], "torch.Tensor"),
])
def test_bad_input_ids(bad, match):
    model = tiny_model("mamba2")
    with pytest.raises(ValueError, match=match):
        model(bad())


def test_cache_of_another_batch_or_model():
    model = tiny_model("mamba2")
    ids = torch.randint(0, 256, (2, 4))
    with pytest.raises(ValueError, match="batch size 2"):
        model(ids, cache=model.allocate_cache(3))
    other = tiny_model("mamba")
    with pytest.raises(ValueError, match="another config"):
        model(ids, cache=other.allocate_cache(2))
    with pytest.raises(ValueError, match="InferenceCache"):
        model(ids, cache={"not": "a cache"})
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            model.allocate_cache(bad)
    with pytest.raises(ValueError, match="the cache is on meta but input_ids is on cpu"):
        model(ids, cache=model.allocate_cache(2, device="meta"))
    with pytest.raises(ValueError, match="dtype must be one of"):  # floating, but nothing of ours runs in it
        model.allocate_cache(2, dtype=torch.float8_e4m3fn)


def test_bad_seq_idx():
    model = tiny_model("mamba2")
    ids = torch.randint(0, 256, (1, 6))
    with pytest.raises(ValueError, match="shape"):
        model(ids, seq_idx=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="non-decreasing"):
        model(ids, seq_idx=torch.tensor([[0, 0, 1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="integer"):
        model(ids, seq_idx=torch.zeros(1, 6))


def test_mamba1_initialization_follows_the_paper():
    config = mambakit.ModelConfig.from_preset("mamba-tiny", n_layer=4)
    model = mambakit.LM(config)
    mixer = model.layers[0].mixer
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    n = config.mamba1.d_state
    torch.testing.assert_close(-torch.exp(mixer.A_log[0]), -torch.arange(1, n + 1, dtype=torch.float32))
    assert mixer.A_log.dtype == torch.float32 and torch.all(mixer.D == 1)
    assert mixer.dt_rank == math.ceil(config.d_model / 16)
    # out_proj: default Linear init (bound 1/sqrt(fan_in)) rescaled by 1/sqrt(n_layer)
    bound = 1 / math.sqrt(mixer.d_inner) / math.sqrt(config.n_layer)
    assert mixer.out_proj.weight.abs().max() <= bound + 1e-7
    assert mixer.out_proj.weight.abs().max() > 0.8 * bound


def test_mamba2_initialization_follows_the_paper():
    model = mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny"))
    mixer = model.layers[0].mixer
    A = torch.exp(mixer.A_log)
    assert A.min() >= 1 and A.max() <= 16
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert torch.all(mixer.D == 1)


def test_tied_embeddings_share_storage():
    model = tiny_model("mamba")
    assert model.lm_head.weight is model.embedding.weight


def test_greedy_generate_extends_the_prompt():
    model = tiny_model("mamba2")
    ids = torch.randint(0, 256, (2, 5))
    out = mambakit.generate(model, ids, max_new_tokens=6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], ids)
    # each greedy token is the argmax of the full forward over what came before
    with torch.no_grad():
        logits = model(out[:, :-1])
    torch.testing.assert_close(logits[:, 4:].argmax(-1), out[:, 5:])


@pytest.mark.parametrize("preset", ["mamba-tiny", "mamba2-tiny", "hybrid-tiny"])
def test_a_cache_of_another_dtype_decodes_right(preset):
    # The CPU decode kernels read the states through fp32 pointers: a bf16 cache crashed the
    # process and a float64 one gave NaN, before such caches were sent down torch's path.
    torch.manual_seed(0)
    model = mambakit.LM(mambakit.ModelConfig.from_preset(preset)).eval()
    ids = torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        full = model(ids)[:, -1]
        for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float64, 1e-5), ("float32", 1e-5)):
            cache = model.allocate_cache(2, dtype=dtype)
            model(ids[:, :4], cache=cache)
            step = model(ids[:, 4:], cache=cache)[:, -1]
            torch.testing.assert_close(step.float(), full, rtol=tol, atol=tol, msg=str(dtype))
    with pytest.raises(ValueError, match="dtype must be one of.*torch.int64"):
        model.allocate_cache(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="device 'gpu' is not a device torch knows"):
        model.allocate_cache(1, device="gpu")
