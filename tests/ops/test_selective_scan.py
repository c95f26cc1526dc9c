"""Mamba-1 selective scan: chunked tier against the sequential reference, packing, bad input.

Letters: b batch, l length, e inner width, n state dim.
"""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from mambakit.ops.selective_scan import chunked
from mambakit.ops.selective_scan.chunked import selective_scan_chunked
from mambakit.ops.selective_scan.reference import selective_scan_ref

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few steps, so small shapes cross block and segment edges at odd places."""
    # (b, e, n) = (2, 3, 5): blocks of 3 steps, backward segments of 9 (sqrt(l) rounded to 3s past l = 120)
    monkeypatch.setattr(chunked, "FWD_BLOCK_ELEMS", 90)
    monkeypatch.setattr(chunked, "BWD_SEGMENT_ELEMS", 330)


def make_inputs(b, l, e, n, dtype=torch.float64, seed=0, D=True, z=True, delta_bias=True,
                initial_state=True, seq_idx=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    args = {
        "u": r(b, l, e),
        "delta": r(b, l, e, scale=0.5),
        "A": (-torch.rand(e, n, generator=g, dtype=torch.float64) * 3 - 0.05).to(dtype),
        "B": r(b, l, n),
        "C": r(b, l, n),
        "D": r(e) if D else None,
        "z": r(b, l, e) if z else None,
        "delta_bias": r(e, scale=0.3) if delta_bias else None,
        "initial_state": r(b, e, n) if initial_state else None,
    }
    sidx = None
    if seq_idx:
        sidx = torch.sort(torch.randint(0, max(1, l // 3), (b, l), generator=g), dim=1).values
    return args, sidx


def run(fn, args, seq_idx, softplus, grad_seed=1):
    """Outputs and the gradients of a random linear function of (y, final_state) w.r.t. every input."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in args.items()}
    y, h = fn(**leaves, delta_softplus=softplus, seq_idx=seq_idx)
    g = torch.Generator().manual_seed(grad_seed)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    wh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)
    inputs = [leaves[k] for k in NAMES if leaves[k] is not None]
    grads = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), inputs)
    out = {"y": y, "final_state": h}
    out.update({k: gr for k, gr in zip([k for k in NAMES if leaves[k] is not None], grads)})
    return out


def assert_close(got, want, rtol, atol_scale):
    assert set(got) == set(want)
    for k in want:
        w, g = want[k].double(), got[k].double()
        assert g.shape == w.shape, k
        scale = w.abs().max().item() + 1e-30
        err = (g - w).abs().max().item()
        assert err <= rtol * scale + atol_scale, f"{k}: max abs err {err:.3e}, scale {scale:.3e}"


OPTIONS = [
    dict(),
    dict(D=False, z=False, delta_bias=False, initial_state=False),
    dict(initial_state=False, seq_idx=True),
    dict(seq_idx=True),
    dict(z=False, delta_bias=False),
]


# every option set at the short lengths; at the longest, the full set and seq_idx alone are enough
CASES = [(length, opts) for length in (1, 7, 63, 100) for opts in OPTIONS] + [(257, OPTIONS[0]), (257, OPTIONS[3])]


@pytest.mark.parametrize("length,opts", CASES)
@pytest.mark.parametrize("softplus", [True, False])
def test_chunked_matches_reference_float64(small_blocks, length, opts, softplus):
    args, sidx = make_inputs(2, length, 3, 5, **opts)
    want = run(selective_scan_ref, args, sidx, softplus)
    got = run(selective_scan_chunked, args, sidx, softplus)
    assert got["final_state"].dtype == torch.float64
    assert_close(got, want, rtol=1e-10, atol_scale=1e-10)


@pytest.mark.parametrize("length", [1, 63, 130])
def test_chunked_default_blocks(length):
    """The production block sizes (one or few blocks at these shapes)."""
    args, sidx = make_inputs(2, length, 16, 4, seq_idx=True)
    want = run(selective_scan_ref, args, sidx, True)
    got = run(selective_scan_chunked, args, sidx, True)
    assert_close(got, want, rtol=1e-10, atol_scale=1e-10)


@pytest.mark.parametrize("length,opts", [(length, opts) for length in (1, 7, 63, 257) for opts in OPTIONS])
def test_chunked_float32(small_blocks, length, opts):
    args, sidx = make_inputs(2, length, 3, 5, **opts)
    want = run(selective_scan_ref, args, sidx, True)               # float64 oracle
    args32 = {k: (v.float() if v is not None else None) for k, v in args.items()}
    got = run(selective_scan_chunked, args32, sidx, True)
    assert got["y"].dtype == torch.float32 and got["final_state"].dtype == torch.float32
    assert_close(got, want, rtol=1e-4, atol_scale=0.0)


def test_half_precision_input_keeps_fp32_state():
    args, _ = make_inputs(1, 9, 4, 3)
    args = {k: (v.bfloat16() if k in ("u", "delta", "z") else v.float()) for k, v in args.items()}
    y, h = selective_scan_chunked(**args, delta_softplus=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    y_ref, h_ref = selective_scan_ref(**args, delta_softplus=True)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=1e-2, atol=1e-2)


def test_gradcheck_chunked(monkeypatch):
    monkeypatch.setattr(chunked, "FWD_BLOCK_ELEMS", 2 * 6)       # blocks of 2 steps
    monkeypatch.setattr(chunked, "BWD_SEGMENT_ELEMS", 5 * 6)     # segments of 4
    args, sidx = make_inputs(1, 13, 2, 3, seq_idx=True)
    names = [k for k in NAMES if args[k] is not None]

    def f(*xs):
        y, h = selective_scan_chunked(**dict(zip(names, xs)), delta_softplus=True, seq_idx=sidx)
        return y, h

    xs = [args[k].clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("which", ["y", "final_state"])
def test_gradient_through_one_output_only(small_blocks, which):
    args, _ = make_inputs(2, 23, 3, 4)
    grads = {}
    for fn in (selective_scan_ref, selective_scan_chunked):
        leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
        y, h = fn(**leaves, delta_softplus=True)
        out = y if which == "y" else h
        grads[fn] = torch.autograd.grad(out.pow(2).sum(), list(leaves.values()), allow_unused=True)
    for g_ref, g in zip(grads[selective_scan_ref], grads[selective_scan_chunked]):
        if g_ref is None or not g_ref.abs().max() > 0:
            assert g is None or g.abs().max() == 0
        else:
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_packed_row_equals_separate_runs(small_blocks):
    """Three documents packed in one row give what three separate scans give."""
    lengths = [5, 9, 3]
    l = sum(lengths)
    args, _ = make_inputs(1, l, 3, 4)
    sidx = torch.repeat_interleave(torch.arange(len(lengths)) + 7, torch.tensor(lengths))[None]
    y, h = selective_scan_chunked(**args, delta_softplus=True, seq_idx=sidx)
    y_ref, h_ref = selective_scan_ref(**args, delta_softplus=True, seq_idx=sidx)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    t0 = 0
    for i, m in enumerate(lengths):
        part = {k: (v[:, t0:t0 + m] if k in ("u", "delta", "B", "C", "z") else v) for k, v in args.items()}
        if i > 0:
            part["initial_state"] = None          # only the first document sees initial_state
        y_i, h_i = selective_scan_chunked(**part, delta_softplus=True)
        torch.testing.assert_close(y[:, t0:t0 + m], y_i, rtol=1e-12, atol=1e-12)
        t0 += m
    torch.testing.assert_close(h, h_i, rtol=1e-12, atol=1e-12)   # final state = the last document's


def test_non_contiguous_inputs(small_blocks):
    """As the Mamba layer passes them: u and z halves of one projection, B and C slices of another."""
    b, l, e, n = 2, 19, 3, 5
    args, sidx = make_inputs(b, l, e, n, seq_idx=True)
    xz = torch.cat([args["u"], args["z"]], dim=-1)
    bc = torch.cat([args["delta"][..., :1], args["B"], args["C"]], dim=-1)
    strided = dict(args, u=xz[..., :e], z=xz[..., e:], B=bc[..., 1:1 + n], C=bc[..., 1 + n:],
                   delta=args["delta"].transpose(1, 2).contiguous().transpose(1, 2), A=args["A"].t().contiguous().t())
    assert not strided["u"].is_contiguous() and not strided["A"].is_contiguous()
    got = run(selective_scan_chunked, strided, sidx, True)
    want = run(selective_scan_ref, args, sidx, True)
    assert_close(got, want, rtol=1e-10, atol_scale=1e-10)
    assert got["y"].is_contiguous()


@pytest.mark.parametrize("e,n", [(1, 1), (3, 1), (1, 4)])
def test_inputs_are_not_modified(e, n):
    """The scan updates its state in place: neither initial_state nor an incoming gradient may be it."""
    args, _ = make_inputs(2, 9, e, n)
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    y, h = selective_scan_chunked(**leaves, delta_softplus=True)
    gh = torch.randn_like(h)
    gh_copy = gh.clone()
    torch.autograd.backward([y, h], [torch.ones_like(y), gh])
    for k, v in args.items():
        assert torch.equal(leaves[k].detach(), v), k
    assert torch.equal(gh, gh_copy)
    with torch.no_grad():
        selective_scan_chunked(**leaves, delta_softplus=True)
    assert torch.equal(leaves["initial_state"].detach(), args["initial_state"])


def test_no_grad_forward_matches():
    args, _ = make_inputs(2, 40, 8, 4)
    with torch.no_grad():
        y, h = selective_scan_chunked(**args, delta_softplus=True)
    y_ref, h_ref = selective_scan_ref(**args, delta_softplus=True)
    assert not y.requires_grad
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=12, deadline=None)
@given(b=st.integers(1, 3), l=st.integers(1, 40), e=st.integers(1, 6), n=st.integers(1, 5),
       c=st.integers(1, 6), seg=st.integers(1, 4), flags=st.integers(0, 63))
def test_hypothesis_shapes(b, l, e, n, c, seg, flags):
    opts = dict(D=bool(flags & 1), z=bool(flags & 2), delta_bias=bool(flags & 4),
                initial_state=bool(flags & 8), seq_idx=bool(flags & 16))
    args, sidx = make_inputs(b, l, e, n, seed=l * 31 + e, **opts)
    old = chunked.FWD_BLOCK_ELEMS, chunked.BWD_SEGMENT_ELEMS
    chunked.FWD_BLOCK_ELEMS, chunked.BWD_SEGMENT_ELEMS = c * b * e * n, c * seg * b * e * n
    try:
        got = run(selective_scan_chunked, args, sidx, bool(flags & 32))
    finally:
        chunked.FWD_BLOCK_ELEMS, chunked.BWD_SEGMENT_ELEMS = old
    want = run(selective_scan_ref, args, sidx, bool(flags & 32))
    assert_close(got, want, rtol=1e-10, atol_scale=1e-10)


def _bad_cases():
    b, l, e, n = 2, 5, 3, 4
    args, _ = make_inputs(b, l, e, n)
    yield "u", dict(args, u=args["u"][0]), "u must be a 3-d tensor"
    yield "u empty", dict(args, u=args["u"][:, :0], delta=args["delta"][:, :0]), "every size >= 1"
    yield "u int", dict(args, u=args["u"].long()), "real floating"
    yield "delta", dict(args, delta=args["delta"][:, :-1]), "delta must have shape"
    yield "A e", dict(args, A=args["A"][:-1]), "A must have shape (e, n)"
    yield "A 1d", dict(args, A=args["A"][:, 0]), "A must have shape (e, n)"
    yield "A complex", dict(args, A=args["A"].to(torch.complex128)), "real floating"
    yield "B", dict(args, B=args["B"][..., :-1]), "B must have shape"
    yield "C", dict(args, C=args["C"][:, :-1]), "C must have shape"
    yield "D", dict(args, D=args["D"][:-1]), "D must have shape"
    yield "z", dict(args, z=args["z"][:1]), "z must have shape"
    yield "bias", dict(args, delta_bias=args["delta_bias"][None]), "delta_bias must have shape"
    yield "h0", dict(args, initial_state=args["initial_state"].transpose(1, 2)), "initial_state must have shape"
    yield "seq shape", dict(args, seq_idx=torch.zeros(b, l + 1, dtype=torch.long)), "seq_idx must have shape"
    yield "seq float", dict(args, seq_idx=torch.zeros(b, l)), "integer document ids"
    yield "seq decreasing", dict(args, seq_idx=torch.tensor([[0, 0, 1, 1, 2], [0, 1, 1, 0, 2]])), "non-decreasing"


@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked])
@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0] if isinstance(c, tuple) else "")
def test_bad_input(fn, case):
    _, kwargs, message = case
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fn(**kwargs)


def test_dispatch_reaches_both_tiers():
    from mambakit import ops
    args, sidx = make_inputs(1, 10, 4, 3, seq_idx=True)
    y_ref, h_ref = ops.selective_scan_fn(**args, delta_softplus=True, seq_idx=sidx, backend="reference")
    y, h = ops.selective_scan_fn(**args, delta_softplus=True, seq_idx=sidx, backend="chunked")
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
