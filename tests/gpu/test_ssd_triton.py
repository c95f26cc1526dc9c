"""Mamba-2 Triton SSD and fused decode step on CUDA: Triton == chunked == reference.

Letters: b batch, l length, h heads, p head dim, n state dim, g groups, c conv channels,
k conv width.

Outputs, final states and every gradient (x, dt, A, B, C, D, z, dt_bias, initial_state), in
fp32 (against the fp64 oracle: the reference loop for short lengths, the chunked tier in fp64
beyond) and in bf16/fp16, where the Triton error against the fp64 oracle may be at most twice
the error of the chunked tier run on the same low-precision inputs (or, where the chunked tier
rounds nothing because it returns fp32, twice the rounding of the answer to bf16). Odd lengths,
g in {1, between, h}, packed sequences, initial states, chunk sizes 64 to 256. The decode step
is run token by token and compared with conv1d + the chunked SSD over the whole sequence. The
conv1d and gated-RMSNorm kernels are compared with the torch ops in fp64, outputs and gradients.
Run on the device machine: pytest -m cuda tests/gpu
"""
import pytest
import torch
from ssd_inputs import make_ssd_inputs

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

NAMES = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state"]


def _rel(a, b):
    return ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()


def _make(seed, b, l, h, p, g, n, dtype, **kw):
    return make_ssd_inputs(seed, b, l, h, p, g, n, dtype, device="cuda", dt_shift=1.5, a_scale=8.0, a_min=0.5,
                           docs=4, **kw)


def _run(fn, ins, seq_idx, gy, gs, **kw):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in ins.items()}
    y, st = fn(**leaves, seq_idx=seq_idx, **kw)
    grads = torch.autograd.grad((y.double() * gy).sum() + (st.double() * gs).sum(), list(leaves.values()))
    return dict(y=y, final_state=st, **{"d" + k: gr for k, gr in zip(leaves, grads)})


def _compare(seed, chunk, make_kw, fn_kw, oracle="auto"):
    from mambakit.ops.ssd.chunked import ssd_chunked
    from mambakit.ops.ssd.reference import ssd_ref
    from mambakit.ops.ssd.triton import ssd_triton
    ins, seq_idx = _make(seed, **make_kw)
    b, l, h, p = ins["x"].shape
    gen = torch.Generator(device="cuda").manual_seed(seed + 100)
    gy = torch.randn(b, l, h, p, device="cuda", dtype=torch.float64, generator=gen)
    gs = torch.randn(b, h, p, ins["B"].shape[-1], device="cuda", dtype=torch.float64, generator=gen)
    ins64 = {k: v.double() for k, v in ins.items()}
    if oracle == "auto":
        oracle = "reference" if l <= 300 else "chunked"
    if oracle == "reference":
        ref = _run(ssd_ref, ins64, seq_idx, gy, gs, **fn_kw)
    else:
        ref = _run(ssd_chunked, ins64, seq_idx, gy, gs, chunk_size=64, **fn_kw)
    tri = _run(ssd_triton, ins, seq_idx, gy, gs, chunk_size=chunk, **fn_kw)
    assert tri["y"].dtype == ins["x"].dtype and tri["final_state"].dtype == torch.float32
    for k, v in tri.items():
        assert torch.isfinite(v).all(), k
    err = {k: _rel(tri[k], ref[k]) for k in ref}
    chk = None
    if ins["x"].dtype != torch.float32:
        c = _run(ssd_chunked, ins, seq_idx, gy, gs, chunk_size=chunk, **fn_kw)
        chk = {k: max(_rel(c[k], ref[k]), _rel(ref[k].to(ins["x"].dtype), ref[k])) for k in ref}
    # forward without autograd gives the same numbers
    with torch.no_grad():
        y2, s2 = ssd_triton(**ins, seq_idx=seq_idx, chunk_size=chunk, **fn_kw)
    assert _rel(y2, tri["y"]) < 1e-6 and _rel(s2, tri["final_state"]) < 1e-6
    return err, chk


FP32_CASES = {
    "plain_l63_g1": (64, dict(b=2, l=63, h=4, p=64, g=1, n=128, D="h"), dict()),
    "softplus_z_l257_g2": (128, dict(b=1, l=257, h=4, p=32, g=2, n=64, D="hp", z=True), dict(dt_softplus=True)),
    "packed_init_l300_gh": (64, dict(b=2, l=300, h=4, p=16, g=4, n=32, D="h", init=True, seq=True),
                            dict(dt_softplus=True, dt_limit=(0.01, 0.3))),
    "len1_init": (256, dict(b=3, l=1, h=2, p=64, g=1, n=16, init=True), dict(dt_softplus=True)),
    "long_l2000_g2": (256, dict(b=1, l=2000, h=8, p=64, g=2, n=128, D="h", init=True), dict(dt_softplus=True)),
    "odd_dims_l100": (64, dict(b=1, l=100, h=6, p=24, g=3, n=40, D="h"), dict(dt_softplus=True)),
    # no dt_bias; dt = softplus(N(-1.5, 0.5)) ~ 0.2, clamped at both ends (about 30% each)
    "no_bias_limit_l300": (64, dict(b=2, l=300, h=4, p=32, g=2, n=32, D="h", z=True, seq=True, dt_bias=False),
                           dict(dt_softplus=True, dt_limit=(0.15, 0.25))),
}


@pytest.mark.parametrize("name", list(FP32_CASES))
def test_fp32_matches_oracle(name):
    chunk, make_kw, fn_kw = FP32_CASES[name]
    err, _ = _compare(1, chunk, dict(make_kw, dtype=torch.float32), fn_kw)
    bad = {k: v for k, v in err.items() if not v < 2e-4}
    assert not bad, (name, bad)


LOWP_CASES = {
    "bf16_l1000_g1": (256, dict(b=2, l=1000, h=8, p=64, g=1, n=128, D="h"), dict(dt_softplus=True)),
    "bf16_l4096_g8_h32": (256, dict(b=1, l=4096, h=32, p=64, g=8, n=128, D="h"), dict(dt_softplus=True)),
    "bf16_packed_init_z": (128, dict(b=2, l=777, h=4, p=64, g=2, n=64, D="hp", z=True, init=True, seq=True),
                           dict(dt_softplus=True)),
    "bf16_l7_gh": (256, dict(b=2, l=7, h=4, p=32, g=4, n=32, D="h"), dict(dt_softplus=True)),
    "fp16_l513_g2": (256, dict(b=1, l=513, h=4, p=64, g=2, n=64, D="h", init=True), dict(dt_softplus=True)),
    "bf16_limit_no_bias": (128, dict(b=2, l=500, h=4, p=64, g=2, n=64, D="hp", z=True, seq=True, dt_bias=False),
                           dict(dt_softplus=True, dt_limit=(0.15, 0.25))),
}


@pytest.mark.parametrize("name", list(LOWP_CASES))
def test_low_precision_error_within_twice_chunked(name):
    chunk, make_kw, fn_kw = LOWP_CASES[name]
    dtype = torch.float16 if name.startswith("fp16") else torch.bfloat16
    err, chk = _compare(2, chunk, dict(make_kw, dtype=dtype), fn_kw, oracle="chunked")
    bad = {k: (err[k], chk[k]) for k in err if not err[k] <= 2 * chk[k]}
    assert not bad, (name, bad)


def test_cu_seqlens_equals_seq_idx():
    from mambakit.ops.ssd.triton import ssd_triton
    ins, _ = _make(3, 1, 300, 4, 32, 2, 32, torch.float32, D="h")
    cu = torch.tensor([0, 17, 17, 200, 300], device="cuda")
    seq = torch.repeat_interleave(torch.arange(4, device="cuda"), cu[1:] - cu[:-1])[None]
    y1, s1 = ssd_triton(**ins, cu_seqlens=cu, dt_softplus=True, chunk_size=64)
    y2, s2 = ssd_triton(**ins, seq_idx=seq, dt_softplus=True, chunk_size=64)
    assert _rel(y1, y2) == 0 and _rel(s1, s2) == 0


@pytest.mark.parametrize("dtype,g", [(torch.float32, 2), (torch.bfloat16, 1)])
def test_decode_step_equals_chunked_sequence(dtype, g):
    import torch.nn.functional as F
    from mambakit.ops.conv1d import causal_conv1d
    from mambakit.ops.decode_triton import mamba2_decode_step_triton
    from mambakit.ops.ssd.chunked import ssd_chunked
    gen = torch.Generator(device="cuda").manual_seed(5)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=gen)
    b, T, h, p, n, k = 3, 9, 8, 64, 128, 4
    e = h * p
    c = e + 2 * g * n
    xbc, dt, z = rnd(b, T, c).to(dtype), rnd(b, T, h).to(dtype), rnd(b, T, h, p).to(dtype)
    w, cb = 0.5 * rnd(c, k), rnd(c)
    A, D, dtb = -(torch.rand(h, device="cuda", generator=gen) * 4 + 0.5), rnd(h), 0.3 * rnd(h)
    u = F.silu(causal_conv1d(xbc.double(), w.double(), cb.double()))
    y_ref, st_ref = ssd_chunked(u[..., :e].reshape(b, T, h, p), dt.double(), A.double(),
                                u[..., e:e + g * n].reshape(b, T, g, n), u[..., e + g * n:].reshape(b, T, g, n),
                                D=D.double(), z=z.double(), dt_bias=dtb.double(), dt_softplus=True)
    conv_state = torch.zeros(b, c, k, device="cuda", dtype=dtype)
    ssm_state = torch.zeros(b, h, p, n, device="cuda")
    ys = [mamba2_decode_step_triton(xbc[:, t], dt[:, t], conv_state, ssm_state, w, cb, A, D, dtb, True,
                                    (0.0, float("inf")), g, p, z=z[:, t]) for t in range(T)]
    y = torch.stack(ys, 1)
    assert y.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert _rel(y, y_ref) < tol
    assert _rel(ssm_state, st_ref) < tol
    assert _rel(conv_state, xbc[:, -k:].transpose(1, 2)) == 0


@pytest.mark.parametrize("dtype,seq,act", [(torch.float32, True, "silu"), (torch.bfloat16, False, "silu"),
                                           (torch.float32, False, None)])
def test_conv1d_triton_matches_torch(dtype, seq, act):
    from mambakit.ops.conv1d import causal_conv1d
    from mambakit.ops.conv1d_triton import causal_conv1d_triton
    gen = torch.Generator(device="cuda").manual_seed(11)
    b, l, c, k = 2, 333, 200, 4
    x = torch.randn(b, l, c, device="cuda", generator=gen).to(dtype)
    w, bias = torch.randn(c, k, device="cuda", generator=gen), torch.randn(c, device="cuda", generator=gen)
    s = torch.sort(torch.randint(0, 5, (b, l), device="cuda", generator=gen), 1).values if seq else None
    gy = torch.randn(b, l, c, device="cuda", generator=gen, dtype=torch.float64)
    outs = []
    for fn, cast in ((causal_conv1d, torch.float64), (causal_conv1d_triton, None)):
        leaves = [t.detach().clone().to(cast or t.dtype).requires_grad_() for t in (x, w, bias)]
        y = fn(*leaves, activation=act, seq_idx=s)
        outs.append([y] + list(torch.autograd.grad((y.double() * gy).sum(), leaves)))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, r in zip(outs[1], outs[0]):
        assert _rel(a, r) < tol


@pytest.mark.parametrize("dtype,g,before", [(torch.float32, 1, False), (torch.bfloat16, 8, False), (torch.float32, 4, True)])
def test_gated_rms_norm_triton_matches_torch(dtype, g, before):
    from mambakit.ops.norm import gated_rms_norm
    from mambakit.ops.norm_triton import gated_rms_norm_triton
    gen = torch.Generator(device="cuda").manual_seed(12)
    x = torch.randn(3, 77, 1024, device="cuda", generator=gen).to(dtype)
    z = torch.randn(3, 77, 1024, device="cuda", generator=gen).to(dtype)
    w = torch.randn(1024, device="cuda", generator=gen)
    gy = torch.randn(3, 77, 1024, device="cuda", generator=gen, dtype=torch.float64)
    outs = []
    for fn, cast in ((gated_rms_norm, torch.float64), (gated_rms_norm_triton, None)):
        leaves = [t.detach().clone().to(cast or t.dtype).requires_grad_() for t in (x, z, w)]
        y = fn(*leaves, group_size=1024 // g, norm_before_gate=before)
        outs.append([y] + list(torch.autograd.grad((y.double() * gy).sum(), leaves)))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, r in zip(outs[1], outs[0]):
        assert _rel(a, r) < tol


def test_state_pass_designs_agree():
    """The split state pass, the first (fused) design and the scan over blocks of p agree."""
    from mambakit.ops.ssd import triton as T
    before = dict(T.CONFIG)
    ins, seq_idx = _make(4, 2, 700, 4, 64, 2, 64, torch.bfloat16, D="h", init=True, seq=True)
    gy = torch.randn(2, 700, 4, 64, device="cuda", dtype=torch.float64)
    gs = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float64)
    variants = {"split": {"state_impl": "split"}, "fused": {"state_impl": "fused"},
                "p_blocks": {"state_impl": "split", "scan_impl": "recur", "scan_bp": 32}}  # scan_bp: recur's
    outs = {}
    try:
        for name, var in variants.items():
            T.CONFIG.update(var)
            outs[name] = _run(T.ssd_triton, ins, seq_idx, gy, gs, chunk_size=256, dt_softplus=True)
            T.CONFIG.update(before)
    finally:
        T.CONFIG.update(before)
    for other in ("fused", "p_blocks"):
        for k in outs["split"]:
            assert _rel(outs["split"][k], outs[other][k]) < 2e-2, (other, k)


# CONFIG variants timed by benchmarks/gpu_profile_ssd.py (the row-block kernels of triton_rows.py,
# per-kernel settings); each must pass the same checks as the defaults.
VARIANTS = {
    "rows": dict(scan_impl="rows", dx_impl="rows"),
    "recur": dict(scan_impl="recur", dx_impl="recur"),
    "recur_bp32": dict(scan_impl="recur", dx_impl="recur", scan_bp=32),
    "rows_cb_bm32": dict(scan_impl="rows", dx_impl="rows", rows_cb=True, rows_bm=32, rows_stages=3, dx_rows_bm=32,
                         dbdc_stages=1),
    "rows_chunks_first_bp32_w8": dict(scan_impl="rows", dx_impl="rows", rows_heads_first=False, rows_bp=32,
                                      rows_warps=8, dx_rows_warps=8, rows_cb=True),
}
VARIANT_CASES = {
    "fp32_packed_init_z_gh2": (64, dict(b=2, l=300, h=4, p=64, g=2, n=32, D="hp", z=True, init=True, seq=True,
                                        dtype=torch.float32), dict(dt_softplus=True, dt_limit=(0.01, 0.3))),
    "bf16_packed_init_z_l777": (128, dict(b=2, l=777, h=4, p=64, g=2, n=64, D="hp", z=True, init=True, seq=True,
                                          dtype=torch.bfloat16), dict(dt_softplus=True)),
    "bf16_l1000_g1": (256, dict(b=2, l=1000, h=8, p=64, g=1, n=128, D="h", dtype=torch.bfloat16),
                      dict(dt_softplus=True)),
}


@pytest.mark.parametrize("case", list(VARIANT_CASES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_variants_match_oracle(variant, case):
    from mambakit.ops.ssd import triton as T
    chunk, make_kw, fn_kw = VARIANT_CASES[case]
    before = dict(T.CONFIG)
    try:
        T.CONFIG.update(VARIANTS[variant])
        err, chk = _compare(3, chunk, make_kw, fn_kw, oracle="reference" if make_kw["l"] <= 300 else "chunked")
    finally:
        T.CONFIG.clear()
        T.CONFIG.update(before)
    if chk is None:
        bad = {k: v for k, v in err.items() if not v < 2e-4}
    else:
        bad = {k: (err[k], chk[k]) for k in err if not err[k] <= 2 * chk[k]}
    assert not bad, (variant, case, bad)
