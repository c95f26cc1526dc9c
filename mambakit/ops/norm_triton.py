"""Mamba-2's gated RMSNorm as Triton kernels, forward and backward, one pass each.

Letters: e width of the normalized axis, g groups (normalized independently), m rows
(every leading axis flattened).

    u = x * silu(z)      (or u = x when z is None; norm_before_gate gates after the norm)
    y = weight * (u / rms_group(u)).to(x.dtype)        as ops.norm.gated_rms_norm

All math in fp32; the output dtype is that of weight * x (as the torch version). One program
normalizes BM rows of one group; the backward recomputes u from x and z and keeps only the
per-row 1/rms from the forward; the weight gradient is summed per program, then in torch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernel_inputs import check_kernel_tensors


@triton.jit
def _group_tile(M, E, GS, BM: tl.constexpr, BG: tl.constexpr):
    """This program's tile: BM rows of the (M, E) input, one group of GS columns (grid axis 1).
    -> rows, group index, columns, row mask, column mask, tile mask, tile offsets."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    gi = tl.program_id(1)
    cols = gi * GS + tl.arange(0, BG)
    mr = rows < M
    mcol = tl.arange(0, BG) < GS
    m2 = mr[:, None] & mcol[None, :]
    off = rows.to(tl.int64)[:, None] * E + cols[None, :]
    return rows, gi, cols, mr, mcol, m2, off


@triton.jit
def _gnorm_fwd_kernel(x_ptr, z_ptr, w_ptr, y_ptr, rstd_ptr, M, E, GS, eps,
                      BM: tl.constexpr, BG: tl.constexpr, HAS_Z: tl.constexpr, BEFORE_GATE: tl.constexpr,
                      CAST_X: tl.constexpr = False):
    """CAST_X: x is first rounded to y's dtype (x.to(weight.dtype), as a block does with its fp32
    residual before the norm), and the normalized value is rounded to y's dtype too."""
    rows, gi, cols, mr, mcol, m2, off = _group_tile(M, E, GS, BM, BG)
    u = tl.load(x_ptr + off, mask=m2, other=0.0)
    if CAST_X:
        u = u.to(y_ptr.dtype.element_ty)
    u = u.to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32)
        if not BEFORE_GATE:
            u = u * z * tl.sigmoid(z)
    rstd = 1.0 / tl.sqrt(tl.sum(u * u, 1) / GS + eps)
    tl.store(rstd_ptr + rows * (E // GS) + gi, rstd, mask=mr)
    v = u * rstd[:, None]
    if HAS_Z:
        if BEFORE_GATE:
            v = v * z * tl.sigmoid(z)
    w = tl.load(w_ptr + cols, mask=mcol, other=0.0).to(tl.float32)
    if CAST_X:
        v = v.to(y_ptr.dtype.element_ty)
    else:
        v = v.to(x_ptr.dtype.element_ty)
    y = v.to(tl.float32) * w[None, :]
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _gnorm_bwd_kernel(x_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dx_ptr, dz_ptr, dw_ptr, M, E, GS,
                      BM: tl.constexpr, BG: tl.constexpr, HAS_Z: tl.constexpr, BEFORE_GATE: tl.constexpr):
    pid = tl.program_id(0)
    rows, gi, cols, mr, mcol, m2, off = _group_tile(M, E, GS, BM, BG)
    x = tl.load(x_ptr + off, mask=m2, other=0.0).to(tl.float32)
    u = x
    if HAS_Z:
        z = tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32)
        sz = tl.sigmoid(z)
        if not BEFORE_GATE:
            u = x * z * sz
    rstd = tl.load(rstd_ptr + rows * (E // GS) + gi, mask=mr, other=0.0)
    w = tl.load(w_ptr + cols, mask=mcol, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + off, mask=m2, other=0.0).to(tl.float32)
    xhat = u * rstd[:, None]
    g = dy * w[None, :]  # gradient of the normalized (and, before-gate, gated) value
    if HAS_Z:
        if BEFORE_GATE:
            dz = g * xhat * sz * (1.0 + z * (1.0 - sz))
            tl.store(dw_ptr + pid * E + cols, tl.sum(dy * xhat * z * sz, 0), mask=mcol)
            g = g * z * sz
        else:
            tl.store(dw_ptr + pid * E + cols, tl.sum(dy * xhat, 0), mask=mcol)
    else:
        tl.store(dw_ptr + pid * E + cols, tl.sum(dy * xhat, 0), mask=mcol)
    du = rstd[:, None] * (g - xhat * (tl.sum(g * xhat, 1) / GS)[:, None])
    dx = du
    if HAS_Z:
        if not BEFORE_GATE:
            dx = du * z * sz
            dz = du * x * sz * (1.0 + z * (1.0 - sz))
        tl.store(dz_ptr + off, dz.to(dz_ptr.dtype.element_ty), mask=m2)
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=m2)


def _launch(x, gs: int) -> tuple[int, int, int, int, int]:
    """(m rows, e width, BG, BM, warps) of a launch over x (..., e) in groups of gs."""
    e = x.shape[-1]
    bg = triton.next_power_of_2(gs)
    return x.numel() // e, e, bg, max(1, min(64, 8192 // bg)), 4 if bg <= 1024 else 8


class _GatedNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, weight, eps, gs, before_gate):
        m, e, bg, bm, warps = _launch(x, gs)
        out_dtype = torch.promote_types(weight.dtype, x.dtype)
        y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
        rstd = torch.empty(m, e // gs, device=x.device, dtype=torch.float32)
        _gnorm_fwd_kernel[(triton.cdiv(m, bm), e // gs)](
            x, z if z is not None else x, weight, y, rstd, m, e, gs, eps,
            BM=bm, BG=bg, HAS_Z=z is not None, BEFORE_GATE=before_gate, num_warps=warps)
        ctx.save_for_backward(x, z, weight, rstd)
        ctx.cfg = (gs, before_gate)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, z, weight, rstd = ctx.saved_tensors
        gs, before_gate = ctx.cfg
        m, e, bg, bm, warps = _launch(x, gs)
        nprog = triton.cdiv(m, bm)
        dx = torch.empty_like(x)
        dz = torch.empty_like(z) if z is not None else None
        dw = torch.empty(nprog, e, device=x.device, dtype=torch.float32)
        _gnorm_bwd_kernel[(nprog, e // gs)](
            x, z if z is not None else x, weight, rstd, dy.contiguous(), dx, dz if dz is not None else dx, dw,
            m, e, gs, BM=bm, BG=bg, HAS_Z=z is not None, BEFORE_GATE=before_gate, num_warps=warps)
        return dx, dz, dw.sum(0).to(weight.dtype), None, None, None


def gated_rms_norm_triton(x, z, weight, eps=1e-5, group_size=None, norm_before_gate=False):
    """Triton twin of ops.norm.gated_rms_norm: rmsnorm(x * silu(z)) per group, times weight.

    x, z (..., e); weight (e,); group_size divides e (default e).
    """
    e = x.shape[-1]
    gs = group_size or e
    if e % gs:
        raise ValueError(f"gated_rms_norm_triton: width {e} is not a multiple of group_size {gs}")
    if tuple(weight.shape) != (e,):
        raise ValueError(f"gated_rms_norm_triton: weight must be ({e},), got {tuple(weight.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"gated_rms_norm_triton: z must have the shape of x {tuple(x.shape)}, got {tuple(z.shape)}")
    check_kernel_tensors("gated_rms_norm_triton", dict(x=x, z=z, weight=weight), activations=("x", "z", "weight"))
    return _GatedNormFn.apply(x.contiguous(), z.contiguous() if z is not None else None, weight.contiguous(),
                              float(eps), int(gs), bool(norm_before_gate))


def rms_norm_cast_triton(x, weight, eps=1e-5):
    """weight * rmsnorm(x.to(weight.dtype)) in one kernel, forward only (inference): a block's norm
    of its residual stream (fp32) without the two casts and five elementwise kernels of the torch
    form, as ops.norm.rms_norm(x.to(weight.dtype), weight, eps) computes it. x (..., e); weight (e,)."""
    e = x.shape[-1]
    if tuple(weight.shape) != (e,):
        raise ValueError(f"rms_norm_cast_triton: weight must be ({e},), got {tuple(weight.shape)}")
    x = x.contiguous()
    m, e, bg, bm, warps = _launch(x, e)
    y = torch.empty(x.shape, device=x.device, dtype=weight.dtype)
    rstd = torch.empty(m, device=x.device, dtype=torch.float32)
    _gnorm_fwd_kernel[(triton.cdiv(m, bm), 1)](x, x, weight, y, rstd, m, e, e, float(eps), BM=bm, BG=bg,
                                                HAS_Z=False, BEFORE_GATE=False, CAST_X=True, num_warps=warps)
    return y
