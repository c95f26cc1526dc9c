"""RMSNorm as a module. Letters: d width."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.norm import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d)
        return rms_norm(x, self.weight, self.eps)
