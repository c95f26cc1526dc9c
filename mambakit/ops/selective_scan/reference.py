"""Mamba-1 selective scan, reference tier: the recurrence as a plain loop over time (the oracle).

Letters: b batch, l length, e inner width (channels), n state dim.

    delta_t = softplus?(delta_t + delta_bias)                     (b, e)
    h_t     = exp(delta_t A) * h_{t-1} + (delta_t u_t) B_t^T       state (b, e, n)
    y_t     = h_t C_t + D u_t,  then y_t *= silu(z_t)               (b, e)

A (e, n) is real (negative for a stable SSM); B_t, C_t (n,) depend on the token and are shared
by all e channels. With seq_idx the state is zeroed before every token whose document id differs
from the previous token's, so packed documents never see each other; initial_state only feeds
the first document of each row. The math runs in fp32 (float64 for float64 inputs); y comes back
in u's dtype, the final state in the compute dtype.

This file also holds the input checks shared with chunked.py, so both tiers refuse and accept
exactly the same inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _describe(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _expect(name: str, t, shape: tuple, what: str) -> None:
    """ValueError unless t is a floating tensor of exactly `shape`."""
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        raise ValueError(f"selective_scan: {name} must have shape {what} = {shape}, got {_describe(t)}")
    if t.dtype not in _FLOATS:
        raise ValueError(f"selective_scan: {name} must be a real floating tensor "
                         f"(float16/bfloat16/float32/float64), got {t.dtype}")


def check_selective_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                initial_state=None, seq_idx=None) -> tuple[int, int, int, int]:
    """Raise ValueError naming the bad argument and what was expected; return (b, l, e, n)."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"selective_scan: u must be a 3-d tensor (b, l, e), got {_describe(u)}")
    b, l, e = u.shape
    if b < 1 or l < 1 or e < 1:
        raise ValueError(f"selective_scan: u (b, l, e) needs every size >= 1, got {tuple(u.shape)}")
    _expect("u", u, (b, l, e), "(b, l, e)")
    _expect("delta", delta, (b, l, e), "(b, l, e)")
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != e or A.shape[1] < 1:
        raise ValueError(f"selective_scan: A must have shape (e, n) with e = {e} and n >= 1, got {_describe(A)}")
    n = A.shape[1]
    _expect("A", A, (e, n), "(e, n)")
    _expect("B", B, (b, l, n), "(b, l, n)")
    _expect("C", C, (b, l, n), "(b, l, n)")
    for name, t, shape, what in (("D", D, (e,), "(e,)"), ("z", z, (b, l, e), "(b, l, e)"),
                                 ("delta_bias", delta_bias, (e,), "(e,)"),
                                 ("initial_state", initial_state, (b, e, n), "(b, e, n)")):
        if t is not None:
            _expect(name, t, shape, what)
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx) if t is not None]
    devices = {t.device for t in tensors if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(f"selective_scan: all tensors must be on one device, got {sorted(map(str, devices))}")
    if seq_idx is not None:
        if not isinstance(seq_idx, torch.Tensor) or tuple(seq_idx.shape) != (b, l):
            raise ValueError(f"selective_scan: seq_idx must have shape (b, l) = {(b, l)}, got {_describe(seq_idx)}")
        if seq_idx.is_floating_point() or seq_idx.is_complex() or seq_idx.dtype == torch.bool:
            raise ValueError(f"selective_scan: seq_idx must hold integer document ids, got {seq_idx.dtype}")
        if l > 1 and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
            raise ValueError("selective_scan: seq_idx must be non-decreasing along the length "
                             "(documents are packed one after another), got a decreasing step")
    return b, l, e, n


def compute_dtype(*tensors) -> torch.dtype:
    """The dtype of the internal math: float64 if any input is float64, else fp32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def document_starts(seq_idx: torch.Tensor | None) -> torch.Tensor | None:
    """(b, l) bool, True where the state resets (a token whose id differs from the previous one)."""
    if seq_idx is None:
        return None
    starts = torch.zeros(seq_idx.shape, dtype=torch.bool, device=seq_idx.device)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def prepare_delta(delta, delta_bias, delta_softplus: bool, dtype: torch.dtype) -> torch.Tensor:
    """delta (+ delta_bias), softplus'ed if asked, in the compute dtype. (b, l, e)"""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)
    return F.softplus(delta) if delta_softplus else delta


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, seq_idx=None):
    """The Mamba-1 selective scan, one token at a time. Returns y (b, l, e), final_state (b, e, n)."""
    b, l, e, n = check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    dtype = compute_dtype(u, delta, A, B, C)
    delta = prepare_delta(delta, delta_bias, delta_softplus, dtype)   # (b, l, e)
    x, A, B, C = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
    starts = document_starts(seq_idx)
    if initial_state is None:
        h = torch.zeros(b, e, n, dtype=dtype, device=u.device)
    else:
        h = initial_state.to(dtype)
    ys = []
    for t in range(l):
        dA = torch.exp(delta[:, t, :, None] * A)                        # (b, e, n)
        if starts is not None:
            # a new document forgets everything before it
            dA = dA * (~starts[:, t]).to(dtype)[:, None, None]
        h = dA * h + (delta[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append(torch.einsum("ben,bn->be", h, C[:, t]))
    y = torch.stack(ys, dim=1)                                          # (b, l, e)
    if D is not None:
        y = y + x * D.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype), h
