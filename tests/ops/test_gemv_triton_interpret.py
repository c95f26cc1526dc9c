"""The fused decode GEMV (ops/gemv_triton.py) under TRITON_INTERPRET=1 on the CPU, against the torch
ops it fuses: F.linear after rms_norm / gated_rms_norm, then the residual add, the causal conv's
update step or the MLP activation (GeLU, squared ReLU, SwiGLU's silu(gate) * up).

Letters: m rows, k input width, o output width, c conv channels, w conv width.

fp32 is compared tightly (only the order of the sums differs). The interpreter rounds to bf16 by
truncation (numpy has no bf16), so bf16 is allowed a few of its units.
"""
import json
import textwrap

import pytest
from conftest import run_interpreted

pytest.importorskip("triton")

_SCRIPT = textwrap.dedent(r'''
import json
import torch
import torch.nn.functional as F
from mambakit.ops.conv1d import causal_conv1d_update
from mambakit.ops.gemv_triton import fused_gemv
from mambakit.ops.norm import gated_rms_norm, rms_norm

gen = torch.Generator().manual_seed(5)
rnd = lambda *s, dt=torch.float32: torch.randn(*s, generator=gen).to(dt)
out = {}

def record(name, got, want):
    out[name] = {"max_abs": (got.float() - want.float()).abs().max().item(),
                 "scale": want.float().abs().max().item(), "same_dtype": got.dtype == want.dtype}

for dname, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
    for m in (1, 3):
        o, k = 37, 96  # o not a multiple of any tile; k not a power of two
        W, b, x, nw = rnd(o, k, dt=dt), rnd(o, dt=dt), rnd(m, k, dt=dt), rnd(k, dt=dt)
        lin = lambda h, bias=None: F.linear(h.float(), W.float(), None if bias is None else bias.float()).to(dt)
        tag = f"{dname}_m{m}"
        record(f"plain_{tag}", fused_gemv(x, W, b, config=(8, 16, 4)), lin(x, b))
        res = rnd(m, k) * 3  # a block's fp32 residual stream
        record(f"rms_{tag}", fused_gemv(res, W, None, norm=(nw, 1e-5), config=(16, 32, 4)),
               lin(rms_norm(res.to(dt), nw, 1e-5)))
        for gs in (96, 48, 32):  # one group; groups of 3 tiles of 16; one tile a group
            for before in (False, True):
                zx = rnd(m, 2 * k, dt=dt)
                z = zx[:, k:]  # a strided view, as z is of in_proj's output
                r0 = rnd(m, o)
                r = r0.clone()
                got = fused_gemv(x, W, b, norm=(nw, 1e-5), gate=(z, gs, before), residual=r, config=(4, 64, 4))
                want = r0 + lin(gated_rms_norm(x, z, nw, 1e-5, group_size=gs, norm_before_gate=before), b)
                record(f"gated_g{k // gs}_{'before' if before else 'after'}_{tag}", got, want)
                out[f"gated_g{k // gs}_{'before' if before else 'after'}_{tag}"]["in_place"] = got is r
        for act in ("gelu", "relu2"):
            h = lin(x, b)
            want = F.gelu(h) if act == "gelu" else torch.square(F.relu(h))
            record(f"{act}_{tag}", fused_gemv(x, W, b, activation=act, config=(8, 32, 4)), want)
        g = lin(rnd(m, k, dt=dt), b)  # a gate projection's output
        record(f"swiglu_{tag}", fused_gemv(x, W, b, activation="swiglu", glu_gate=g, config=(8, 32, 4)),
               F.silu(g) * lin(x, b))
        c0, c, w = 5, 20, 4  # conv columns 5..24 of 37
        cw, cb = rnd(c, w, dt=dt), rnd(c, dt=dt)
        state = rnd(m, c, w, dt=dt)
        ref_state = state.clone()
        ys, wants = [], []
        for step in range(3):  # three tokens: the shifted state is read back each time
            xs = rnd(m, k, dt=dt)
            ys.append(fused_gemv(xs, W, b, conv=(c0, state, cw, cb), config=(8, 32, 4)))
            h = lin(xs, b)
            h[:, c0:c0 + c] = causal_conv1d_update(h[:, c0:c0 + c].contiguous(), ref_state, cw, cb, "silu")
            wants.append(h)
        record(f"conv_{tag}", torch.stack(ys), torch.stack(wants))
        record(f"conv_state_{tag}", state, ref_state)
        # RB row blocks a program, the weight stream running on from one block to the next: k in
        # several tiles or in one (the input prepared once), the last program's blocks past o
        record(f"rb_plain_{tag}", fused_gemv(x, W, b, config=(8, 32, 4, 3)), lin(x, b))
        record(f"rb_rms_{tag}", fused_gemv(res, W, None, norm=(nw, 1e-5), config=(4, 128, 4, 4)),
               lin(rms_norm(res.to(dt), nw, 1e-5)))
        z = rnd(m, k, dt=dt)
        r0 = rnd(m, o)
        record(f"rb_gated_{tag}", fused_gemv(x, W, b, norm=(nw, 1e-5), gate=(z, 48, False), residual=r0.clone(),
                                             config=(2, 16, 4, 8)),
               r0 + lin(gated_rms_norm(x, z, nw, 1e-5, group_size=48, norm_before_gate=False), b))
        state2, ref2 = state.clone(), state.clone()
        xs = rnd(m, k, dt=dt)
        got = fused_gemv(xs, W, b, conv=(c0, state2, cw, cb), config=(4, 128, 4, 5))
        h = lin(xs, b)
        h[:, c0:c0 + c] = causal_conv1d_update(h[:, c0:c0 + c].contiguous(), ref2, cw, cb, "silu")
        record(f"rb_conv_{tag}", got, h)
        record(f"rb_conv_state_{tag}", state2, ref2)

errors = {}
W = torch.randn(8, 32)
for name, call in [("rows", lambda: fused_gemv(torch.randn(5, 32), W)),
                   ("width", lambda: fused_gemv(torch.randn(1, 31), W)),
                   ("gate_without_norm", lambda: fused_gemv(torch.randn(1, 32), W, gate=(torch.randn(1, 32), 32, False))),
                   ("group", lambda: fused_gemv(torch.randn(1, 32), W, norm=(torch.ones(32), 1e-5),
                                                gate=(torch.randn(1, 32), 24, False))),
                   ("activation", lambda: fused_gemv(torch.randn(1, 32), W, activation="tanh")),
                   ("residual", lambda: fused_gemv(torch.randn(1, 32), W, residual=torch.zeros(1, 9))),
                   ("residual_aliases_x", lambda: (lambda t: fused_gemv(t[:, :32], torch.randn(8, 32),
                                                                        residual=t[:, 32:]))(torch.zeros(1, 40))),
                   ("swiglu_without_gate", lambda: fused_gemv(torch.randn(1, 32), W, activation="swiglu")),
                   ("config", lambda: fused_gemv(torch.randn(1, 32), W, config=(8, 32)))]:
    try:
        call()
        errors[name] = None
    except ValueError as err:
        errors[name] = str(err)
out["errors"] = errors
print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def results():
    return json.loads(run_interpreted(_SCRIPT, timeout=600).strip().splitlines()[-1])


def _cases():
    gated = [f"gated_g{g}_{where}" for g in (1, 2, 3) for where in ("after", "before")]
    kinds = ["plain", "rms", *gated, "gelu", "relu2", "swiglu", "conv", "conv_state",
             "rb_plain", "rb_rms", "rb_gated", "rb_conv", "rb_conv_state"]
    return [f"{kind}_{dt}_m{m}" for kind in kinds for dt in ("fp32", "bf16") for m in (1, 3)]


@pytest.mark.parametrize("case", _cases())
def test_fused_gemv_matches_torch(results, case):
    r = results[case]
    assert r["same_dtype"]
    assert r.get("in_place", True)
    # fp32: the sums' order only. bf16: the interpreter truncates where the GPU rounds, at each of
    # up to three roundings (norm, product, epilogue): a few units of bf16's 2^-8
    tol = 2e-6 if "fp32" in case else 2 ** -5
    assert r["max_abs"] <= tol * max(r["scale"], 1.0), r


@pytest.mark.parametrize("name,words", [("rows", "m <= 4"), ("width", "weight"), ("gate_without_norm", "gate needs norm"),
                                        ("group", "group size (24)"), ("activation", "activation must be"),
                                        ("residual", "residual must be"),
                                        ("residual_aliases_x", "shares memory with x"),
                                        ("swiglu_without_gate", "takes glu_gate"), ("config", "config must be")])
def test_fused_gemv_rejects_bad_input(results, name, words):
    assert results["errors"][name] is not None and words in results["errors"][name], results["errors"][name]
