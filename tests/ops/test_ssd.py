"""Mamba-2 SSD, CPU tiers: the chunked algorithm against the sequential reference, packing, bad input.

Letters: b batch, l length, h heads, p head dim, n state dim, g groups.

Chunks of 16 tokens with sub-blocks of 4 (chunked.SUB_BLOCK patched), so small shapes cross
chunk and sub-block edges at odd places and every path of the blocked step 1 runs.
"""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mambakit.ops import ssd_fn
from mambakit.ops.ssd import chunked
from mambakit.ops.ssd.chunked import ssd_chunked
from mambakit.ops.ssd.reference import ssd_ref

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


@pytest.fixture(autouse=True)
def small_sub_blocks(monkeypatch):
    monkeypatch.setattr(chunked, "SUB_BLOCK", 4)


def make_inputs(b, l, h, p, g, n, dtype=torch.float64, seed=0, D="h", z=True, dt_bias=True,
                initial_state=True):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    return {
        "x": r(b, l, h, p),
        "dt": r(b, l, h, scale=0.5) - 1.0,
        # A in [-4, -0.2]: decays from mild to strong over a chunk of 16
        "A": (-torch.rand(h, generator=gen, dtype=torch.float64) * 3.8 - 0.2).to(dtype),
        "B": r(b, l, g, n),
        "C": r(b, l, g, n),
        "D": {"h": r(h), "hp": r(h, p), None: None}[D],
        "z": r(b, l, h, p) if z else None,
        "dt_bias": r(h, scale=0.3) if dt_bias else None,
        "initial_state": r(b, h, p, n) if initial_state else None,
    }


def run(fn, args, grads=True, **kw):
    """Outputs and the gradients of a fixed random projection of (y, final_state)."""
    leaves = {k: (v.detach().clone().requires_grad_(grads) if v is not None else None)
              for k, v in args.items()}
    y, state = fn(**leaves, **kw)
    out = {"y": y, "final_state": state}
    if grads:
        gen = torch.Generator().manual_seed(123)
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        gs = torch.randn(state.shape, generator=gen, dtype=torch.float64)
        loss = (y.double() * gy).sum() + (state.double() * gs).sum()
        names = [k for k in NAMES if leaves[k] is not None]
        for k, gr in zip(names, torch.autograd.grad(loss, [leaves[k] for k in names])):
            out["d" + k] = gr
    return out


def assert_close(got, want, rtol, atol_scale=None):
    assert got.keys() == want.keys()
    for k in want:
        a, b = got[k].double(), want[k].double()
        assert a.shape == b.shape, k
        scale = b.abs().max().item() + 1e-30
        err = (a - b).abs().max().item()
        assert err <= rtol * scale, f"{k}: max error {err:.3g} vs scale {scale:.3g}"


# Option sets: everything on (initial state, z, D, dt_bias); everything off; documents packed with seq_idx.
VARIANTS = {"all": {}, "bare": dict(D=None, z=False, dt_bias=False, initial_state=False), "seq_idx": {}}


def packed_ids(b, l, seed):
    """Sorted random document ids (b, l): several documents a row, boundaries at random places."""
    gen = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randint(0, max(1, l // 5), (b, l), generator=gen), dim=1).values


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("l", [1, 7, 63, 257])
@pytest.mark.parametrize("h,g", [(4, 1), (4, 4), (6, 3)])
def test_chunked_matches_reference_float64(l, h, g, variant):
    args = make_inputs(2, l, h, 3, g, 5, seed=l + 10 * g, **VARIANTS[variant])
    kw = dict(dt_softplus=True, seq_idx=packed_ids(2, l, l) if variant == "seq_idx" else None)
    want = run(ssd_ref, args, **kw)
    got = run(ssd_chunked, args, chunk_size=16, **kw)
    assert_close(got, want, 1e-10)
    assert got["final_state"].dtype == torch.float64


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64, 300])
def test_any_chunk_size_and_ragged_last_chunk(chunk_size):
    args = make_inputs(1, 41, 2, 3, 2, 4, seed=chunk_size, D="hp")
    kw = dict(dt_softplus=True)
    assert_close(run(ssd_chunked, args, chunk_size=chunk_size, **kw), run(ssd_ref, args, **kw), 1e-10)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("l", [1, 7, 63, 257])
@pytest.mark.parametrize("h,g", [(4, 1), (4, 4), (4, 2)])
def test_float32_matches_float64_reference(l, h, g, variant):
    args = make_inputs(2, l, h, 8, g, 16, seed=7 + l, **{"D": "hp", **VARIANTS[variant]})
    kw = dict(dt_softplus=True, seq_idx=packed_ids(2, l, l) if variant == "seq_idx" else None)
    want = run(ssd_ref, args, **kw)
    args32 = {k: (v.float() if v is not None else None) for k, v in args.items()}
    got = run(ssd_chunked, args32, chunk_size=16, **kw)
    assert got["y"].dtype == torch.float32 and got["final_state"].dtype == torch.float32
    assert_close(got, want, 1e-4)


def test_bfloat16_output_dtype_and_fp32_state():
    args = make_inputs(1, 20, 2, 4, 1, 4, dtype=torch.bfloat16, initial_state=False)
    y, state = ssd_chunked(**args, chunk_size=16, dt_softplus=True)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    y_ref, state_ref = ssd_ref(**args, dt_softplus=True)
    assert (y.float() - y_ref.float()).abs().max() <= 0.05 * y_ref.float().abs().max()
    assert torch.allclose(state, state_ref, rtol=1e-4, atol=1e-4)


def test_initial_state_continues_a_split_sequence():
    """Running [0, 30) then [30, 70) from its final state equals one run over [0, 70)."""
    args = make_inputs(2, 70, 4, 3, 2, 5, z=False, initial_state=False, seed=3)
    y, state = ssd_chunked(**args, chunk_size=16, dt_softplus=True)
    first = {k: (v[:, :30] if k in ("x", "dt", "B", "C") else v) for k, v in args.items()}
    second = {k: (v[:, 30:] if k in ("x", "dt", "B", "C") else v) for k, v in args.items()}
    y1, s1 = ssd_chunked(**first, chunk_size=16, dt_softplus=True)
    y2, s2 = ssd_chunked(**{**second, "initial_state": s1}, chunk_size=16, dt_softplus=True)
    assert torch.allclose(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-10)
    assert torch.allclose(s2, state, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fn", [ssd_ref, ssd_chunked])
def test_packed_row_equals_separate_documents(fn):
    """A row packing documents of 9, 20, 1 and 17 tokens (ids 3, 4, 7, 8) equals a run per
    document; the initial state feeds only the first document."""
    lengths, ids = [9, 20, 1, 17], [3, 4, 7, 8]
    args = make_inputs(1, sum(lengths), 4, 3, 2, 5, seed=11)
    seq_idx = torch.cat([torch.full((m,), i) for m, i in zip(lengths, ids)])[None]
    kw = dict(chunk_size=16) if fn is ssd_chunked else {}
    y, state = fn(**args, seq_idx=seq_idx, dt_softplus=True, **kw)
    start = 0
    for j, m in enumerate(lengths):
        part = {k: (v[:, start:start + m] if k in ("x", "dt", "B", "C", "z") else v)
                for k, v in args.items()}
        if j > 0:
            part["initial_state"] = None
        y_doc, s_doc = fn(**part, dt_softplus=True, **kw)
        assert torch.allclose(y[:, start:start + m], y_doc, rtol=1e-10, atol=1e-10), f"document {j}"
        start += m
    assert torch.allclose(state, s_doc, rtol=1e-10, atol=1e-10)


def test_packed_batch_gradients_match_reference():
    args = make_inputs(3, 50, 4, 3, 2, 5, seed=5, D="hp")
    gen = torch.Generator().manual_seed(0)
    seq_idx = torch.sort(torch.randint(0, 4, (3, 50), generator=gen), dim=1).values
    seq_idx[2] = 5  # one row with a single document
    kw = dict(seq_idx=seq_idx, dt_softplus=True)
    assert_close(run(ssd_chunked, args, chunk_size=16, **kw), run(ssd_ref, args, **kw), 1e-10)


@pytest.mark.parametrize("D", ["h", "hp", None])
@pytest.mark.parametrize("z", [True, False])
def test_skip_and_gate(D, z):
    args = make_inputs(1, 23, 4, 3, 2, 4, D=D, z=z, seed=1)
    kw = dict(dt_softplus=True)
    got, want = run(ssd_chunked, args, chunk_size=16, **kw), run(ssd_ref, args, **kw)
    assert_close(got, want, 1e-10)
    # and the gate and skip really act: y = y0 * silu(z) + D x * silu(z)
    plain = {**args, "D": None, "z": None}
    y0 = ssd_ref(**plain, **kw)[0]
    expect = y0
    if D is not None:
        Dx = args["x"] * (args["D"][:, None] if D == "h" else args["D"])
        expect = expect + Dx
    if z:
        expect = expect * torch.nn.functional.silu(args["z"])
    assert torch.allclose(want["y"], expect, rtol=1e-12, atol=1e-12)


def test_dt_limit_clamps_after_bias_and_softplus():
    args = make_inputs(2, 30, 4, 3, 1, 4, seed=2)
    limit = (0.3, 0.6)
    got = run(ssd_chunked, args, chunk_size=16, dt_softplus=True, dt_limit=limit)
    assert_close(got, run(ssd_ref, args, dt_softplus=True, dt_limit=limit), 1e-10)
    dt = torch.nn.functional.softplus(args["dt"] + args["dt_bias"]).clamp(*limit)
    manual = ssd_ref(**{**args, "dt": dt, "dt_bias": None})
    assert torch.allclose(got["y"], manual[0], rtol=1e-10, atol=1e-10)
    assert (dt == 0.3).any() and (dt == 0.6).any()  # both sides of the clamp are exercised


def test_growing_decay_takes_the_plain_path():
    """dt < 0 (dt_limit allows it, no softplus): decays grow, exp(segsum) can be > 1."""
    args = make_inputs(2, 40, 4, 3, 2, 4, seed=4, dt_bias=False)
    args["dt"] = 0.05 * args["dt"]
    kw = dict(dt_limit=(-math.inf, math.inf))
    assert (args["dt"] * args["A"] > 0).any()
    assert_close(run(ssd_chunked, args, chunk_size=16, **kw), run(ssd_ref, args, **kw), 1e-10)


def test_strong_decay_is_finite_and_exact():
    """Decays down to exp(-1000) inside a chunk: no inf/nan, float32 still matches."""
    args = make_inputs(1, 64, 4, 3, 1, 4, seed=6, dt_bias=False)
    args["A"] = torch.tensor([-60.0, -8.0, -1.0, -0.01], dtype=torch.float64)
    args["dt"] = args["dt"].abs() + 0.5
    want = run(ssd_ref, args)
    args32 = {k: (v.float() if v is not None else None) for k, v in args.items()}
    got = run(ssd_chunked, args32, chunk_size=32)
    assert all(torch.isfinite(v).all() for v in got.values())
    assert_close(got, want, 1e-4)


def test_no_grad_path_equals_grad_path():
    args = make_inputs(2, 45, 4, 3, 2, 4, seed=8)
    with torch.no_grad():
        y0, s0 = ssd_chunked(**args, chunk_size=16, dt_softplus=True)
    got = run(ssd_chunked, args, chunk_size=16, dt_softplus=True)
    assert torch.equal(y0, got["y"].detach()) and torch.equal(s0, got["final_state"].detach())


def test_dispatch_backends():
    args = make_inputs(1, 20, 2, 3, 1, 4, seed=9)
    y_ref, _ = ssd_fn(**args, dt_softplus=True, backend="reference")
    y_chk, _ = ssd_fn(**args, dt_softplus=True, backend="chunked", chunk_size=16)
    assert torch.allclose(y_ref, y_chk, rtol=1e-10, atol=1e-10)


@settings(max_examples=12, deadline=None)
@given(b=st.integers(1, 2), l=st.integers(1, 40), g=st.integers(1, 3), k=st.integers(1, 2),
       p=st.integers(1, 4), n=st.integers(1, 6), chunk=st.sampled_from([4, 8, 16, 32]),
       seed=st.integers(0, 10_000), packed=st.booleans())
def test_hypothesis_matches_reference(b, l, g, k, p, n, chunk, seed, packed):
    args = make_inputs(b, l, g * k, p, g, n, seed=seed, D="hp" if seed % 2 else "h")
    gen = torch.Generator().manual_seed(seed)
    seq_idx = torch.sort(torch.randint(0, 3, (b, l), generator=gen), dim=1).values if packed else None
    kw = dict(dt_softplus=True, seq_idx=seq_idx)
    assert_close(run(ssd_chunked, args, chunk_size=chunk, **kw), run(ssd_ref, args, **kw), 1e-10)


BAD = [
    (dict(x=torch.zeros(2, 5, 4)), "x must be a 4-d tensor"),
    (dict(dt=torch.zeros(2, 5, 3)), "dt must have shape"),
    (dict(A=torch.zeros(4, 1)), "A must have shape"),
    (dict(B=torch.zeros(2, 5, 2, 3)), "B and C must have the same shape"),
    (dict(B=torch.zeros(2, 5, 3, 4), C=torch.zeros(2, 5, 3, 4)), "multiple of the number of groups"),
    (dict(B=torch.zeros(2, 6, 2, 4), C=torch.zeros(2, 6, 2, 4)), "B must have shape"),
    (dict(D=torch.zeros(3)), "D must have shape"),
    (dict(z=torch.zeros(2, 5, 4)), "z must have the shape of x"),
    (dict(dt_bias=torch.zeros(2)), "dt_bias must have shape"),
    (dict(initial_state=torch.zeros(2, 4, 3, 5)), "initial_state must have shape"),
    (dict(seq_idx=torch.zeros(2, 4, dtype=torch.long)), "seq_idx must have shape"),
    (dict(seq_idx=torch.zeros(2, 5)), "integer document ids"),
    (dict(seq_idx=torch.tensor([[0, 0, 1, 1, 1], [0, 1, 2, 1, 2]])), "non-decreasing"),
    (dict(dt_limit=(1.0, 0.5)), "min <= max"),
    (dict(dt_limit=0.5), "pair"),
    (dict(x=torch.zeros(2, 0, 4, 3), dt=torch.zeros(2, 0, 4), B=torch.zeros(2, 0, 2, 4),
          C=torch.zeros(2, 0, 2, 4)), "every size >= 1"),
]


@pytest.mark.parametrize("fn", ["ref", "chunked", "triton"])
@pytest.mark.parametrize("bad,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_raises_value_error(fn, bad, message):
    """The same rules in every tier (the Triton wrapper checks before it looks at the device)."""
    args = dict(x=torch.zeros(2, 5, 4, 3), dt=torch.zeros(2, 5, 4), A=-torch.ones(4),
                B=torch.zeros(2, 5, 2, 4), C=torch.zeros(2, 5, 2, 4))
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        if fn == "ref":
            ssd_ref(**args)
        elif fn == "chunked":
            ssd_chunked(**args, chunk_size=4)
        else:
            pytest.importorskip("triton")
            from mambakit.ops.ssd.triton import ssd_triton
            ssd_triton(**args, chunk_size=4)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_bad_chunk_size(chunk_size):
    args = make_inputs(1, 5, 2, 3, 1, 4)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        ssd_chunked(**args, chunk_size=chunk_size)
