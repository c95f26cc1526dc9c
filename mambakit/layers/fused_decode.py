"""When a block's decode step may run fused around its projections (ops/gemv_triton.py).

Letters: b batch, d model width.

Block.forward gives one new token per sequence (x (b, 1, d), the residual stream) to its mixer's
`fused_step(x, norm, cache)`, which returns x + mixer(norm(x)) computed in place in x, or None
when it cannot fuse (then the unfused step runs). A mixer may fuse when `ready` says so: the
triton backend (CUDA, or the interpreter when forced), no autograd, at most
ops.FUSED_GEMV_MAX_ROWS sequences, and projections that are plain nn.Linear (an adapter's or a hook's call must not be skipped) with
the norm's dtype, since the fused kernel feeds the norm's output to the product directly.
MAMBAKIT_FUSED_DECODE=0 turns the path off (benchmarks compare the two; a debugging aid).
"""
from __future__ import annotations

import os

import torch

from .. import ops
from ..ops.cpu_linear import is_plain_linear

def on_kernel_device(x: torch.Tensor) -> bool:
    """Where the fused kernels can run at all: CUDA, or Triton's interpreter. Block.forward asks this
    first, so that the CPU's decode step (its C loops) pays this one check a layer, not ready()."""
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def ready(x: torch.Tensor, norm, *linears) -> bool:
    if not on_kernel_device(x):
        return False
    if os.environ.get("MAMBAKIT_FUSED_DECODE", "1") == "0":
        return False
    if (x.dim() != 3 or x.shape[1] != 1 or x.shape[0] > ops.FUSED_GEMV_MAX_ROWS or not x.is_contiguous()
            or torch.is_grad_enabled()):
        return False
    if ops.resolve_backend(None, x, "fused decode step") != "triton":
        return False
    wdt = norm.weight.dtype
    return all(is_plain_linear(m) and m.weight.dtype == wdt and m.weight.is_contiguous() for m in linears)


def norm_arg(norm) -> tuple:
    """The (weight, eps) of a block's RMSNorm, as fused_gemv's norm prologue takes it."""
    return norm.weight, norm.eps
