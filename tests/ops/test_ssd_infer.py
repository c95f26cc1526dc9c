"""The inference path of the chunked SSD (chunked._ssd_infer: no autograd, CPU, g == 1) against
the sequential reference, and the cases that must not take it.

Letters: b batch, l length, h heads, p head dim, n state dim, g groups.
Chunks of 16 with sub-blocks of 4 (patched), so short inputs cross chunk and sub-block edges.
"""
from __future__ import annotations

import pytest
import torch

from mambakit.ops.ssd import chunked
from mambakit.ops.ssd.chunked import ssd_chunked
from mambakit.ops.ssd.reference import ssd_ref


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(chunked, "INFER_CHUNK", 16)
    monkeypatch.setattr(chunked, "INFER_SUB_BLOCK", 4)


def inputs(b, l, h, p, n, g=1, dtype=torch.float64, D="h", z=True, init=True, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    return dict(x=r(b, l, h, p), dt=r(b, l, h, scale=0.5) - 1.0,
                A=-torch.rand(h, generator=gen, dtype=torch.float64) * 3.8 - 0.2,
                B=r(b, l, g, n), C=r(b, l, g, n), D={"h": r(h), "hp": r(h, p), None: None}[D],
                z=r(b, l, h, p) if z else None, dt_bias=r(h, scale=0.3),
                initial_state=r(b, h, p, n) if init else None)


def close(got, want, rtol):
    for a, w in zip(got, want):
        assert a.shape == w.shape
        err = (a.double() - w.double()).abs().max().item()
        assert err <= rtol * w.double().abs().max().item(), f"max error {err:.3g}"


@pytest.mark.parametrize("l", [1, 4, 15, 16, 37, 64])
@pytest.mark.parametrize("D", ["h", "hp", None])
@pytest.mark.parametrize("z,init", [(True, True), (False, False)])
def test_matches_reference(l, D, z, init):
    args = inputs(2, l, 3, 2, 5, D=D, z=z, init=init, seed=l)
    with torch.no_grad():
        close(ssd_chunked(**args, chunk_size=256, dt_softplus=True), ssd_ref(**args, dt_softplus=True), 1e-10)


@pytest.mark.parametrize("chunk_size,sub", [(8, 4), (16, 16), (16, 3), (5, 4)])
def test_any_chunk_and_sub_block(monkeypatch, chunk_size, sub):
    monkeypatch.setattr(chunked, "INFER_SUB_BLOCK", sub)
    args = inputs(1, 41, 2, 3, 4, seed=chunk_size)
    with torch.no_grad():
        close(ssd_chunked(**args, chunk_size=chunk_size, dt_softplus=True), ssd_ref(**args, dt_softplus=True), 1e-10)


def test_float32_matches_the_autograd_path():
    args = inputs(1, 50, 4, 8, 6, dtype=torch.float32)
    with torch.no_grad():
        fast = ssd_chunked(**args, chunk_size=32, dt_softplus=True)
    slow = ssd_chunked(**{k: (v.requires_grad_() if v is not None else v) for k, v in args.items()},
                       chunk_size=32, dt_softplus=True)
    assert fast[0].dtype == torch.float32 and fast[1].dtype == torch.float32
    close(fast, [t.detach() for t in slow], 1e-5)


def test_inputs_untouched_and_path_taken(monkeypatch):
    args = inputs(1, 20, 2, 2, 3)
    before = {k: v.clone() for k, v in args.items() if v is not None}
    calls = []
    real = chunked._ssd_infer
    monkeypatch.setattr(chunked, "_ssd_infer", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        ssd_chunked(**args, chunk_size=16, dt_softplus=True)
    assert calls, "no-grad CPU call with g == 1 should take the inference path"
    for k, v in before.items():
        assert torch.equal(args[k], v), f"{k} was modified"


@pytest.mark.parametrize("case", ["groups", "growing_decay", "seq_idx"])
def test_other_cases_take_the_general_path(monkeypatch, case):
    monkeypatch.setattr(chunked, "_ssd_infer", lambda *a, **k: pytest.fail("inference path taken"))
    args = inputs(1, 20, 4, 2, 3, g=2 if case == "groups" else 1)
    # dt < 0 (no softplus, no clamp at 0): dt A > 0, decays that grow
    kw = dict(dt_limit=(-float("inf"), float("inf"))) if case == "growing_decay" else dict(dt_softplus=True)
    if case == "seq_idx":
        kw["seq_idx"] = torch.tensor([[0] * 7 + [1] * 13])
    with torch.no_grad():
        close(ssd_chunked(**args, chunk_size=16, **kw), ssd_ref(**args, **kw), 1e-10)


@pytest.mark.parametrize("inference_mode", [False, True])
def test_several_threads(inference_mode):
    """With intra-op threads the result is the same, and the caller's thread count is left alone."""
    args = inputs(2, 37, 5, 3, 4)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode(inference_mode), torch.no_grad():
            got = ssd_chunked(**args, chunk_size=16, dt_softplus=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    close(got, ssd_ref(**args, dt_softplus=True), 1e-10)
