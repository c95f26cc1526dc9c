"""The decode-step GEMV (ops/gemv_triton.py) under TRITON_INTERPRET=1 on the CPU, against F.linear
in float64, for 1 row (the elementwise path) and several rows (the tl.dot path), and ops.linear's
dispatch: off by default, on with MAMBAKIT_GEMV=on, never for many rows or with gradients.

Letters: m rows, k input width, o output width.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = textwrap.dedent(r'''
import json
import torch
from mambakit.ops.gemv_triton import gemv_triton

gen = torch.Generator().manual_seed(7)
out = {}
for name, m, k, o, bias in [("one_row", 1, 300, 70, True), ("one_row_3d", 1, 64, 33, False),
                            ("rows_5", 5, 200, 40, True), ("rows_16", 16, 48, 17, False)]:
    x = torch.randn(m, 1, k, generator=gen).bfloat16()
    w = torch.randn(o, k, generator=gen).bfloat16()
    b = torch.randn(o, generator=gen).bfloat16() if bias else None
    want = torch.nn.functional.linear(x.double(), w.double(), b.double() if bias else None)
    got = gemv_triton(x, w, b)
    out[name] = {"shape_ok": tuple(got.shape) == (m, 1, o) and got.dtype == torch.bfloat16,
                 "rel": ((got.double() - want).norm() / want.norm()).item()}
errors = {}
for name, args in {"fp32": (torch.randn(1, 8), torch.randn(4, 8)),
                   "rows": (torch.randn(17, 8).bfloat16(), torch.randn(4, 8).bfloat16()),
                   "width": (torch.randn(1, 8).bfloat16(), torch.randn(4, 9).bfloat16())}.items():
    try:
        gemv_triton(*args)
        errors[name] = None
    except ValueError as err:
        errors[name] = str(err)
out["errors"] = errors
print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["one_row", "one_row_3d", "rows_5", "rows_16"])
def test_gemv_matches_linear(results, case):
    assert results[case]["shape_ok"]
    assert results[case]["rel"] < 8e-3  # the bf16 rounding of the output, summed in fp32


@pytest.mark.parametrize("case,words", [("fp32", "bf16 or fp16"), ("rows", "at most 16 rows"),
                                        ("width", "weight must be (o, 8)")])
def test_gemv_bad_input(results, case, words):
    assert results["errors"][case] is not None and words in results["errors"][case]


def test_linear_dispatch_stays_on_torch_off_cuda(monkeypatch):
    """On the CPU ops.linear is F.linear, whatever MAMBAKIT_GEMV says."""
    import torch
    from mambakit import ops
    monkeypatch.setenv("MAMBAKIT_GEMV", "on")
    x, w, b = torch.randn(1, 8), torch.randn(4, 8), torch.randn(4)
    assert torch.equal(ops.linear(x, w, b), torch.nn.functional.linear(x, w, b))
