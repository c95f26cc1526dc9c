"""Decode steps through the fused block path (layers/fused_decode.py, ops/gemv_triton.py) under
TRITON_INTERPRET=1 on the CPU, against the same steps on the torch backend.

Letters: b batch, l prompt length, v vocabulary.

Tiny fp32 models of every mixer that fuses (Mamba-1, Mamba-2 with 1 and 2 groups, the hybrid's
attention and GeLU or SwiGLU MLP, the Transformer's RoPE attention and squared-ReLU MLP): a torch-backend
prefill of b = 2 prompts, then three one-token steps with MAMBAKIT_BACKEND=triton, compared with
three torch-backend steps: logits and every layer's conv and SSM state. The fused kernel's calls
are counted, so that a path silently not taken fails; a forward hook on a projection turns its
block back to the unfused step (the hook is called); a left-padded batch generates the same tokens
as on the torch backend.
"""
import json
import textwrap

import pytest
from conftest import run_interpreted

pytest.importorskip("triton")

_SCRIPT = textwrap.dedent(r'''
import copy, json, os
import torch
import mambakit
import mambakit.ops.gemv_triton as gemv
from mambakit.config import ModelConfig
from conftest import perturb_norms_

calls = [0]
_orig = gemv.fused_gemv
def counted(*a, **k):
    calls[0] += 1
    return _orig(*a, **k)
gemv.fused_gemv = counted

def build(preset, mlp=None, **mamba2):
    d = mambakit.PRESETS[preset].to_dict()
    if mamba2:
        d["mamba2"] = {**d["mamba2"], **mamba2}
    if mlp:
        d["mlp"] = {**d["mlp"], "activation": mlp}
    torch.manual_seed(0)
    return perturb_norms_(mambakit.LM(ModelConfig.from_dict(d)).eval())

out = {}
for name, preset, extra in [("mamba1", "mamba-tiny", {}), ("mamba2", "mamba2-tiny", {}),
                            ("mamba2_g2", "mamba2-tiny", {"ngroups": 2}), ("hybrid", "hybrid-tiny", {}),
                            ("hybrid_swiglu", "hybrid-tiny", {"mlp": "swiglu"}),
                            ("transformer", "transformer-tiny", {})]:
    model = build(preset, **extra)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        os.environ["MAMBAKIT_BACKEND"] = "torch"
        ref_cache = model.allocate_cache(2)
        model(ids[:, :6], cache=ref_cache)
        cache = copy.deepcopy(ref_cache)
        errs, calls[0] = [], 0
        for t in range(6, 9):
            os.environ["MAMBAKIT_BACKEND"] = "torch"
            want = model(ids[:, t:t + 1], cache=ref_cache)
            os.environ["MAMBAKIT_BACKEND"] = "triton"
            got = model(ids[:, t:t + 1], cache=cache)
            errs.append((got - want).abs().max().item() / want.abs().max().item())
        state_err = 0.0
        for a, b in zip(cache.layers, ref_cache.layers):
            for key in ("conv", "ssm", "k", "v"):
                if key in a:
                    state_err = max(state_err, (a[key].float() - b[key].float()).abs().max().item())
    out[name] = {"logit_rel_err": max(errs), "state_err": state_err, "fused_calls": calls[0],
                 "layers": len(model.layers)}
# a forward hook on a projection (an adapter, a probe) must see its call: that block runs unfused
model = build("mamba2-tiny")
seen = []
model.layers[0].mixer.in_proj.register_forward_hook(lambda mod, args, res: seen.append(1))
with torch.inference_mode():
    os.environ["MAMBAKIT_BACKEND"] = "triton"
    cache = model.allocate_cache(1)
    os.environ["MAMBAKIT_BACKEND"] = "torch"
    model(torch.tensor([[1, 2, 3]]), cache=cache)
    os.environ["MAMBAKIT_BACKEND"] = "triton"
    calls[0], seen[:] = 0, []
    model(torch.tensor([[4]]), cache=cache)
out["hooked"] = {"hook_calls": len(seen), "fused_calls": calls[0]}

# more sequences than the fused kernel takes (ops.FUSED_GEMV_MAX_ROWS): the unfused steps, the same numbers
model = build("mamba2-tiny")
ids = torch.randint(0, 200, (5, 4), generator=torch.Generator().manual_seed(6))
steps = {}
with torch.inference_mode():
    for backend in ("torch", "triton"):
        os.environ["MAMBAKIT_BACKEND"] = "torch"
        cache = model.allocate_cache(5)
        model(ids[:, :3], cache=cache)
        os.environ["MAMBAKIT_BACKEND"] = backend
        calls[0] = 0
        steps[backend] = model(ids[:, 3:], cache=cache)
out["batch5"] = {"rel_err": ((steps["triton"] - steps["torch"]).abs().max() / steps["torch"].abs().max()).item(),
                 "fused_calls": calls[0]}

# left-padded batched generation through the fused steps == the torch backend (padding must not
# reach any state; attention masks it through cache.pad_lengths)
model = build("hybrid-tiny")
ids = torch.randint(1, 200, (3, 7), generator=torch.Generator().manual_seed(4))
mask = torch.ones(3, 7, dtype=torch.long)
mask[1, :3] = 0
mask[2, :5] = 0
gens = {}
for backend in ("torch", "triton"):
    os.environ["MAMBAKIT_BACKEND"] = backend
    calls[0] = 0
    gens[backend] = mambakit.generate(model, ids, max_new_tokens=5, attention_mask=mask).tolist()
    gens[backend + "_calls"] = calls[0]
out["padded_generate"] = gens
print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def results():
    return json.loads(run_interpreted(_SCRIPT, timeout=900).strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["mamba1", "mamba2", "mamba2_g2", "hybrid", "hybrid_swiglu", "transformer"])
def test_fused_decode_steps_match_torch(results, name):
    r = results[name]
    # every block fused at each of the 3 steps: 2 kernels a layer at least (4 for attention)
    assert r["fused_calls"] >= 3 * 2 * r["layers"], r
    assert r["logit_rel_err"] < 1e-5, r
    assert r["state_err"] < 1e-5, r


def test_left_padded_generation_through_fused_steps(results):
    g = results["padded_generate"]
    assert g["triton"] == g["torch"]
    assert g["torch_calls"] == 0 and g["triton_calls"] > 0, g


def test_a_batch_beyond_max_rows_runs_unfused(results):
    assert results["batch5"]["fused_calls"] == 0 and results["batch5"]["rel_err"] < 1e-5, results["batch5"]


def test_a_hooked_projection_keeps_its_call(results):
    # layer 0 (hooked in_proj) unfused, layer 1 fused: its two kernels only
    assert results["hooked"] == {"hook_calls": 1, "fused_calls": 2}
