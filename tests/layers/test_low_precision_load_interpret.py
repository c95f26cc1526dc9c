"""A checkpoint loaded in bf16 (A_log and D kept fp32 beside bf16 weights) on the Triton backend,
under TRITON_INTERPRET=1 on the CPU: forward and decode steps agree with the torch backend.

Letters: b batch, l length, v vocabulary.

load(dtype=bfloat16) leaves a model with two parameter dtypes; every kernel a layer dispatches to
(SSD or selective scan, conv, gated norm, decode steps, the fused GEMV of the decode step) must take
fp32 A_log / D with bf16 activations. One subprocess prints one JSON line per model family.
"""
import json
import textwrap

import pytest
from conftest import run_interpreted

pytest.importorskip("triton")

_SCRIPT = textwrap.dedent(r'''
import json, os, tempfile
import torch
import mambakit
from mambakit.config import ModelConfig
from conftest import perturb_norms_

torch.set_num_threads(1)

def rel(a, b):
    return ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()

for kind in ("mamba2", "mamba1"):
    torch.manual_seed(0)
    if kind == "mamba2":
        cfg = ModelConfig(d_model=32, n_layer=2, vocab_size=64, ssm_layer="mamba2",
                          mamba2=dict(d_state=16, headdim=16, ngroups=2, chunk_size=16))
    else:
        cfg = ModelConfig(d_model=16, n_layer=1, vocab_size=64, ssm_layer="mamba1", mamba1=dict(d_state=8))
    with tempfile.TemporaryDirectory() as d:
        perturb_norms_(mambakit.LM(cfg), 0.2).save(d)
        model = mambakit.load(d, dtype=torch.bfloat16)
    mixer = model.layers[0].mixer
    ids = torch.randint(0, 64, (2, 12))
    out = {}
    for backend in ("triton", "torch"):
        os.environ["MAMBAKIT_BACKEND"] = backend
        with torch.no_grad():
            full = model(ids).float()
            cache = model.allocate_cache(2)
            model(ids[:, :8], cache=cache)
            steps = torch.cat([model(ids[:, t:t + 1], cache=cache) for t in range(8, 12)], 1).float()
        out[backend] = (full, steps)
    print(json.dumps({"case": kind, "dtypes": [str(mixer.A_log.dtype), str(mixer.D.dtype), str(mixer.in_proj.weight.dtype)],
                      "forward": rel(out["triton"][0], out["torch"][0]),
                      "steps": rel(out["triton"][1], out["torch"][1]),
                      "steps_vs_forward": rel(out["triton"][1], out["torch"][0][:, 8:])}), flush=True)
''')


@pytest.fixture(scope="module")
def results():
    return {r["case"]: r for r in map(json.loads, run_interpreted(_SCRIPT, timeout=300).splitlines())}


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_bf16_load_runs_on_triton_like_torch(results, kind):
    r = results[kind]
    assert r["dtypes"] == ["torch.float32", "torch.float32", "torch.bfloat16"], r
    # bf16: both backends round differently at every layer; a wrong A or D would be off by far more
    assert r["forward"] < 3e-2 and r["steps"] < 3e-2 and r["steps_vs_forward"] < 3e-2, r
