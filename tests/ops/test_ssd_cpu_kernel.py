"""The C SSD prefill (cpu_kernels.ssd_chunks, taken by ssd_chunked for fp32 CPU inference with one
group) against the sequential reference in float64, for outputs and final states.

Letters: b batch, l length, h heads, p head dim, n state dim.
Chunks of 16 (patched) so short inputs cross chunk edges; inputs are column slices of one
in_proj-like tensor, as the Mamba-2 layer passes them.
"""
from __future__ import annotations

import pytest
import torch

from mambakit.ops import cpu_kernels
from mambakit.ops.ssd import chunked
from mambakit.ops.ssd.chunked import ssd_chunked
from mambakit.ops.ssd.reference import ssd_ref

pytestmark = pytest.mark.skipif(not cpu_kernels.ssd_chunks_ready(), reason="no C compiler or no sgemm_ in torch")


def inputs(b, l, h, p, n, D="h", z=False, init=True, seed=0):
    """fp32 x, B, C as strided slices of one (b, l, h p + 2 n + 3) tensor."""
    gen = torch.Generator().manual_seed(seed)
    e = h * p
    whole = torch.randn(b, l, e + 2 * n + 3, generator=gen)
    return dict(x=whole[..., :e].unflatten(-1, (h, p)), dt=torch.randn(b, l, h, generator=gen) * 0.5 - 1.0,
                A=-torch.rand(h, generator=gen) * 3.8 - 0.2,
                B=whole[..., e:e + n].unsqueeze(2), C=whole[..., e + n:e + 2 * n].unsqueeze(2),
                D={"h": torch.randn(h, generator=gen), "hp": torch.randn(h, p, generator=gen), None: None}[D],
                z=torch.randn(b, l, h, p, generator=gen) if z else None, dt_bias=torch.randn(h, generator=gen) * 0.3,
                initial_state=torch.randn(b, h, p, n, generator=gen) if init else None)


def double(args):
    return {k: (v.double() if v is not None else v) for k, v in args.items()}


def assert_near(got, ref):
    """fp32 results within 1e-4 of the float64 reference, relative to its largest entry."""
    for a, r in zip(got, ref):
        torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-4 * r.abs().max().item())


def matches_reference(args, threads: int) -> None:
    """ssd_chunked (fp32, inference) == ssd_ref (float64) with `threads` intra-op threads."""
    torch.set_num_threads(threads)
    with torch.inference_mode():
        got = ssd_chunked(**args, dt_softplus=True)
    assert_near(got, ssd_ref(**double(args), dt_softplus=True))


def run_apart(setup: str, env: dict, **case) -> None:
    """matches_reference(inputs(**case)) in a fresh process after `setup` (the kernels are built once
    per process, and OpenMP reads its environment once)."""
    import os
    import subprocess
    import sys
    threads = case.pop("threads")
    script = (f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n{setup}\n"
              f"from test_ssd_cpu_kernel import inputs, matches_reference\n"
              f"matches_reference(inputs(**{case!r}), {threads})\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, **env), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture
def c_calls(monkeypatch):
    """The C path, counted; chunks of 16."""
    monkeypatch.setattr(chunked, "C_CHUNK", 16)
    calls = []
    real = cpu_kernels.ssd_chunks
    monkeypatch.setattr(cpu_kernels, "ssd_chunks", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("l", [1, 7, 16, 17, 63, 257])
@pytest.mark.parametrize("D,z,init", [("h", False, True), ("hp", True, False), (None, False, False), ("h", True, True)])
def test_matches_reference(c_calls, l, D, z, init):
    args = inputs(2, l, 3, 8, 5, D=D, z=z, init=init, seed=l)
    with torch.inference_mode():
        y, state = ssd_chunked(**args, chunk_size=256, dt_softplus=True)
    y_ref, state_ref = ssd_ref(**double(args), dt_softplus=True)
    assert c_calls and y.dtype == torch.float32 and state.shape == state_ref.shape
    assert_near((y, state), (y_ref, state_ref))


def test_model_widths_and_threads(c_calls):
    """mamba2-130m's head layout (h 24, p 64, n 128) over chunks of 64, with 1 and 2 threads."""
    chunked.C_CHUNK = 64
    args = inputs(1, 200, 24, 64, 128, seed=3)
    y_ref, state_ref = ssd_ref(**double(args), dt_softplus=True)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                y, state = ssd_chunked(**args, dt_softplus=True)
            assert_near((y, state), (y_ref, state_ref))
    finally:
        torch.set_num_threads(before)
    assert len(c_calls) == 2


def test_inputs_untouched_and_other_cases_keep_the_torch_path(c_calls):
    args = inputs(1, 20, 2, 4, 3)
    before = {k: v.clone() for k, v in args.items() if v is not None}
    with torch.inference_mode():
        ssd_chunked(**args, dt_softplus=True)
    assert len(c_calls) == 1
    for k, v in before.items():
        assert torch.equal(args[k], v), f"{k} was modified"
    with torch.inference_mode():
        ssd_chunked(**double(args), dt_softplus=True)  # float64: the torch loop
        ssd_chunked(**{**args, "x": args["x"].contiguous().transpose(2, 3).contiguous().transpose(2, 3)},
                    dt_softplus=True)  # (h, p) rows not contiguous
    assert len(c_calls) == 1


def test_a_build_without_openmp_takes_every_head(tmp_path):
    """Without OpenMP the heads' parallel block runs once: it must cover all heads whatever the
    thread count."""
    setup = ("from mambakit.ops import cpu_kernels\ncpu_kernels._process_holds_libgomp = lambda: False\n"
             "assert cpu_kernels.ssd_chunks_ready() and not cpu_kernels._openmp")
    run_apart(setup, {"MAMBAKIT_CACHE": str(tmp_path)}, b=1, l=40, h=5, p=8, n=6, seed=1, threads=2)


def test_b_or_c_strides_no_blas_can_take_keep_the_torch_path(c_calls):
    """B expanded along the length (stride 0) or a row stride below n is no valid leading dimension
    for sgemm (MKL computes nothing then): those calls stay on the torch loop, and are right."""
    args = inputs(1, 9, 2, 4, 3)
    for name in ("B", "C"):
        bad = dict(args, **{name: args[name][:, :1].expand(-1, 9, -1, -1)})
        with torch.inference_mode():
            y, state = ssd_chunked(**bad, dt_softplus=True)
        assert_near((y, state), ssd_ref(**double(bad), dt_softplus=True))
    assert not c_calls


def test_fewer_threads_started_than_asked_still_cover_every_head():
    """OMP_THREAD_LIMIT=1 with 3 threads asked: the one thread started takes every block of heads."""
    run_apart("", {"OMP_THREAD_LIMIT": "1"}, b=1, l=40, h=8, p=8, n=6, seed=2, threads=3)


@pytest.mark.parametrize("c_path", [True, False])
def test_huge_decays_stay_finite_and_precise(monkeypatch, c_path):
    """A finite but huge dt A (A -3e38) made the chunk's cumsum -inf and its differences NaN, and one
    dt of 1e6 swamped it (1e-2 relative error after it); held at 2 floor, both paths stay exact."""
    if not c_path:
        monkeypatch.setattr(chunked, "_c_path_fits", lambda *a: False)
    monkeypatch.setattr(chunked, "C_CHUNK", 16)
    args = inputs(1, 37, 3, 4, 5, seed=7)
    args["A"][0] = -3e38
    dt = torch.nn.functional.softplus(args.pop("dt")) + 0.01
    dt[0, 3, 1] = 1e6
    args.pop("dt_bias")
    with torch.inference_mode():
        y, state = ssd_chunked(dt=dt, **args)
    y_ref, state_ref = ssd_ref(dt=dt.double(), **double(args))
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    assert_near((y, state), (y_ref, state_ref))
