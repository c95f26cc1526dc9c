"""Triton kernels of the SSD forward: the state pass over chunks and the chunk scan.

Letters: b batch, l length, h heads, p head dim, n state dim, g groups, c chunk length
(the constexpr CS), m sub-block length inside a chunk (BM).

Two kernels cover the forward (see triton.py for the plan and the byte count):
  _ssd_state_kernel   grid (p/BP * n/BN tiles, b*h): walks the chunks in order with one
                      (BP, BN) tile of the state in registers; per chunk it adds the chunk's
                      input x^T (B * w) and stores the state entering the chunk, E[c].
                      With BWD it then walks back and produces dS[c] (the gradient of the
                      state leaving chunk c), the gradient of the initial state and
                      decay * sum(dS[c] * E[c]) per tile (for dA and ddt).
  _ssd_scan_kernel    grid (chunks, b*h): the outputs of one chunk of one head. Inside the
                      chunk it runs the same recurrence on sub-blocks of BM rows, the state
                      (n, p) kept in registers: y = C R^T (decayed) + (C B^T o L) (dt x),
                      then R <- decay R + B^T (w x). Only the diagonal (BM, BM) blocks
                      need the quadratic form, so exps and matmul work stay small.
The dt preparation (bias, softplus, clamp) and the in-chunk cumsum of dt*A are done once,
by tile 0 of the state kernel, into fp32 buffers (b, h, chunks*c) padded with dt = 0.
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
        e_off = ((bi * NCHUNK + c) * H + hh) * P * N
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
            e_off = ((bi * NCHUNK + c) * H + hh) * P * N
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
    offs_p = tl.arange(0, PP)
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
    e_off = ((bi * NCHUNK + pid_c) * H + hh) * P * N
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
