"""The fused GEMV's tile choice (ops/gemv_triton.default_config, launch_config) and the override the
decode profiler applies from a sweep's file (benchmarks/gpu_profile_decode.py --gemv-configs): on the CPU,
no kernel runs. Session 14 lost a device run to an override whose signature lagged default_config's.

Letters: m rows, k input width, o output width.
"""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gemv(monkeypatch):
    import mambakit.ops.gemv_triton as gemv
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the GPU's tiles, not the interpreter's
    monkeypatch.setattr(gemv, "default_config", gemv.default_config)  # restored after the override
    return gemv


@pytest.mark.parametrize("o,k,form", [(8512, 2048, dict(prologue=1, conv=True)), (2048, 4096, dict(prologue=2)),
                                      (8192, 2048, dict(prologue=1)), (2048, 8192, {}), (2048, 2048, dict(prologue=1)),
                                      (512, 2048, dict(prologue=1)), (768, 1536, {})])
def test_default_tiles_launch_at_every_row_count(gemv, o, k, form):
    assert gemv.default_config(o, k, 1, **form) == gemv.default_config(o, k, **form)  # rows default to one
    for m in range(1, gemv.MAX_ROWS + 1):
        group = k if form.get("prologue") else None
        bo, bk, warps, rb = gemv.launch_config(o, k, m, None, group, **form)
        mp = 1 << (m - 1).bit_length()
        assert min(bo, warps, rb) >= 1 and 16 <= bk <= max(16, 1 << (k - 1).bit_length()) and bk & (bk - 1) == 0, \
            (m, bo, bk, warps, rb)
        if m > 1:  # several rows' products, summed elementwise, stay within 64 fp32 a thread
            assert mp * bo * bk <= 64 * 32 * warps, (m, bo, bk, warps)
        if group is not None:
            assert group % bk == 0  # a tile never straddles two of the norm's groups


def test_profiler_override_keeps_the_signature(gemv, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_profile_decode", ROOT / "benchmarks" / "gpu_profile_decode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    default = gemv.default_config
    table = tmp_path / "best.json"
    # tiles no default picks, so that each lookup is seen
    table.write_text(json.dumps({"8512,2048,2": [16, 128, 4], "2048,2048": [8, 1024, 8, 2],
                                 "2048,2048,4,1": [32, 64, 8], "2048,2048,4": [1, 2048, 4]}))
    bench.use_gemv_configs(str(table))
    assert gemv.default_config(8512, 2048, 2, prologue=1, conv=True) == (16, 128, 4)  # o,k,m: those rows
    assert gemv.default_config(8512, 2048, 4, prologue=1, conv=True) == default(8512, 2048, 4, prologue=1, conv=True)
    assert gemv.default_config(2048, 2048, 3) == (8, 1024, 8, 2)  # o,k: any rows
    assert gemv.default_config(2048, 2048, 4, prologue=1) == (32, 64, 8)  # o,k,m,prologue: that form
    assert gemv.default_config(2048, 2048, 4) == (1, 2048, 4)  # another form: o,k,m
    # the launcher calls it with the form's keywords, as fused_gemv does
    assert gemv.launch_config(8512, 2048, 2, None, 2048, prologue=1, conv=True) == (16, 128, 4, 1)
