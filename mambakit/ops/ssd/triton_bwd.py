"""Triton kernels of the SSD backward: dx/ddt per head, dB/dC per group.

Letters: b batch, l length, h heads, p head dim, n state dim, g groups, c chunk length
(CS), m sub-block length (BM).

Both kernels read what the state kernels (triton_fwd.py, BWD=True) left: E[c] (state entering
chunk c) and dS[c] (gradient of the state leaving chunk c), both (b, h, chunks, p, n), the
prepared dt and its in-chunk cumsum (cs), and gdot[c] = decay[c] sum(dS[c] * E[c]).

_ssd_bwd_dx_kernel, grid (chunks, b*h). Walks the chunk's sub-blocks backwards with the
gradient state G (n, p) in registers (the mirror of the forward scan):
    dx = dt * [(C B^T o L)^T dy + w' (B G^T)] + D dy,   G <- decay G + C^T (v dy)
and, for dt and A, uses   d cs_t = dy_t . y_ssm_t - x_t . dx_ssm_t  (+ gdot at the chunk's
end), where y_ssm is the forward output before D and the gate (saved) and dx_ssm the
gradient without D: the per-element decays all enter y and the chunk state as
exp(cs_t - cs_s) factors, so the derivative in cs_t collects every term that has t as
output row minus every term that has t as input row. da = reverse cumsum of d cs.

_ssd_bwd_dbdc_kernel, grid (chunks, b*g*splits). dB and dC are summed over the heads of a
group, so one program owns a group's rows of a chunk and loops over its heads:
    dC_l = sum_h exp(cs_l) dy_l E_h + sum_s dCB[l, s] B_s
    dB_s = sum_h w_s x_s dS_h      + sum_l dCB[l, s] C_l
    dCB[l, s] = sum_h (dy_l . x_s) exp(cs_l - cs_s) dt_s     (s <= l, same document)
Off-diagonal (BM, BM) blocks of dCB factor as (u dy)(v dt x)^T with u, v <= 1 decays
around the block boundary, so the sum over heads is one matmul per head with no
per-element exp. Heads may be split across programs (partial sums added in torch).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_fwd import _dot, _to


@triton.jit
def _dcs_to_ddt(dcs_ptr, ddtd_ptr, dtp_ptr, dtraw_ptr, ddt_ptr, run, vec_base, raw_base, cstart, nsub, L, H,
                A, bias, lo, hi, BM: tl.constexpr, DT_SOFTPLUS: tl.constexpr, PREC: tl.constexpr):
    """The chunk's blocks backwards: da_t = run + sum of d cs over rows >= t (run: the chunk end's
    pass-through and state-input terms), ddt = A da + ddt_direct through clamp and softplus,
    stored; returns the chunk's (sum da dt, sum ddt) for dA and d dt_bias."""
    offs_m = tl.arange(0, BM)
    da_acc = 0.0
    dbias_acc = 0.0
    for ii in range(nsub):
        i = nsub - 1 - ii
        offs_l = cstart + i * BM + offs_m
        ml = offs_l < L
        dcs = tl.load(dcs_ptr + vec_base + offs_l)
        tot = tl.sum(dcs, 0)
        da = run + tot - tl.cumsum(dcs, 0) + dcs
        run += tot
        d = tl.load(dtp_ptr + vec_base + offs_l)
        ddt = A * da + tl.load(ddtd_ptr + vec_base + offs_l)
        da_acc += tl.sum(da * d, 0)
        raw = tl.load(dtraw_ptr + raw_base + offs_l * H, mask=ml, other=0.0).to(tl.float32) + bias
        post = raw
        if DT_SOFTPLUS:
            post = tl.where(raw <= 20.0, tl.log(1.0 + tl.exp(raw)), raw)
        ddt = tl.where((post >= lo) & (post <= hi), ddt, 0.0)
        if DT_SOFTPLUS:
            ddt = tl.where(raw <= 20.0, ddt * tl.sigmoid(raw), ddt)
        ddt = tl.where(ml, ddt, 0.0)
        tl.store(ddt_ptr + raw_base + offs_l * H, _to(ddt, ddt_ptr.dtype.element_ty, PREC), mask=ml)
        dbias_acc += tl.sum(ddt, 0)
    return da_acc, dbias_acc


@triton.jit
def _ssd_cb_kernel(b_ptr, c_ptr, cb_ptr, L, G, N, NCHUNK,
                   CS: tl.constexpr, BM: tl.constexpr, NP: tl.constexpr, PREC: tl.constexpr):
    """C B^T of one chunk and group in fp32, lower block triangle only: cb (b, chunks, g, c, c)."""
    pid_c = tl.program_id(0)
    pid_bg = tl.program_id(1)
    i = tl.program_id(2)
    bi = (pid_bg // G).to(tl.int64)
    gi = pid_bg % G
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, NP)
    mn = offs_n < N
    bc_base = bi * L * G * N + gi * N
    rows = pid_c * CS + i * BM + offs_m
    c_i = tl.load(c_ptr + bc_base + rows[:, None] * (G * N) + offs_n[None, :],
                  mask=(rows[:, None] < L) & mn[None, :], other=0.0)
    cb_base = ((bi * NCHUNK + pid_c) * G + gi) * CS * CS
    for k in range(i + 1):
        cols = pid_c * CS + k * BM + offs_m
        b_k = tl.load(b_ptr + bc_base + cols[:, None] * (G * N) + offs_n[None, :],
                      mask=(cols[:, None] < L) & mn[None, :], other=0.0)
        cb = _dot(c_i, tl.trans(b_k), PREC)
        tl.store(cb_ptr + cb_base + (i * BM + offs_m)[:, None] * CS + (k * BM + offs_m)[None, :], cb)


@triton.jit
def _ssd_bwd_dx_kernel(
    x_ptr, b_ptr, c_ptr, dy_ptr, dylo_ptr, cb_ptr, d_ptr, e_ptr, ds_ptr, gdot_ptr, dtp_ptr, cs_ptr,
    dtraw_ptr, a_ptr, bias_ptr, seq_ptr, dcs_ptr, ddtd_ptr,
    dx_ptr, ddt_ptr, da_part_ptr, dbias_part_ptr, dd_part_ptr,
    L, H, G, P, N, NCHUNK, NTILE, lo, hi,
    CS: tl.constexpr, BM: tl.constexpr, PP: tl.constexpr, NP: tl.constexpr, NTP: tl.constexpr,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, WANT_DD: tl.constexpr, HAS_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr, LOAD_CB: tl.constexpr, HAS_DYLO: tl.constexpr,
    PREC: tl.constexpr,
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
    head_base = bi * L * H * P + hh * P
    bc_base = bi * L * G * N + gi * N
    cb_base = ((bi * NCHUNK + pid_c) * G + gi) * CS * CS
    seq_base = seq_ptr + bi * L
    cstart = pid_c * CS
    A = tl.load(a_ptr + hh).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + hh).to(tl.float32)
    if HAS_D:
        if D_PER_P:
            dv = tl.load(d_ptr + hh * P + offs_p, mask=mp, other=0.0).to(tl.float32)
        else:
            dv = tl.load(d_ptr + hh).to(tl.float32)
    e_off = ((bi * H + hh) * NCHUNK + pid_c) * P * N
    ds_t = _to(tl.load(ds_ptr + e_off + offs_n[:, None] + offs_p[None, :] * N,
                       mask=mn[:, None] & mp[None, :], other=0.0), DT, PREC)  # (n, p)
    e_h = _to(tl.load(e_ptr + e_off + offs_p[:, None] * N + offs_n[None, :],
                      mask=mp[:, None] & mn[None, :], other=0.0), DT, PREC)  # (p, n)
    cs_last = tl.load(cs_ptr + vec_base + cstart + CS - 1)
    s_cp = 0
    s_last = 0
    if HAS_SEQ:
        s_cp = tl.load(seq_base + tl.maximum(cstart - 1, 0))
        s_last = tl.load(seq_base + tl.minimum(cstart + CS, L) - 1)
    causal = offs_m[:, None] >= offs_m[None, :]
    nsub = tl.cdiv(tl.minimum(CS, L - cstart), BM)
    dd_acc = tl.zeros((PP,), dtype=tl.float32)
    sum_v = 0.0
    # Phase 1, over input blocks k: dx, and d(cumsum) per row collected in dcs (scratch).
    # W[l, s] = (C B^T o L)[l, s] dt_s (dy_l . x_s): its row sums enter d cs_l, its column
    # sums leave d cs_s; both come from the same W so they cancel exactly where they should.
    for k in range(nsub):
        offs_k = cstart + k * BM + offs_m
        mk = offs_k < L
        io_k = offs_k[:, None] * (H * P) + offs_p[None, :]
        iom_k = mk[:, None] & mp[None, :]
        x_k = tl.load(x_ptr + head_base + io_k, mask=iom_k, other=0.0)
        dy_k = tl.load(dy_ptr + head_base + io_k, mask=iom_k, other=0.0)
        bc_k = offs_k[:, None] * (G * N) + offs_n[None, :]
        b_k = tl.load(b_ptr + bc_base + bc_k, mask=mk[:, None] & mn[None, :], other=0.0)
        c_k = tl.load(c_ptr + bc_base + bc_k, mask=mk[:, None] & mn[None, :], other=0.0)
        d_k = tl.load(dtp_ptr + vec_base + offs_k)
        cs_k = tl.load(cs_ptr + vec_base + offs_k)
        s_k = offs_m
        wl = tl.exp(cs_last - cs_k)
        u0 = tl.exp(cs_k)
        if HAS_SEQ:
            s_k = tl.load(seq_base + offs_k, mask=mk, other=0)
            wl = tl.where(s_k == s_last, wl, 0.0)
            u0 = tl.where(s_k == s_cp, u0, 0.0)
        xf = x_k.to(tl.float32)
        # the chunk's state: input side (to dS) and output side (from E)
        acc = _dot(b_k, ds_t, PREC) * wl[:, None]  # (m, p), dx without dt
        ddt_direct = tl.sum(acc * xf, 1)  # dx . x / dt, state part; the rest from W below
        v_k = ddt_direct * d_k
        sum_v += tl.sum(v_k, 0)
        ye = tl.sum(_dot(dy_k, e_h, PREC) * c_k.to(tl.float32), 1) * u0  # dy . (C E^T) decayed
        colw = tl.zeros((BM,), dtype=tl.float32)
        for i in range(k, nsub):
            offs_i = cstart + i * BM + offs_m
            mi = offs_i < L
            dy_i = tl.load(dy_ptr + head_base + offs_i[:, None] * (H * P) + offs_p[None, :],
                           mask=mi[:, None] & mp[None, :], other=0.0)
            cs_i = tl.load(cs_ptr + vec_base + offs_i)
            if LOAD_CB:  # precomputed once per group (fp32)
                cb = tl.load(cb_ptr + cb_base + (i * BM + offs_m)[:, None] * CS + (k * BM + offs_m)[None, :])
            else:  # one head per group: nothing to share, recompute
                c_i = tl.load(c_ptr + bc_base + offs_i[:, None] * (G * N) + offs_n[None, :],
                              mask=mi[:, None] & mn[None, :], other=0.0)
                cb = _dot(c_i, tl.trans(b_k), PREC)
            keep = (causal | (i > k))
            if HAS_SEQ:
                s_i = tl.load(seq_base + offs_i, mask=mi, other=0)
                keep = keep & (s_i[:, None] == s_k[None, :])
            pm = cb * tl.exp(tl.where(keep, cs_i[:, None] - cs_k[None, :], float("-inf")))  # (l, s)
            acc += _dot(tl.trans(_to(pm, DT, PREC)), dy_i, PREC)
            dxy = _dot(dy_i, tl.trans(x_k), PREC)
            if HAS_DYLO:  # dy = hi + lo when dy was computed in fp32 (the z gate)
                dylo_i = tl.load(dylo_ptr + head_base + offs_i[:, None] * (H * P) + offs_p[None, :],
                                 mask=mi[:, None] & mp[None, :], other=0.0)
                dxy += _dot(dylo_i, tl.trans(x_k), PREC)
            wm = pm * dxy  # W without dt_s
            colw += tl.sum(wm, 0)
            roww = tl.sum(wm * d_k[None, :], 1)
            tl.debug_barrier()  # dcs rows of block i were written by other threads before
            old = tl.load(dcs_ptr + vec_base + offs_i)
            old = tl.where(k == 0, 0.0, old)
            tl.store(dcs_ptr + vec_base + offs_i, old + roww)
        dyf = dy_k.to(tl.float32)
        # From the fp32 W rather than the rounded matmul: the dt and A gradients need it.
        tl.store(ddtd_ptr + vec_base + offs_k, ddt_direct + colw)
        dx = acc * d_k[:, None]
        if HAS_D:
            if D_PER_P:
                dx += dyf * dv[None, :]
            else:
                dx += dyf * dv
        if WANT_DD:
            dd_acc += tl.sum(dyf * xf, 0)
        tl.store(dx_ptr + head_base + io_k, _to(dx, dx_ptr.dtype.element_ty, PREC), mask=iom_k)
        tl.debug_barrier()
        old = tl.load(dcs_ptr + vec_base + offs_k)
        tl.store(dcs_ptr + vec_base + offs_k, old - colw * d_k - v_k + ye)
    # Phase 2, blocks backwards: da_t = sum of d cs over rows >= t, then ddt, dA, d dt_bias.
    tl.debug_barrier()
    offs_t = tl.arange(0, NTP)
    gd = tl.load(gdot_ptr + ((bi * H + hh) * NTILE + offs_t) * NCHUNK + pid_c, mask=offs_t < NTILE, other=0.0)
    da_acc, dbias_acc = _dcs_to_ddt(dcs_ptr, ddtd_ptr, dtp_ptr, dtraw_ptr, ddt_ptr, tl.sum(gd, 0) + sum_v,
                                    vec_base, bi * L * H + hh, cstart, nsub, L, H, A, bias, lo, hi,
                                    BM, DT_SOFTPLUS, PREC)
    part = (bi * NCHUNK + pid_c) * H + hh
    tl.store(da_part_ptr + part, da_acc)
    tl.store(dbias_part_ptr + part, dbias_acc)
    if WANT_DD:
        tl.store(dd_part_ptr + part * P + offs_p, dd_acc, mask=mp)


@triton.jit
def _ssd_bwd_dbdc_kernel(
    x_ptr, b_ptr, c_ptr, dy_ptr, e_ptr, ds_ptr, dtp_ptr, cs_ptr, seq_ptr, db_ptr, dc_ptr,
    BATCH, L, H, G, P, N, NCHUNK, HPS, NSPLIT,
    CS: tl.constexpr, BM: tl.constexpr, PP: tl.constexpr, NP: tl.constexpr,
    HAS_SEQ: tl.constexpr, PREC: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_x = tl.program_id(1)
    bi = (pid_x // (G * NSPLIT)).to(tl.int64)
    rem = pid_x % (G * NSPLIT)
    gi = rem // NSPLIT
    sp = rem % NSPLIT
    h0 = gi * (H // G) + sp * HPS
    offs_p = tl.arange(0, PP)
    offs_n = tl.arange(0, NP)
    offs_m = tl.arange(0, BM)
    mp = offs_p < P
    mn = offs_n < N
    DT = x_ptr.dtype.element_ty
    lpad = NCHUNK * CS
    bc_base = bi * L * G * N + gi * N
    out_base = (sp * BATCH + bi) * L * G * N + gi * N  # fp32 scratch (splits, b, l, g, n)
    seq_base = seq_ptr + bi * L
    causal = offs_m[:, None] >= offs_m[None, :]
    pn_off = offs_p[:, None] * N + offs_n[None, :]
    pn_mask = mp[:, None] & mn[None, :]
    cstart = pid_c * CS
    s_cp = 0
    s_last = 0
    if HAS_SEQ:
        s_cp = tl.load(seq_base + tl.maximum(cstart - 1, 0))
        s_last = tl.load(seq_base + tl.minimum(cstart + CS, L) - 1)
    nsub = tl.cdiv(tl.minimum(CS, L - cstart), BM)
    for i in range(nsub):
        start_i = cstart + i * BM
        offs_i = start_i + offs_m
        mi = offs_i < L
        bcm_i = mi[:, None] & mn[None, :]
        bc_off_i = offs_i[:, None] * (G * N) + offs_n[None, :]
        keep = causal
        s_i = offs_m
        if HAS_SEQ:
            s_i = tl.load(seq_base + offs_i, mask=mi, other=0)
            keep = keep & (s_i[:, None] == s_i[None, :])
        acc_dc = tl.zeros((BM, NP), dtype=tl.float32)
        acc_db = tl.zeros((BM, NP), dtype=tl.float32)
        dcb = tl.zeros((BM, BM), dtype=tl.float32)
        io_i = offs_i[:, None] * (H * P) + offs_p[None, :]
        iom_i = mi[:, None] & mp[None, :]
        for j in range(HPS):
            hh = h0 + j
            vec_base = (bi * H + hh) * lpad
            head_base = bi * L * H * P + hh * P
            d_i = tl.load(dtp_ptr + vec_base + offs_i)
            cs_i = tl.load(cs_ptr + vec_base + offs_i)
            cs_last = tl.load(cs_ptr + vec_base + cstart + CS - 1)
            u0 = tl.exp(cs_i)
            wl = tl.exp(cs_last - cs_i) * d_i
            if HAS_SEQ:
                u0 = tl.where(s_i == s_cp, u0, 0.0)
                wl = tl.where(s_i == s_last, wl, 0.0)
            dy_i = tl.load(dy_ptr + head_base + io_i, mask=iom_i, other=0.0)
            x_i = tl.load(x_ptr + head_base + io_i, mask=iom_i, other=0.0)
            e_off = ((bi * H + hh) * NCHUNK + pid_c) * P * N
            e_h = _to(tl.load(e_ptr + e_off + pn_off, mask=pn_mask, other=0.0), DT, PREC)  # (p, n)
            ds_h = _to(tl.load(ds_ptr + e_off + pn_off, mask=pn_mask, other=0.0), DT, PREC)  # (p, n)
            acc_dc += _dot(_to((dy_i.to(tl.float32) * u0[:, None]), DT, PREC), e_h, PREC)
            acc_db += _dot(_to((x_i.to(tl.float32) * wl[:, None]), DT, PREC), ds_h, PREC)
            dxy = _dot(dy_i, tl.trans(x_i), PREC)  # (m, m): dy_l . x_s
            lmat = tl.exp(tl.where(keep, cs_i[:, None] - cs_i[None, :], float("-inf")))
            dcb += dxy * lmat * d_i[None, :]
        b_i = tl.load(b_ptr + bc_base + bc_off_i, mask=bcm_i, other=0.0)  # loaded late: fewer live registers
        c_i = tl.load(c_ptr + bc_base + bc_off_i, mask=bcm_i, other=0.0)
        acc_dc += _dot(_to(dcb, DT, PREC), b_i, PREC)
        acc_db += _dot(tl.trans(_to(dcb, DT, PREC)), c_i, PREC)
        # Off-diagonal blocks (i, k < i): decays factor around the row just before block i.
        s_ref = 0
        if HAS_SEQ:
            s_ref = tl.load(seq_base + tl.maximum(start_i - 1, 0))
        for k in range(i):
            start_k = cstart + k * BM
            offs_k = start_k + offs_m
            bc_off_k = offs_k[:, None] * (G * N) + offs_n[None, :]
            b_k = tl.load(b_ptr + bc_base + bc_off_k, mask=mn[None, :], other=0.0)
            dcb = tl.zeros((BM, BM), dtype=tl.float32)
            for j in range(HPS):
                hh = h0 + j
                vec_base = (bi * H + hh) * lpad
                head_base = bi * L * H * P + hh * P
                cs_ref = tl.load(cs_ptr + vec_base + start_i - 1)
                cs_i = tl.load(cs_ptr + vec_base + offs_i)
                cs_k = tl.load(cs_ptr + vec_base + offs_k)
                d_k = tl.load(dtp_ptr + vec_base + offs_k)
                uu = tl.exp(cs_i - cs_ref)
                vv = tl.exp(cs_ref - cs_k) * d_k
                if HAS_SEQ:
                    s_k = tl.load(seq_base + offs_k)
                    uu = tl.where(s_i == s_ref, uu, 0.0)
                    vv = tl.where(s_k == s_ref, vv, 0.0)
                dy_i = tl.load(dy_ptr + head_base + io_i, mask=iom_i, other=0.0)
                x_k = tl.load(x_ptr + head_base + offs_k[:, None] * (H * P) + offs_p[None, :],
                              mask=mp[None, :], other=0.0)
                dcb += _dot(_to((dy_i.to(tl.float32) * uu[:, None]), DT, PREC),
                              tl.trans(_to((x_k.to(tl.float32) * vv[:, None]), DT, PREC)), PREC)
            acc_dc += _dot(_to(dcb, DT, PREC), b_k, PREC)
            contrib = _dot(tl.trans(_to(dcb, DT, PREC)), c_i, PREC)  # (m, n) rows of block k
            db_ptrs = db_ptr + out_base + bc_off_k
            tl.debug_barrier()  # the rows were stored by other threads in an earlier step
            old = tl.load(db_ptrs, mask=mn[None, :], other=0.0)
            tl.store(db_ptrs, old + contrib, mask=mn[None, :])
        tl.store(dc_ptr + out_base + bc_off_i, acc_dc, mask=bcm_i)
        tl.debug_barrier()
        tl.store(db_ptr + out_base + bc_off_i, acc_db, mask=bcm_i)
