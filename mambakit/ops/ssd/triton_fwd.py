"""Triton kernels of the SSD forward (and the state part of the backward).

Letters: b batch, l length, h heads, p head dim, n state dim, g groups, c chunk length
(the constexpr CS), m sub-block length inside a chunk (BM).

  _ssd_chunk_state_kernel  grid (chunks, b*h, p/BP * n/BN): each chunk's own input to the
                           state, S[c] = x^T (B w), fp32; with BWD also Yl[c] = dy^T (C v).
                           Tile 0 also writes the prepared dt (bias, softplus, clamp), its
                           in-chunk cumsum of dt*A (b, h, chunks*c, padded with dt = 0) and
                           the chunk's decay exp(sum dt A) (0 where a document starts).
  _ssd_state_pass_kernel   grid (p*n / BLOCK, b*h): the only serial part, one fma per chunk:
                           E[c] = state; state = decay[c] state + S[c]; the final state. With
                           BWD it walks back: dS[c] (gradient of the state leaving chunk c),
                           decay[c] sum(dS[c] E[c]) per block (for dA, ddt), d initial state.
  _ssd_scan_kernel         grid (chunks, b*h, p blocks): the outputs of one chunk of one head. Inside
                           the chunk it runs the recurrence on sub-blocks of BM rows, the state
                           (n, p) in registers: y = C R^T (decayed) + (C B^T o L) (dt x), then
                           R <- decay R + B^T (w x). Only diagonal (BM, BM) blocks are quadratic.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """tl.dot with fp32 accumulation. PREC "interp": the CPU interpreter, whose bf16 dot is
    wrong (triton 3.9), so the (already rounded) operands are widened to fp32 first."""
    if PREC == "interp":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _to(v, dtype: tl.constexpr, PREC: tl.constexpr):
    """v.to(dtype). Under the interpreter (PREC "interp"), whose fp32 -> bf16 cast truncates,
    round to nearest even by hand and keep the rounded value in fp32."""
    if PREC == "interp":
        if dtype == tl.bfloat16:
            bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def _prep_dt(raw, bias, DT_SOFTPLUS: tl.constexpr, lo, hi):
    """dt = clamp(softplus(raw + bias), lo, hi), threshold 20 as torch and mamba_ssm."""
    d = raw + bias
    if DT_SOFTPLUS:
        d = tl.where(d <= 20.0, tl.log(1.0 + tl.exp(d)), d)
    return tl.minimum(tl.maximum(d, lo), hi)


@triton.jit
def _ssd_chunk_state_kernel(
    x_ptr, b_ptr, dt_ptr, a_ptr, bias_ptr, seq_ptr, s_ptr, dtp_ptr, cs_ptr, decay_ptr,
    dy_ptr, c_ptr, yl_ptr,
    L, H, G, P, N, NCHUNK, NT_N, lo, hi,
    CS: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, KB: tl.constexpr,
    HAS_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr, BWD: tl.constexpr,
    PREC: tl.constexpr,
):
    """Per chunk, head and (BP, BN) tile: S = x^T (B w) (fp32), the chunk's own input to the
    state; with BWD also Yl = dy^T (C v), what the chunk's outputs ask of the entering state.
    Tile 0 stores the prepared dt, cumsum(dt A) and the chunk's decay (0 across documents)."""
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_t = tl.program_id(2)
    bi = (pid_bh // H).to(tl.int64)
    hh = pid_bh % H
    gi = hh // (H // G)
    offs_p = (pid_t // NT_N) * BP + tl.arange(0, BP)
    offs_n = (pid_t % NT_N) * BN + tl.arange(0, BN)
    offs_c = tl.arange(0, CS)
    mp = offs_p < P
    mn = offs_n < N
    tmask = mp[:, None] & mn[None, :]
    DT = x_ptr.dtype.element_ty
    A = tl.load(a_ptr + hh).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + hh).to(tl.float32)
    seq_base = seq_ptr + bi * L
    vec_base = (bi * H + hh) * (NCHUNK * CS)  # into the (b, h, chunks*c) dt and cumsum buffers
    dt_base = dt_ptr + bi * L * H + hh
    cstart = pid_c * CS
    # the whole chunk's dt once, for its total decay (and for the buffers, by tile 0)
    offs_l = cstart + offs_c
    ml = offs_l < L
    raw = tl.load(dt_base + offs_l * H, mask=ml, other=0.0).to(tl.float32)
    d = tl.where(ml, _prep_dt(raw, bias, DT_SOFTPLUS, lo, hi), 0.0)  # padding: dt = 0
    cs_last = tl.sum(d * A, 0)
    decay = tl.exp(cs_last)
    s_last = 0
    s_prev = 0
    if HAS_SEQ:
        s_last = tl.load(seq_base + tl.minimum(cstart + CS, L) - 1)
        s_prev = tl.load(seq_base + tl.maximum(cstart - 1, 0))  # the chunk before (or the row's first)
        decay = tl.where(s_last == s_prev, decay, 0.0)
    if pid_t == 0:
        tl.store(dtp_ptr + vec_base + offs_l, d)
        tl.store(cs_ptr + vec_base + offs_l, tl.cumsum(d * A, 0))
        tl.store(decay_ptr + pid_bh * NCHUNK + pid_c, decay)
    # then KB rows at a time: small live tiles, loads pipelined into the matmuls
    acc_s = tl.zeros((BP, BN), dtype=tl.float32)
    acc_y = tl.zeros((BP, BN), dtype=tl.float32)
    offs_k = tl.arange(0, KB)
    cs_run = 0.0
    x_base = x_ptr + bi * L * H * P + hh * P
    bc_base = bi * L * G * N + gi * N
    for kk in range(CS // KB):
        rows = cstart + kk * KB + offs_k
        mr = rows < L
        rd = tl.load(dt_base + rows * H, mask=mr, other=0.0).to(tl.float32)
        dk = tl.where(mr, _prep_dt(rd, bias, DT_SOFTPLUS, lo, hi), 0.0)
        csk = cs_run + tl.cumsum(dk * A, 0)
        cs_run += tl.sum(dk * A, 0)
        w = tl.exp(cs_last - csk) * dk
        if HAS_SEQ:
            sk = tl.load(seq_base + rows, mask=mr, other=0)
            w = tl.where(sk == s_last, w, 0.0)  # only the chunk's last document reaches its end
        xs = tl.load(x_base + rows[:, None] * (H * P) + offs_p[None, :], mask=mr[:, None] & mp[None, :], other=0.0)
        bc_off = bc_base + rows[:, None] * (G * N) + offs_n[None, :]
        bs = tl.load(b_ptr + bc_off, mask=mr[:, None] & mn[None, :], other=0.0)
        acc_s += _dot(tl.trans(xs), _to(bs.to(tl.float32) * w[:, None], DT, PREC), PREC)  # (BP, BN)
        if BWD:
            v = tl.exp(csk)
            if HAS_SEQ:
                v = tl.where(sk == s_prev, v, 0.0)  # only rows of the entering document read the state
            dys = tl.load(dy_ptr + bi * L * H * P + hh * P + rows[:, None] * (H * P) + offs_p[None, :],
                          mask=mr[:, None] & mp[None, :], other=0.0)
            cm = tl.load(c_ptr + bc_off, mask=mr[:, None] & mn[None, :], other=0.0)
            acc_y += _dot(tl.trans(dys), _to(cm.to(tl.float32) * v[:, None], DT, PREC), PREC)
    out_off = (pid_bh.to(tl.int64) * NCHUNK + pid_c) * P * N + offs_p[:, None] * N + offs_n[None, :]
    tl.store(s_ptr + out_off, acc_s, mask=tmask)
    if BWD:
        tl.store(yl_ptr + out_off, acc_y, mask=tmask)


@triton.jit
def _ssd_state_pass_kernel(
    s_ptr, decay_ptr, init_ptr, e_ptr, final_ptr, yl_ptr, dfinal_ptr, ds_ptr, gdot_ptr, dinit_ptr,
    PN, NCHUNK, NBLK,
    BLOCK: tl.constexpr, HAS_INIT: tl.constexpr, BWD: tl.constexpr, HAS_DFINAL: tl.constexpr,
    WANT_DINIT: tl.constexpr, PREC: tl.constexpr,
):
    """The recurrence over chunks on a BLOCK of one head's (p*n) state, nothing but loads,
    one fma and stores per chunk: E[c] = state; state = decay[c] state + S[c]. With BWD it
    walks back: dS[c] = G; gdot[c] = decay[c] sum(G E[c]); G = Yl[c] + decay[c] G."""
    pid_k = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    offs = pid_k * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    head = pid_bh * PN + offs  # (b*h, p*n) for init / final / dinit
    if HAS_INIT:
        state = tl.load(init_ptr + head, mask=m, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BLOCK,), dtype=tl.float32)
    base = pid_bh * NCHUNK * PN + offs  # chunk 0 of this head in the (b, h, chunks, p, n) buffers
    dec_base = decay_ptr + pid_bh * NCHUNK
    # loads run two chunks ahead of the fma and the store (the chain is latency-bound)
    s1 = tl.load(s_ptr + base, mask=m, other=0.0)
    d1 = tl.load(dec_base)
    c2 = tl.minimum(1, NCHUNK - 1)
    s2 = tl.load(s_ptr + base + c2 * PN, mask=m, other=0.0)
    d2 = tl.load(dec_base + c2)
    for c in range(NCHUNK):
        cur = s1
        dec = d1
        s1 = s2
        d1 = d2
        cn = tl.minimum(c + 2, NCHUNK - 1)
        s2 = tl.load(s_ptr + base + cn * PN, mask=m, other=0.0)
        d2 = tl.load(dec_base + cn)
        tl.store(e_ptr + base + c * PN, _to(state, e_ptr.dtype.element_ty, PREC), mask=m)
        state = state * dec + cur
    tl.store(final_ptr + head, state, mask=m)
    if BWD:
        tl.debug_barrier()  # E[c] is read back below
        if HAS_DFINAL:
            g = tl.load(dfinal_ptr + head, mask=m, other=0.0).to(tl.float32)
        else:
            g = tl.zeros((BLOCK,), dtype=tl.float32)
        for cc in range(NCHUNK):
            c = NCHUNK - 1 - cc
            off = base + c * PN
            dec = tl.load(decay_ptr + pid_bh * NCHUNK + c)
            tl.store(ds_ptr + off, _to(g, ds_ptr.dtype.element_ty, PREC), mask=m)
            e_c = tl.load(e_ptr + off, mask=m, other=0.0).to(tl.float32)
            tl.store(gdot_ptr + (pid_bh * NBLK + pid_k) * NCHUNK + c, dec * tl.sum(g * e_c, 0))
            g = tl.load(yl_ptr + off, mask=m, other=0.0) + dec * g
        if WANT_DINIT:
            tl.store(dinit_ptr + head, g, mask=m)


@triton.jit
def _ssd_scan_kernel(
    x_ptr, b_ptr, c_ptr, z_ptr, d_ptr, e_ptr, dtp_ptr, cs_ptr, seq_ptr, out_ptr, ypre_ptr,
    L, H, G, P, N, NCHUNK,
    CS: tl.constexpr, BM: tl.constexpr, PP: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_SEQ: tl.constexpr,
    WRITE_YPRE: tl.constexpr, PREC: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hh = pid_bh % H
    gi = hh // (H // G)
    # a block of PP of the head's p columns: the state tile (n, PP) lives in registers, and
    # splitting p gives more, lighter programs (the C B^T block is recomputed per block)
    offs_p = tl.program_id(2) * PP + tl.arange(0, PP)
    offs_n = tl.arange(0, NP)
    offs_m = tl.arange(0, BM)
    mp = offs_p < P
    mn = offs_n < N
    DT = x_ptr.dtype.element_ty
    lpad = NCHUNK * CS
    vec_base = (bi * H + hh) * lpad
    x_base = x_ptr + bi * L * H * P + hh * P
    bc_base = bi * L * G * N + gi * N
    seq_base = seq_ptr + bi * L

    # State entering the chunk, transposed to (n, p) so that C @ R^T needs no transpose.
    e_off = (pid_bh.to(tl.int64) * NCHUNK + pid_c) * P * N
    rt = tl.load(e_ptr + e_off + offs_n[:, None] + offs_p[None, :] * N,
                 mask=mn[:, None] & mp[None, :], other=0.0).to(tl.float32)  # (n, p)
    if HAS_D:
        if D_PER_P:
            dv = tl.load(d_ptr + hh * P + offs_p, mask=mp, other=0.0).to(tl.float32)
        else:
            dv = tl.load(d_ptr + hh).to(tl.float32)
    seq_prev = 0
    if HAS_SEQ:
        seq_prev = tl.load(seq_base + tl.maximum(pid_c * CS - 1, 0))
    cs_prev = 0.0
    nsub = tl.cdiv(tl.minimum(CS, L - pid_c * CS), BM)
    causal = offs_m[:, None] >= offs_m[None, :]
    for i in range(nsub):
        start = pid_c * CS + i * BM
        offs_l = start + offs_m
        ml = offs_l < L
        d = tl.load(dtp_ptr + vec_base + offs_l)
        csv = tl.load(cs_ptr + vec_base + offs_l)
        cs_end = tl.load(cs_ptr + vec_base + start + BM - 1)
        io_mask = ml[:, None] & mp[None, :]
        xs = tl.load(x_base + offs_l[:, None] * (H * P) + offs_p[None, :], mask=io_mask, other=0.0)
        bs = tl.load(b_ptr + bc_base + offs_l[:, None] * (G * N) + offs_n[None, :],
                     mask=ml[:, None] & mn[None, :], other=0.0)  # (m, n)
        cm = tl.load(c_ptr + bc_base + offs_l[:, None] * (G * N) + offs_n[None, :],
                     mask=ml[:, None] & mn[None, :], other=0.0)  # (m, n)
        u = tl.exp(csv - cs_prev)
        keep = causal
        w = tl.exp(cs_end - csv) * d
        decay = tl.exp(cs_end - cs_prev)
        if HAS_SEQ:
            s = tl.load(seq_base + offs_l, mask=ml, other=0)
            s_end = tl.load(seq_base + tl.minimum(start + BM, L) - 1)
            u = tl.where(s == seq_prev, u, 0.0)
            keep = keep & (s[:, None] == s[None, :])
            w = tl.where(s == s_end, w, 0.0)
            decay = tl.where(s_end == seq_prev, decay, 0.0)
            seq_prev = s_end
        y = _dot(cm, _to(rt, DT, PREC), PREC) * u[:, None]  # (m, p): state part
        cb = _dot(cm, tl.trans(bs), PREC)  # (m, m)
        lmat = tl.exp(tl.where(keep, csv[:, None] - csv[None, :], float("-inf")))
        pm = cb * lmat * d[None, :]
        y += _dot(_to(pm, DT, PREC), xs, PREC)  # diagonal block
        out_off = offs_l[:, None] * (H * P) + offs_p[None, :]
        if HAS_D:
            if D_PER_P:
                y += xs.to(tl.float32) * dv[None, :]
            else:
                y += xs.to(tl.float32) * dv
        if WRITE_YPRE:  # y before the gate, for dz
            tl.store(ypre_ptr + bi * L * H * P + hh * P + out_off, _to(y, ypre_ptr.dtype.element_ty, PREC), mask=io_mask)
        if HAS_Z:
            zz = tl.load(z_ptr + bi * L * H * P + hh * P + out_off, mask=io_mask, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + bi * L * H * P + hh * P + out_off, _to(y, out_ptr.dtype.element_ty, PREC), mask=io_mask)
        bw = _to((bs.to(tl.float32) * w[:, None]), DT, PREC)
        rt = rt * decay + _dot(tl.trans(bw), xs, PREC)  # (n, p)
        cs_prev = cs_end
