"""Shared fixtures: deterministic seeds, tiny models, the `cuda` marker's skip, and a runner for
scripts under Triton's interpreter."""
import os
import subprocess
import sys

import pytest
import torch

import mambakit


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config):
    # Tests use tiny tensors: one thread avoids OpenMP hand-offs that cost more than the work,
    # and keeps the suite steady on a busy 2-core machine.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on the device machine: pytest -m cuda tests/gpu)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def tiny_model(kind: str, **overrides) -> mambakit.LM:
    """A small random model of the given family with non-trivial norms, D and dt."""
    config = mambakit.ModelConfig.from_preset(f"{kind}-tiny", **overrides)
    return perturb_norms_(mambakit.LM(config).eval())


def perturb_norms_(model: mambakit.LM, scale: float = 0.1) -> mambakit.LM:
    """Norm weights and D moved away from their init (all ones), in place, so that a wrong wiring
    of them cannot hide behind the identity."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                p.add_(scale * torch.randn_like(p))
    return model


@pytest.fixture
def fake_graphs(monkeypatch):
    """Stand-ins for the CUDA-graph calls of mambakit.cuda_graphs, so graphed decoding runs on the
    CPU: a 'graph' whose replay reruns the captured step into the static output. Returns the list
    of captured steps."""
    from mambakit import cuda_graphs
    captures = []

    def capture(fn, device, pool=None):
        out = fn()
        captures.append(fn)
        return out, lambda: out.copy_(fn()), None

    monkeypatch.setattr(cuda_graphs, "_device_reason", lambda device: None)
    monkeypatch.setattr(cuda_graphs, "_warm_up", lambda fn, n, device: [fn() for _ in range(n)])
    monkeypatch.setattr(cuda_graphs, "_capture", capture)
    monkeypatch.setattr(cuda_graphs, "_graph_pool", lambda device: None)
    return captures


TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def run_interpreted(script: str, timeout: int = 600) -> str:
    """Run a Python script with TRITON_INTERPRET=1 (the Triton kernels on the CPU) and return its
    stdout. A subprocess, because the interpreter must be on before triton is first imported;
    the repository and tests/ are on its path, MAMBAKIT_BACKEND is left to the script."""
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([ROOT, TESTS, os.environ.get("PYTHONPATH", "")]))
    env.pop("MAMBAKIT_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
