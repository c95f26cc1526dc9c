"""CUDA-graph decoding of models with attention: the whole step (static KV cache) as one graph.

Letters: b batch, l prompt length, t new tokens, v vocabulary.

hybrid-tiny (M*-M-*) and transformer-tiny (*-*-, partial RoPE, GQA) on CUDA in fp32 (TF32 off,
tests/gpu/conftest.py), plus a bf16 transformer: greedy generation with graphs == without (the
growing KV cache), plain and left-padded, several prompt lengths; graph replays == the same static
steps run eagerly, step by step; one graph, nothing eager; no host sync in an eager static step
(torch.cuda sync debug mode); a longer generation captures a larger decoder. Run on the device
machine: pytest -m cuda tests/gpu
"""
import pytest
import torch

import mambakit
from mambakit import cuda_graphs
from mambakit.cache import allocate_static_cache
from mambakit.generation import prefill
from mambakit.presets_hybrid import HYBRID_PRESETS

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEV = "cuda"
KINDS = ["hybrid", "transformer"]


def _model(kind: str, dtype=torch.float32) -> mambakit.LM:
    torch.manual_seed(0)
    model = mambakit.LM(mambakit.ModelConfig.from_dict(HYBRID_PRESETS[f"{kind}-tiny"].to_dict()))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight")):
                p.add_(0.2 * torch.randn_like(p))
    return model.to(device=DEV, dtype=dtype).eval()


def _prompts(lengths, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    l = max(lengths)
    ids = torch.randint(1, 256, (len(lengths), l), device=DEV, generator=g)
    pad = torch.tensor([l - n for n in lengths], device=DEV)
    mask = (torch.arange(l, device=DEV)[None] >= pad[:, None]).long()
    return ids * mask, mask


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths", [[7], [30, 30], [3, 40, 17]])
def test_generate_with_graphs_equals_without(kind, lengths):
    model = _model(kind)
    cuda_graphs.release(model)
    ids, mask = _prompts(lengths, seed=len(lengths))
    kw = dict(attention_mask=mask) if len(set(lengths)) > 1 else {}
    eager = mambakit.generate(model, ids, 24, **kw)
    graphed = mambakit.generate(model, ids, 24, cuda_graph=True, **kw)
    assert torch.equal(graphed, eager)
    decoder = next(iter(model._mambakit_cuda_graphs.values()))
    assert decoder is not None and decoder.n_graphs == 1 and decoder.n_eager == 0
    assert decoder.capacity >= ids.shape[1] + 24
    cuda_graphs.release(model)


@pytest.mark.parametrize("kind,dtype", [("hybrid", torch.float32), ("transformer", torch.float32),
                                        ("transformer", torch.bfloat16)])
def test_graph_replays_equal_eager_static_steps(kind, dtype):
    """Step by step: replays == the same static step run eagerly (same kernels), and == the growing cache."""
    model = _model(kind, dtype)
    cuda_graphs.release(model)
    ids, mask = _prompts([12, 20], seed=5)
    pad = (ids.shape[1] - mask.sum(-1)).long()
    seq_idx = mask
    tokens = torch.randint(0, 256, (2, 10), device=DEV)
    decoder = cuda_graphs.graphed_decoder(model, 2, DEV, capacity=40)
    out = {}
    with torch.inference_mode():
        for name in ("graph", "static", "dynamic"):
            if name == "graph":
                cache, step = decoder.begin(pad), decoder.step
            else:
                cache = allocate_static_cache(model, 2, decoder.capacity) if name == "static" else model.allocate_cache(2)
                cache.pad_lengths = pad

                def step(t, cache=cache):
                    return model(t, cache=cache, validate=False)[:, -1]
            logits = [prefill(model, ids, cache, seq_idx, pad)]
            logits += [step(tokens[:, i:i + 1]).clone() for i in range(tokens.shape[1])]
            out[name] = torch.stack(logits, 1).float()
            if name == "graph":
                positions = [s["pos"].item() for s in cache.layers if "pos" in s]
                assert positions and set(positions) == {ids.shape[1] + tokens.shape[1]}  # replays advanced pos
                decoder.busy = False
    torch.testing.assert_close(out["graph"], out["static"], atol=1e-6, rtol=1e-6)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out["static"], out["dynamic"], atol=tol, rtol=tol)
    cuda_graphs.release(model)


@pytest.mark.parametrize("kind", KINDS)
def test_static_decode_step_does_not_sync(kind):
    model = _model(kind)
    ids, mask = _prompts([5, 9])
    pad = (ids.shape[1] - mask.sum(-1)).long()
    cache = allocate_static_cache(model, 2, 32)
    cache.pad_lengths = pad
    token = torch.zeros(2, 1, dtype=torch.long, device=DEV)
    with torch.inference_mode():
        prefill(model, ids, cache, mask, pad)
        model(token, cache=cache, validate=False)  # first step outside: lazy initialisations
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                model(token, cache=cache, validate=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_a_longer_generation_recaptures_a_larger_graph():
    model = _model("transformer")
    cuda_graphs.release(model)
    ids = torch.randint(0, 256, (1, 10), device=DEV)
    assert torch.equal(mambakit.generate(model, ids, 5, cuda_graph=True), mambakit.generate(model, ids, 5))
    first = next(iter(model._mambakit_cuda_graphs.values()))
    n = first.capacity + 20
    assert torch.equal(mambakit.generate(model, ids, n, cuda_graph=True), mambakit.generate(model, ids, n))
    second = next(iter(model._mambakit_cuda_graphs.values()))
    assert second is not first and second.capacity >= 10 + n
    cuda_graphs.release(model)
