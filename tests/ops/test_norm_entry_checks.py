"""rms_norm and gated_rms_norm on the torch tier: a weight or z of the wrong shape, or a bad group_size, raise
a ValueError at every size and dtype (the in-place path for large inputs broadcast a (1,) weight silently)."""
from __future__ import annotations

import pytest
import torch

from mambakit import ops


# --- norms ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 8), (300, 256)])  # below and above norm.BIG (the in-place path)
def test_norms_reject_a_weight_of_the_wrong_shape_at_any_size(shape):
    x, z = torch.randn(shape), torch.randn(shape)
    for fn in (lambda w: ops.gated_rms_norm(x, z, w), lambda w: ops.rms_norm(x, w),
               lambda w: ops.rms_norm(x.bfloat16(), w)):
        with pytest.raises(ValueError, match="weight"):
            fn(torch.ones(1))


def test_gated_norm_rejects_z_of_another_shape():
    x, z, w = torch.randn(5, 8), torch.randn(2, 5, 8), torch.ones(8)
    with pytest.raises(ValueError, match="z"):
        ops.gated_rms_norm(x, z, w)  # broadcast to (2, 5, 8) before
    with pytest.raises(ValueError, match="z"):
        ops.gated_rms_norm(z, x[:1], w)


def test_gated_norm_rejects_a_bad_group_size():
    x, z, w = torch.randn(5, 8), torch.randn(5, 8), torch.ones(8)
    for gs in (-2, 3, 4.0):
        with pytest.raises(ValueError, match="group_size"):
            ops.gated_rms_norm(x, z, w, group_size=gs)
