"""Segment-parallel backward of the Mamba-1 selective scan (the "seg" variant, issue 7).

Letters: b batch, l length, e inner width, n state dim, c chunk length (BLOCK_T),
s segment (SEG_CHUNKS chunks; the forward checkpoints the state at every segment start).

Why a second backward: the default one (triton_kernels.py) spreads (e, n) over the threads,
so every sum over n (y, du, ddt) and over e (dB, dC) is a shuffle tree or a trip through
shared memory, and its chunk loop compiled for sm_90 holds ~80 barriers and ~330 shuffles
per 8-step chunk; it also walks the whole length in one program per (b, e-block).
Here, as in mamba_ssm's CUDA backward, the state index n is a loop:
  * a program owns (b, BLOCK_E channels, one segment); each thread holds whole (c,) time
    columns of its channels, so both recurrences are sequential in-thread scans (the
    reverse one as a forward scan over `tl.flip`ped rows, which is free in registers;
    `reverse=True` costs lane shuffles) and y, du, ddt accumulate over the n loop in
    registers. Only dB, dC (sums over e) cross lanes: one warp a program, no barriers.
  * the state at the start of chunk k of a segment is recomputed from the segment's
    checkpoint (k chunk scans: segments are short, so no scratch of chunk states);
  * the adjoint entering a segment from later ones comes from a pre-pass
    (`seg_adjoint_kernel`): per segment, the adjoint at its start with zero entering at
    its end (wloc) and the product of its decays (ptot), (b, s, n, e); a program folds
    the later segments' pairs: w <- wloc + ptot * w.
Adjoint algebra, for h_t = a_t h_{t-1} + dt_t u_t B_t and g_t = dL/dh_t:
  g_t = C_t dy_t + a_{t+1} g_{t+1};  a_t h_{t-1} = h_t - dt_t u_t B_t;
  ddt_t += sum_n g_t (A (h_t - dt u B) + u B);  du_t += sum_n g_t dt B;  dA += g dt (h - dt u B).
"""
import triton
import triton.language as tl

from .triton_kernels import LOG2E, _adjoint_combine, _softplus, _state_combine


@triton.jit
def _lane_e(BLOCK_E: tl.constexpr):
    """The channel index of a block, neighbours swapped in pairs (BLOCK_E even).

    The index is only a label used consistently for every e-indexed tensor, but a
    contiguous one makes Triton vectorize the (c, e) loads along e and then give the spare
    lanes of a warp to the time axis, which turns the in-thread scans into lane shuffles.
    """
    r = tl.arange(0, BLOCK_E)
    return r ^ 1


@triton.jit
def _chunk_te(u_base, dt_base, bias, seq_base, t, offs_e, E, L, su_l, sdt_l, sseq_l,
              HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr):
    """u, dt (discretized), dt_pre and the reset mask of one chunk, (c, e) tiles, fp32."""
    t_mask = t < L
    te_mask = t_mask[:, None] & (offs_e < E)[None, :]
    t64 = t  # int32 row offsets: the launcher checks l * stride < 2**31
    u = tl.load(u_base + t64[:, None] * su_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
    dt_pre = tl.load(dt_base + t64[:, None] * sdt_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt_pre = dt_pre + bias[None, :]
    if SOFTPLUS:
        dt = _softplus(dt_pre)
    else:
        dt = dt_pre
    dt = tl.where(te_mask, dt, 0.0)  # padded rows: a = 1 carries the state, dt u B = 0
    if HAS_SEQ:
        s_cur = tl.load(seq_base + t64 * sseq_l, mask=t_mask, other=0)
        s_prev = tl.load(seq_base + (t64 - 1) * sseq_l, mask=t_mask & (t > 0), other=0)
        reset = (s_cur != s_prev) & (t > 0) & t_mask
    else:
        reset = t < 0
    return u, dt, dt_pre, reset


@triton.jit
def _col(base, t, n, L, sl):
    """Column n of a (l, n) matrix over the chunk rows, as (c, 1) fp32 (broadcast over e)."""
    return tl.load(base + t[:, None] * sl + n, mask=(t < L)[:, None], other=0.0).to(tl.float32)


@triton.jit
def _decay(dt, A2n, reset, HAS_SEQ: tl.constexpr):
    a = tl.exp2(dt * A2n[None, :])  # (c, e)
    if HAS_SEQ:  # a = 0 where seq_idx changes: the state restarts
        a = tl.where(reset[:, None], 0.0, a)
    return a


@triton.jit
def _first_row2(x, rows):
    return tl.sum(tl.where((rows == 0)[:, None], x, 0.0), axis=0)


@triton.jit
def _last_row2(x, rows, BLOCK_T: tl.constexpr):
    return tl.sum(tl.where((rows == BLOCK_T - 1)[:, None], x, 0.0), axis=0)


@triton.jit
def _adjoint(a, cdy, rows, BLOCK_T: tl.constexpr):
    """Reverse recursion g_t = cdy_t + a_{t+1} g_{t+1} over the chunk with 0 entering its end.

    Returns (g, p) with p_t = prod_{s>t} a_s: the full g is g + p * w for w entering the end.
    The rows are flipped (free: time is in-thread) so that the scan runs forward.
    """
    ones = tl.full([BLOCK_T, a.shape[1]], 1.0, tl.float32)
    fa, p, g = tl.associative_scan((tl.flip(a, 0), ones, tl.flip(cdy, 0)), axis=0, combine_fn=_adjoint_combine)
    return tl.flip(g, 0), tl.flip(p, 0)


@triton.jit(do_not_specialize=["L", "n_seg", "segs"])
def seg_adjoint_kernel(
    dt_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, seq_ptr, dout_ptr, wloc_ptr, ptot_ptr,
    L, E, N, n_seg, segs,
    sdt_b, sdt_l, sC_b, sC_l, sz_b, sz_l, sseq_b, sseq_l, sdo_b, sdo_l,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr,
    SEG_CHUNKS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """Per group of `segs` segments: wloc = a g at its first step with g = 0 entering its end,
    ptot = prod a, both (b, group, n, e) fp32."""
    pid_e = tl.program_id(0)
    bid = tl.program_id(1).to(tl.int64)
    grp = tl.program_id(2)
    n_grp = tl.num_programs(2)
    offs_e = pid_e * BLOCK_E + _lane_e(BLOCK_E)
    e_mask = offs_e < E
    rows = tl.arange(0, BLOCK_T)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_E], dtype=tl.float32)
    dt_base = dt_ptr + bid * sdt_b
    C_base = C_ptr + bid * sC_b
    z_base = z_ptr + bid * sz_b
    do_base = dout_ptr + bid * sdo_b
    seq_base = seq_ptr + bid * sseq_b
    out = wloc_ptr + ((bid * n_grp + grp) * N) * E + offs_e  # row n at + n * E
    pout = ptot_ptr + ((bid * n_grp + grp) * N) * E + offs_e
    for n in range(0, N):
        tl.store(out + n * E, tl.zeros([BLOCK_E], dtype=tl.float32), mask=e_mask)
        tl.store(pout + n * E, tl.full([BLOCK_E], 1.0, tl.float32), mask=e_mask)
    tl.debug_barrier()
    n_ck = tl.minimum(segs, n_seg - grp * segs) * SEG_CHUNKS  # the last group may be short
    for kk in range(0, n_ck):
        t = (grp * segs * SEG_CHUNKS + n_ck - 1 - kk) * BLOCK_T + rows
        te_mask = (t < L)[:, None] & e_mask[None, :]
        t64 = t  # int32 row offsets: the launcher checks l * stride < 2**31
        # dt only (u unused here): the dt pointer is passed for u too
        _u, dt, _dtp, reset = _chunk_te(dt_base, dt_base, bias, seq_base, t, offs_e, E, L, sdt_l, sdt_l, sseq_l,
                                        HAS_BIAS, SOFTPLUS, HAS_SEQ)
        dy = tl.load(do_base + t64[:, None] * sdo_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            zt = tl.load(z_base + t64[:, None] * sz_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
            dy = dy * (zt * tl.sigmoid(zt))
        for n in tl.range(0, N, loop_unroll_factor=1):
            A2n = tl.load(A_ptr + offs_e * N + n, mask=e_mask, other=0.0).to(tl.float32) * LOG2E
            a = _decay(dt, A2n, reset, HAS_SEQ)
            g, p = _adjoint(a, _col(C_base, t, n, L, sC_l) * dy, rows, BLOCK_T)
            w = tl.load(out + n * E, mask=e_mask, other=0.0)  # this program's own running values
            pt = tl.load(pout + n * E, mask=e_mask, other=1.0)
            w = _first_row2(a * g, rows) + _first_row2(a * p, rows) * w
            pt = pt * _first_row2(a * p, rows)
            tl.store(out + n * E, w, mask=e_mask)
            tl.store(pout + n * E, pt, mask=e_mask)
        tl.debug_barrier()  # read back by the next chunk


@triton.jit(do_not_specialize=["L", "n_seg", "segs"])
def seg_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, ckpt_ptr, dout_ptr, dhT_ptr,
    wloc_ptr, ptot_ptr, wscr_ptr,
    du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, E, N, n_seg, segs,
    su_b, su_l, sdt_b, sdt_l, sB_b, sB_l, sC_b, sC_l, sz_b, sz_l, sseq_b, sseq_l, sdo_b, sdo_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_DHT: tl.constexpr,
    SEG_CHUNKS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """Gradients of one (b, e-block, group of `segs` segments). du, ddt, dz: (b, l, e); dB, dC:
    fp32 partials (b, e / BLOCK_E, l, n) summed by the caller; dA: fp32 (b, group, e, n), dD,
    dbias: fp32 (b, group, e), summed by the caller; dh0: fp32 (b, e, n), written by the
    group-0 programs. wscr: (b, e-block, group, 2, n, BLOCK_E) fp32, this program's own: the
    adjoint carried between chunks, and the chunk-start states."""
    pid_e = tl.program_id(0)
    bid = tl.program_id(1).to(tl.int64)
    grp = tl.program_id(2)
    n_grp = tl.num_programs(2)
    n_eblk = tl.num_programs(0)
    offs_e = pid_e * BLOCK_E + _lane_e(BLOCK_E)
    e_mask = offs_e < E
    rows = tl.arange(0, BLOCK_T)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_E], dtype=tl.float32)
    u_base = u_ptr + bid * su_b
    dt_base = dt_ptr + bid * sdt_b
    B_base = B_ptr + bid * sB_b
    C_base = C_ptr + bid * sC_b
    z_base = z_ptr + bid * sz_b
    do_base = dout_ptr + bid * sdo_b
    seq_base = seq_ptr + bid * sseq_b
    out_base = bid * L * E
    dBC_base = dB_ptr + (bid * n_eblk + pid_e) * L * N  # this program's own (l, n) slab
    dCC_base = dC_ptr + (bid * n_eblk + pid_e) * L * N
    wscr = wscr_ptr + ((bid * n_eblk + pid_e) * n_grp + grp) * (2 * N * BLOCK_E) + tl.arange(0, BLOCK_E)
    hscr = wscr + N * BLOCK_E  # the chunk-start states, (n, BLOCK_E)
    dA_base = dA_ptr + ((bid * n_grp + grp) * E + offs_e) * N  # (e,) row starts of (b, group, e, n)

    # the adjoint entering this group's end: fold the later groups' (wloc, ptot)
    for n in range(0, N):
        if HAS_DHT:
            w = tl.load(dhT_ptr + (bid * E + offs_e) * N + n, mask=e_mask, other=0.0).to(tl.float32)
        else:
            w = tl.zeros([BLOCK_E], dtype=tl.float32)
        for g2 in range(grp + 1, n_grp):
            g_r = n_grp - 1 - (g2 - grp - 1)  # latest first
            off = ((bid * n_grp + g_r) * N + n) * E + offs_e
            w = tl.load(wloc_ptr + off, mask=e_mask, other=0.0) + tl.load(ptot_ptr + off, mask=e_mask, other=0.0) * w
        tl.store(wscr + n * BLOCK_E, w)
        tl.store(dA_base + n, tl.zeros([BLOCK_E], dtype=tl.float32), mask=e_mask)
    # wscr and dA are read back below by whichever lane the layout gives: make the stores visible
    tl.debug_barrier()

    dD_acc = tl.zeros([BLOCK_E], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_E], dtype=tl.float32)
    n_ck = tl.minimum(segs, n_seg - grp * segs) * SEG_CHUNKS  # the last group may be short
    for kk in range(0, n_ck):
        cidx = grp * segs * SEG_CHUNKS + n_ck - 1 - kk  # the chunk, last to first
        k = cidx % SEG_CHUNKS  # its index in its segment
        c0 = cidx - k  # the segment's first chunk
        ckpt_base = ckpt_ptr + ((bid * n_seg + cidx // SEG_CHUNKS) * E + offs_e) * N
        t = cidx * BLOCK_T + rows
        t_mask = t < L
        te_mask = t_mask[:, None] & e_mask[None, :]
        t64 = t  # int32 row offsets: the launcher checks l * stride < 2**31
        # live through the n loop: u, dt, dy and three (c, e) sums over n; the rest is
        # re-read after it (L1/L2), which keeps the loop within the register file
        u, dt, _dtp, reset = _chunk_te(u_base, dt_base, bias, seq_base, t, offs_e, E, L, su_l, sdt_l, sseq_l,
                                       HAS_BIAS, SOFTPLUS, HAS_SEQ)
        dy = tl.load(do_base + t64[:, None] * sdo_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            zt = tl.load(z_base + t64[:, None] * sz_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
            dy = dy * (zt * tl.sigmoid(zt))
        y_acc = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.float32)  # sum_n C h
        gB_acc = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.float32)  # sum_n g B
        gAh_acc = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.float32)  # sum_n A g a h_{t-1}
        # the states at this chunk's start, every n: from the segment checkpoint through
        # chunks 0..k-1 of the segment, each read and discretized once for all n (hscr)
        for n in range(0, N):
            tl.store(hscr + n * BLOCK_E, tl.load(ckpt_base + n, mask=e_mask, other=0.0))
        if SEG_CHUNKS > 1:
            for k2 in range(0, k):
                tl.debug_barrier()  # hscr, written in another layout just before
                t2 = (c0 + k2) * BLOCK_T + rows
                u2, dt2, _p2, reset2 = _chunk_te(u_base, dt_base, bias, seq_base, t2, offs_e, E, L, su_l, sdt_l,
                                                 sseq_l, HAS_BIAS, SOFTPLUS, HAS_SEQ)
                dtu2 = dt2 * u2
                for n in tl.range(0, N, loop_unroll_factor=1):
                    A2n = tl.load(A_ptr + offs_e * N + n, mask=e_mask, other=0.0).to(tl.float32) * LOG2E
                    a2 = _decay(dt2, A2n, reset2, HAS_SEQ)
                    acum2, hloc2 = tl.associative_scan((a2, dtu2 * _col(B_base, t2, n, L, sB_l)), axis=0,
                                                       combine_fn=_state_combine)
                    h2 = tl.load(hscr + n * BLOCK_E)
                    tl.store(hscr + n * BLOCK_E, _last_row2(acum2 * h2[None, :] + hloc2, rows, BLOCK_T))
        tl.debug_barrier()
        for n in tl.range(0, N, loop_unroll_factor=1):
            An = tl.load(A_ptr + offs_e * N + n, mask=e_mask, other=0.0).to(tl.float32)
            A2n = An * LOG2E
            h = tl.load(hscr + n * BLOCK_E)
            Bn = _col(B_base, t, n, L, sB_l)  # (c, 1)
            Cn = _col(C_base, t, n, L, sC_l)
            a = _decay(dt, A2n, reset, HAS_SEQ)
            bu = dt * u * Bn
            acum, hloc = tl.associative_scan((a, bu), axis=0, combine_fn=_state_combine)
            hs = acum * h[None, :] + hloc  # (c, e): h_t
            if HAS_Z:
                y_acc += hs * Cn
            # sums over e kept 2-D (c, 1): the store then needs no layout conversion through shared memory
            tl.store(dCC_base + t64[:, None] * N + n, tl.sum(hs * dy, axis=1, keep_dims=True), mask=t_mask[:, None])
            w = tl.load(wscr + n * BLOCK_E)
            g, p = _adjoint(a, Cn * dy, rows, BLOCK_T)
            g = g + p * w[None, :]  # dL/dh_t, (c, e)
            tl.store(wscr + n * BLOCK_E, _first_row2(a * g, rows))  # into the chunk before
            gh = g * (hs - bu)  # g_t a_t h_{t-1}
            gAh_acc += gh * An[None, :]
            gB_acc += g * Bn
            tl.store(dBC_base + t64[:, None] * N + n, tl.sum(g * (dt * u), axis=1, keep_dims=True), mask=t_mask[:, None])
            dA_old = tl.load(dA_base + n, mask=e_mask, other=0.0)
            tl.store(dA_base + n, dA_old + tl.sum(gh * dt, axis=0), mask=e_mask)
        # ddt = sum_n g (A a h_{t-1} + B u), du = dt sum_n g B (+ D dy)
        du = gB_acc * dt
        ddt = gAh_acc + gB_acc * u
        dout = tl.load(do_base + t64[:, None] * sdo_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            zt = tl.load(z_base + t64[:, None] * sz_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zt)
            dy = dout * (zt * sz)
            y = y_acc
            if HAS_D:
                y += Dv[None, :] * u
            dz = dout * y * sz * (1.0 + zt * (1.0 - sz))
            tl.store(dz_ptr + out_base + t64[:, None] * E + offs_e[None, :], dz.to(dz_ptr.dtype.element_ty),
                     mask=te_mask)
        else:
            dy = dout
        if HAS_D:
            du += dy * Dv[None, :]
            dD_acc += tl.sum(tl.where(te_mask, dy * u, 0.0), axis=0)
        if SOFTPLUS:
            dt_pre = tl.load(dt_base + t64[:, None] * sdt_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt_pre = dt_pre + bias[None, :]
            ddt = ddt * tl.sigmoid(dt_pre)
        ddt = tl.where(te_mask, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=0)
        tl.store(du_ptr + out_base + t64[:, None] * E + offs_e[None, :], du.to(du_ptr.dtype.element_ty),
                 mask=te_mask)
        tl.store(ddt_ptr + out_base + t64[:, None] * E + offs_e[None, :], ddt.to(ddt_ptr.dtype.element_ty),
                 mask=te_mask)
        tl.debug_barrier()  # wscr, dA: read back by the next chunk
    tl.store(dD_ptr + (bid * n_grp + grp) * E + offs_e, dD_acc, mask=e_mask)
    tl.store(dbias_ptr + (bid * n_grp + grp) * E + offs_e, dbias_acc, mask=e_mask)
    if grp == 0:
        for n in range(0, N):
            tl.store(dh0_ptr + (bid * E + offs_e) * N + n, tl.load(wscr + n * BLOCK_E), mask=e_mask)


def seg_backward(u, delta, A, B, C, D, z, delta_bias, seq_idx, ckpt, dy, dhT, softplus, n_seg, cb):
    """Launch the pre-pass and the main kernel; return fp32 sums (du, ddelta, dA (e, n),
    dB, dC (b, l, n), dD, dbias (e,), dz, dh0 (b, e, n)) in the order of the autograd tuple."""
    import torch

    b, l, e = u.shape
    n = A.shape[1]
    dev = u.device
    f32 = torch.float32
    be, bt, sc, warps = cb["BLOCK_E"], cb["BLOCK_T"], cb["SEG_CHUNKS"], cb["num_warps"]
    n_eblk = triton.cdiv(e, be)
    # segments per program: enough programs to fill the GPU several times over (PROGRAMS), and
    # no more, since each program's scratch (wscr) and partials (dA, dD, dbias) cost memory
    segs = cb.get("SEGS") or max(1, min(n_seg, (n_eblk * b * n_seg) // cb.get("PROGRAMS", 4096)))
    n_grp = triton.cdiv(n_seg, segs)
    grid = (n_eblk, b, n_grp)
    dummy = u
    zz = z if z is not None else dummy
    seq = seq_idx if seq_idx is not None else dummy
    bias = delta_bias if delta_bias is not None else dummy
    flags = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
                 HAS_SEQ=seq_idx is not None, SEG_CHUNKS=sc, BLOCK_T=bt, BLOCK_E=be, num_warps=warps)
    if cb.get("MAXNREG"):  # a register cap: more resident warps, some spills (see the README)
        flags["maxnreg"] = cb["MAXNREG"]
    wloc = torch.empty((b, n_grp, n, e), device=dev, dtype=f32)
    ptot = torch.empty((b, n_grp, n, e), device=dev, dtype=f32)
    if n_grp > 1:  # the last group's pair is never read
        seg_adjoint_kernel[grid](
            delta, A, C, zz, bias, seq, dy, wloc, ptot, l, e, n, n_seg, segs,
            delta.stride(0), delta.stride(1), C.stride(0), C.stride(1), zz.stride(0), zz.stride(1),
            seq.stride(0), seq.stride(1), dy.stride(0), dy.stride(1), **flags)
    wscr = torch.empty((b, n_eblk, n_grp, 2, n, be), device=dev, dtype=f32)
    du = torch.empty((b, l, e), device=dev, dtype=u.dtype)
    ddelta = torch.empty((b, l, e), device=dev, dtype=delta.dtype)
    dz = torch.empty((b, l, e), device=dev, dtype=z.dtype) if z is not None else du
    dB = torch.empty((b, grid[0], l, n), device=dev, dtype=f32)  # (b, e / BLOCK_E, l, n)
    dC = torch.empty((b, grid[0], l, n), device=dev, dtype=f32)
    dA = torch.empty((b, n_grp, e, n), device=dev, dtype=f32)
    dD = torch.empty((b, n_grp, e), device=dev, dtype=f32)
    dbias = torch.empty((b, n_grp, e), device=dev, dtype=f32)
    dh0 = torch.empty((b, e, n), device=dev, dtype=f32)
    seg_bwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, zz, bias, seq, ckpt, dy,
        dhT if dhT is not None else dummy, wloc, ptot, wscr,
        du, ddelta, dz, dB, dC, dA, dD, dbias, dh0,
        l, e, n, n_seg, segs,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1),
        C.stride(0), C.stride(1), zz.stride(0), zz.stride(1), seq.stride(0), seq.stride(1),
        dy.stride(0), dy.stride(1),
        HAS_D=D is not None, HAS_DHT=dhT is not None, **flags)
    return (du, ddelta, dA.sum((0, 1)), dB.sum(1), dC.sum(1), dD.sum((0, 1)), dz, dbias.sum((0, 1)), dh0)
