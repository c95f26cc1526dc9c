"""Mamba-2 SSD, reference tier: the recurrence as a plain loop over time (the test oracle).

Letters: b batch, l length, h heads, p head dim, n state dim, g groups (B and C are shared
by h // g consecutive heads: head i reads group i // (h // g)).

    dt_t = clamp(softplus?(dt_t + dt_bias), *dt_limit)        (b, h)
    h_t  = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T              state (b, h, p, n)
    y_t  = h_t C_t + D x_t,  then y_t *= silu(z_t)            (b, h, p)

With seq_idx the state is zeroed before every token whose document id differs from the
previous token's; initial_state only feeds the first document of each row.

This file also holds the input checks and the dt preparation shared with chunked.py, so
that both tiers refuse and accept exactly the same inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the internal math: float64 for float64 inputs, fp32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def check_ssd_inputs(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_limit=(0.0, float("inf")),
                     initial_state=None, seq_idx=None, chunk_size=None) -> None:
    """Raise ValueError naming the bad argument, its shape and the expected shape."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"ssd: x must be a 4-d tensor (b, l, h, p), got "
                         f"{_shape(x) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"ssd: x must be a floating point tensor, got {x.dtype}")
    b, l, h, p = x.shape
    if l < 1 or b < 1 or h < 1 or p < 1:
        raise ValueError(f"ssd: x (b, l, h, p) must have every size >= 1, got {_shape(x)}")
    if not isinstance(dt, torch.Tensor) or _shape(dt) != (b, l, h):
        raise ValueError(f"ssd: dt must have shape (b, l, h) = {(b, l, h)}, got "
                         f"{_shape(dt) if isinstance(dt, torch.Tensor) else type(dt).__name__}")
    if not isinstance(A, torch.Tensor) or _shape(A) != (h,):
        raise ValueError(f"ssd: A must have shape (h,) = {(h,)} (one scalar per head), got "
                         f"{_shape(A) if isinstance(A, torch.Tensor) else type(A).__name__}")
    for name, t in (("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or _shape(t)[:2] != (b, l):
            raise ValueError(f"ssd: {name} must have shape (b, l, g, n) with (b, l) = {(b, l)}, got "
                             f"{_shape(t) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if _shape(B) != _shape(C):
        raise ValueError(f"ssd: B and C must have the same shape (b, l, g, n), got {_shape(B)} and {_shape(C)}")
    g, n = B.shape[2], B.shape[3]
    if g < 1 or n < 1:
        raise ValueError(f"ssd: B and C (b, l, g, n) need g >= 1 and n >= 1, got {_shape(B)}")
    if h % g != 0:
        raise ValueError(f"ssd: the number of heads h = {h} must be a multiple of the number of groups "
                         f"g = {g} (B, C have shape (b, l, g, n) = {_shape(B)})")
    if D is not None and _shape(D) not in ((h,), (h, p)):
        raise ValueError(f"ssd: D must have shape (h,) = {(h,)} or (h, p) = {(h, p)}, got {_shape(D)}")
    if z is not None and _shape(z) != (b, l, h, p):
        raise ValueError(f"ssd: z must have the shape of x (b, l, h, p) = {(b, l, h, p)}, got {_shape(z)}")
    if dt_bias is not None and _shape(dt_bias) != (h,):
        raise ValueError(f"ssd: dt_bias must have shape (h,) = {(h,)}, got {_shape(dt_bias)}")
    if initial_state is not None and _shape(initial_state) != (b, h, p, n):
        raise ValueError(f"ssd: initial_state must have shape (b, h, p, n) = {(b, h, p, n)}, "
                         f"got {_shape(initial_state)}")
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("dt_bias", dt_bias),
                    ("initial_state", initial_state)):
        if t is not None and t.dtype not in _FLOATS:
            raise ValueError(f"ssd: {name} must be a real floating tensor (float16/bfloat16/float32/float64), "
                             f"got {t.dtype}")
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ValueError(f"ssd: dt_limit must be a pair (min, max) of numbers, got {dt_limit!r}") from None
    if not lo <= hi:
        raise ValueError(f"ssd: dt_limit must be (min, max) with min <= max, got {dt_limit!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"ssd: chunk_size must be a positive int, got {chunk_size!r}")
    if seq_idx is not None:
        if not isinstance(seq_idx, torch.Tensor) or _shape(seq_idx) != (b, l):
            raise ValueError(f"ssd: seq_idx must have shape (b, l) = {(b, l)}, got "
                             f"{_shape(seq_idx) if isinstance(seq_idx, torch.Tensor) else type(seq_idx).__name__}")
        if seq_idx.is_floating_point() or seq_idx.is_complex() or seq_idx.dtype == torch.bool:
            raise ValueError(f"ssd: seq_idx must hold integer document ids, got dtype {seq_idx.dtype}")
        if l > 1 and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
            raise ValueError("ssd: seq_idx must be non-decreasing along each row (documents are packed "
                             "one after another), but it decreases somewhere")


def prepare_dt(dt, dt_bias=None, dt_softplus=False, dt_limit=(0.0, float("inf")), dtype=torch.float32):
    """dt + dt_bias, softplus (threshold 20, as mamba_ssm), clamp to dt_limit; in `dtype`. (b, l, h)"""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    if lo != float("-inf") or hi != float("inf"):
        dt = dt.clamp(min=lo, max=hi)
    return dt


def gate_and_skip(y, x, D=None, z=None):
    """y + D x, then y * silu(z), in y's dtype (the compute dtype). y, x, z: (b, l, h, p).

    Works in place on y, which must be a fresh tensor of the caller's (autograd allows it:
    nothing saved y before)."""
    if D is not None:
        Dc = D.to(y.dtype)
        y = y.addcmul_(x.to(y.dtype), Dc[:, None] if Dc.dim() == 1 else Dc)
    if z is not None:
        y = y.mul_(F.silu(z.to(y.dtype)))
    return y


def ssd_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
            dt_limit=(0.0, float("inf")), initial_state=None, seq_idx=None):
    """The SSD recurrence, one token at a time. Returns y (b, l, h, p) in x.dtype and the final
    state (b, h, p, n) in the compute dtype (fp32, or float64 for float64 inputs)."""
    check_ssd_inputs(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_limit=dt_limit,
                     initial_state=initial_state, seq_idx=seq_idx)
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    cd = compute_dtype(x)
    dt = prepare_dt(dt, dt_bias, dt_softplus, dt_limit, cd)  # (b, l, h)
    A = A.to(cd)
    xc = x.to(cd)
    # Repeating B and C to every head is fine here: the oracle favours plainness over speed.
    Bh = B.to(cd).repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    Ch = C.to(cd).repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    if initial_state is not None:
        state = initial_state.to(cd)
    else:
        state = x.new_zeros((b, h, p, n), dtype=cd)  # (b, h, p, n)
    ys = []
    for t in range(l):
        if seq_idx is not None and t > 0:
            # A new document starts here in some rows: forget what came before it.
            keep = (seq_idx[:, t] == seq_idx[:, t - 1]).to(cd)  # (b,)
            state = state * keep[:, None, None, None]
        decay = torch.exp(dt[:, t] * A)  # (b, h)
        inp = (dt[:, t, :, None] * xc[:, t])[..., None] * Bh[:, t, :, None, :]  # (b, h, p, n)
        state = state * decay[..., None, None] + inp
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)  # (b, l, h, p)
    y = gate_and_skip(y, x, D, z)
    return y.to(x.dtype), state
