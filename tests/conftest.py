"""Shared fixtures: deterministic seeds, tiny models, and the `cuda` marker's skip."""
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
    model = mambakit.LM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                p.add_(0.1 * torch.randn_like(p))
    return model
