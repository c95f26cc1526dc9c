"""Mamba-1 Triton kernels under TRITON_INTERPRET=1 on the CPU (small shapes).

Letters: b batch, l length, e inner width, n state dim, k conv width, r dt rank.

The interpreter must be switched on before triton is imported, so the kernel runs happen in
one subprocess that prints a JSON line per case; the tests below check those numbers.
Oracle: `selective_scan_ref` in float64 (outputs, final state and every gradient).
"""
import json
import textwrap

import pytest
from conftest import run_interpreted
import torch

pytest.importorskip("triton")


_SCRIPT = textwrap.dedent(r'''
import json, sys
import torch
import torch.nn.functional as F
from mambakit.ops.selective_scan.reference import selective_scan_ref
from mambakit.ops.selective_scan.triton import selective_scan_triton
from mambakit.ops.decode_mamba1_triton import mamba1_decode_step_triton

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]

def rel(a, b):
    return ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()

def scan_case(name, b, l, e, n, dtype, full, seq, cfg_f, cfg_b, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)
    ins = dict(u=rnd(b, l, e), delta=0.5 * rnd(b, l, e), A=-(torch.rand(e, n, generator=g) * 2 + 0.1),
               B=rnd(b, l, n), C=rnd(b, l, n))
    if full:
        ins.update(D=rnd(e), z=rnd(b, l, e), delta_bias=0.3 * rnd(e), initial_state=rnd(b, e, n))
    else:
        ins["delta"] = ins["delta"].abs()
    for key in ("u", "delta", "B", "C", "z"):
        if key in ins:
            ins[key] = ins[key].to(dtype)
    seq_idx = torch.sort(torch.randint(0, 3, (b, l), generator=g), dim=1).values.int() if seq else None
    leaves = {k: v.clone().requires_grad_(True) for k, v in ins.items()}
    y, hT = selective_scan_triton(**leaves, delta_softplus=full, seq_idx=seq_idx,
                                  _config_fwd=cfg_f, _config_bwd=cfg_b)
    gy, gh = rnd(*y.shape), rnd(*hT.shape)
    grads = torch.autograd.grad((y.float() * gy).sum() + (hT * gh).sum(), list(leaves.values()))
    ref_leaves = {k: v.detach().double().requires_grad_(True) for k, v in ins.items()}
    y2, h2 = selective_scan_ref(**ref_leaves, delta_softplus=full, seq_idx=seq_idx)
    grads2 = torch.autograd.grad((y2 * gy.double()).sum() + (h2 * gh.double()).sum(), list(ref_leaves.values()))
    err = {"y": rel(y, y2), "final_state": rel(hT, h2)}
    err.update({"d" + k: rel(a, r) for k, a, r in zip(leaves, grads, grads2)})
    out = {"case": name, "err": err, "y_dtype": str(y.dtype), "state_dtype": str(hT.dtype)}
    print(json.dumps(out), flush=True)

def decode_case(seed):
    # l decode steps == conv1d over the sequence + the reference scan
    b, l, e, n, k, r = 2, 5, 8, 4, 4, 2
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)
    x, z = rnd(b, l, e), rnd(b, l, e)
    cw, cb = 0.5 * rnd(e, 1, k), rnd(e)
    xw, dtw, dtb = 0.3 * rnd(r + 2 * n, e), 0.5 * rnd(e, r), rnd(e)
    A, D = -(torch.rand(e, n, generator=g) + 0.5), rnd(e)
    conv_state0, h0 = rnd(b, e, k), rnd(b, e, n)
    conv_state, h = conv_state0.clone(), h0.clone()
    ys = []
    for t in range(l):
        ys.append(mamba1_decode_step_triton(x[:, t], z[:, t], conv_state, h, cw, cb, xw, dtw, dtb, A, D, r))
    y = torch.stack(ys, 1)
    # reference: the conv sees the k-1 old inputs of the state, then the new tokens
    xs = torch.cat([conv_state0[:, :, 1:], x.transpose(1, 2)], dim=2).double()       # (b, e, k-1+l)
    xc = F.silu(F.conv1d(xs, cw.double(), cb.double(), groups=e)).transpose(1, 2)      # (b, l, e)
    xdbl = xc @ xw.double().t()
    dt = F.softplus(xdbl[..., :r] @ dtw.double().t() + dtb.double())
    y2, h2 = selective_scan_ref(xc, dt, A.double(), xdbl[..., r:r + n], xdbl[..., r + n:], D=D.double(),
                                z=z.double(), initial_state=h0.double())
    expected_state = torch.cat([conv_state0, x.transpose(1, 2)], dim=2)[:, :, -k:]
    err = {"y": rel(y, y2), "ssm_state": rel(h, h2), "conv_state": rel(conv_state, expected_state)}
    print(json.dumps({"case": "decode", "err": err}), flush=True)

small = lambda bt, be, bn, vec: dict(BLOCK_T=bt, BLOCK_E=be, BLOCK_N=bn, VEC=vec, num_warps=1)
# several segments (checkpoints), a partial e-block, packed sequences, initial and final state
scan_case("fp32_full", 2, 21, 5, 4, torch.float32, True, True, small(4, 4, 4, 2), small(2, 4, 4, 4), 1)
# the old backward (dB, dC by atomics into one buffer instead of per-channel-block partials)
scan_case("fp32_full_atomic", 2, 21, 5, 4, torch.float32, True, True, small(4, 4, 4, 2),
          dict(small(2, 4, 4, 4), DBC_ATOMIC=True), 1)
# n not a power of two (masked state lanes), no optional inputs
scan_case("fp32_plain_n3", 1, 11, 3, 3, torch.float32, False, False, small(4, 4, 4, 1), small(4, 4, 4, 4), 2)
scan_case("bf16_full", 1, 9, 4, 4, torch.bfloat16, True, True, small(4, 4, 4, 4), small(4, 4, 4, 2), 3)
scan_case("fp32_len1", 2, 1, 3, 2, torch.float32, True, False, small(4, 4, 2, 1), small(2, 4, 2, 2), 4)
# the segment-parallel backward (triton_bwd_seg.py): 4 segments of 2 chunks (the adjoint
# folded across segments, chunk-start states recomputed), a partial e-block, packed sequences
seg = lambda bt, be, sc, **kw: dict(VARIANT="seg", BLOCK_T=bt, BLOCK_E=be, SEG_CHUNKS=sc, num_warps=1, **kw)
scan_case("seg_fp32_full", 2, 13, 5, 4, torch.float32, True, True, small(4, 4, 4, 2), seg(2, 8, 2), 6)
# programs of 2 segments each (the adjoint carried inside a program, folded across them), the last short
scan_case("seg_fp32_groups", 2, 13, 5, 4, torch.float32, True, True, small(4, 4, 4, 2), seg(2, 8, 2, SEGS=2), 6)
scan_case("seg_bf16_full", 1, 9, 4, 4, torch.bfloat16, True, True, small(4, 4, 4, 2), seg(2, 4, 2), 7)
decode_case(5)
''')


@pytest.fixture(scope="module")
def interpreted():
    lines = run_interpreted(_SCRIPT, timeout=300).splitlines()
    return {rec["case"]: rec for rec in (json.loads(line) for line in lines if line.startswith("{"))}


@pytest.mark.parametrize("case,tol", [("fp32_full", 1e-5), ("fp32_full_atomic", 1e-5), ("fp32_plain_n3", 1e-5), ("fp32_len1", 1e-5),
                                      ("bf16_full", 2e-2), ("seg_fp32_full", 1e-5), ("seg_fp32_groups", 1e-5),
                                      ("seg_bf16_full", 2e-2)])
def test_scan_matches_reference(interpreted, case, tol):
    rec = interpreted[case]
    bad = {k: v for k, v in rec["err"].items() if not v <= tol}  # NaN fails too
    assert not bad, f"{case}: relative errors above {tol}: {bad}"
    assert rec["state_dtype"] == "torch.float32"


@pytest.mark.parametrize("case", ["fp32_full", "seg_fp32_full"])
def test_scan_checks_every_gradient(interpreted, case):
    full = set(interpreted[case]["err"])
    assert {"y", "final_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias",
            "dinitial_state"} <= full


def test_unknown_backward_variant_is_a_value_error():
    from mambakit.ops.selective_scan.triton import default_config
    with pytest.raises(ValueError, match="backward variant"):
        default_config(16, 64, backward=True, variant="fast")
    assert default_config(16, 64, backward=True, variant="seg")["VARIANT"] == "seg"


def test_output_dtype_follows_u(interpreted):
    assert interpreted["bf16_full"]["y_dtype"] == "torch.bfloat16"


def test_decode_steps_match_sequence(interpreted):
    err = interpreted["decode"]["err"]
    assert all(v <= 1e-5 for v in err.values()), err


def _inputs(b=1, l=4, e=3, n=2):
    return (torch.randn(b, l, e), torch.randn(b, l, e), -torch.rand(e, n), torch.randn(b, l, n),
            torch.randn(b, l, n))


@pytest.mark.parametrize("bad,msg", [
    (lambda a: (a[0][0],) + a[1:], "u must be a"),
    (lambda a: a[:1] + (a[1][:, :2],) + a[2:], "delta has shape"),
    (lambda a: a[:2] + (torch.randn(3, 300),) + a[3:], "d_state"),
    (lambda a: a[:3] + (a[3][..., :1],) + a[4:], "B has shape"),
    (lambda a: tuple(x.double() for x in a), "dtype"),
])
def test_bad_input_is_a_value_error(bad, msg):
    from mambakit.ops.selective_scan.triton import selective_scan_triton
    with pytest.raises(ValueError, match=msg):
        selective_scan_triton(*bad(_inputs()))


def test_bad_decode_input_is_a_value_error():
    from mambakit.ops.decode_mamba1_triton import mamba1_decode_step_triton
    b, e, n, k, r = 2, 8, 4, 4, 2
    args = [torch.randn(b, e), torch.randn(b, e), torch.randn(b, e, k), torch.zeros(b, e, n),
            torch.randn(e, 1, k), torch.randn(e), torch.randn(r + 2 * n, e), torch.randn(e, r),
            torch.randn(e), -torch.rand(e, n), torch.randn(e), r]
    wrong = list(args)
    wrong[6] = torch.randn(r + n, e)  # x_proj_weight without C's rows
    with pytest.raises(ValueError, match="x_proj_weight"):
        mamba1_decode_step_triton(*wrong)
    wrong = list(args)
    wrong[3] = torch.zeros(b, e, n, dtype=torch.float16)
    with pytest.raises(ValueError, match="ssm_state"):
        mamba1_decode_step_triton(*wrong)
