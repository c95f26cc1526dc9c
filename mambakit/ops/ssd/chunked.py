"""Mamba-2 SSD, chunked tier: the SSD algorithm of arXiv 2405.21060 in plain PyTorch (CPU path).

Letters: b batch, l length, h heads, p head dim, n state dim, g groups, c chunk count,
q chunk length (chunk_size; `c` is taken by the chunk count here), k heads per group (h // g).

The length is cut into c chunks of q tokens. Inside a chunk the SSM is a masked quadratic
form (like causal attention with a decay mask); across chunks a short recurrence passes
the (h, p, n) state. See README.md for the derivation. The four steps:
  1. diagonal blocks: y_diag = (L o C B^T) (dt x), L = exp(segsum(dt A)) causal
  2. chunk states: what each chunk adds to the state, B^T (decay-to-end * dt x)
  3. state passing: the state entering each chunk, a recurrence over c
  4. off-diagonal blocks: y_off = exp(cumsum(dt A)) * C (state entering the chunk)
Grouped B, C are contracted per group, never repeated to h heads.
"""
from __future__ import annotations

import torch

from .reference import check_ssd_inputs, compute_dtype, gate_and_skip, prepare_dt


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _pad_len(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad dim 1 (the length) by `pad` at the end."""
    if pad == 0:
        return t
    return torch.cat([t, t.new_zeros((t.shape[0], pad) + tuple(t.shape[2:]))], dim=1)


def ssd_chunked(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                dt_limit=(0.0, float("inf")), initial_state=None, seq_idx=None):
    """SSD by chunks. Same arguments and results as ssd_ref (reference.py), plus chunk_size.

    Returns y (b, l, h, p) in x.dtype and the final state (b, h, p, n) in the compute dtype.
    """
    check_ssd_inputs(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_limit=dt_limit,
                     initial_state=initial_state, seq_idx=seq_idx, chunk_size=chunk_size)
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    k = h // g
    cd = compute_dtype(x)
    grad = _needs_grad(x, dt, A, B, C, D, z, dt_bias, initial_state)

    # A sequence shorter than a chunk is one chunk of its own length: no padding work.
    q = min(chunk_size, l)
    c = -(-l // q)
    pad = c * q - l

    dt = prepare_dt(dt, dt_bias, dt_softplus, dt_limit, cd)  # (b, l, h)
    # Padded tokens have dt = 0 and x = B = C = 0: decay 1, no input, so they change nothing.
    dt_c = _pad_len(dt, pad).view(b, c, q, h)
    xdt = _pad_len(x.to(cd) * dt[..., None], pad).view(b, c, q, h, p)  # dt x, (b, c, q, h, p)
    Bc = _pad_len(B.to(cd), pad).view(b, c, q, g, n)
    Cc = _pad_len(C.to(cd), pad).view(b, c, q, g, n)

    Acum = torch.cumsum(dt_c * A.to(cd), dim=2)  # (b, c, q, h), decay log from chunk start
    Acum_t = Acum.transpose(2, 3)  # (b, c, h, q)

    if seq_idx is not None:
        seq = seq_idx
        if pad:
            seq = torch.cat([seq, seq[:, -1:].expand(b, pad)], dim=1)
        seq = seq.view(b, c, q)
        # Document id of the token before each chunk; the initial state belongs to the
        # first document of the row, so chunk 0 borrows its own first id.
        seq_prev = torch.cat([seq[:, :1, 0], seq[:, :-1, -1]], dim=1)  # (b, c)

    # 1. Diagonal blocks. seg[i, j] = sum of dt A over (j, i], finite only for j <= i (and
    # same document): exp never sees a positive exponent beyond rounding.
    mask = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()  # (q, q)
    if seq_idx is not None:
        mask = mask & (seq[:, :, :, None] == seq[:, :, None, :])  # (b, c, q, q)
        mask = mask[:, :, None]  # (b, c, 1, q, q)
    seg = Acum_t[..., :, None] - Acum_t[..., None, :]  # (b, c, h, q, q)
    seg = seg.masked_fill_(~mask, float("-inf"))
    CB = torch.einsum("bcign,bcjgn->bcgij", Cc, Bc)  # (b, c, g, q, q)
    if grad:
        M = seg.exp().view(b, c, g, k, q, q) * CB[:, :, :, None]
    else:
        M = seg.exp_().view(b, c, g, k, q, q).mul_(CB[:, :, :, None])  # (b, c, g, k, q, q)
    y = torch.einsum("bcgkij,bcjgkp->bcigkp", M, xdt.view(b, c, q, g, k, p))  # (b, c, q, g, k, p)

    # 2. Chunk states: each token's input decayed to the chunk's end.
    decay_to_end = torch.exp(Acum[:, :, -1:] - Acum)  # (b, c, q, h)
    if seq_idx is not None:
        # Only the chunk's last document survives to its end.
        decay_to_end = decay_to_end * (seq == seq[:, :, -1:])[..., None]
    xs = (xdt * decay_to_end[..., None]).view(b, c, q, g, k, p)
    states = torch.einsum("bcjgn,bcjgkp->bcgkpn", Bc, xs).reshape(b, c, h, p, n)

    # 3. State passing: the state entering chunk i is decayed across chunk i-1 and summed.
    chunk_decay = torch.exp(Acum[:, :, -1])  # (b, c, h)
    if seq_idx is not None:
        # A chunk whose last token is in another document than the previous chunk's last
        # token cuts the incoming state.
        chunk_decay = chunk_decay * (seq[:, :, -1] == seq_prev)[..., None]
    if initial_state is not None:
        s = initial_state.to(cd)
    else:
        s = x.new_zeros((b, h, p, n), dtype=cd)
    prev = []
    for i in range(c):
        prev.append(s)
        s = s * chunk_decay[:, i, :, None, None] + states[:, i]
    s_prev = torch.stack(prev, dim=1)  # (b, c, h, p, n)

    # 4. Off-diagonal blocks: the incoming state read out by C, decayed from chunk start.
    decay_in = torch.exp(Acum)  # (b, c, q, h)
    if seq_idx is not None:
        decay_in = decay_in * (seq == seq_prev[..., None])[..., None]
    y_off = torch.einsum("bcign,bcgkpn->bcigkp", Cc, s_prev.view(b, c, g, k, p, n))
    y = y + y_off * decay_in.view(b, c, q, g, k, 1)

    y = y.reshape(b, c * q, h, p)[:, :l]  # (b, l, h, p)
    y = gate_and_skip(y, x, D, z)
    return y.to(x.dtype), s
