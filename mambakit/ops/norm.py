"""RMSNorm and the gated RMSNorm of Mamba-2.

Letters: e width of the normalized axis, g groups (normalized independently).

Both compute in fp32 and return the input dtype, as mamba_ssm and transformers do, so logits
match theirs in every precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x / rms(x) * weight over the last axis (..., e)."""
    dtype = x.dtype
    if dtype == torch.float32 and weight.dtype == torch.float32:
        # One fused op (x * rsqrt(mean x^2 + eps) * weight): the same products in the same order.
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-5,
                   group_size: int | None = None, norm_before_gate: bool = False) -> torch.Tensor:
    """Mamba-2's norm: rmsnorm(x * silu(z)) per group of group_size channels (default: whole e).

    norm_before_gate=True gives rmsnorm(x) * silu(z) instead.
    """
    dtype = x.dtype
    e = x.shape[-1]
    group_size = group_size or e
    if e % group_size:
        raise ValueError(f"gated_rms_norm: width {e} is not a multiple of group_size {group_size}")
    xf = x.float()
    if z is not None and not norm_before_gate:
        xf = xf * F.silu(z.float())
        if dtype == torch.float32 and weight.dtype == torch.float32 and group_size == e:
            return F.rms_norm(xf, (e,), weight, eps)  # as rms_norm above
    xg = xf.view(*xf.shape[:-1], e // group_size, group_size)
    xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)
    xf = xg.view(*xf.shape)
    if z is not None and norm_before_gate:
        xf = xf * F.silu(z.float())
    return weight * xf.to(dtype)
