"""S4D, recurrence mode: one token per call for decoding, O(e n) work whatever the length.

Letters: b batch, e channels, n state dim (modes).

    s = exp(dtA) * s + u          y = Re(sum_n W_n s_n) + D u

The state is updated in place. Complex modes may be stored as real pairs (b, e, n, 2) in the
cache: pass `torch.view_as_complex(pairs)`, a view, and the update writes through to it.
"""
from __future__ import annotations

import torch


def lti_step(u: torch.Tensor, state: torch.Tensor, dtA: torch.Tensor, W: torch.Tensor,
             D: torch.Tensor | None = None) -> torch.Tensor:
    """u (b, e), state (b, e, n) (updated in place) -> y (b, e) in u.dtype."""
    if u.dim() != 2 or state.dim() != 3 or tuple(state.shape[1:]) != tuple(dtA.shape) or state.shape[0] != u.shape[0] \
            or state.shape[1] != u.shape[1]:
        raise ValueError(f"lti_step: expected u (b, e), state (b, e, n) with (e, n) = {tuple(dtA.shape)}, "
                         f"got u {tuple(u.shape)} and state {tuple(state.shape)}")
    if state.is_complex() != dtA.is_complex():
        raise ValueError(f"lti_step: state dtype {state.dtype} does not match the modes' dtype {dtA.dtype}")
    if state.real.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"lti_step: the state must be kept in fp32 or fp64 (complex64/128 for complex modes), "
                         f"got {state.dtype}")
    if tuple(W.shape) != tuple(dtA.shape) or W.is_complex() != dtA.is_complex():
        raise ValueError(f"lti_step: W must have the shape and kind of dtA, {tuple(dtA.shape)} "
                         f"{'complex' if dtA.is_complex() else 'real'}, got {tuple(W.shape)} {W.dtype}")
    if D is not None and tuple(D.shape) != (u.shape[1],):
        raise ValueError(f"lti_step: D must have shape (e,) = {(u.shape[1],)}, got {tuple(D.shape)}")
    real = state.real.dtype
    uf = u.to(real)
    state.mul_(torch.exp(dtA.to(state.dtype))).add_(uf[..., None])
    y = (W.to(state.dtype) * state).sum(-1)  # (b, e)
    y = y.real if y.is_complex() else y
    if D is not None:
        y = y + D.to(real) * uf
    return y.to(u.dtype)
