"""The residual RMSNorm kernel (cast to the weight's dtype + norm in one kernel, ops/norm_triton.py)
under TRITON_INTERPRET=1 on the CPU, against the torch form it replaces: rms_norm(x.to(w.dtype)).

Letters: b batch, l length, d width.
"""
import json
import textwrap

import pytest
from conftest import run_interpreted

pytest.importorskip("triton")

_SCRIPT = textwrap.dedent(r'''
import json
import torch
from mambakit.ops.norm import rms_norm
from mambakit.ops.norm_triton import rms_norm_cast_triton

gen = torch.Generator().manual_seed(3)
out = {}
for name, xdt, wdt, shape in [("fp32_to_bf16", torch.float32, torch.bfloat16, (2, 3, 40)),
                              ("fp32_to_fp32", torch.float32, torch.float32, (1, 1, 64)),
                              ("bf16_to_bf16", torch.bfloat16, torch.bfloat16, (5, 24))]:
    x = (torch.randn(*shape, generator=gen) * 3).to(xdt)
    w = torch.randn(shape[-1], generator=gen).to(wdt)
    want = rms_norm(x.to(wdt), w, 1e-5)
    got = rms_norm_cast_triton(x, w, 1e-5)
    out[name] = {"dtype_ok": got.dtype == wdt and got.shape == x.shape,
                 "max_abs": (got.float() - want.float()).abs().max().item(),
                 "scale": want.float().abs().max().item()}
try:
    rms_norm_cast_triton(torch.randn(2, 8), torch.ones(7))
    out["bad_weight"] = None
except ValueError as err:
    out["bad_weight"] = str(err)
print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def results():
    return json.loads(run_interpreted(_SCRIPT, timeout=300).strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["fp32_to_bf16", "fp32_to_fp32", "bf16_to_bf16"])
def test_cast_norm_matches_torch(results, case):
    r = results[case]
    assert r["dtype_ok"]
    # the same roundings in the same places; 1/sqrt against torch's rsqrt may move the rounded
    # normalized value by one bf16 unit, which the weight then scales: about 2 units of the output
    tol = 1e-6 if case == "fp32_to_fp32" else 2 ** -6
    assert r["max_abs"] <= tol * r["scale"]


def test_cast_norm_rejects_wrong_weight(results):
    assert results["bad_weight"] is not None and "weight must be (8,)" in results["bad_weight"]
