"""RMSNorm as a module. Letters: d width."""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..ops import cpu_kernels
from ..ops.norm import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d)
        return rms_norm(x, self.weight, self.eps)

    def normalize_residual(self, x: torch.Tensor) -> torch.Tensor:
        """self(x.to(weight dtype)): the norm of a block's residual stream (fp32 with
        residual_in_fp32). In inference on CUDA one Triton kernel does the cast and the norm: at
        batch 1 a decode step's norms are otherwise a dozen tiny kernels per layer."""
        w = self.weight
        if x.is_cuda and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)) \
                and ops.resolve_backend(None, x, "rms_norm") == "triton":
            from ..ops.norm_triton import rms_norm_cast_triton
            return rms_norm_cast_triton(x, w, self.eps)
        if x.is_contiguous() and w.is_contiguous() and w.shape[0] == x.shape[-1] and cpu_kernels.usable(x, w):
            # fp32 CPU inference: one compiled pass instead of F.rms_norm's several ops (a decode
            # step calls this 25 times a token on 768 numbers each).
            return cpu_kernels.rms_norm(x, w, self.eps, check=False)
        return self(x.to(w.dtype))
