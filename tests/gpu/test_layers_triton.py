"""Mamba-1 and Mamba-2 models on CUDA: the triton backend (conv1d, gated RMSNorm, scan, fused
decode steps, as the layers dispatch them) == the torch backend.

Letters: b batch, l length, v vocabulary.

Small realistic models (d_model 256, 2 layers, Mamba-2 with head dim 64, state 64, 1 or 2
groups, chunk 64; Mamba-1 with state 16) at lengths that are not a multiple of the chunk:
logits and every parameter gradient of a forward; a prefill then decode steps (logits, final
conv/ssm states, states kept in place), plain and left-padded (generation.prefill); greedy
generation with and without CUDA graphs. fp32 (TF32 off, tests/gpu/conftest.py) compares the
two backends directly; in bf16 (autocast, or bf16 weights) each backend is compared with an
fp32 torch run of the same weights, and the triton error may be at most 3x the torch error
(+ 1e-3). Run on the device machine: pytest -m cuda tests/gpu
"""
import contextlib
import copy
import importlib

import pytest
import torch

import mambakit
from mambakit.config import ModelConfig
from mambakit.generation import prefill
from conftest import perturb_norms_

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEV = "cuda"
D_MODEL, HEADDIM, D_STATE, CHUNK = 256, 64, 64, 64  # Mamba-2: 8 heads; Mamba-1: state 16
L_FWD, L_DEC, N_PROMPT, PADS = 200, 90, 70, [0, 5, 33]
MODELS = [("mamba2", 1), ("mamba2", 2), ("mamba1", 1)]
PRECISIONS = ["fp32", "autocast_bf16", "bf16"]
KERNELS = {"mamba2": [("mambakit.ops.conv1d_triton", "causal_conv1d_triton"),
                      ("mambakit.ops.norm_triton", "gated_rms_norm_triton"),
                      ("mambakit.ops.ssd.triton", "ssd_triton"),
                      ("mambakit.ops.decode_triton", "mamba2_decode_step_triton")],
           "mamba1": [("mambakit.ops.conv1d_triton", "causal_conv1d_triton"),
                      ("mambakit.ops.selective_scan.triton", "selective_scan_triton"),
                      ("mambakit.ops.decode_mamba1_triton", "mamba1_decode_step_triton")]}


def _rel(a, b):
    return ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()


def _model(kind, ngroups, precision):
    torch.manual_seed(0)
    if kind == "mamba2":
        cfg = ModelConfig(d_model=D_MODEL, n_layer=2, vocab_size=512, ssm_layer="mamba2",
                          mamba2=dict(d_state=D_STATE, headdim=HEADDIM, ngroups=ngroups, chunk_size=CHUNK))
    else:
        cfg = ModelConfig(d_model=D_MODEL, n_layer=2, vocab_size=512, ssm_layer="mamba1", mamba1=dict(d_state=16))
    model = perturb_norms_(mambakit.LM(cfg), 0.2)
    return model.to(DEV, torch.bfloat16 if precision == "bf16" else torch.float32)


def _autocast(precision):
    if precision == "autocast_bf16":
        return torch.autocast(DEV, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Calls:
    """Counts the calls of the Triton entry points (the ops import them lazily, by module attribute)."""

    def __init__(self, monkeypatch, kind):
        self.n = {}
        for modname, fname in KERNELS[kind]:
            mod = importlib.import_module(modname)
            monkeypatch.setattr(mod, fname, self._wrap(fname, getattr(mod, fname)))

    def _wrap(self, name, fn):
        def wrapper(*args, **kwargs):
            self.n[name] = self.n.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapper


def _fwd_bwd(model, ids, gy, backend, precision, monkeypatch):
    monkeypatch.setenv("MAMBAKIT_BACKEND", backend)
    model.zero_grad(set_to_none=True)
    with _autocast(precision):
        logits = model(ids)
    (logits.double() * gy).sum().backward()
    out = {"logits": logits.detach()}
    out.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return out


def _decode(model, ids, n_prompt, pads, backend, precision, monkeypatch):
    """Logits (b, l - n_prompt + 1, v) at the prompt's end and after each step, and the states."""
    monkeypatch.setenv("MAMBAKIT_BACKEND", backend)
    b, l = ids.shape
    cache = model.allocate_cache(b)
    ptrs = [(st["conv"].data_ptr(), st["ssm"].data_ptr()) for st in cache.layers]
    with torch.no_grad(), _autocast(precision):
        if pads is None:
            outs = [model(ids[:, :n_prompt], cache=cache)[:, -1]]
        else:
            seq_idx = (torch.arange(n_prompt, device=ids.device)[None] >= pads[:, None]).long()
            cache.pad_lengths = pads
            outs = [prefill(model, ids[:, :n_prompt], cache, seq_idx, pads)]
        for t in range(n_prompt, l):
            outs.append(model(ids[:, t:t + 1], cache=cache)[:, -1])
    assert ptrs == [(st["conv"].data_ptr(), st["ssm"].data_ptr()) for st in cache.layers], "states not in place"
    assert all(st["ssm"].dtype == torch.float32 for st in cache.layers)
    states = {f"{i}.{k}": v.clone() for i, st in enumerate(cache.layers) for k, v in st.items()}
    return {"logits": torch.stack(outs, 1), **states}


def _check(tri, tor, precision, ref_fn, fp32_tol):
    if precision == "fp32":
        bad = {k: _rel(tri[k], tor[k]) for k in tor if not _rel(tri[k], tor[k]) < fp32_tol[k == "logits"]}
    else:
        ref = ref_fn()
        bad = {}
        for k in ref:
            e_tri, e_tor = _rel(tri[k], ref[k]), _rel(tor[k], ref[k])
            if not e_tri <= 3 * e_tor + 1e-3:
                bad[k] = (e_tri, e_tor)
    assert sorted(tri) == sorted(tor)
    assert not bad, bad


def test_auto_backend_is_triton_on_cuda(monkeypatch):
    from mambakit.ops import resolve_backend
    monkeypatch.delenv("MAMBAKIT_BACKEND", raising=False)
    x = torch.zeros(1, device=DEV)
    assert resolve_backend(None, x, "test") == "triton"
    monkeypatch.setenv("MAMBAKIT_BACKEND", "torch")
    assert resolve_backend(None, x, "test") == "chunked"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind,ngroups", MODELS)
def test_forward_and_gradients_match_torch(monkeypatch, kind, ngroups, precision):
    model = _model(kind, ngroups, precision)
    gen = torch.Generator(device=DEV).manual_seed(1)
    ids = torch.randint(0, 512, (2, L_FWD), device=DEV, generator=gen)
    gy = torch.randn(2, L_FWD, 512, device=DEV, dtype=torch.float64, generator=gen)
    calls = _Calls(monkeypatch, kind)
    tor = _fwd_bwd(model, ids, gy, "torch", precision, monkeypatch)
    assert calls.n == {}, calls.n
    tri = _fwd_bwd(model, ids, gy, "triton", precision, monkeypatch)
    forward_kernels = {f for _, f in KERNELS[kind] if "decode" not in f}
    assert set(calls.n) == forward_kernels, calls.n
    assert len(tri) > 10
    _check(tri, tor, precision,
           lambda: _fwd_bwd(copy.deepcopy(model).float(), ids, gy, "torch", "fp32", monkeypatch),
           {True: 1e-4, False: 1e-3})


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind,ngroups", MODELS)
def test_prefill_then_steps_match_torch(monkeypatch, kind, ngroups, precision, padded):
    model = _model(kind, ngroups, precision).eval()
    gen = torch.Generator(device=DEV).manual_seed(2)
    ids = torch.randint(0, 512, (3, L_DEC), device=DEV, generator=gen)
    pads = torch.tensor(PADS, device=DEV) if padded else None
    calls = _Calls(monkeypatch, kind)
    tri = _decode(model, ids, N_PROMPT, pads, "triton", precision, monkeypatch)
    step_kernel = [f for _, f in KERNELS[kind] if "decode" in f][0]
    assert calls.n.get(step_kernel, 0) == (L_DEC - N_PROMPT) * model.config.n_layer, calls.n
    before = dict(calls.n)
    tor = _decode(model, ids, N_PROMPT, pads, "torch", precision, monkeypatch)
    assert calls.n == before, "MAMBAKIT_BACKEND=torch still ran Triton kernels"
    _check(tri, tor, precision,
           lambda: _decode(copy.deepcopy(model).float(), ids, N_PROMPT, pads, "torch", "fp32", monkeypatch),
           {True: 1e-4, False: 1e-4})
    if precision == "fp32" and not padded:  # decoding == the full forward
        monkeypatch.setenv("MAMBAKIT_BACKEND", "triton")
        with torch.no_grad():
            full = model(ids)[:, N_PROMPT - 1:]
        assert _rel(tri["logits"], full) < 1e-4


@pytest.mark.parametrize("kind,ngroups", [("mamba2", 1), ("mamba1", 1)])
def test_cuda_graph_generation_matches_eager(monkeypatch, kind, ngroups):
    monkeypatch.setenv("MAMBAKIT_BACKEND", "triton")
    model = _model(kind, ngroups, "fp32").eval()
    gen = torch.Generator(device=DEV).manual_seed(3)
    ids = torch.randint(0, 512, (2, 30), device=DEV, generator=gen)
    eager = mambakit.generate(model, ids, max_new_tokens=12)
    graphed = mambakit.generate(model, ids, max_new_tokens=12, cuda_graph=True)
    assert torch.equal(eager, graphed)
