"""S4D kernel: zero-order-hold discretization and the Vandermonde product.

Letters: e channels, n state dim (modes; complex for S4D-Lin, real for S4D-Real), l length,
t positions of a block of the length.

A diagonal LTI SSM per channel, with B folded into the output weights W (see README.md):
    s_t = dA s_{t-1} + u_t          y_t = Re(sum_n W_n s_{t,n}) + D u_t
has the convolution kernel
    K[t] = Re(sum_n W_n dA_n^t) = Re(sum_n W_n exp(t dtA_n))      (Vandermonde product)
We work with dtA = dt * A, the log of dA, so every power is one exp and never a repeated
product. The Vandermonde matrix exp(t dtA) is (e, n, l); it is built a block of t at a time so
memory stays bounded for long sequences.
"""
from __future__ import annotations

import torch

# Entries of one Vandermonde block (e * n * t): 2^22 complex64 numbers are 32 MB.
BLOCK_ELEMENTS = 1 << 22


# Below this |dt A|, (exp(z) - 1) / z is its Taylor series to z^6 (remainder < |z|^7 / 8! < 1e-18).
_SERIES_BELOW = 1e-2


def _expm1_over(z: torch.Tensor) -> torch.Tensor:
    """(exp(z) - 1) / z, with its limit 1 at z = 0, accurate in value and gradient near 0 (where the
    quotient is 0/0, and its autograd derivative exp(z)/z - expm1(z)/z^2 cancels catastrophically)."""
    small = z.abs() < _SERIES_BELOW
    zq = torch.where(small, torch.ones_like(z), z)  # no 0/0 in either branch, so no NaN gradient
    zs = torch.where(small, z, torch.zeros_like(z))
    series = 1 + zs / 2 * (1 + zs / 3 * (1 + zs / 4 * (1 + zs / 5 * (1 + zs / 6 * (1 + zs / 7)))))
    return torch.where(small, series, torch.expm1(zq) / zq)


def discretize_zoh(A: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold with B = 1. A (e, n) real or complex, dt (e,) > 0 ->
    dtA = dt A (the log of dA = exp(dt A)) and dB = (exp(dt A) - 1) / A = dt (exp(dtA) - 1) / dtA,
    both (e, n); dB -> dt as dt A -> 0 (A = 0 is the integrator)."""
    dtA = dt[:, None] * A
    return dtA, dt[:, None] * _expm1_over(dtA)


def time_blocks(e: int, n: int, l: int):
    """(t0, t1) ranges covering [0, l) with e * n * (t1 - t0) <= BLOCK_ELEMENTS (at least 1 step)."""
    step = max(1, BLOCK_ELEMENTS // max(1, e * n))
    return [(t0, min(l, t0 + step)) for t0 in range(0, l, step)]


def vandermonde(dtA: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
    """exp(t dtA) for t in [t0, t1): dtA (e, n) -> (e, n, t1 - t0)."""
    t = torch.arange(t0, t1, device=dtA.device, dtype=dtA.real.dtype)
    return torch.exp(dtA[..., None] * t)


def lti_kernel(dtA: torch.Tensor, W: torch.Tensor, l: int) -> torch.Tensor:
    """K (l, e) real: K[t, e] = Re(sum_n W[e, n] exp(t dtA[e, n]))."""
    e, n = dtA.shape
    parts = []
    with torch.autocast(dtA.device.type, enabled=False):  # the einsum in dtA's precision, never bf16
        for t0, t1 in time_blocks(e, n, l):
            K = torch.einsum("en,ent->te", W, vandermonde(dtA, t0, t1))  # (t, e)
            parts.append(K.real if K.is_complex() else K)
    return torch.cat(parts, dim=0)
