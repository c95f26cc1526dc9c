"""Random inputs of the SSD op for the GPU tests and the Triton-interpreter tests (one maker).

Letters: b batch, l length, h heads, p head dim, n state dim, g groups.
"""
from __future__ import annotations

import torch


def make_ssd_inputs(seed, b, l, h, p, g, n, dtype, D=None, z=False, init=False, seq=False, device="cpu",
                    dt_shift=1.0, a_scale=3.0, a_min=0.3, docs=3, dt_bias=True):
    """-> (inputs dict for ssd / ssd_triton, seq_idx (b, l) or None), drawn from one seeded generator.

    dt = 0.5 N(0, 1) - dt_shift before the bias; A = -(U(0, 1) a_scale + a_min); D "h" (h,) or
    "hp" (h, p); seq_idx: sorted draws from `docs` document ids.
    """
    gen = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, device=device, generator=gen)
    ins = dict(x=rnd(b, l, h, p).to(dtype), dt=(0.5 * rnd(b, l, h) - dt_shift).to(dtype),
               A=-(torch.rand(h, device=device, generator=gen) * a_scale + a_min), B=rnd(b, l, g, n).to(dtype),
               C=rnd(b, l, g, n).to(dtype), dt_bias=0.3 * rnd(h))
    if not dt_bias:
        del ins["dt_bias"]  # drawn all the same, so the other inputs do not change with this flag
    if D == "h":
        ins["D"] = rnd(h)
    elif D == "hp":
        ins["D"] = rnd(h, p)
    if z:
        ins["z"] = rnd(b, l, h, p).to(dtype)
    if init:
        ins["initial_state"] = rnd(b, h, p, n)
    seq_idx = None
    if seq:
        seq_idx = torch.sort(torch.randint(0, docs, (b, l), device=device, generator=gen), dim=1).values
    return ins, seq_idx
