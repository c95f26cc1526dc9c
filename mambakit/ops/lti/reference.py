"""S4D (diagonal LTI SSM), reference tier: the recurrence as a plain loop over time (the test oracle).

Letters: b batch, l length, e channels, n state dim (modes).

    s_t = dA * s_{t-1} + u_t                       state (b, e, n), dA = exp(dtA)
    y_t = Re(sum_n W_n s_{t,n}) + D u_t            (b, e)

dtA and W are (e, n), both real (S4D-Real) or both complex (S4D-Lin); the state has their
dtype. With seq_idx the state is zeroed before every token whose document id differs from the
previous token's; initial_state only feeds the first document of each row (as the SSD ops).

This file also holds the input checks shared by the convolution and the recurrence.
"""
from __future__ import annotations

import torch


def compute_dtypes(u: torch.Tensor, dtA: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(real, state) dtypes of the internal math: float64 for float64 inputs, else float32;
    the state is complex when the modes are."""
    real = torch.float64 if torch.float64 in (u.dtype, dtA.real.dtype) else torch.float32
    cplx = torch.complex128 if real == torch.float64 else torch.complex64
    return real, (cplx if dtA.is_complex() else real)


def check_lti_inputs(u, dtA, W, D=None, initial_state=None, seq_idx=None) -> None:
    """Raise ValueError naming the bad argument, its shape and the expected shape."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3 or not u.is_floating_point():
        raise ValueError(f"lti: u must be a floating point tensor (b, l, e), got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
    b, l, e = u.shape
    if b < 1 or l < 1 or e < 1:
        raise ValueError(f"lti: u (b, l, e) must have every size >= 1, got {tuple(u.shape)}")
    if not isinstance(dtA, torch.Tensor) or dtA.dim() != 2 or dtA.shape[0] != e:
        raise ValueError(f"lti: dtA must have shape (e, n) with e = {e}, got "
                         f"{tuple(dtA.shape) if isinstance(dtA, torch.Tensor) else type(dtA).__name__}")
    n = dtA.shape[1]
    if not isinstance(W, torch.Tensor) or tuple(W.shape) != (e, n) or W.is_complex() != dtA.is_complex():
        raise ValueError(f"lti: W must have the shape and kind of dtA, (e, n) = {(e, n)} "
                         f"{'complex' if dtA.is_complex() else 'real'}, got "
                         f"{tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__}")
    if D is not None and tuple(D.shape) != (e,):
        raise ValueError(f"lti: D must have shape (e,) = {(e,)}, got {tuple(D.shape)}")
    if initial_state is not None and (tuple(initial_state.shape) != (b, e, n)
                                      or initial_state.is_complex() != dtA.is_complex()):
        raise ValueError(f"lti: initial_state must be {'complex' if dtA.is_complex() else 'real'} "
                         f"with shape (b, e, n) = {(b, e, n)}, got {tuple(initial_state.shape)} {initial_state.dtype}")
    if seq_idx is not None and tuple(seq_idx.shape) != (b, l):
        raise ValueError(f"lti: seq_idx must have shape (b, l) = {(b, l)}, got {tuple(seq_idx.shape)}")


def lti_ref(u: torch.Tensor, dtA: torch.Tensor, W: torch.Tensor, D: torch.Tensor | None = None,
            initial_state: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None):
    """u (b, l, e) -> y (b, l, e) in u.dtype, final state (b, e, n) in the compute dtype."""
    check_lti_inputs(u, dtA, W, D, initial_state, seq_idx)
    b, l, e = u.shape
    real, sd = compute_dtypes(u, dtA)
    dA, W = torch.exp(dtA.to(sd)), W.to(sd)
    uf = u.to(real)
    s = initial_state.to(sd) if initial_state is not None else u.new_zeros((b, e, dtA.shape[1]), dtype=sd)
    ys = []
    for t in range(l):
        if seq_idx is not None and t > 0:
            same = (seq_idx[:, t] == seq_idx[:, t - 1]).to(real)[:, None, None]  # (b, 1, 1)
            s = s * same
        s = dA * s + uf[:, t, :, None]  # (b, e, n)
        y = (W * s).sum(-1)
        ys.append(y.real if y.is_complex() else y)
    y = torch.stack(ys, dim=1)  # (b, l, e)
    if D is not None:
        y = y + D.to(real) * uf
    return y.to(u.dtype), s
