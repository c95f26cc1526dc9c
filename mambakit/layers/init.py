"""Initializations shared by the SSM mixers, as the papers give them."""
from __future__ import annotations

import math

import torch


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    # softplus(y) = x  <=>  y = x + log(1 - exp(-x))
    return x + torch.log(-torch.expm1(-x))


def dt_bias_init(size: int, dt_min: float, dt_max: float, floor: float) -> torch.Tensor:
    """A bias whose softplus is log-uniform in [dt_min, dt_max] (Mamba, section 3.6)."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return inverse_softplus(dt.clamp(min=floor))
