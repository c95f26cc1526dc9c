"""Causal depthwise conv1d (+ SiLU) as Triton kernels, forward and backward, one pass each.

Letters: b batch, l length, c channels, k kernel width.

    y[t] = act(bias + sum_j weight[:, j] * x[t - (k-1) + j]),  taps before t = 0 or across a
    change of seq_idx read zero (packed sequences), as ops.conv1d.causal_conv1d.

x (b, l, c) with contiguous channels, weight (c, k), bias (c,), seq_idx (b, l). The torch
version in conv1d.py builds k shifted copies; here each (rows, channels) tile reads x once
(k shifted loads hit the cache) and writes y once. The backward recomputes the pre-activation
at the k shifted rows it needs, so no intermediate is stored; weight and bias gradients are
summed per tile and then over tiles in torch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernel_inputs import check_kernel_tensors


@triton.jit
def _pre(x_ptr, w_ptr, bias_ptr, seq_ptr, rows, offs_c, mc, L, C, K: tl.constexpr,
         HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr):
    """bias + sum_j w[:, j] x[rows - (k-1) + j] for a (BL, BC) tile, fp32."""
    acc = tl.zeros((rows.shape[0], offs_c.shape[0]), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c, mask=mc, other=0.0).to(tl.float32)[None, :]
    if HAS_SEQ:
        s_out = tl.load(seq_ptr + rows, mask=(rows >= 0) & (rows < L), other=-1)
    for j in tl.static_range(K):
        src = rows - (K - 1) + j
        ok = (src >= 0) & (src < L)
        if HAS_SEQ:
            ok = ok & (tl.load(seq_ptr + src, mask=ok, other=-2) == s_out)
        xv = tl.load(x_ptr + src[:, None] * C + offs_c[None, :], mask=ok[:, None] & mc[None, :], other=0.0)
        wj = tl.load(w_ptr + offs_c * K + j, mask=mc, other=0.0).to(tl.float32)
        acc += xv.to(tl.float32) * wj[None, :]
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, y_ptr, L, C,
                     K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BL + tl.arange(0, BL)
    offs_c = tl.program_id(2) * BC + tl.arange(0, BC)
    mc = offs_c < C
    xb = x_ptr + bi * L * C
    pre = _pre(xb, w_ptr, bias_ptr, seq_ptr + bi * L, rows, offs_c, mc, L, C, K, HAS_BIAS, HAS_SEQ)
    if SILU:
        pre = pre * tl.sigmoid(pre)
    tl.store(y_ptr + bi * L * C + rows[:, None] * C + offs_c[None, :], pre.to(y_ptr.dtype.element_ty),
             mask=(rows < L)[:, None] & mc[None, :])


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, L, C, NLB,
                     K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    lb = tl.program_id(1)
    rows = lb * BL + tl.arange(0, BL)
    offs_c = tl.program_id(2) * BC + tl.arange(0, BC)
    mc = offs_c < C
    xb = x_ptr + bi * L * C
    dyb = dy_ptr + bi * L * C
    sb = seq_ptr + bi * L
    if HAS_SEQ:
        s_rows = tl.load(sb + rows, mask=rows < L, other=-1)
    dx = tl.zeros((BL, BC), dtype=tl.float32)
    part = ((bi * NLB + lb) * C + offs_c)  # partial sums of this tile: (b * row blocks, c[, k])
    for j in tl.static_range(K):
        # output row t = s + (k-1) - j reads input row s through tap j
        t = rows + (K - 1) - j
        ok = (t < L) & (rows < L)
        if HAS_SEQ:
            ok = ok & (tl.load(sb + t, mask=ok, other=-2) == s_rows)
        g = tl.load(dyb + t[:, None] * C + offs_c[None, :], mask=ok[:, None] & mc[None, :], other=0.0).to(tl.float32)
        if SILU:
            pre = _pre(xb, w_ptr, bias_ptr, sb, t, offs_c, mc, L, C, K, HAS_BIAS, HAS_SEQ)
            sg = tl.sigmoid(pre)
            g = g * sg * (1.0 + pre * (1.0 - sg))
        wj = tl.load(w_ptr + offs_c * K + j, mask=mc, other=0.0).to(tl.float32)
        dx += g * wj[None, :]
        xs = tl.load(xb + rows[:, None] * C + offs_c[None, :], mask=(rows < L)[:, None] & mc[None, :],
                     other=0.0).to(tl.float32)
        tl.store(dw_ptr + part * K + j, tl.sum(g * xs, 0), mask=mc)
        if HAS_BIAS:
            if j == K - 1:  # tap k-1 pairs every output row with itself: its g is the bias gradient
                tl.store(db_ptr + part, tl.sum(g, 0), mask=mc)
    tl.store(dx_ptr + bi * L * C + rows[:, None] * C + offs_c[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=(rows < L)[:, None] & mc[None, :])


# tiles (rows, channels): the backward recomputes k shifted pre-activations, so it takes fewer rows
_FWD = dict(BL=32, BC=64, num_warps=4)
_BWD = dict(BL=16, BC=64, num_warps=4)


class _ConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, seq, silu):
        b, l, c = x.shape
        k = weight.shape[1]
        y = torch.empty_like(x)
        grid = (b, triton.cdiv(l, _FWD["BL"]), triton.cdiv(c, _FWD["BC"]))
        _conv_fwd_kernel[grid](x, weight, bias if bias is not None else weight, seq if seq is not None else x,
                               y, l, c, K=k, HAS_BIAS=bias is not None, HAS_SEQ=seq is not None, SILU=silu, **_FWD)
        ctx.save_for_backward(x, weight, bias, seq)
        ctx.silu = silu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, seq = ctx.saved_tensors
        b, l, c = x.shape
        k = weight.shape[1]
        nlb = triton.cdiv(l, _BWD["BL"])
        dx = torch.empty_like(x)
        dw = torch.empty(b * nlb, c, k, device=x.device, dtype=torch.float32)
        db = torch.empty(b * nlb, c, device=x.device, dtype=torch.float32) if bias is not None else dw
        _conv_bwd_kernel[(b, nlb, triton.cdiv(c, _BWD["BC"]))](
            x, weight, bias if bias is not None else weight, seq if seq is not None else x, dy.contiguous(),
            dx, dw, db, l, c, nlb, K=k, HAS_BIAS=bias is not None, HAS_SEQ=seq is not None, SILU=ctx.silu, **_BWD)
        dbias = db.sum(0).to(bias.dtype) if bias is not None else None
        return dx, dw.sum(0).to(weight.dtype), dbias, None, None


def causal_conv1d_triton(x, weight, bias=None, activation=None, seq_idx=None):
    """Triton twin of ops.conv1d.causal_conv1d (without initial_state / final state).

    x (b, l, c); weight (c, k); bias (c,) or None; activation None or "silu"; seq_idx (b, l).
    Returns y (b, l, c) in x's dtype.
    """
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d_triton: x must be (b, l, c), got shape {tuple(x.shape)}")
    b, l, c = x.shape
    if weight.dim() != 2 or weight.shape[0] != c:
        raise ValueError(f"causal_conv1d_triton: weight must be ({c}, k), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"causal_conv1d_triton: bias must be ({c},), got {tuple(bias.shape)}")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d_triton: unknown activation {activation!r}; expected None or 'silu'")
    if seq_idx is not None and tuple(seq_idx.shape) != (b, l):
        raise ValueError(f"causal_conv1d_triton: seq_idx must be ({b}, {l}), got {tuple(seq_idx.shape)}")
    check_kernel_tensors("causal_conv1d_triton", dict(x=x, weight=weight, bias=bias, seq_idx=seq_idx),
                         activations=("x", "weight", "bias"))
    seq = seq_idx.to(torch.int32).contiguous() if seq_idx is not None else None
    return _ConvFn.apply(x.contiguous(), weight.contiguous(), bias.contiguous() if bias is not None else None,
                         seq, activation is not None)
