"""ssd_fn / ssd_ref refuse complex and integer inputs (as selective_scan does) instead of dropping an imaginary
part or rounding."""
from __future__ import annotations

import pytest
import torch

from mambakit import ops
from mambakit.ops.ssd.reference import ssd_ref


# --- SSD ----------------------------------------------------------------------------------------------

def _ssd_inputs(b=1, l=6, h=2, p=2, n=3):
    torch.manual_seed(0)
    return torch.randn(b, l, h, p), torch.rand(b, l, h), -torch.rand(h), torch.randn(b, l, 1, n), torch.randn(b, l, 1, n)


@pytest.mark.parametrize("fn", [ops.ssd_fn, ssd_ref])
def test_ssd_rejects_non_real_floating_inputs(fn):
    x, dt, A, B, C = _ssd_inputs()
    for args in ((x, dt, A.to(torch.complex64), B, C),   # imaginary part dropped with only a torch warning
                 (x, (dt * 4).long(), A, B, C),          # integer dt
                 (x, dt, A, B.to(torch.int32), C),
                 (x.to(torch.complex64), dt, A, B, C)):
        with pytest.raises(ValueError, match="ssd: .*(float|real)"):
            fn(*args)
    with pytest.raises(ValueError, match="ssd: D"):
        fn(x, dt, A, B, C, D=torch.ones(2, dtype=torch.long))
