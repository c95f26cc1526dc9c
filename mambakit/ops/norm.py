"""RMSNorm and the gated RMSNorm of Mamba-2.

Letters: e width of the normalized axis, g groups (normalized independently).

Both compute in fp32 and return the input dtype, as mamba_ssm and transformers do, so logits
match theirs in every precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


# Elements from which the in-place inference path pays: below it, the fewest ops win.
BIG = 1 << 16


def _no_grad(*tensors) -> bool:
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)


def _rsqrt_mean_square(xg: torch.Tensor, eps: float) -> torch.Tensor:
    """rsqrt(mean(xg^2) + eps) over the last axis, keepdim, without a (..., e) temporary."""
    r = torch.linalg.vector_norm(xg, dim=-1, keepdim=True)  # (..., 1)
    return r.square_().div_(xg.shape[-1]).add_(eps).rsqrt_()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x / rms(x) * weight over the last axis (..., e)."""
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"rms_norm: weight must be ({x.shape[-1]},), got {tuple(weight.shape)}")
    dtype = x.dtype
    if dtype == torch.float32 and weight.dtype == torch.float32:
        if x.numel() >= BIG and _no_grad(x, weight):
            # Inference on many tokens: one (..., e) buffer, written in place. Each temporary of a
            # long prompt is megabytes of fresh pages, which cost more than the arithmetic on them.
            return (x * _rsqrt_mean_square(x, eps)).mul_(weight)
        # Few ops, all in C++ (the same products in the same order as below): best for a decode step.
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
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or e % group_size:
        raise ValueError(f"gated_rms_norm: group_size must be a positive int dividing the width {e}, got {group_size!r}")
    if weight.shape != (e,):
        raise ValueError(f"gated_rms_norm: weight must be ({e},), got {tuple(weight.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"gated_rms_norm: z must have the shape of x {tuple(x.shape)}, got {tuple(z.shape)}")
    if dtype == torch.float32 and weight.dtype == torch.float32 and x.numel() >= BIG and _no_grad(x, z, weight):
        # Inference, fp32: one (..., e) buffer, every later step in place (see rms_norm).
        gate_first = z is not None and not norm_before_gate
        xf = F.silu(z.float()).mul_(x) if gate_first else x.clone()
        xg = xf.view(*xf.shape[:-1], e // group_size, group_size)
        xg.mul_(_rsqrt_mean_square(xg, eps))
        if z is not None and norm_before_gate:
            xf.mul_(F.silu(z.float()))
        return xf.mul_(weight)
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
