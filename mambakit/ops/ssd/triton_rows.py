"""SSD Triton kernels parallel over the row blocks of a chunk (CONFIG "scan_impl" / "dx_impl" "rows").

Letters: b batch, l length, h heads, p head dim, n state dim, g groups, c chunk length (CS),
m row block length (BM).

The recurrent kernels (triton_fwd.py _ssd_scan_kernel, triton_bwd.py _ssd_bwd_dx_kernel) give
one program a whole (chunk, head) and walk its row blocks in order with a state or a d cs
scratch carried between them. Compiled for sm_90 (bf16, h 32, p 64, n 128, c 256) both reach
the 255-register cap and spill at 8 warps, so one 8-warp program runs per SM and its serial
chain of loads and small matmuls is never hidden. These variants give every (chunk, row block,
head) its own program (4x the programs at c 256, m 64) and carry nothing between blocks,
like mamba_ssm's _chunk_scan_fwd / _chunk_scan_chunk_state_bwd_dx, at the price of the full
lower block triangle of C B^T per program instead of its diagonal:

  _ssd_scan_rows_kernel    grid (b*h, chunks*c/m, p blocks) (or the first two swapped): y rows of block i =
                           exp(cs_i) C_i E^T + sum_{k<=i} (C_i B_k^T o L) dt_k x_k (+ D x, gate).
                           C B^T recomputed per block pair, or read (fp32, once per group) from
                           _ssd_cb_kernel's output with LOAD_CB.
  _ssd_bwd_dx_rows_kernel  grid (b*h, chunks*c/m) (or swapped): dx rows of block k, ddt_direct, and its
                           terms of d cs: for every row block i >= k the row sums of
                           W = (C B^T o L) dt (dy . x) are written to part (b*h, chunks, c/m, c),
                           not added in place, so programs never share a location.
  _ssd_bwd_dx_finish_kernel grid (chunks, b*h): d cs = sum of the parts over k <= i, then the
                           same reverse cumsum as the recurrent kernel (_dcs_to_ddt): ddt, dA,
                           d dt_bias.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_bwd import _dcs_to_ddt
from .triton_fwd import _dot, _to


@triton.jit
def _row_and_head(HEADS_FIRST: tl.constexpr):
    """(chunk*c/m + row block, b*h) of this program. HEADS_FIRST: grid (b*h, chunks*c/m), so the
    programs launched together are the heads of one row block and share its B, C (and C B^T)
    tiles in L2; else grid (chunks*c/m, b*h), a head's chunks together."""
    if HEADS_FIRST:
        return tl.program_id(1), tl.program_id(0)
    return tl.program_id(0), tl.program_id(1)


@triton.jit
def _ssd_scan_rows_kernel(
    x_ptr, b_ptr, c_ptr, z_ptr, d_ptr, e_ptr, dtp_ptr, cs_ptr, seq_ptr, cb_ptr, out_ptr, ypre_ptr,
    L, H, G, P, N, NCHUNK,
    CS: tl.constexpr, BM: tl.constexpr, PP: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_SEQ: tl.constexpr,
    WRITE_YPRE: tl.constexpr, LOAD_CB: tl.constexpr, HEADS_FIRST: tl.constexpr, PREC: tl.constexpr,
):
    NSUB: tl.constexpr = CS // BM
    pid_r, pid_bh = _row_and_head(HEADS_FIRST)
    pid_c = pid_r // NSUB
    i = pid_r % NSUB
    cstart = pid_c * CS
    start = cstart + i * BM
    if start >= L:  # a row block past the end of the last chunk
        return
    bi = (pid_bh // H).to(tl.int64)
    hh = pid_bh % H
    gi = hh // (H // G)
    offs_p = tl.program_id(2) * PP + tl.arange(0, PP)
    offs_n = tl.arange(0, NP)
    offs_m = tl.arange(0, BM)
    mp = offs_p < P
    mn = offs_n < N
    DT = x_ptr.dtype.element_ty
    vec_base = (bi * H + hh) * (NCHUNK * CS)  # the (b, h, chunks*c) dt and cumsum buffers, padded
    x_base = x_ptr + bi * L * H * P + hh * P
    bc_base = bi * L * G * N + gi * N
    seq_base = seq_ptr + bi * L
    offs_i = start + offs_m
    mi = offs_i < L
    cs_i = tl.load(cs_ptr + vec_base + offs_i)
    c_i = tl.load(c_ptr + bc_base + offs_i[:, None] * (G * N) + offs_n[None, :],
                  mask=mi[:, None] & mn[None, :], other=0.0)  # (m, n)
    # the state entering the chunk, read out with the decay from the chunk start
    e_off = (pid_bh.to(tl.int64) * NCHUNK + pid_c) * P * N
    et = _to(tl.load(e_ptr + e_off + offs_n[:, None] + offs_p[None, :] * N,
                     mask=mn[:, None] & mp[None, :], other=0.0), DT, PREC)  # (n, p)
    u = tl.exp(cs_i)
    s_i = offs_m
    if HAS_SEQ:
        s_i = tl.load(seq_base + offs_i, mask=mi, other=0)
        u = tl.where(s_i == tl.load(seq_base + tl.maximum(cstart - 1, 0)), u, 0.0)
    acc = _dot(c_i, et, PREC) * u[:, None]  # (m, p)
    for k in range(i + 1):
        offs_k = cstart + k * BM + offs_m
        mk = offs_k < L
        cs_k = tl.load(cs_ptr + vec_base + offs_k)
        d_k = tl.load(dtp_ptr + vec_base + offs_k)
        x_k = tl.load(x_base + offs_k[:, None] * (H * P) + offs_p[None, :], mask=mk[:, None] & mp[None, :], other=0.0)
        if LOAD_CB:  # fp32, once per (chunk, group) by _ssd_cb_kernel
            cb_base = ((bi * NCHUNK + pid_c) * G + gi) * CS * CS
            cb = tl.load(cb_ptr + cb_base + (i * BM + offs_m)[:, None] * CS + (k * BM + offs_m)[None, :])
        else:
            b_k = tl.load(b_ptr + bc_base + offs_k[:, None] * (G * N) + offs_n[None, :],
                          mask=mk[:, None] & mn[None, :], other=0.0)
            cb = _dot(c_i, tl.trans(b_k), PREC)  # (m, m)
        keep = (offs_m[:, None] >= offs_m[None, :]) | (k < i)
        if HAS_SEQ:
            s_k = tl.load(seq_base + offs_k, mask=mk, other=0)
            keep = keep & (s_i[:, None] == s_k[None, :])
        pm = cb * tl.exp(tl.where(keep, cs_i[:, None] - cs_k[None, :], float("-inf"))) * d_k[None, :]
        acc += _dot(_to(pm, DT, PREC), x_k, PREC)
    io_mask = mi[:, None] & mp[None, :]
    out_off = bi * L * H * P + hh * P + offs_i[:, None] * (H * P) + offs_p[None, :]
    if HAS_D:
        xs = tl.load(x_base + offs_i[:, None] * (H * P) + offs_p[None, :], mask=io_mask, other=0.0).to(tl.float32)
        if D_PER_P:
            acc += xs * tl.load(d_ptr + hh * P + offs_p, mask=mp, other=0.0).to(tl.float32)[None, :]
        else:
            acc += xs * tl.load(d_ptr + hh).to(tl.float32)
    if WRITE_YPRE:  # y before the gate, for dz
        tl.store(ypre_ptr + out_off, _to(acc, ypre_ptr.dtype.element_ty, PREC), mask=io_mask)
    if HAS_Z:
        zz = tl.load(z_ptr + out_off, mask=io_mask, other=0.0).to(tl.float32)
        acc = acc * zz * tl.sigmoid(zz)
    tl.store(out_ptr + out_off, _to(acc, out_ptr.dtype.element_ty, PREC), mask=io_mask)


@triton.jit
def _ssd_bwd_dx_rows_kernel(
    x_ptr, b_ptr, c_ptr, dy_ptr, dylo_ptr, cb_ptr, d_ptr, e_ptr, ds_ptr, dtp_ptr, cs_ptr, seq_ptr,
    part_ptr, vsum_ptr, ddtd_ptr, dx_ptr, dd_part_ptr,
    L, H, G, P, N, NCHUNK,
    CS: tl.constexpr, BM: tl.constexpr, PP: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, WANT_DD: tl.constexpr, HAS_SEQ: tl.constexpr,
    LOAD_CB: tl.constexpr, HAS_DYLO: tl.constexpr, HEADS_FIRST: tl.constexpr, PREC: tl.constexpr,
):
    """Row block k of one chunk and head: the body of _ssd_bwd_dx_kernel's loop over k, with
    its d cs terms written to part[k, rows of i] instead of added into a shared scratch."""
    NSUB: tl.constexpr = CS // BM
    pid_r, pid_bh = _row_and_head(HEADS_FIRST)
    pid_c = pid_r // NSUB
    k = pid_r % NSUB
    cstart = pid_c * CS
    nsub = tl.cdiv(tl.minimum(CS, L - cstart), BM)
    part_base = ((pid_bh.to(tl.int64) * NCHUNK + pid_c) * NSUB + k) * CS
    if k >= nsub:  # past the end of the last chunk: nothing to add
        tl.store(vsum_ptr + (pid_bh.to(tl.int64) * NCHUNK + pid_c) * NSUB + k, 0.0)
        return
    bi = (pid_bh // H).to(tl.int64)
    hh = pid_bh % H
    gi = hh // (H // G)
    offs_p = tl.arange(0, PP)
    offs_n = tl.arange(0, NP)
    offs_m = tl.arange(0, BM)
    mp = offs_p < P
    mn = offs_n < N
    DT = x_ptr.dtype.element_ty
    vec_base = (bi * H + hh) * (NCHUNK * CS)
    head_base = bi * L * H * P + hh * P
    bc_base = bi * L * G * N + gi * N
    cb_base = ((bi * NCHUNK + pid_c) * G + gi) * CS * CS
    seq_base = seq_ptr + bi * L
    cs_last = tl.load(cs_ptr + vec_base + cstart + CS - 1)
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
    wl = tl.exp(cs_last - cs_k)
    u0 = tl.exp(cs_k)
    s_k = offs_m
    if HAS_SEQ:
        s_k = tl.load(seq_base + offs_k, mask=mk, other=0)
        wl = tl.where(s_k == tl.load(seq_base + tl.minimum(cstart + CS, L) - 1), wl, 0.0)
        u0 = tl.where(s_k == tl.load(seq_base + tl.maximum(cstart - 1, 0)), u0, 0.0)
    e_off = pid_bh.to(tl.int64) * NCHUNK * P * N + pid_c * P * N
    ds_t = _to(tl.load(ds_ptr + e_off + offs_n[:, None] + offs_p[None, :] * N,
                       mask=mn[:, None] & mp[None, :], other=0.0), DT, PREC)  # (n, p)
    xf = x_k.to(tl.float32)
    acc = _dot(b_k, ds_t, PREC) * wl[:, None]  # (m, p), dx without dt: the chunk state's input side
    ddt_direct = tl.sum(acc * xf, 1)
    v_k = ddt_direct * d_k
    e_h = _to(tl.load(e_ptr + e_off + offs_p[:, None] * N + offs_n[None, :],
                      mask=mp[:, None] & mn[None, :], other=0.0), DT, PREC)  # (p, n)
    ye = tl.sum(_dot(dy_k, e_h, PREC) * c_k.to(tl.float32), 1) * u0  # dy . (C E^T) decayed
    colw = tl.zeros((BM,), dtype=tl.float32)
    own = tl.zeros((BM,), dtype=tl.float32)
    for i in range(k, nsub):
        offs_i = cstart + i * BM + offs_m
        mi = offs_i < L
        io_i = offs_i[:, None] * (H * P) + offs_p[None, :]
        dy_i = tl.load(dy_ptr + head_base + io_i, mask=mi[:, None] & mp[None, :], other=0.0)
        cs_i = tl.load(cs_ptr + vec_base + offs_i)
        if LOAD_CB:
            cb = tl.load(cb_ptr + cb_base + (i * BM + offs_m)[:, None] * CS + (k * BM + offs_m)[None, :])
        else:
            c_i = tl.load(c_ptr + bc_base + offs_i[:, None] * (G * N) + offs_n[None, :],
                          mask=mi[:, None] & mn[None, :], other=0.0)
            cb = _dot(c_i, tl.trans(b_k), PREC)
        keep = (offs_m[:, None] >= offs_m[None, :]) | (i > k)
        if HAS_SEQ:
            s_i = tl.load(seq_base + offs_i, mask=mi, other=0)
            keep = keep & (s_i[:, None] == s_k[None, :])
        pm = cb * tl.exp(tl.where(keep, cs_i[:, None] - cs_k[None, :], float("-inf")))  # (l, s)
        acc += _dot(tl.trans(_to(pm, DT, PREC)), dy_i, PREC)
        dxy = _dot(dy_i, tl.trans(x_k), PREC)
        if HAS_DYLO:  # dy = hi + lo when dy was computed in fp32 (the z gate)
            dylo_i = tl.load(dylo_ptr + head_base + io_i, mask=mi[:, None] & mp[None, :], other=0.0)
            dxy += _dot(dylo_i, tl.trans(x_k), PREC)
        wm = pm * dxy  # W without dt_s
        colw += tl.sum(wm, 0)
        roww = tl.sum(wm * d_k[None, :], 1)
        if i == k:  # stored below with the block's own terms, once colw is complete
            own += roww
        else:
            tl.store(part_ptr + part_base + i * BM + offs_m, roww)
    tl.store(part_ptr + part_base + k * BM + offs_m, own + ye - v_k - colw * d_k)
    tl.store(ddtd_ptr + vec_base + offs_k, ddt_direct + colw)
    tl.store(vsum_ptr + (pid_bh.to(tl.int64) * NCHUNK + pid_c) * NSUB + k, tl.sum(v_k, 0))
    dyf = dy_k.to(tl.float32)
    dx = acc * d_k[:, None]
    if HAS_D:
        if D_PER_P:
            dx += dyf * tl.load(d_ptr + hh * P + offs_p, mask=mp, other=0.0).to(tl.float32)[None, :]
        else:
            dx += dyf * tl.load(d_ptr + hh).to(tl.float32)
    if WANT_DD:  # dd_part (b, chunks*c/m, h, p)
        tl.store(dd_part_ptr + ((bi * NCHUNK + pid_c) * NSUB + k) * H * P + hh * P + offs_p,
                 tl.sum(dyf * xf, 0), mask=mp)
    tl.store(dx_ptr + head_base + io_k, _to(dx, dx_ptr.dtype.element_ty, PREC), mask=iom_k)


@triton.jit
def _ssd_bwd_dx_finish_kernel(
    part_ptr, vsum_ptr, gdot_ptr, dcs_ptr, ddtd_ptr, dtp_ptr, dtraw_ptr, a_ptr, bias_ptr,
    ddt_ptr, da_part_ptr, dbias_part_ptr,
    L, H, NCHUNK, NTILE, lo, hi,
    CS: tl.constexpr, BM: tl.constexpr, NTP: tl.constexpr, HAS_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, PREC: tl.constexpr,
):
    """d cs of one chunk and head from the row-block parts, then ddt, dA and d dt_bias."""
    NSUB: tl.constexpr = CS // BM
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    hh = pid_bh % H
    cstart = pid_c * CS
    nsub = tl.cdiv(tl.minimum(CS, L - cstart), BM)
    vec_base = (bi * H + hh) * (NCHUNK * CS)
    base = (pid_bh.to(tl.int64) * NCHUNK + pid_c) * NSUB
    offs_m = tl.arange(0, BM)
    offs_s = tl.arange(0, NSUB)
    for i in range(nsub):
        dcs = tl.zeros((BM,), dtype=tl.float32)
        for k in range(i + 1):
            dcs += tl.load(part_ptr + (base + k) * CS + i * BM + offs_m)
        tl.store(dcs_ptr + vec_base + cstart + i * BM + offs_m, dcs)
    tl.debug_barrier()  # dcs is read back by other threads below
    offs_t = tl.arange(0, NTP)
    gd = tl.load(gdot_ptr + (pid_bh.to(tl.int64) * NTILE + offs_t) * NCHUNK + pid_c, mask=offs_t < NTILE, other=0.0)
    vs = tl.load(vsum_ptr + base + offs_s)
    A = tl.load(a_ptr + hh).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + hh).to(tl.float32)
    da_acc, dbias_acc = _dcs_to_ddt(dcs_ptr, ddtd_ptr, dtp_ptr, dtraw_ptr, ddt_ptr, tl.sum(gd, 0) + tl.sum(vs, 0),
                                    vec_base, bi * L * H + hh, cstart, nsub, L, H, A, bias, lo, hi,
                                    BM, DT_SOFTPLUS, PREC)
    part = (bi * NCHUNK + pid_c) * H + hh
    tl.store(da_part_ptr + part, da_acc)
    tl.store(dbias_part_ptr + part, dbias_acc)
