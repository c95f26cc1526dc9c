"""The SSD state pass as one serial kernel (the first design, kept for comparison).

Letters: b batch, l length, h heads, p head dim, n state dim, g groups, c chunk length (CS).

_ssd_state_kernel, grid (p/BP * n/BN tiles, b*h), walks the chunks in order with one (BP, BN)
tile of the state in registers and computes each chunk's input x^T (B w) inside the loop, so
nothing of size (b, h, chunks, p, n) is stored but E[c] itself. Measured on an H100
(benchmarks/results/gpu_kernels-*.json, 2026-11-23): about 12 us per chunk, all of it on the
serial path, so it loses to the split design (triton_fwd.py: chunk states in parallel, then a
light serial pass) as soon as there are more than a few chunks. Selected by
triton.CONFIG["state_impl"] = "fused". Same outputs as the split kernels, in the same layouts.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_fwd import _dot, _prep_dt, _to


@triton.jit
def _ssd_state_kernel(
    x_ptr, b_ptr, dt_ptr, a_ptr, bias_ptr, seq_ptr, init_ptr,
    e_ptr, final_ptr, dtp_ptr, cs_ptr,
    dy_ptr, c_ptr, dfinal_ptr, ds_ptr, gdot_ptr, dinit_ptr,
    L, H, G, P, N, NCHUNK, NT_N, NTILE, lo, hi,
    CS: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    HAS_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr,
    HAS_INIT: tl.constexpr, BWD: tl.constexpr, HAS_DFINAL: tl.constexpr, WANT_DINIT: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hh = pid_bh % H
    gi = hh // (H // G)
    tp = pid_t // NT_N
    tn = pid_t % NT_N
    offs_p = tp * BP + tl.arange(0, BP)
    offs_n = tn * BN + tl.arange(0, BN)
    offs_c = tl.arange(0, CS)
    mp = offs_p < P
    mn = offs_n < N
    tmask = mp[:, None] & mn[None, :]
    tile = offs_p[:, None] * N + offs_n[None, :]  # (BP, BN) offsets inside one (p, n) state
    DT = x_ptr.dtype.element_ty

    A = tl.load(a_ptr + hh).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + hh).to(tl.float32)
    x_base = x_ptr + bi * L * H * P + hh * P
    b_base = b_ptr + bi * L * G * N + gi * N
    dt_base = dt_ptr + bi * L * H + hh
    seq_base = seq_ptr + bi * L
    state_off = (bi * H + hh) * P * N
    lpad = NCHUNK * CS
    vec_base = (bi * H + hh) * lpad  # into the (b, h, chunks*c) dt and cumsum buffers

    if HAS_INIT:
        state = tl.load(init_ptr + state_off + tile, mask=tmask, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BP, BN), dtype=tl.float32)
    seq_prev = 0
    if HAS_SEQ:
        # The initial state belongs to the row's first document.
        seq_prev = tl.load(seq_base)

    lim = CS - CS * tl.minimum(pid_t, 1)  # CS for tile 0, else 0
    for c in range(NCHUNK):
        offs_l = c * CS + offs_c
        ml = offs_l < L
        raw = tl.load(dt_base + offs_l * H, mask=ml, other=0.0).to(tl.float32)
        d = tl.where(ml, _prep_dt(raw, bias, DT_SOFTPLUS, lo, hi), 0.0)  # padding: dt = 0
        cs = tl.cumsum(d * A, 0)
        cs_last = tl.sum(d * A, 0)
        # One tile per head writes the prepared dt and cumsum for the other kernels.
        tl.store(dtp_ptr + vec_base + offs_l, d, mask=offs_c < lim)
        tl.store(cs_ptr + vec_base + offs_l, cs, mask=offs_c < lim)
        w = tl.exp(cs_last - cs) * d
        decay = tl.exp(cs_last)
        if HAS_SEQ:
            s = tl.load(seq_base + offs_l, mask=ml, other=0)
            s_last = tl.load(seq_base + tl.minimum(c * CS + CS, L) - 1)
            w = tl.where(s == s_last, w, 0.0)  # only the chunk's last document reaches its end
            decay = tl.where(s_last == seq_prev, decay, 0.0)
            seq_prev = s_last
        xs = tl.load(x_base + offs_l[:, None] * (H * P) + offs_p[None, :],
                     mask=ml[:, None] & mp[None, :], other=0.0)  # (c, BP)
        bs = tl.load(b_base + offs_l[:, None] * (G * N) + offs_n[None, :],
                     mask=ml[:, None] & mn[None, :], other=0.0)  # (c, BN)
        bw = _to((bs.to(tl.float32) * w[:, None]), DT, PREC)
        s_c = _dot(tl.trans(xs), bw, PREC)  # (BP, BN)
        e_off = ((bi * H + hh) * NCHUNK + c) * P * N
        tl.store(e_ptr + e_off + tile, _to(state, e_ptr.dtype.element_ty, PREC), mask=tmask)
        state = state * decay + s_c
    tl.store(final_ptr + state_off + tile, state, mask=tmask)

    if BWD:
        # Reads back E[c] written above by other threads of this program.
        tl.debug_barrier()
        if HAS_DFINAL:
            gst = tl.load(dfinal_ptr + state_off + tile, mask=tmask, other=0.0).to(tl.float32)
        else:
            gst = tl.zeros((BP, BN), dtype=tl.float32)
        c_base = c_ptr + bi * L * G * N + gi * N
        dy_base = dy_ptr + bi * L * H * P + hh * P
        for cc in range(NCHUNK):
            c = NCHUNK - 1 - cc
            offs_l = c * CS + offs_c
            ml = offs_l < L
            raw = tl.load(dt_base + offs_l * H, mask=ml, other=0.0).to(tl.float32)
            d = tl.where(ml, _prep_dt(raw, bias, DT_SOFTPLUS, lo, hi), 0.0)
            cs = tl.cumsum(d * A, 0)
            cs_last = tl.sum(d * A, 0)
            v = tl.exp(cs)
            decay = tl.exp(cs_last)
            if HAS_SEQ:
                s = tl.load(seq_base + offs_l, mask=ml, other=0)
                s_last = tl.load(seq_base + tl.minimum(c * CS + CS, L) - 1)
                s_prev = tl.load(seq_base + tl.maximum(c * CS - 1, 0))
                v = tl.where(s == s_prev, v, 0.0)
                decay = tl.where(s_last == s_prev, decay, 0.0)
            e_off = ((bi * H + hh) * NCHUNK + c) * P * N
            tl.store(ds_ptr + e_off + tile, _to(gst, ds_ptr.dtype.element_ty, PREC), mask=tmask)
            # decay * sum(dS[c] * E[c]): the pass-through term of d(cumsum dt A) at the chunk end
            e_c = tl.load(e_ptr + e_off + tile, mask=tmask, other=0.0).to(tl.float32)
            tl.store(gdot_ptr + ((bi * H + hh) * NTILE + pid_t) * NCHUNK + c,
                     decay * tl.sum(tl.sum(gst * e_c, 1), 0))
            dys = tl.load(dy_base + offs_l[:, None] * (H * P) + offs_p[None, :],
                          mask=ml[:, None] & mp[None, :], other=0.0)  # (c, BP)
            cst = tl.load(c_base + offs_l[:, None] * (G * N) + offs_n[None, :],
                          mask=ml[:, None] & mn[None, :], other=0.0)  # (c, BN)
            cv = _to((cst.to(tl.float32) * v[:, None]), DT, PREC)
            gst = _dot(tl.trans(dys), cv, PREC) + decay * gst
        if WANT_DINIT:
            tl.store(dinit_ptr + state_off + tile, gst, mask=tmask)
