"""S4D, convolution mode: the whole sequence at once through an FFT, for training and prefill.

Letters: b batch, l length, e channels, n state dim (modes), t positions of a block, f FFT bins.

With zero initial state, y = K * u + D u (causal convolution along the length) where
K[t] = Re(sum_n W_n exp(t dtA_n)) (kernel.py). The convolution is an FFT of length >= 2l
(zero padded, so the circular convolution is the linear one): O(l log l) per channel.
An initial state s_0 (chunked prefill, or a prompt after a cached one) adds
    y_t += Re(sum_n W_n exp((t+1) dtA_n) s_{0,n})
and the state after the sequence is
    s_l = exp(l dtA) s_0 + sum_j exp((l-1-j) dtA) u_j,
both Vandermonde products built a block of t at a time, like the kernel.

Packed sequences (seq_idx): each document of each row is convolved on its own (the kernel is
shared); the initial state feeds the first document of a row, the final state is the last one's.
"""
from __future__ import annotations

import torch

from .kernel import lti_kernel, time_blocks, vandermonde
from .reference import check_lti_inputs, compute_dtypes


def fft_causal_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """u (b, l, e), K (l, e), both real -> y (b, l, e), y[t] = sum_{j <= t} K[t - j] u[j]."""
    l = u.shape[1]
    nfft = 1 << (2 * l - 1).bit_length()  # a power of two >= 2l - 1: no wrap-around
    U = torch.fft.rfft(u, n=nfft, dim=1)  # (b, f, e)
    Kf = torch.fft.rfft(K, n=nfft, dim=0)  # (f, e)
    return torch.fft.irfft(U * Kf, n=nfft, dim=1)[:, :l]


def _state_terms(u, dtA, W, s0, want_state):
    """The initial state's contribution to y (b, l, e) and the final state (b, e, n), or None."""
    b, l, e = u.shape
    n = dtA.shape[1]
    y0 = [] if s0 is not None else None
    s = s0 * torch.exp(l * dtA) if (want_state and s0 is not None) else None
    Ws0 = W * s0 * torch.exp(dtA) if s0 is not None else None  # (b, e, n): W dA s_0
    u_rev = u.flip(1).to(dtA.dtype) if want_state else None  # u_rev[t] = u[l - 1 - t]
    for t0, t1 in time_blocks(e, n, l):
        V = vandermonde(dtA, t0, t1)  # (e, n, t)
        if s0 is not None:
            yb = torch.einsum("ben,ent->bte", Ws0, V)
            y0.append(yb.real if yb.is_complex() else yb)
        if want_state:
            sb = torch.einsum("bte,ent->ben", u_rev[:, t0:t1], V)
            s = sb if s is None else s + sb
    return (torch.cat(y0, dim=1) if y0 is not None else None), s


def _conv_rows(u, K, dtA, W, s0, want_state):
    y = fft_causal_conv(u, K[: u.shape[1]])
    if s0 is not None or want_state:
        y0, s = _state_terms(u, dtA, W, s0, want_state)
        if y0 is not None:
            y = y + y0
        return y, s
    return y, None


def _segments(ids: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of equal ids in a 1-d tensor."""
    cuts = (torch.nonzero(ids[1:] != ids[:-1]).flatten() + 1).tolist()
    bounds = [0] + cuts + [ids.shape[0]]
    return list(zip(bounds[:-1], bounds[1:]))


def lti_conv(u: torch.Tensor, dtA: torch.Tensor, W: torch.Tensor, D: torch.Tensor | None = None,
             initial_state: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None,
             return_final_state: bool = False):
    """Same arguments and results as lti_ref (reference.py): y (b, l, e) in u.dtype and, if
    return_final_state, the final state (b, e, n) in the compute dtype (else None)."""
    check_lti_inputs(u, dtA, W, D, initial_state, seq_idx)
    b, l, e = u.shape
    real, sd = compute_dtypes(u, dtA)
    dtA, W = dtA.to(sd), W.to(sd)
    uf = u.to(real)
    s0 = initial_state.to(sd) if initial_state is not None else None
    # fp32 (or fp64) whatever autocast wants: under autocast the einsums would run in bf16 and the
    # prefill would no longer match the recurrence of decoding (README.md: the modes stay fp32).
    with torch.autocast(u.device.type, enabled=False):
        K = lti_kernel(dtA, W, l)  # (l, e)
        if seq_idx is None:
            y, s = _conv_rows(uf, K, dtA, W, s0, return_final_state)
        else:
            rows, finals = [], []
            for r in range(b):
                pieces, s = [], None
                for i, (a, z) in enumerate(_segments(seq_idx[r])):
                    s_in = s0[r:r + 1] if (s0 is not None and i == 0) else None
                    y_seg, s = _conv_rows(uf[r:r + 1, a:z], K, dtA, W, s_in, return_final_state)
                    pieces.append(y_seg)
                rows.append(torch.cat(pieces, dim=1))
                finals.append(s)
            y = torch.cat(rows, dim=0)  # (b, l, e)
            s = torch.cat(finals, dim=0) if return_final_state else None
        if D is not None:
            y = y + D.to(real) * uf
    return y.to(u.dtype), s
