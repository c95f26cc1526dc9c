"""One Mamba-1 decode step for a batch, fused in Triton (two launches).

Letters: b batch, e inner width, n state dim, k conv width, r dt rank.

    x, z: (b, e) this token's in_proj halves; conv_state: (b, e, k) the last k conv
    inputs, newest last (shifted in place); ssm_state: (b, e, n) fp32 (updated in place);
    conv_weight: (e, k) or (e, 1, k); conv_bias: (e,) or None; x_proj_weight: (r + 2n, e);
    dt_proj_weight: (e, r); dt_proj_bias: (e,) or None (the delta bias); A: (e, n), already
    negative (A = -exp(A_log)); D: (e,) or None. Returns y (b, e) in x's dtype.

    conv_state <- [conv_state[..., 1:], x];  xc = silu(conv_state . w + conv_bias)
    (dt_low, B, C) = x_proj_weight @ xc;  dt = softplus(dt_proj_weight @ dt_low + dt_proj_bias)
    h <- exp(dt A) h + dt B xc;  y = (C . h + D xc) * silu(z)

x_proj reduces over all of e before dt can be formed, and Triton has no grid-wide
barrier, so the step is two kernels: (1) conv-state shift, conv, SiLU and x_proj as
split-e partial sums; (2) the partials' reduction, dt_proj, softplus, the state update
and the gated output. Nothing else is launched (no memset, no cuBLAS call).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernel_inputs import check_kernel_tensors


@triton.jit
def _conv_xproj_kernel(x_ptr, cs_ptr, cw_ptr, cb_ptr, xw_ptr, xc_ptr, part_ptr,
                       NB, E, K, R2N, sx_b, scs_b, scs_e, scs_k,
                       HAS_CONV_BIAS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_J: tl.constexpr):
    pid_e = tl.program_id(0)
    bid = tl.program_id(1)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_k = tl.arange(0, BLOCK_K)
    e_mask = offs_e < E
    cs = cs_ptr + bid.to(tl.int64) * scs_b + offs_e[:, None] * scs_e
    # shift the conv state left by one and append x
    old = tl.load(cs + (offs_k[None, :] + 1) * scs_k, mask=e_mask[:, None] & (offs_k[None, :] + 1 < K),
                  other=0.0)
    x = tl.load(x_ptr + bid.to(tl.int64) * sx_b + offs_e, mask=e_mask, other=0.0)
    new = tl.where(offs_k[None, :] == K - 1, x[:, None].to(old.dtype), old)  # (e, k)
    tl.debug_barrier()  # every thread has read the old state before anyone overwrites it
    tl.store(cs + offs_k[None, :] * scs_k, new, mask=e_mask[:, None] & (offs_k[None, :] < K))
    w = tl.load(cw_ptr + offs_e[:, None] * K + offs_k[None, :], mask=e_mask[:, None] & (offs_k[None, :] < K),
                other=0.0).to(tl.float32)
    xc = tl.sum(new.to(tl.float32) * w, axis=1)  # (e,)
    if HAS_CONV_BIAS:
        xc += tl.load(cb_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32)
    xc = xc * tl.sigmoid(xc)
    xc = tl.where(e_mask, xc, 0.0)
    tl.store(xc_ptr + bid * E + offs_e, xc, mask=e_mask)
    # x_proj on this block of e: partial sums, reduced by the second kernel
    part = part_ptr + (pid_e * NB + bid) * R2N
    for j0 in range(0, R2N, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        wj = tl.load(xw_ptr + offs_j[:, None].to(tl.int64) * E + offs_e[None, :],
                     mask=(offs_j < R2N)[:, None] & e_mask[None, :], other=0.0).to(tl.float32)  # (j, e)
        tl.store(part + offs_j, tl.sum(wj * xc[None, :], axis=1), mask=offs_j < R2N)


@triton.jit
def _ssm_step_kernel(xc_ptr, z_ptr, part_ptr, dtw_ptr, dtb_ptr, A_ptr, D_ptr, h_ptr, y_ptr,
                     NB, E, N, R, R2N, n_parts, sz_b, sy_b,
                     HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_DTB: tl.constexpr,
                     BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_P: tl.constexpr, A_IS_LOG: tl.constexpr = False):
    pid_e = tl.program_id(0)
    bid = tl.program_id(1)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    e_mask = offs_e < E
    n_mask = offs_n < N
    r_mask = offs_r < R
    # (dt_low, B, C) = sum of the first kernel's partials over e-blocks
    dt_low = tl.zeros([BLOCK_R], dtype=tl.float32)
    Bv = tl.zeros([BLOCK_N], dtype=tl.float32)
    Cv = tl.zeros([BLOCK_N], dtype=tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        rows = (offs_p * NB + bid) * R2N
        p_mask = (offs_p < n_parts)[:, None]
        dt_low += tl.sum(tl.load(part_ptr + rows[:, None] + offs_r[None, :], mask=p_mask & r_mask[None, :],
                                 other=0.0), axis=0)
        Bv += tl.sum(tl.load(part_ptr + rows[:, None] + R + offs_n[None, :], mask=p_mask & n_mask[None, :],
                             other=0.0), axis=0)
        Cv += tl.sum(tl.load(part_ptr + rows[:, None] + R + N + offs_n[None, :],
                             mask=p_mask & n_mask[None, :], other=0.0), axis=0)
    dtw = tl.load(dtw_ptr + offs_e[:, None] * R + offs_r[None, :], mask=e_mask[:, None] & r_mask[None, :],
                  other=0.0).to(tl.float32)  # (e, r)
    dt = tl.sum(dtw * dt_low[None, :], axis=1)  # (e,)
    if HAS_DTB:
        dt += tl.load(dtb_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32)
    dt = tl.maximum(dt, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(dt)))  # softplus
    en_mask = e_mask[:, None] & n_mask[None, :]
    en_off = offs_e[:, None] * N + offs_n[None, :]
    A = tl.load(A_ptr + en_off, mask=en_mask, other=0.0).to(tl.float32)
    if A_IS_LOG:  # A = -exp(A_log) here, not as two more kernels (and casts) per layer and token
        A = -tl.exp(A)
    hp = h_ptr + bid.to(tl.int64) * E * N + en_off
    h = tl.load(hp, mask=en_mask, other=0.0)
    xc = tl.load(xc_ptr + bid * E + offs_e, mask=e_mask, other=0.0)
    h = tl.exp(dt[:, None] * A) * h + (dt * xc)[:, None] * Bv[None, :]  # (e, n)
    tl.store(hp, h, mask=en_mask)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32) * xc
    if HAS_Z:
        z = tl.load(z_ptr + bid.to(tl.int64) * sz_b + offs_e, mask=e_mask, other=0.0).to(tl.float32)
        y = y * (z * tl.sigmoid(z))
    tl.store(y_ptr + bid * sy_b + offs_e, y.to(y_ptr.dtype.element_ty), mask=e_mask)


def _shape_error(name, got, expected):
    raise ValueError(f"mamba1_decode_step_triton: {name} has shape {tuple(got)}, expected {expected}")


def mamba1_decode_step_triton(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                              dt_proj_weight, dt_proj_bias, A, D, dt_rank, a_is_log=False):
    """One decode step; updates conv_state and ssm_state in place, returns y (b, e).
    a_is_log: A holds A_log (the kernel computes -exp); A and D may be in any float dtype."""
    if x.dim() != 2:
        _shape_error("x", x.shape, "(b, e)")
    b, e = x.shape
    r = int(dt_rank)
    if conv_state.dim() != 3 or tuple(conv_state.shape[:2]) != (b, e):
        _shape_error("conv_state", conv_state.shape, f"({b}, {e}, k)")
    k = conv_state.shape[2]
    if A.dim() != 2 or A.shape[0] != e:
        _shape_error("A", A.shape, f"({e}, n)")
    n = A.shape[1]
    if z is not None and tuple(z.shape) != (b, e):
        _shape_error("z", z.shape, f"({b}, {e})")
    if tuple(ssm_state.shape) != (b, e, n) or ssm_state.dtype != torch.float32 or not ssm_state.is_contiguous():
        raise ValueError(f"mamba1_decode_step_triton: ssm_state must be contiguous fp32 ({b}, {e}, {n}), got "
                         f"{tuple(ssm_state.shape)} {ssm_state.dtype}")
    if conv_weight.numel() != e * k:
        _shape_error("conv_weight", conv_weight.shape, f"({e}, {k}) or ({e}, 1, {k})")
    if tuple(x_proj_weight.shape) != (r + 2 * n, e):
        _shape_error("x_proj_weight", x_proj_weight.shape, f"({r + 2 * n}, {e}) = (dt_rank + 2n, e)")
    if tuple(dt_proj_weight.shape) != (e, r):
        _shape_error("dt_proj_weight", dt_proj_weight.shape, f"({e}, {r})")
    for name, t in (("conv_bias", conv_bias), ("dt_proj_bias", dt_proj_bias), ("D", D)):
        if t is not None and tuple(t.shape) != (e,):
            _shape_error(name, t.shape, f"({e},)")
    check_kernel_tensors("mamba1_decode_step_triton",
                         dict(x=x, z=z, conv_state=conv_state, ssm_state=ssm_state, conv_weight=conv_weight,
                              conv_bias=conv_bias, x_proj_weight=x_proj_weight, dt_proj_weight=dt_proj_weight,
                              dt_proj_bias=dt_proj_bias, A=A, D=D),
                         activations=("x", "z", "conv_state", "x_proj_weight", "dt_proj_weight"))
    if x.stride(-1) != 1:
        x = x.contiguous()
    if z is not None and z.stride(-1) != 1:
        z = z.contiguous()
    cw = conv_weight.reshape(e, k).contiguous()
    xw = x_proj_weight.contiguous()
    dtw = dt_proj_weight.contiguous()
    A = A.contiguous()
    r2n = r + 2 * n
    block_e = 64
    n_parts = triton.cdiv(e, block_e)
    dev = x.device
    xc = torch.empty((b, e), device=dev, dtype=torch.float32)
    part = torch.empty((n_parts, b, r2n), device=dev, dtype=torch.float32)
    y = torch.empty((b, e), device=dev, dtype=x.dtype)
    _conv_xproj_kernel[(n_parts, b)](
        x, conv_state, cw, conv_bias if conv_bias is not None else cw, xw, xc, part,
        b, e, k, r2n, x.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        HAS_CONV_BIAS=conv_bias is not None, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(k),
        BLOCK_J=32, num_warps=4)
    block_e2 = 32
    _ssm_step_kernel[(triton.cdiv(e, block_e2), b)](
        xc, z if z is not None else x, part, dtw, dt_proj_bias if dt_proj_bias is not None else dtw, A,
        D if D is not None else A, ssm_state, y,
        b, e, n, r, r2n, n_parts, z.stride(0) if z is not None else 0, y.stride(0),
        HAS_Z=z is not None, HAS_D=D is not None, HAS_DTB=dt_proj_bias is not None, A_IS_LOG=bool(a_is_log),
        BLOCK_E=block_e2, BLOCK_N=triton.next_power_of_2(n), BLOCK_R=triton.next_power_of_2(max(r, 1)),
        BLOCK_P=16, num_warps=4)
    return y
