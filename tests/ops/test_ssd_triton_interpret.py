"""Mamba-2 Triton kernels (SSD, decode step) under TRITON_INTERPRET=1 on the CPU, small shapes.

Letters: b batch, l length, h heads, p head dim, n state dim, g groups, c conv channels,
k conv width.

The interpreter must be on before the kernels are defined, so every kernel run happens in one
subprocess that prints a JSON line per case; the tests check those numbers. Oracles: ssd_ref in
float64 (outputs, final state, every gradient) and, for bf16, the chunked tier in bf16 (the
Triton error may be at most twice the chunked error, or twice the bf16 rounding of the answer
where the chunked tier rounds nothing). The decode step is checked against conv1d + the chunked
SSD over a whole sequence, one token at a time. The conv1d and gated-RMSNorm kernels are checked
against the torch ops in float64.
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
from mambakit.ops.ssd.reference import ssd_ref
from mambakit.ops.ssd.chunked import ssd_chunked
from mambakit.ops.ssd import triton as T
from mambakit.ops.conv1d import causal_conv1d
from mambakit.ops.decode_triton import mamba2_decode_step_triton

T.CONFIG.update(bm_scan=16, bm_bwd=16, kb=16)  # several sub-blocks per chunk even at these lengths
NAMES = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state"]

def rel(a, b):
    return ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()

from ssd_inputs import make_ssd_inputs as make

def run(fn, ins, seq, gy, gs, **kw):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in ins.items()}
    y, st = fn(**leaves, seq_idx=seq, **kw)
    grads = torch.autograd.grad((y.double() * gy).sum() + (st.double() * gs).sum(), list(leaves.values()))
    return dict(y=y, final_state=st, **{"d" + k: gr for k, gr in zip(leaves, grads)})

def ssd_case(name, seed, chunk, kw_make, kw_fn):
    ins, seq = make(seed, **kw_make)
    b, l, h, p = ins["x"].shape
    gen = torch.Generator().manual_seed(seed + 1)
    gy = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    gs = torch.randn(b, h, p, ins["B"].shape[-1], generator=gen, dtype=torch.float64)
    ins64 = {k: v.double() for k, v in ins.items()}
    ref = run(ssd_ref, ins64, seq, gy, gs, **kw_fn)
    tri = run(T.ssd_triton, ins, seq, gy, gs, chunk_size=chunk, **kw_fn)
    out = {"case": name, "err": {k: rel(tri[k], ref[k]) for k in ref},
           "dtypes": {k: str(tri[k].dtype) for k in ("y", "final_state")}}
    if "dt_limit" in kw_fn:  # how many dt the limits clamp, below and above: both must happen
        dtv = F.softplus(ins["dt"].double() + (ins["dt_bias"].double() if "dt_bias" in ins else 0.0))
        lo, hi = kw_fn["dt_limit"]
        out["clamped"] = [(dtv < lo).double().mean().item(), (dtv > hi).double().mean().item()]
    if ins["x"].dtype == torch.bfloat16:
        chk = run(ssd_chunked, ins, seq, gy, gs, chunk_size=chunk, **kw_fn)
        out["chunked"] = {k: rel(chk[k], ref[k]) for k in ref}
        out["floor"] = {k: rel(ref[k].to(torch.bfloat16), ref[k]) for k in ref}
    print(json.dumps(out), flush=True)

ssd_case("fp32_plain", 1, 16, dict(b=1, l=37, h=2, p=16, g=1, n=16, dtype=torch.float32, D="h", z=True),
         dict(dt_softplus=True))
ssd_case("fp32_packed", 2, 32, dict(b=2, l=45, h=4, p=16, g=2, n=16, dtype=torch.float32, D="hp", init=True, seq=True),
         dict(dt_softplus=True, dt_limit=(0.05, 0.6)))
T.CONFIG["state_impl"] = "fused"  # the first design of the state pass, kept for comparison
ssd_case("fp32_packed_fused", 2, 32, dict(b=2, l=45, h=4, p=16, g=2, n=16, dtype=torch.float32, D="hp", init=True,
                                          seq=True), dict(dt_softplus=True, dt_limit=(0.05, 0.6)))
T.CONFIG["state_impl"] = "split"
# The first design of the scan and dx kernels (recur), with two blocks of p = 16 in the scan, and
# everything on: documents, z, D per channel, an initial state, dt clamped on both sides.
T.CONFIG.update(scan_impl="recur", dx_impl="recur", scan_bp=8)
LIMIT = (0.25, 0.4)  # around softplus(dt + dt_bias) ~ 0.3: a good share clamped at each end
ssd_case("fp32_packed_pblocks", 2, 32, dict(b=2, l=45, h=4, p=16, g=2, n=16, dtype=torch.float32, D="hp", init=True,
                                            seq=True, z=True), dict(dt_softplus=True, dt_limit=LIMIT))
T.CONFIG.update(scan_impl="rows", dx_impl="rows", scan_bp=64)
ssd_case("fp32_no_dt_bias", 5, 32, dict(b=2, l=45, h=4, p=16, g=2, n=16, dtype=torch.float32, D="h", init=True,
                                        seq=True, z=True, dt_bias=False), dict(dt_softplus=True, dt_limit=LIMIT))
# the row-block kernels (triton_rows.py): 16-row blocks, so chunks have 2 to 4 of them and the
# last chunk has blocks past the end; g < h reads C B^T from the cb kernel (rows_cb), g = 1 recomputes it
ROWS = dict(scan_impl="rows", dx_impl="rows", rows_bm=16, dx_rows_bm=16, rows_cb=True)
T.CONFIG.update(ROWS)
ssd_case("fp32_packed_rows", 2, 32, dict(b=2, l=45, h=4, p=16, g=2, n=16, dtype=torch.float32, D="hp", init=True,
                                         seq=True, z=True), dict(dt_softplus=True, dt_limit=(0.05, 0.6)))
ssd_case("fp32_plain_rows", 1, 64, dict(b=1, l=37, h=2, p=16, g=1, n=16, dtype=torch.float32, D="h", z=True),
         dict(dt_softplus=True))
T.CONFIG["rows_bp"] = 8  # two blocks of p in the scan
ssd_case("bf16_rows", 4, 32, dict(b=1, l=96, h=4, p=16, g=2, n=16, dtype=torch.bfloat16, D="h", init=True, z=True),
         dict(dt_softplus=True))
ssd_case("bf16_rows_limit", 6, 32, dict(b=1, l=96, h=4, p=16, g=2, n=16, dtype=torch.bfloat16, D="hp", init=True,
                                        z=True, seq=True), dict(dt_softplus=True, dt_limit=LIMIT))
T.CONFIG.update(scan_impl="recur", dx_impl="recur", rows_bp=64)
ssd_case("fp32_len1", 3, 256, dict(b=2, l=1, h=2, p=16, g=2, n=16, dtype=torch.float32, init=True),
         dict(dt_softplus=False))
ssd_case("bf16", 4, 32, dict(b=1, l=96, h=4, p=16, g=2, n=16, dtype=torch.bfloat16, D="h", init=True),
         dict(dt_softplus=True))

# Decode: T tokens one at a time through the fused step == causal conv1d + chunked SSD.
gen = torch.Generator().manual_seed(7)
rnd = lambda *s: torch.randn(*s, generator=gen)

def decode_case(name, b, T_, h, p, n, g, k, D_hp=False, with_z=True, dt_bias=True, conv_bias=True,
                limit=(0.0, float("inf"))):
    e = h * p
    c = e + 2 * g * n
    xbc = rnd(b, T_, c)
    dt = rnd(b, T_, h)
    w, cb = 0.5 * rnd(c, k), rnd(c)
    A, D, dtb = -(torch.rand(h, generator=gen) + 0.5), rnd(h, p) if D_hp else rnd(h), 0.3 * rnd(h)
    z = rnd(b, T_, h, p)
    cb, dtb, z = (cb if conv_bias else None), (dtb if dt_bias else None), (z if with_z else None)
    u = causal_conv1d(xbc, w, cb, activation="silu")
    y_ref, st_ref = ssd_chunked(u[..., :e].reshape(b, T_, h, p), dt, A, u[..., e:e + g * n].reshape(b, T_, g, n),
                                u[..., e + g * n:].reshape(b, T_, g, n), D=D, z=z, dt_bias=dtb, dt_softplus=True,
                                dt_limit=limit)
    conv_state = torch.zeros(b, c, k)
    ssm_state = torch.zeros(b, h, p, n)
    ys = []
    for t in range(T_):
        ys.append(mamba2_decode_step_triton(xbc[:, t], dt[:, t], conv_state, ssm_state, w, cb, A, D, dtb, True,
                                            limit, g, p, z=None if z is None else z[:, t]))
    conv_ref = torch.cat([torch.zeros(b, c, max(0, k - T_)), xbc[:, -k:].transpose(1, 2)], -1)
    print(json.dumps({"case": name, "err": {"y": rel(torch.stack(ys, 1), y_ref), "ssm_state": rel(ssm_state, st_ref),
                                            "conv_state": rel(conv_state, conv_ref)}}), flush=True)

decode_case("decode", 2, 5, 4, 16, 16, 2, 4)
decode_case("decode_p48", 1, 6, 4, 48, 8, 2, 3)  # two blocks of the head dim, the second masked
# D per channel, no z, no dt_bias, no conv bias, g = h, dt clamped on both sides (softplus(N(0,1)) ~ 0.3-1.3)
decode_case("decode_bare", 2, 5, 4, 16, 8, 4, 2, D_hp=True, with_z=False, dt_bias=False, conv_bias=False,
            limit=(0.5, 0.9))

# conv1d + SiLU and gated RMSNorm kernels against the torch ops (fp64), outputs and gradients
from mambakit.ops.conv1d_triton import causal_conv1d_triton
from mambakit.ops.norm import gated_rms_norm
from mambakit.ops.norm_triton import gated_rms_norm_triton

def grads_of(fn, args, gy, **kw):
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    y = fn(*leaves, **kw)
    return [y] + list(torch.autograd.grad((y.double() * gy).sum(), leaves))

errs = {}
sc = torch.sort(torch.randint(0, 3, (2, 50), generator=gen), 1).values
for kw in (4, 3, 2):  # conv widths: mamba's 4, and the narrower ones a config may ask for
    xc, wc, bc = rnd(2, 50, 24), rnd(24, kw), rnd(24)
    gyc = rnd(2, 50, 24).double()
    ref = grads_of(causal_conv1d, [xc.double(), wc.double(), bc.double()], gyc, activation="silu", seq_idx=sc)
    tri = grads_of(causal_conv1d_triton, [xc, wc, bc], gyc, activation="silu", seq_idx=sc)
    errs.update({f"conv{kw}_{k}": rel(a, r) for k, a, r in zip(["y", "dx", "dw", "db"], tri, ref)})
xn, zn, wn = rnd(3, 4, 32), rnd(3, 4, 32), rnd(32)
gyn = rnd(3, 4, 32).double()
refn = grads_of(gated_rms_norm, [xn.double(), zn.double(), wn.double()], gyn, group_size=16)
trin = grads_of(gated_rms_norm_triton, [xn, zn, wn], gyn, group_size=16)
errs.update({"norm_" + k: rel(a, r) for k, a, r in zip(["y", "dx", "dz", "dw"], trin, refn)})
refn = grads_of(lambda x, w: gated_rms_norm(x, None, w, group_size=8), [xn.double(), wn.double()], gyn)
trin = grads_of(lambda x, w: gated_rms_norm_triton(x, None, w, group_size=8), [xn, wn], gyn)
errs.update({"norm_noz_" + k: rel(a, r) for k, a, r in zip(["y", "dx", "dw"], trin, refn)})
print(json.dumps({"case": "conv_norm", "err": errs}), flush=True)

errors = {}
ins, _ = make(0, 1, 8, 2, 16, 1, 16, torch.float32)
bad = {"B_groups": dict(B=ins["B"].expand(1, 8, 3, 16).contiguous(), C=ins["C"].expand(1, 8, 3, 16).contiguous()),
       "seq_decreasing": dict(seq_idx=torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0]])),
       "cu_seqlens_end": dict(cu_seqlens=torch.tensor([0, 3, 7]))}
for key, change in bad.items():
    kw = dict(ins); kw.update(change)
    try:
        T.ssd_triton(**kw)
        errors[key] = None
    except ValueError as exc:
        errors[key] = str(exc)
try:
    mamba2_decode_step_triton(torch.zeros(1, 10), torch.zeros(1, 2), torch.zeros(1, 10, 4), torch.zeros(1, 2, 4, 4),
                              torch.zeros(10, 4), None, torch.zeros(2), None, None, False, (0.0, 1.0), 1, 4)
    errors["decode_width"] = None
except ValueError as exc:
    errors["decode_width"] = str(exc)
T.CONFIG["scan_impl"] = "row"
try:
    T.ssd_triton(**ins)
    errors["scan_impl"] = None
except ValueError as exc:
    errors["scan_impl"] = str(exc)
T.CONFIG["scan_impl"] = "recur"
print(json.dumps({"case": "bad_input", "errors": errors}), flush=True)
''')


@pytest.fixture(scope="module")
def results():
    return {r["case"]: r for r in map(json.loads, run_interpreted(_SCRIPT, timeout=600).strip().splitlines())}


@pytest.mark.parametrize("case", ["fp32_plain", "fp32_packed", "fp32_packed_fused", "fp32_packed_pblocks",
                                  "fp32_no_dt_bias", "fp32_len1", "fp32_packed_rows", "fp32_plain_rows"])
def test_fp32_matches_reference(results, case):
    r = results[case]
    assert r["dtypes"]["final_state"] == "torch.float32"
    for name, err in r["err"].items():
        assert err < 1e-4, (case, name, err)


@pytest.mark.parametrize("case", ["bf16", "bf16_rows", "bf16_rows_limit"])
def test_bf16_error_within_twice_the_chunked_tier(results, case):
    r = results[case]
    assert r["dtypes"] == {"y": "torch.bfloat16", "final_state": "torch.float32"}
    for name, err in r["err"].items():
        bound = 2 * max(r["chunked"][name], r["floor"][name])
        assert err <= bound, (name, err, r["chunked"][name], r["floor"][name])


@pytest.mark.parametrize("case", ["decode", "decode_p48", "decode_bare"])
def test_decode_step_matches_chunked_sequence(results, case):
    for name, err in results[case]["err"].items():
        assert err < 1e-5, (case, name, err)


@pytest.mark.parametrize("case", ["fp32_packed_pblocks", "fp32_no_dt_bias", "bf16_rows_limit"])
def test_dt_limit_cases_clamp_at_both_ends(results, case):
    below, above = results[case]["clamped"]
    assert below > 0.05 and above > 0.05, (case, below, above)


def test_conv1d_and_gated_norm_match_torch(results):
    for name, err in results["conv_norm"]["err"].items():
        assert err < 1e-5, (name, err)


def test_bad_input_raises_value_error(results):
    errors = results["bad_input"]["errors"]
    assert "multiple of the number of groups" in errors["B_groups"]
    assert "non-decreasing" in errors["seq_decreasing"]
    assert "cu_seqlens" in errors["cu_seqlens_end"]
    assert "xBC width" in errors["decode_width"]
    assert "'recur' or 'rows'" in errors["scan_impl"]
