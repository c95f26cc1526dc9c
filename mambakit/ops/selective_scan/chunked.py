"""Mamba-1 selective scan, chunked tier: the fast CPU path (prefill and training).

Letters: b batch, l length, e inner width (channels), n state dim, c chunk length (time steps
per block).

Same contract as reference.py. The scan runs in time blocks of c steps. Per block, three batched
ops build the block's decays dA = exp(delta A), its inputs delta u B and, after the recurrence,
its outputs y = C h (one bmm); the recurrence itself is one fused multiply-add per time step over
all (b, n, e) at once. Inside, states are laid out (c, b, n, e): e innermost keeps every op on long
contiguous rows and turns y = C h into a (1 x n) @ (n x e) matmul per token. Nothing of size
(b, l, e, n) is ever materialized; a block's buffers stay in cache. README.md explains why this
beats a two-level (parallel-over-chunks) scan here.

The backward is written by hand (same torch ops, reversed): the forward keeps only its inputs and
the state every `s` steps; the backward recomputes a segment of s steps, runs the adjoint recurrence
    g_t = C_t gy_t + dA_{t+1} g_{t+1}
backwards over it and reduces the gradients, so memory stays O(b e n (l / s + s)).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .reference import check_selective_scan_inputs, compute_dtype, document_starts, prepare_delta

# Elements in one (c, b, n, e) work buffer: sized so the forward's buffers stay in L2.
FWD_BLOCK_ELEMS = 1 << 18
# Elements in one (s, b, n, e) backward buffer; also the spacing of the saved states.
BWD_SEGMENT_ELEMS = 1 << 20


def _steps(elems: int, width: int, l: int) -> int:
    return max(1, min(l, elems // width))


def _scan_forward(u, delta, A, B, C, h0, keep, save_every: int):
    """y (b, l, e), h_last (b, n, e), saved states (k, b, n, e) every `save_every` steps (or None)."""
    b, l, e = u.shape
    n = A.shape[1]
    c = _steps(FWD_BLOCK_ELEMS, b * n * e, l)
    if save_every:
        c = min(c, save_every)
        save_every -= save_every % c                        # saved states fall on block ends
    At = A.t().contiguous()                                 # (n, e)
    dlt = delta.transpose(0, 1).contiguous()                # (l, b, e)
    dut = (delta * u).transpose(0, 1).contiguous()          # (l, b, e)
    Bt = B.transpose(0, 1).contiguous()                     # (l, b, n)
    Ct = C.transpose(0, 1).contiguous()                     # (l, b, n)
    y = torch.empty(l, b, e, dtype=u.dtype, device=u.device)
    a_buf = torch.empty(c, b, n, e, dtype=u.dtype, device=u.device)
    h_buf = torch.empty(c + 1, b, n, e, dtype=u.dtype, device=u.device)   # slot 0: state before the block
    if h0 is None:
        h_buf[0].zero_()
    else:
        h_buf[0].copy_(h0.transpose(1, 2))
    saved = [h_buf[0].clone()] if save_every else None
    a_steps, h_steps = a_buf.unbind(0), h_buf.unbind(0)    # per-step views, made once
    for t0 in range(0, l, c):
        m = min(c, l - t0)
        t1 = t0 + m
        a, h = a_buf[:m], h_buf[:m + 1]
        torch.mul(dlt[t0:t1, :, None, :], At, out=a)       # (m, b, n, e)
        a.exp_()
        if keep is not None and keep[0][t0:t1].any():
            a.mul_(keep[1][t0:t1, :, None, None])           # zero decay at document starts
        torch.mul(dut[t0:t1, :, None, :], Bt[t0:t1, :, :, None], out=h[1:])
        for k in range(m):
            h_steps[k + 1].addcmul_(a_steps[k], h_steps[k])   # h_t = dA_t h_{t-1} + dt u B
        torch.bmm(Ct[t0:t1].view(m * b, 1, n), h[1:].view(m * b, n, e), out=y[t0:t1].view(m * b, 1, e))
        h_buf[0].copy_(h[m])
        if save_every and t1 % save_every == 0 and t1 < l:
            saved.append(h_buf[0].clone())
    y = y.transpose(0, 1).contiguous()                      # (b, l, e); a no-op copy for b = 1
    return y, h_buf[0].clone(), (torch.stack(saved) if save_every else None), save_every


def _scan_backward(gy, gh_last, u, delta, A, B, C, keep, saved, seg: int, need_h0: bool):
    """Gradients (u, delta, A, B, C, h0) of the core scan given gy (b, l, e), gh_last (b, n, e)."""
    b, l, e = u.shape
    n = A.shape[1]
    dtype, device = u.dtype, u.device
    At = A.t().contiguous()                                 # (n, e)
    dlt = delta.transpose(0, 1).contiguous()                # (l, b, e)
    ut = u.transpose(0, 1).contiguous()
    dut = dlt * ut                                          # (l, b, e)
    Bt = B.transpose(0, 1).contiguous()                     # (l, b, n)
    Ct = C.transpose(0, 1).contiguous()
    gyt = gy.transpose(0, 1).contiguous()                   # (l, b, e)
    g_du = torch.empty(l, b, e, dtype=dtype, device=device)     # dL/d(delta u)
    g_dA = torch.empty(l, b, e, dtype=dtype, device=device)     # dL/d delta through dA
    gB = torch.empty(l, b, n, dtype=dtype, device=device)
    gC = torch.empty(l, b, n, dtype=dtype, device=device)
    gA = torch.zeros(b, n, e, dtype=dtype, device=device)
    a_buf = torch.empty(seg, b, n, e, dtype=dtype, device=device)
    h_buf = torch.empty(seg + 1, b, n, e, dtype=dtype, device=device)
    g_buf = torch.empty(seg, b, n, e, dtype=dtype, device=device)
    a_steps, h_steps, g_steps = a_buf.unbind(0), h_buf.unbind(0), g_buf.unbind(0)
    # carry = dA_{t1} g_{t1}: what the state after the segment passes back to its last step
    if gh_last is None:
        carry = torch.zeros(b, n, e, dtype=dtype, device=device)
    else:
        carry = gh_last.to(dtype).clone()
    starts = list(range(0, l, seg))
    for i in reversed(range(len(starts))):
        t0 = starts[i]
        t1 = min(l, t0 + seg)
        m = t1 - t0
        a, h, g = a_buf[:m], h_buf[:m + 1], g_buf[:m]
        torch.mul(dlt[t0:t1, :, None, :], At, out=a)       # (m, b, n, e)
        a.exp_()
        if keep is not None and keep[0][t0:t1].any():
            a.mul_(keep[1][t0:t1, :, None, None])
        # recompute the states of this segment from the saved one
        h[0].copy_(saved[i])
        torch.mul(dut[t0:t1, :, None, :], Bt[t0:t1, :, :, None], out=h[1:])
        for k in range(m):
            h_steps[k + 1].addcmul_(a_steps[k], h_steps[k])
        # adjoint states, backwards in time
        torch.mul(gyt[t0:t1, :, None, :], Ct[t0:t1, :, :, None], out=g)
        g_steps[m - 1].add_(carry)
        for k in range(m - 2, -1, -1):
            g_steps[k].addcmul_(a_steps[k + 1], g_steps[k + 1])
        torch.mul(a[0], g[0], out=carry)
        mb = m * b
        hv, gv = h[1:].view(mb, n, e), g.view(mb, n, e)
        torch.bmm(hv, gyt[t0:t1].view(mb, e, 1), out=gC[t0:t1].view(mb, n, 1))
        torch.bmm(gv, dut[t0:t1].view(mb, e, 1), out=gB[t0:t1].view(mb, n, 1))
        torch.bmm(Bt[t0:t1].view(mb, 1, n), gv, out=g_du[t0:t1].view(mb, 1, e))
        # q = g_t * dA_t * h_{t-1} = dL/d(delta_t A), the gradient through the decay
        q = a.mul_(h[:m]).mul_(g)                           # (m, b, n, e), reuses a
        gd = g_dA[t0:t1]                                    # (m, b, e)
        torch.mul(q[:, :, 0], At[0], out=gd)
        for i in range(1, n):                               # sum_n A q_t, without a temporary
            gd.addcmul_(q[:, :, i], At[i])
        gA.add_(q.mul_(dlt[t0:t1, :, None, :]).sum(0))     # (b, n, e) += sum_t delta_t q_t
    gu = (g_du * dlt).transpose(0, 1).contiguous()
    gdelta = torch.addcmul(g_dA, g_du, ut).transpose(0, 1).contiguous()
    gh0 = carry if need_h0 else None
    return gu, gdelta, gA.sum(0).t(), gB.transpose(0, 1), gC.transpose(0, 1), gh0


class _SelectiveScanCore(torch.autograd.Function):
    """y0 = C h and h_last for prepared inputs (compute dtype); D, z and delta's bias live outside."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, keep_t, keep_any, needs_grad):
        keep = None if keep_t is None else (keep_any, keep_t)
        b, l, e = u.shape
        # segments of at least sqrt(l) steps: saved states (l / s) and segment buffers (s) balance
        save_every = max(_steps(BWD_SEGMENT_ELEMS, b * A.shape[1] * e, l), min(l, math.isqrt(l))) if needs_grad else 0
        y, h_last, saved, seg = _scan_forward(u, delta, A, B, C, h0, keep, save_every)
        if needs_grad:
            ctx.seg = seg
            ctx.has_h0 = h0 is not None
            ctx.save_for_backward(u, delta, A, B, C, keep_t, keep_any, saved)
        ctx.set_materialize_grads(False)
        return y, h_last.transpose(1, 2)

    @staticmethod
    def backward(ctx, gy, gh_last):
        u, delta, A, B, C, keep_t, keep_any, saved = ctx.saved_tensors
        keep = None if keep_t is None else (keep_any, keep_t)
        if gy is None:
            gy = torch.zeros_like(u)
        gh = None if gh_last is None else gh_last.transpose(1, 2)
        gu, gdelta, gA, gB, gC, gh0 = _scan_backward(gy, gh, u, delta, A, B, C, keep, saved, ctx.seg, ctx.has_h0)
        return gu, gdelta, gA, gB, gC, (None if gh0 is None else gh0.transpose(1, 2)), None, None, None


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           initial_state=None, seq_idx=None):
    """Mamba-1 selective scan, fast on the CPU. Returns y (b, l, e) in u's dtype, final_state (b, e, n)."""
    b, l, e, n = check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    dtype = compute_dtype(u, delta, A, B, C)
    dl = prepare_delta(delta, delta_bias, delta_softplus, dtype)       # (b, l, e)
    x = u.to(dtype)
    starts = document_starts(seq_idx)
    keep_t = keep_any = None
    if starts is not None:
        keep_t = (~starts).t().to(dtype).contiguous()                 # (l, b): 0 at document starts
        keep_any = starts.any(0)                                      # (l,)
    h0 = None if initial_state is None else initial_state.to(dtype)
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, dl, A, B, C, h0))
    y, h_last = _SelectiveScanCore.apply(x, dl, A, B, C, h0, keep_t, keep_any, needs_grad)
    if D is not None:
        y = torch.addcmul(y, x, D.to(dtype))
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype), h_last
