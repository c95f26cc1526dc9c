"""The layers on the Triton backend (under TRITON_INTERPRET=1, on the CPU) == the torch backend.

Letters: b batch, l length, v vocabulary, k conv width.

Small Mamba-1 and Mamba-2 models (Mamba-2 with 2 groups) run with MAMBAKIT_BACKEND=triton, so
the conv1d, gated-RMSNorm, scan and decode-step kernels are the ones the layers dispatch to, and
with MAMBAKIT_BACKEND=torch: logits and every parameter gradient of a forward, and a prefill
followed by decode steps (logits and the final conv/ssm states), plain and left-padded
(generation.prefill with pad_lengths, which feeds the conv an initial state and document ids).
The interpreter must be on before triton is imported, so everything runs in one subprocess that
prints one JSON line per case; the tests read those numbers.
"""
import json
import textwrap

import pytest
from conftest import run_interpreted

pytest.importorskip("triton")


_SCRIPT = textwrap.dedent(r'''
import importlib
import json
import os
import torch
import mambakit
from mambakit.config import ModelConfig
from mambakit.generation import prefill
from conftest import perturb_norms_

torch.set_num_threads(1)

def rel(a, b):
    return ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()

def build(kind):
    torch.manual_seed(0)
    if kind == "mamba2":
        cfg = ModelConfig(d_model=32, n_layer=2, vocab_size=64, ssm_layer="mamba2",
                          mamba2=dict(d_state=16, headdim=16, ngroups=2, chunk_size=16, dt_limit=(0.0, 0.5)))
    else:
        # narrower and shallower: the interpreted selective-scan backward is the slow part here
        cfg = ModelConfig(d_model=16, n_layer=1, vocab_size=64, ssm_layer="mamba1", mamba1=dict(d_state=8))
    return perturb_norms_(mambakit.LM(cfg).eval(), 0.2)

# Count the calls of every Triton entry point, so a layer that silently stays on torch fails.
CALLS = {}
KERNELS = [("mambakit.ops.conv1d_triton", "causal_conv1d_triton"),
           ("mambakit.ops.norm_triton", "gated_rms_norm_triton"),
           ("mambakit.ops.decode_triton", "mamba2_decode_step_triton"),
           ("mambakit.ops.decode_mamba1_triton", "mamba1_decode_step_triton"),
           ("mambakit.ops.ssd.triton", "ssd_triton"),
           ("mambakit.ops.selective_scan.triton", "selective_scan_triton")]

def counted(name, fn):
    def wrapper(*args, **kwargs):
        CALLS[name] = CALLS.get(name, 0) + 1
        return fn(*args, **kwargs)
    return wrapper

for modname, fname in KERNELS:
    mod = importlib.import_module(modname)
    setattr(mod, fname, counted(fname, getattr(mod, fname)))

def on(backend, fn):
    """fn() with MAMBAKIT_BACKEND=backend; records the Triton calls it made in CALLS_BY[backend]."""
    CALLS.clear()
    os.environ["MAMBAKIT_BACKEND"] = backend
    try:
        return fn()
    finally:
        del os.environ["MAMBAKIT_BACKEND"]
        for name, count in CALLS.items():
            CALLS_BY[backend][name] = CALLS_BY[backend].get(name, 0) + count

CALLS_BY = {"triton": {}, "torch": {}}

def forward_grads(model, ids, gy):
    model.zero_grad(set_to_none=True)
    logits = model(ids)
    (logits.double() * gy).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

def decode(model, ids, n_prompt, pad_lengths=None):
    b, l = ids.shape
    cache = model.allocate_cache(b)
    with torch.no_grad():
        if pad_lengths is None:
            outs = [model(ids[:, :n_prompt], cache=cache)[:, -1]]
        else:
            seq_idx = (torch.arange(n_prompt)[None] >= pad_lengths[:, None]).long()
            cache.pad_lengths = pad_lengths
            outs = [prefill(model, ids[:, :n_prompt], cache, seq_idx, pad_lengths)]
        for t in range(n_prompt, l):
            outs.append(model(ids[:, t:t + 1], cache=cache)[:, -1])
    states = {f"{i}.{k}": v.clone() for i, st in enumerate(cache.layers) for k, v in st.items()}
    return torch.stack(outs, 1), states  # (b, l - n_prompt + 1, v)

for kind in ("mamba2", "mamba1"):
    CALLS_BY = {"triton": {}, "torch": {}}
    model = build(kind)
    gen = torch.Generator().manual_seed(1)
    l = 21 if kind == "mamba2" else 13
    ids = torch.randint(0, 64, (2, l), generator=gen)
    gy = torch.randn(2, l, 64, generator=gen, dtype=torch.float64)
    lt, gt = on("triton", lambda: forward_grads(model, ids, gy))
    lc, gc = on("torch", lambda: forward_grads(model, ids, gy))
    print(json.dumps({"case": kind + "_forward", "logits": rel(lt, lc), "n_grads": len(gc),
                      "same_names": sorted(gt) == sorted(gc),
                      "grads": max(rel(gt[n], gc[n]) for n in gc)}), flush=True)

    ids = torch.randint(0, 64, (3, 11), generator=gen)
    with torch.no_grad():
        full = on("torch", lambda: model(ids))[:, 6:]  # (b, 5, v): logits at the prompt's end and each step
    dt, st = on("triton", lambda: decode(model, ids, 7))
    dc, sc = on("torch", lambda: decode(model, ids, 7))
    print(json.dumps({"case": kind + "_decode", "logits": rel(dt, dc), "vs_forward": rel(dt, full),
                      "states": max(rel(st[k], sc[k]) for k in sc),
                      "ssm_fp32": all(v.dtype == torch.float32 for k, v in st.items() if k.endswith("ssm"))}),
          flush=True)

    pads = torch.tensor([0, 3, 5])
    dt, st = on("triton", lambda: decode(model, ids, 8, pads))
    dc, sc = on("torch", lambda: decode(model, ids, 8, pads))
    # oracle: each row alone, without its padding, through the torch backend
    alone = []
    for i in range(3):
        row = ids[i:i + 1, int(pads[i]):]
        a, _ = on("torch", lambda: decode(model, row, 8 - int(pads[i])))
        alone.append(a)
    print(json.dumps({"case": kind + "_padded", "logits": rel(dt, dc), "vs_alone": rel(dt, torch.cat(alone)),
                      "states": max(rel(st[k], sc[k]) for k in sc)}), flush=True)
    print(json.dumps({"case": kind + "_calls", **CALLS_BY}), flush=True)
''')


@pytest.fixture(scope="module")
def results():
    return {r["case"]: r for r in map(json.loads, run_interpreted(_SCRIPT, timeout=300).splitlines())}


KERNELS = {"mamba2": ["causal_conv1d_triton", "gated_rms_norm_triton", "mamba2_decode_step_triton", "ssd_triton"],
           "mamba1": ["causal_conv1d_triton", "mamba1_decode_step_triton", "selective_scan_triton"]}


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_triton_backend_runs_the_kernels_and_torch_none(results, kind):
    r = results[kind + "_calls"]
    assert r["torch"] == {}, r
    assert all(r["triton"].get(name, 0) > 0 for name in KERNELS[kind]), r


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_forward_and_gradients_match_torch(results, kind):
    r = results[kind + "_forward"]
    assert r["same_names"] and r["n_grads"] >= 10, r
    assert r["logits"] < 1e-5, r
    assert r["grads"] < 1e-4, r


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_prefill_then_steps_match_torch_and_forward(results, kind):
    r = results[kind + "_decode"]
    assert r["ssm_fp32"], r
    assert r["logits"] < 1e-5, r
    assert r["vs_forward"] < 1e-4, r
    assert r["states"] < 1e-5, r


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_left_padded_prefill_and_steps_match(results, kind):
    r = results[kind + "_padded"]
    assert r["logits"] < 1e-5, r
    assert r["vs_alone"] < 1e-4, r
    assert r["states"] < 1e-5, r
