"""Mamba-1 Triton selective scan and decode step on CUDA: Triton == chunked == reference.

Letters: b batch, l length, e inner width, n state dim, k conv width, r dt rank.

Outputs, final state and every gradient, fp32 / bf16 / fp16, lengths 1 to 8192 (odd ones too),
n in {1, 16, 64, 256}, with initial states, final-state gradients and packed sequences.
Oracles run in float64 on the GPU: the chunked tier for every case, the reference loop as
well where the length is short. Run on the device machine: pytest -m cuda tests/gpu
"""
import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TOL = {torch.float32: 2e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _rel(a, b):
    return ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()


def _make(b, l, e, n, dtype, full, seq, seed, strided=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)
    ins = dict(A=-(torch.rand(e, n, device="cuda", generator=g) * 4 + 0.05))
    if strided:
        # u, z as halves of one in_proj output and B, C as slices of one x_proj output,
        # as the layer passes them (last dim contiguous, rows strided)
        xz = rnd(b, l, 2 * e).to(dtype)
        ins["u"], ins["z"] = xz[..., :e], xz[..., e:]
        xdbl = rnd(b, l, 8 + 2 * n).to(dtype)
        ins["B"], ins["C"] = xdbl[..., 8:8 + n], xdbl[..., 8 + n:]
    else:
        ins.update(u=rnd(b, l, e).to(dtype), B=rnd(b, l, n).to(dtype), C=rnd(b, l, n).to(dtype))
        if full:
            ins["z"] = rnd(b, l, e).to(dtype)
    ins["delta"] = (0.5 * rnd(b, l, e)).to(dtype) if full else (0.1 * rnd(b, l, e).abs()).to(dtype)
    if full:
        ins.update(D=rnd(e), delta_bias=0.5 * rnd(e) - 1.0, initial_state=rnd(b, e, n))
    seq_idx = None
    if seq:
        seq_idx = torch.sort(torch.randint(0, 4, (b, l), device="cuda", generator=g), dim=1).values.int()
    return ins, seq_idx


def _run(fn, ins, seq_idx, softplus, gy, gh, dtype_cast=None):
    leaves = {k: (v.detach().to(dtype_cast) if dtype_cast else v.detach()).requires_grad_(True)
              for k, v in ins.items()}
    y, h = fn(**leaves, delta_softplus=softplus, seq_idx=seq_idx)
    loss = (y.double() * gy).sum() + (h.double() * gh).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y, h, dict(zip(leaves, grads))


def _case(dtype, n, l, full, seq=None, e=48):
    """dtype, n, l; full: z, D, delta_bias, initial state; seq: packed documents (default: as full);
    e: inner width (48: whole blocks of channels at n >= 16; 200: a partial last block)."""
    return dtype, n, l, full, full if seq is None else seq, e


CASES = [
    _case(torch.float32, 1, 7, True),
    _case(torch.float32, 16, 1, True),
    _case(torch.float32, 16, 257, True),
    _case(torch.float32, 16, 8192, True),
    _case(torch.float32, 64, 1000, True),
    _case(torch.float32, 256, 513, True),
    _case(torch.float32, 16, 300, False),
    _case(torch.float32, 64, 777, True, seq=False),  # initial state without documents
    _case(torch.float32, 16, 333, False, seq=True),  # documents without the other features
    _case(torch.float32, 16, 129, True, e=200),
    _case(torch.bfloat16, 16, 2049, True),
    _case(torch.bfloat16, 64, 63, True),
    _case(torch.bfloat16, 256, 513, True),
    _case(torch.bfloat16, 1, 8192, True),
    _case(torch.bfloat16, 16, 1, True),
    _case(torch.bfloat16, 16, 300, True, e=200),
    _case(torch.float16, 16, 100, True),
]


VARIANTS = ["chunk", "seg"]  # the backward kernels (triton.BWD_VARIANTS)


def _variant_fn(variant, n, e):
    from mambakit.ops.selective_scan.triton import default_config, selective_scan_triton
    cb = default_config(n, e, backward=True, variant=variant)
    return lambda **kw: selective_scan_triton(**kw, _config_bwd=cb)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype,n,l,full,seq,e", CASES, ids=[
    f"{str(c[0])[6:]}-n{c[1]}-l{c[2]}-{'full' if c[3] else 'plain'}{'-seq' if c[4] else ''}-e{c[5]}" for c in CASES])
def test_triton_matches_chunked_and_reference(dtype, n, l, full, seq, e, variant):
    from mambakit.ops.selective_scan.chunked import selective_scan_chunked
    from mambakit.ops.selective_scan.reference import selective_scan_ref
    b = 2
    selective_scan_triton = _variant_fn(variant, n, e)
    ins, seq_idx = _make(b, l, e, n, dtype, full, seq=seq, seed=l * 31 + n)
    g = torch.Generator(device="cuda").manual_seed(7)
    gy = torch.randn(b, l, e, device="cuda", generator=g, dtype=torch.float64)
    gh = torch.randn(b, e, n, device="cuda", generator=g, dtype=torch.float64)
    y, h, grads = _run(selective_scan_triton, ins, seq_idx, full, gy, gh)
    assert y.dtype == dtype and h.dtype == torch.float32
    oracles = [("chunked", selective_scan_chunked)] + ([("reference", selective_scan_ref)] if l <= 300 else [])
    for name, fn in oracles:
        y2, h2, grads2 = _run(fn, ins, seq_idx, full, gy, gh, dtype_cast=torch.float64)
        errs = {"y": _rel(y, y2), "final_state": _rel(h, h2)}
        errs.update({"d" + k: _rel(grads[k], grads2[k]) for k in grads})
        bad = {k: v for k, v in errs.items() if not v <= TOL[dtype]}
        assert not bad, f"triton vs {name}: {bad}"


def test_strided_inputs_and_dispatch():
    """Row-strided u/z/B/C as the layer passes them; ops.selective_scan_fn picks triton on CUDA."""
    from mambakit.ops import resolve_backend, selective_scan_fn
    from mambakit.ops.selective_scan.reference import selective_scan_ref
    ins, seq_idx = _make(2, 77, 48, 16, torch.float32, True, seq=True, seed=3, strided=True)
    assert resolve_backend(None, ins["u"], "selective_scan") == "triton"
    y, h = selective_scan_fn(**ins, delta_softplus=True, seq_idx=seq_idx)  # backend auto
    y2, h2 = selective_scan_ref(**{k: v.double() for k, v in ins.items()}, delta_softplus=True, seq_idx=seq_idx)
    assert _rel(y, y2) < 2e-4 and _rel(h, h2) < 2e-4


def test_forward_is_deterministic():
    """The same inputs give bit-identical outputs (a moving result would mean a race)."""
    from mambakit.ops.selective_scan.triton import selective_scan_triton
    ins, seq_idx = _make(3, 1500, 200, 16, torch.float32, True, seq=True, seed=11)
    y1, h1 = selective_scan_triton(**ins, delta_softplus=True, seq_idx=seq_idx)
    y2, h2 = selective_scan_triton(**ins, delta_softplus=True, seq_idx=seq_idx)
    assert torch.equal(y1, y2) and torch.equal(h1, h2)


def test_seg_backward_is_deterministic_and_matches_default():
    """The seg backward (no atomics) gives bit-identical gradients between runs and the default's
    up to summation order, over several segments, a partial e-block and packed sequences."""
    b, l, e, n = 2, 700, 200, 16
    ins, seq_idx = _make(b, l, e, n, torch.float32, True, seq=True, seed=17)
    g = torch.Generator(device="cuda").manual_seed(4)
    gy = torch.randn(b, l, e, device="cuda", generator=g, dtype=torch.float64)
    gh = torch.randn(b, e, n, device="cuda", generator=g, dtype=torch.float64)
    _, _, g1 = _run(_variant_fn("seg", n, e), ins, seq_idx, True, gy, gh)
    _, _, g2 = _run(_variant_fn("seg", n, e), ins, seq_idx, True, gy, gh)
    _, _, g3 = _run(_variant_fn("chunk", n, e), ins, seq_idx, True, gy, gh)
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    bad = {k: _rel(g1[k], g3[k]) for k in g1 if not _rel(g1[k], g3[k]) <= 1e-5}
    assert not bad, bad


def test_backward_is_deterministic_and_matches_atomic_path():
    """dB, dC as per-channel-block partials summed by torch: bit-identical between runs (the old
    atomic path was not), and equal, up to summation order, to the old path's gradients."""
    from mambakit.ops.selective_scan.triton import default_config, selective_scan_triton
    b, l, e, n = 2, 700, 200, 16
    ins, seq_idx = _make(b, l, e, n, torch.float32, True, seq=True, seed=13)
    g = torch.Generator(device="cuda").manual_seed(3)
    gy = torch.randn(b, l, e, device="cuda", generator=g, dtype=torch.float64)
    gh = torch.randn(b, e, n, device="cuda", generator=g, dtype=torch.float64)
    old = dict(default_config(n, e, backward=True), DBC_ATOMIC=True)
    fn_old = lambda **kw: selective_scan_triton(**kw, _config_bwd=old)
    _, _, g1 = _run(selective_scan_triton, ins, seq_idx, True, gy, gh)
    _, _, g2 = _run(selective_scan_triton, ins, seq_idx, True, gy, gh)
    _, _, g3 = _run(fn_old, ins, seq_idx, True, gy, gh)
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    bad = {k: _rel(g1[k], g3[k]) for k in g1 if not _rel(g1[k], g3[k]) <= 1e-5}
    assert not bad, bad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_steps_match_sequence(dtype):
    """l fused decode steps == causal conv1d over the sequence + the reference scan."""
    from mambakit.ops.decode_mamba1_triton import mamba1_decode_step_triton
    from mambakit.ops.selective_scan.reference import selective_scan_ref
    b, l, e, n, k, r = 3, 9, 200, 16, 4, 13
    g = torch.Generator(device="cuda").manual_seed(5)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)
    x, z = rnd(b, l, e).to(dtype), rnd(b, l, e).to(dtype)
    cw, cb = 0.5 * rnd(e, 1, k), rnd(e)
    xw, dtw, dtb = 0.1 * rnd(r + 2 * n, e), 0.3 * rnd(e, r), rnd(e) - 2
    A, D = -(torch.rand(e, n, device="cuda", generator=g) * 4 + 0.1), rnd(e)
    conv0, h0 = rnd(b, e, k).to(dtype), rnd(b, e, n)
    conv, h = conv0.clone(), h0.clone()
    y = torch.stack([mamba1_decode_step_triton(x[:, t], z[:, t], conv, h, cw, cb, xw, dtw, dtb, A, D, r)
                     for t in range(l)], 1)
    xs = torch.cat([conv0[:, :, 1:], x.transpose(1, 2)], dim=2).double()
    xc = F.silu(F.conv1d(xs, cw.double(), cb.double(), groups=e)).transpose(1, 2)
    xdbl = xc @ xw.double().t()
    dt = F.softplus(xdbl[..., :r] @ dtw.double().t() + dtb.double())
    y2, h2 = selective_scan_ref(xc, dt, A.double(), xdbl[..., r:r + n], xdbl[..., r + n:], D=D.double(),
                                z=z.double(), initial_state=h0.double())
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert y.dtype == dtype
    assert _rel(y, y2) < tol and _rel(h, h2) < tol
    assert torch.equal(conv, torch.cat([conv0, x.transpose(1, 2)], dim=2)[:, :, -k:])


def _sweep_configs():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "gpu_selective_scan.py")
    spec = importlib.util.spec_from_file_location("_bench_scan", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # each forward config with the default backward, and each backward config with the default forward
    return ([(n, f, bs[0]) for n, (fs, bs) in mod.SWEEP.items() for f in fs]
            + [(n, fs[0], b) for n, (fs, bs) in mod.SWEEP.items() for b in bs[1:]])


@pytest.mark.parametrize("n,cfg_f,cfg_b", _sweep_configs())
def test_benchmark_tile_configs_are_correct(n, cfg_f, cfg_b):
    """Every tile config the benchmark times (the inputs the benchmark uses: bias, softplus, D, z)."""
    from mambakit.ops.selective_scan.chunked import selective_scan_chunked
    from mambakit.ops.selective_scan.triton import selective_scan_triton
    b, l, e = 2, 333, 96
    ins, _ = _make(b, l, e, n, torch.float32, True, seq=False, seed=n)
    ins.pop("initial_state")
    gy = torch.randn(b, l, e, device="cuda", dtype=torch.float64)
    fn = lambda **kw: selective_scan_triton(**kw, _config_fwd=cfg_f, _config_bwd=cfg_b)
    leaves = {k: v.detach().requires_grad_(True) for k, v in ins.items()}
    y, _ = fn(**leaves, delta_softplus=True)
    grads = torch.autograd.grad((y.double() * gy).sum(), list(leaves.values()))
    with torch.no_grad():  # the forward-only path (no checkpoints) too
        y_nograd, _ = fn(**ins, delta_softplus=True)
    y2, _, grads2 = _run(selective_scan_chunked, ins, None, True, gy, torch.zeros(b, e, n, device="cuda",
                                                                                   dtype=torch.float64),
                         dtype_cast=torch.float64)
    errs = {"y": _rel(y, y2), "y_nograd": _rel(y_nograd, y2)}
    errs.update({"d" + k: _rel(g, grads2[k]) for k, g in zip(leaves, grads)})
    bad = {k: v for k, v in errs.items() if not v <= 2e-4}
    assert not bad, bad
