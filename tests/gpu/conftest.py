"""GPU test settings: exact fp32 matmuls for the oracles, and the `cuda` marker's skip.

The repository's tests/conftest.py already skips `cuda` tests without a GPU; this file only
makes float32 oracles (chunked tier in fp32) use true fp32 matmuls, so their own error stays
far below the tolerances. Run on the device machine: pytest -m cuda tests/gpu
"""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _exact_fp32_matmul():
    if not torch.cuda.is_available():
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
