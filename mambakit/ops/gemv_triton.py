"""A Triton matrix-vector product for the decode step: y = x @ W^T (+ bias) for a few rows.

Letters: m rows of x (the decode batch, m <= 16), k input width, o output width.

At batch 1 a decode step is a chain of matrix-vector products, each bound by reading its weight
once. cuBLAS picks split-K kernels for some of these shapes (a second reduction kernel) and
reached 55-67% of the H100's bandwidth on Mamba-2 1.3B's projections
(benchmarks/results/gpu_profile_decode-*). Here each program owns BO output rows and streams
their (BO, k) slab of W in (BO, BK) tiles, summing in fp32: one kernel, every weight byte read once.
Rows of x beyond 1 go through tl.dot (tensor cores, x padded to 16 rows): the bytes are the same.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

MAX_ROWS = 16  # beyond this a decode batch is a matmul: cuBLAS

_CONFIGS = [triton.Config({"BO": bo, "BK": bk}, num_warps=w, num_stages=s)
            for bo, bk, w, s in [(16, 256, 4, 4), (16, 512, 4, 3), (32, 256, 4, 3), (32, 128, 4, 4),
                                 (64, 128, 8, 3), (16, 1024, 8, 2)]]  # BO >= 16: tl.dot's minimum


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, O, K, stride_xm, stride_ym,
                 ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, BO: tl.constexpr, BK: tl.constexpr,
                 DOT_F32: tl.constexpr = False):
    offs_o = tl.program_id(0) * BO + tl.arange(0, BO)
    omask = offs_o < O
    w_rows = w_ptr + offs_o.to(tl.int64)[:, None] * K
    if ROWS == 1:
        acc2 = tl.zeros((BO, BK), dtype=tl.float32)  # reduced once at the end, not per tile
        for k0 in range(0, K, BK):
            offs_k = k0 + tl.arange(0, BK)
            kmask = offs_k < K
            w = tl.load(w_rows + offs_k[None, :], mask=omask[:, None] & kmask[None, :], other=0.0)
            x = tl.load(x_ptr + offs_k, mask=kmask, other=0.0)
            acc2 += w.to(tl.float32) * x.to(tl.float32)[None, :]
        acc = tl.sum(acc2, axis=1)  # (BO,)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_o, mask=omask, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs_o, acc.to(y_ptr.dtype.element_ty), mask=omask)
    else:
        offs_m = tl.arange(0, 16)
        mmask = offs_m < M
        acc = tl.zeros((16, BO), dtype=tl.float32)
        for k0 in range(0, K, BK):
            offs_k = k0 + tl.arange(0, BK)
            kmask = offs_k < K
            w = tl.load(w_rows + offs_k[None, :], mask=omask[:, None] & kmask[None, :], other=0.0)  # (BO, BK)
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mmask[:, None] & kmask[None, :],
                        other=0.0)  # (16, BK)
            if DOT_F32:  # the interpreter's bf16 dot is wrong (numpy has no bf16): exact fp32 there
                acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
            else:
                acc += tl.dot(x.to(w.dtype), tl.trans(w))
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_o, mask=omask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_o[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=mmask[:, None] & omask[None, :])


# Tuned per (o, k, row path) at first use (a decode step's warm-up, before any CUDA-graph capture).
_gemv_tuned = triton.autotune(configs=_CONFIGS, key=["O", "K", "ROWS"])(_gemv_kernel)


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x (..., k) with at most MAX_ROWS rows; weight (o, k) in bf16 or
    fp16 (tl.dot would round fp32 to tf32), x of the same dtype."""
    k = x.shape[-1]
    if weight.dtype not in (torch.bfloat16, torch.float16) or x.dtype != weight.dtype:
        raise ValueError(f"gemv_triton: weight and x must both be bf16 or fp16, got {weight.dtype} and {x.dtype}")
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"gemv_triton: weight must be (o, {k}), got {tuple(weight.shape)}")
    o = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"gemv_triton: bias must be ({o},), got {tuple(bias.shape)}")
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"gemv_triton: at most {MAX_ROWS} rows, got {m}")
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    w = weight if weight.is_contiguous() else weight.contiguous()
    y = torch.empty(m, o, device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
    args = (x2, w, bias if bias is not None else w, y, m, o, k, x2.stride(0), y.stride(0))
    flags = dict(ROWS=1 if m == 1 else 16, HAS_BIAS=bias is not None)
    if os.environ.get("TRITON_INTERPRET") == "1":  # the autotuner times on a GPU: one fixed config
        _gemv_kernel[(triton.cdiv(o, 16),)](*args, **flags, BO=16, BK=64, DOT_F32=True)
    else:
        _gemv_tuned[lambda meta: (triton.cdiv(o, meta["BO"]),)](*args, **flags)
    return y.reshape(*x.shape[:-1], o)


__all__ = ["gemv_triton", "MAX_ROWS"]
