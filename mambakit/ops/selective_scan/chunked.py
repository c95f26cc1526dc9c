"""Mamba-1 selective scan, chunked tier: the fast CPU path (prefill and training).

Letters: b batch, l length, e inner width (channels), n state dim, c chunk length (time steps
per block).

Same contract as reference.py. The scan runs in time blocks of c steps. Per block, three batched
ops build the block's decays dA = exp(delta A), its inputs delta u B and, after the recurrence,
its outputs y = C h (one bmm); the recurrence itself is one fused multiply-add per time step over
all (b, n, e) at once. Inside, states are laid out (b, c, n, e): e innermost keeps every op on long
contiguous rows and turns y = C h into a (1 x n) @ (n x e) matmul per token. Nothing of size
(b, l, e, n) is ever materialized; a block's buffers stay in cache. README.md explains why this
beats a two-level (parallel-over-chunks) scan here.

The backward is written by hand (same torch ops, reversed): the forward keeps only its inputs and
the state every `s` steps; the backward recomputes a segment of s steps, runs the adjoint recurrence
    g_t = C_t gy_t + dA_{t+1} g_{t+1}
backwards over it and reduces the gradients, so memory stays O(b e n (l / s + s)).
"""
from __future__ import annotations

import bisect
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .reference import check_selective_scan_inputs, compute_dtype, document_starts, prepare_delta

# Elements in one (b, c, n, e) forward buffer: 1 MB in fp32, so a block's two buffers stay in one
# core's L2 (2 MB on our CPU). Of 2^16 .. 2^20 this was the fastest for l 1024, e 1536, n 16 on
# one thread (about 20% less scan time than 2^19).
FWD_BLOCK_ELEMS = 1 << 18
# Elements in one (b, s, n, e) backward buffer; also sets the spacing s of the saved states.
BWD_SEGMENT_ELEMS = 1 << 20


def _steps(elems: int, width: int, l: int) -> int:
    return max(1, min(l, elems // width))


class _Buffers:
    """Work buffers (b, c, n, e) and their per-step views, contiguous for any block length m <= c.

    Row-major (batch first) so that a block op and a per-step op split the same rows between
    threads (each core scans the data it produced), and (b, m) merges into one bmm batch."""

    def __init__(self, count: int, b: int, c: int, n: int, e: int, like: torch.Tensor):
        self.shape, self.like, self.count, self.cache = (b, n, e), like, count, {}
        self.full = c

    def get(self, m: int):
        if m not in self.cache:
            if len(self.cache) > 1:                         # only the full and one tail size
                self.cache.pop(next(k for k in self.cache if k != self.full))
            b, n, e = self.shape
            bufs = [self.like.new_empty(b, m, n, e) for _ in range(self.count)]
            self.cache[m] = [(x, x.unbind(1)) for x in bufs]
        return self.cache[m]


def _contract(left, right, out):
    """bmm of (b m, i, k) @ (b m, k, j) written into out (b, m, i j), a slice of a (b, l, ...) tensor."""
    if out.is_contiguous():                                 # always for b = 1
        torch.bmm(left, right, out=out.view(left.shape[0], left.shape[1], right.shape[2]))
    else:
        out.copy_(torch.bmm(left, right).view(out.shape))


def _zero_decay_at_starts(a, keep, t0: int, t1: int) -> None:
    """a (b, m, n, e) holds dA for tokens t0..t1-1: zero it where a new document starts."""
    if keep is not None:
        positions, keep_bl = keep                           # sorted start positions, (b, l) 0/1
        if bisect.bisect_left(positions, t1) > bisect.bisect_left(positions, t0):
            a.mul_(keep_bl[:, t0:t1, None, None])


def _scan_forward(u, delta, A, B, C, h0, keep, save_every: int):
    """y (b, l, e), h_last (b, n, e), saved states (k, b, n, e) every `save_every` steps (or None)."""
    b, l, e = u.shape
    n = A.shape[1]
    c = _steps(FWD_BLOCK_ELEMS, b * n * e, l)
    if save_every:
        c = min(c, save_every)
        save_every -= save_every % c                        # saved states fall on block ends
    At = A.t().contiguous()                                 # (n, e)
    du = torch.mul(delta, u, out=torch.empty(b, l, e, dtype=u.dtype, device=u.device))  # (b, l, e), contiguous
    # y shares du's buffer: a block's y is written only after its du was read (no fresh pages)
    y = du
    # a private copy: the loop updates it in place
    state = u.new_zeros(b, n, e) if h0 is None else h0.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    saved = [state.clone()] if save_every else None
    buffers = _Buffers(2, b, c, n, e, u)
    for t0 in range(0, l, c):
        m = min(c, l - t0)
        t1 = t0 + m
        (a, a_steps), (h, h_steps) = buffers.get(m)
        torch.mul(delta[:, t0:t1, None, :], At, out=a)     # (b, m, n, e)
        a.exp_()
        _zero_decay_at_starts(a, keep, t0, t1)
        torch.mul(du[:, t0:t1, None, :], B[:, t0:t1, :, None], out=h)
        h_steps[0].addcmul_(a_steps[0], state)
        for k in range(1, m):
            h_steps[k].addcmul_(a_steps[k], h_steps[k - 1])    # h_t = dA_t h_{t-1} + dt u B
        _contract(C[:, t0:t1].reshape(b * m, 1, n), h.view(b * m, n, e), y[:, t0:t1])
        state.copy_(h_steps[m - 1])
        if save_every and t1 % save_every == 0 and t1 < l:
            saved.append(state.clone())
    return y, state, (torch.stack(saved) if save_every else None), save_every


def _scan_backward(gy, gh_last, u, delta, A, B, C, keep, saved, seg: int, need_h0: bool):
    """Gradients (u, delta, A, B, C, h0) of the core scan given gy (b, l, e), gh_last (b, n, e)."""
    b, l, e = u.shape
    n = A.shape[1]
    At = A.t().contiguous()                                 # (n, e)
    du = delta * u                                          # (b, l, e)
    g_du = torch.empty_like(du)                             # dL/d(delta u)
    g_dA = torch.empty_like(du)                             # dL/d delta through dA
    gB, gC = torch.empty_like(B), torch.empty_like(C)      # (b, l, n)
    gA = u.new_zeros(b, n, e)
    buffers = _Buffers(3, b, seg, n, e, u)
    # carry = dA_{t1} g_{t1}: what the state after the segment passes back to its last step
    carry = u.new_zeros(b, n, e) if gh_last is None else gh_last.to(u.dtype).clone(memory_format=torch.contiguous_format)
    starts = list(range(0, l, seg))
    for i in reversed(range(len(starts))):
        t0 = starts[i]
        t1 = min(l, t0 + seg)
        m = t1 - t0
        (a, a_steps), (h, h_steps), (g, g_steps) = buffers.get(m)
        torch.mul(delta[:, t0:t1, None, :], At, out=a)     # (b, m, n, e)
        a.exp_()
        _zero_decay_at_starts(a, keep, t0, t1)
        # recompute the states of this segment from the saved one
        h_prev = saved[i]                                   # (b, n, e)
        torch.mul(du[:, t0:t1, None, :], B[:, t0:t1, :, None], out=h)
        h_steps[0].addcmul_(a_steps[0], h_prev)
        for k in range(1, m):
            h_steps[k].addcmul_(a_steps[k], h_steps[k - 1])
        # adjoint states, backwards in time
        torch.mul(gy[:, t0:t1, None, :], C[:, t0:t1, :, None], out=g)
        g_steps[m - 1].add_(carry)
        for k in range(m - 2, -1, -1):
            g_steps[k].addcmul_(a_steps[k + 1], g_steps[k + 1])
        torch.mul(a_steps[0], g_steps[0], out=carry)
        bm = b * m
        hv, gv = h.view(bm, n, e), g.view(bm, n, e)
        _contract(hv, gy[:, t0:t1].reshape(bm, e, 1), gC[:, t0:t1])
        _contract(gv, du[:, t0:t1].reshape(bm, e, 1), gB[:, t0:t1])
        _contract(B[:, t0:t1].reshape(bm, 1, n), gv, g_du[:, t0:t1])
        # q = g_t * dA_t * h_{t-1} = dL/d(delta_t A), the gradient through the decay; reuses a
        a[:, 1:].mul_(h[:, :m - 1])
        a_steps[0].mul_(h_prev)
        q = a.mul_(g)                                       # (b, m, n, e)
        gd = g_dA[:, t0:t1]                                 # (b, m, e)
        torch.mul(q[:, :, 0], At[0], out=gd)
        for j in range(1, n):                               # sum_n A q_t, without a temporary
            gd.addcmul_(q[:, :, j], At[j])
        gA.add_(q.mul_(delta[:, t0:t1, None, :]).sum(1))   # (b, n, e) += sum_t delta_t q_t
    gu = g_du * delta
    gdelta = g_dA.addcmul_(g_du, u)
    gh0 = carry if need_h0 else None
    return gu, gdelta, gA.sum(0).t(), gB, gC, gh0


class _SelectiveScanCore(torch.autograd.Function):
    """y0 = C h and h_last for prepared inputs (compute dtype); D, z and delta's bias live outside."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, keep_bl, positions, needs_grad):
        keep = None if keep_bl is None else (positions, keep_bl)
        b, l, e = u.shape
        # segments of at least sqrt(l) steps: saved states (l / s) and segment buffers (s) balance
        save_every = max(_steps(BWD_SEGMENT_ELEMS, b * A.shape[1] * e, l), min(l, math.isqrt(l))) if needs_grad else 0
        y, h_last, saved, seg = _scan_forward(u, delta, A, B, C, h0, keep, save_every)
        if needs_grad:
            ctx.seg = seg
            ctx.has_h0 = h0 is not None
            ctx.positions = positions
            ctx.save_for_backward(u, delta, A, B, C, keep_bl, saved)
        ctx.set_materialize_grads(False)
        return y, h_last.transpose(1, 2).contiguous()

    @staticmethod
    @once_differentiable                                    # the backward works in place on buffers
    def backward(ctx, gy, gh_last):
        u, delta, A, B, C, keep_bl, saved = ctx.saved_tensors
        keep = None if keep_bl is None else (ctx.positions, keep_bl)
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
    own_dl = False                                                     # dl a buffer of ours?
    if delta_bias is not None and delta_softplus and not (torch.is_grad_enabled() and (
            delta.requires_grad or delta_bias.requires_grad)):
        # prepare_delta's math, the softplus in place on the fresh sum (one (b, l, e) buffer, not two)
        dl = delta.to(dtype) + delta_bias.to(dtype)                    # (b, l, e)
        torch._C._nn.softplus(dl, 1, 20, out=dl)
        own_dl = True
    else:
        dl = prepare_delta(delta, delta_bias, delta_softplus, dtype)   # (b, l, e)
    x = u.to(dtype)
    starts = document_starts(seq_idx)
    keep_bl = positions = None
    if starts is not None:
        keep_bl = (~starts).to(dtype)                                  # (b, l): 0 at document starts
        positions = tuple(starts.any(0).nonzero().flatten().tolist())  # tokens where some row resets
    h0 = None if initial_state is None else initial_state.to(dtype)
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, dl, A, B, C, h0))
    y, h_last = _SelectiveScanCore.apply(x, dl, A, B, C, h0, keep_bl, positions, needs_grad)
    if not needs_grad and not (torch.is_grad_enabled() and (D is not None and D.requires_grad
                                                            or z is not None and z.requires_grad)):
        # Inference: y is ours, so the skip and the gate go in place (no fresh (b, l, e) pages).
        if D is not None:
            y.addcmul_(x, D.to(dtype))
        if z is not None:
            zc = z.to(dtype)
            if own_dl and zc.shape == dl.shape:
                y.mul_(torch._C._nn.silu(zc, out=dl))                  # dl is spent: its buffer takes silu(z)
            else:
                y.mul_(F.silu(zc))
        return y.to(u.dtype), h_last
    if D is not None:
        y = torch.addcmul(y, x, D.to(dtype))
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype), h_last
