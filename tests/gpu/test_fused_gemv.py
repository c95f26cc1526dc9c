"""The fused decode GEMV (ops/gemv_triton.py) on CUDA against the unfused ops it replaces, at a
mid-sized shape with every prologue and epilogue, rows 1 to 4, fp32 and bf16; the default config
and a few others (the benchmark's sweep must not pick a wrong one), some with several blocks of
outputs a program (RB).

Letters: m rows, k input width, o output width, c conv channels.
"""
import pytest
import torch
import torch.nn.functional as F

from mambakit.ops.conv1d import causal_conv1d_update
from mambakit.ops.norm import gated_rms_norm, rms_norm

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEV = "cuda"


@pytest.mark.parametrize("config", [None, (1, 2048, 4), (4, 512, 4), (16, 256, 4), (8, 1024, 8), (4, 256, 2),
                                    (8, 2048, 8, 4), (4, 1024, 4, 3), (2, 2048, 4, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 2, 4])
def test_fused_gemv_forms_match_unfused(m, dtype, config):
    from mambakit.ops.gemv_triton import fused_gemv
    if config is not None and m > 1:
        config = (config[0], max(16, config[1] // 4)) + config[2:]  # smaller tiles: more of them per row
    g = torch.Generator(device=DEV).manual_seed(m)
    rnd = lambda *s, dt=dtype: torch.randn(*s, device=DEV, generator=g).to(dt)
    o, k, c0, c = 1000, 1536, 300, 640
    W, b, nw, x, z = rnd(o, k) / k ** 0.5, rnd(o), rnd(k), rnd(m, k), rnd(m, k)
    res = rnd(m, k, dt=torch.float32) * 2
    lin = lambda h, bias=None: F.linear(h, W, bias)
    # bf16: the sums' order may move a rounded product by one unit (2^-8 relative), and a unit
    # of the norm's output moves the product by about that much again
    tol = 1e-5 if dtype == torch.float32 else 2 ** -6
    err = lambda got, want: ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()

    assert err(fused_gemv(res, W, b, norm=(nw, 1e-5), config=config), lin(rms_norm(res.to(dtype), nw, 1e-5), b)) < tol
    r0 = rnd(m, o, dt=torch.float32)
    r = r0.clone()
    fused_gemv(x, W, None, norm=(nw, 1e-5), gate=(z, k // 2, False), residual=r, config=config)
    assert err(r, r0 + lin(gated_rms_norm(x, z, nw, 1e-5, group_size=k // 2))) < tol
    for act, fn in (("gelu", F.gelu), ("relu2", lambda h: torch.square(F.relu(h)))):
        assert err(fused_gemv(x, W, b, activation=act, config=config), fn(lin(x, b))) < tol
    gate_out = lin(z, b)  # a gate projection's output
    assert err(fused_gemv(x, W, b, activation="swiglu", glu_gate=gate_out, config=config),
               F.silu(gate_out) * lin(x, b)) < tol
    cw, cb, state = rnd(c, 4), rnd(c), rnd(m, c, 4)
    ref_state = state.clone()
    got = fused_gemv(x, W, b, conv=(c0, state, cw, cb), config=config)
    want = lin(x, b)
    want[:, c0:c0 + c] = causal_conv1d_update(want[:, c0:c0 + c].contiguous(), ref_state, cw, cb, "silu")
    assert err(got, want) < tol
    assert err(state, ref_state) < tol


# (o, k) of a 1.3B-class decode step's projections and each one's form: the default tiles differ by
# rows and form (ops/gemv_triton.default_config), so each is checked where the models use it.
MODEL_FORMS = [("in_proj", 8512, 2048), ("out_proj", 2048, 4096), ("up", 8192, 2048), ("down", 2048, 8192),
               ("q", 2048, 2048), ("kv", 512, 2048)]


@pytest.mark.parametrize("form,o,k", MODEL_FORMS)
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_default_tiles_at_model_widths(m, form, o, k):
    from mambakit.ops.gemv_triton import fused_gemv
    g = torch.Generator(device=DEV).manual_seed(o + m)
    rnd = lambda *s, dt=torch.bfloat16: torch.randn(*s, device=DEV, generator=g).to(dt)
    W, nw, x, z = rnd(o, k) / k ** 0.5, rnd(k), rnd(m, k), rnd(m, k)
    res = rnd(m, k, dt=torch.float32) * 2
    lin = lambda h: F.linear(h, W)
    err = lambda got, want: ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    tol = 2 ** -6  # bf16, as above
    if form == "in_proj":
        c0, c = 4096, 4352
        state = rnd(m, c, 4)
        cw, cb, ref_state = rnd(c, 4), rnd(c), state.clone()
        got = fused_gemv(res, W, norm=(nw, 1e-5), conv=(c0, state, cw, cb))
        want = lin(rms_norm(res.to(torch.bfloat16), nw, 1e-5))
        want[:, c0:c0 + c] = causal_conv1d_update(want[:, c0:c0 + c].contiguous(), ref_state, cw, cb, "silu")
        assert err(state, ref_state) < tol
    elif form == "out_proj":
        r0 = rnd(m, o, dt=torch.float32)
        got = fused_gemv(x, W, norm=(nw, 1e-5), gate=(z, k, False), residual=r0.clone())
        want = r0 + lin(gated_rms_norm(x, z, nw, 1e-5, group_size=k))
    elif form in ("up", "q", "kv"):
        act = "gelu" if form == "up" else None
        got = fused_gemv(res, W, norm=(nw, 1e-5), activation=act)
        want = lin(rms_norm(res.to(torch.bfloat16), nw, 1e-5))
        want = F.gelu(want) if act else want
    else:
        r0 = rnd(m, o, dt=torch.float32)
        got, want = fused_gemv(x, W, residual=r0.clone()), r0 + lin(x)
    assert err(got, want) < tol
