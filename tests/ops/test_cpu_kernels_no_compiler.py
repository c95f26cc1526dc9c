"""The CPU C kernels when no C compiler is there: the torch paths run, with one note at the default log level."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


# --- the C kernels without a C compiler ---------------------------------------------------------------

_NO_CC_SCRIPT = textwrap.dedent("""
    import logging, torch
    from mambakit.config import ModelConfig
    from mambakit.model import LM
    from mambakit.ops import cpu_kernels
    torch.manual_seed(0)
    m = LM(ModelConfig.from_preset("mamba-tiny", vocab_size=50, n_layer=1)).eval()
    ids = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        full = m(ids)
        cache = m.allocate_cache(1)
        m(ids[:, :5], cache=cache)
        last = m(ids[:, 5:], cache=cache)
    assert not cpu_kernels.available() and not cpu_kernels.available()
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    print("RAN")
""")


@pytest.mark.parametrize("how", ["no compiler on PATH", "CC names nothing"])
def test_no_c_compiler_runs_torch_paths_with_one_visible_note(how, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "MAMBAKIT_CPU_KERNELS")}
    env["MAMBAKIT_CACHE"] = str(tmp_path)  # no kernels built before
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    if how == "no compiler on PATH":
        env["PATH"] = str(tmp_path / "empty-bin")
    else:
        env["CC"] = str(tmp_path / "no-such-cc")
    done = subprocess.run([sys.executable, "-c", _NO_CC_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RAN" in done.stdout
    notes = [line for line in done.stderr.splitlines() if "mambakit" in line and "CPU kernels" in line]
    assert len(notes) == 1, done.stderr[-2000:]  # said once, at the default logging level
    assert "compiler" in notes[0] and "MAMBAKIT_CPU_KERNELS=off" in notes[0], notes[0]
