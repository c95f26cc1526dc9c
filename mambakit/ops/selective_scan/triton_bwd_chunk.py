"""The default backward of the Mamba-1 selective scan ("chunk" variant), as a Triton kernel.

Letters: b batch, l length, e inner width, n state dim, c chunk length (BLOCK_T).

Same layout as the forward (triton_kernels.py): one program owns (one batch row,
BLOCK_E channels), (e, n) spread over the threads, time in registers. The forward stores
the state at the start of every segment of `seg_len` steps (b, l / seg_len, e, n); the
backward walks the segments last to first: pass 1 re-runs the segment forward and parks
each chunk's start state in a small per-program scratch (it stays in L2); pass 2 walks
the segment's chunks last to first, recomputes the chunk's states from its parked start
state and runs the adjoint recursion g_t = C_t dy_t + a_{t+1} g_{t+1} as a forward scan
over the chunk's tiles flipped along time (see the comment there for why no reverse scan).
"""
import triton
import triton.language as tl

from .triton_kernels import (LOG2E, _adjoint_combine, _discretize, _first_row, _last_row, _load_chunk,
                             _load_chunk_dout, _state_combine, _state_offsets)


@triton.jit(do_not_specialize=["L", "chunks_per_seg", "n_seg"])
def selective_scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, ckpt_ptr, dout_ptr, dhT_ptr,
    scratch_ptr,
    du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, E, N, chunks_per_seg, n_seg,
    su_b, su_l, sdt_b, sdt_l, sB_b, sB_l, sC_b, sC_l, sz_b, sz_l, sseq_b, sseq_l, sdo_b, sdo_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_DHT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr,
    VEC: tl.constexpr, DBC_ATOMIC: tl.constexpr,
):
    """Gradients. du, ddt, dz: (b, l, e) like the inputs; dB, dC: fp32, this e-block's
    share of the sum over e, stored into (b, n_eblk, l, n) partials that the caller sums
    (DBC_ATOMIC: atomically added into (b, l, n) instead, the old path); dA: fp32 (b, e, n)
    and dD, dbias: fp32 (b, e), summed over b by the caller; dh0: fp32 (b, e, n)."""
    pid_e = tl.program_id(0)
    bid = tl.program_id(1).to(tl.int64)
    n_eblk = tl.num_programs(0)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_n = _state_offsets(BLOCK_N, VEC, 128 // A_ptr.dtype.element_ty.primitive_bitwidth)
    rows = tl.arange(0, BLOCK_T)
    e_mask = offs_e < E
    n_mask = offs_n < N
    en_mask = e_mask[:, None] & n_mask[None, :]
    en_off = offs_e[:, None] * N + offs_n[None, :]
    loc = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + offs_n[None, :]  # scratch slot layout

    if EVEN_N:  # a mask along n would stop the load (and the layout) from vectorizing
        A3 = tl.load(A_ptr + en_off[None, :, :], mask=e_mask[None, :, None], other=0.0).to(tl.float32)
    else:
        A3 = tl.load(A_ptr + en_off[None, :, :], mask=en_mask[None, :, :], other=0.0).to(tl.float32)
    A2 = A3 * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_E], dtype=tl.float32)
    # W: the gradient flowing into the last step of the current chunk from later steps
    if HAS_DHT:
        W = tl.load(dhT_ptr + bid * E * N + en_off, mask=en_mask, other=0.0).to(tl.float32)
    else:
        W = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_E], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_E], dtype=tl.float32)

    u_base = u_ptr + bid * su_b
    dt_base = dt_ptr + bid * sdt_b
    z_base = z_ptr + bid * sz_b
    B_base = B_ptr + bid * sB_b
    C_base = C_ptr + bid * sC_b
    seq_base = seq_ptr + bid * sseq_b
    do_base = dout_ptr + bid * sdo_b
    # outputs du, ddt, dz are fresh contiguous (b, l, e); dB, dC fresh contiguous (b, l, n)
    out_base = bid * L * E
    if DBC_ATOMIC:
        dBC_base = bid * L * N
    else:
        dBC_base = (bid * n_eblk + pid_e) * L * N  # this program's own (l, n) slab
    scratch = scratch_ptr + ((bid * n_eblk + pid_e) * chunks_per_seg) * (BLOCK_E * BLOCK_N)

    n_chunks = tl.cdiv(L, BLOCK_T)
    for s in range(0, n_seg):
        seg = n_seg - 1 - s
        c_lo = seg * chunks_per_seg
        c_hi = tl.minimum(c_lo + chunks_per_seg, n_chunks)
        # pass 1: chunk start states of this segment, from its checkpoint
        h = tl.load(ckpt_ptr + (bid * n_seg + seg) * E * N + en_off, mask=en_mask, other=0.0)
        # loads of the next chunk are issued before this chunk's arithmetic (as in the forward):
        # the loop is a serial chain, and an unhidden load latency per chunk adds up over l / c
        nu, ndt, nz, nB, nC, nreset = _load_chunk(u_base, dt_base, z_base, B_base, C_base, seq_base,
                                                  c_lo * BLOCK_T + rows, offs_e, offs_n, E, N, L, su_l, sdt_l,
                                                  sz_l, sB_l, sC_l, sseq_l, False, HAS_SEQ)
        for c in range(c_lo, c_hi):
            tl.store(scratch + (c - c_lo) * (BLOCK_E * BLOCK_N) + loc, h)
            t = c * BLOCK_T + rows
            u, dt_raw, Bt, reset = nu, ndt, nB, nreset
            nu, ndt, nz, nB, nC, nreset = _load_chunk(u_base, dt_base, z_base, B_base, C_base, seq_base,
                                                      t + BLOCK_T, offs_e, offs_n, E, N, L, su_l, sdt_l,
                                                      sz_l, sB_l, sC_l, sseq_l, False, HAS_SEQ)
            dt_pre, dt, dtu, dA, dBu = _discretize(u, dt_raw, Bt, reset, t, L, A2, bias, HAS_BIAS, SOFTPLUS,
                                                   HAS_SEQ)
            acum, hloc = tl.associative_scan((dA, dBu), axis=0, combine_fn=_state_combine)
            h = _last_row(acum * h[None, :, :] + hloc, rows, BLOCK_T)
        tl.debug_barrier()  # scratch written by some threads is read by others below
        # pass 2: the segment's chunks, last to first, each read once: the states h by a
        # forward scan, the adjoint g by a forward scan over the tiles flipped along time
        # (Triton's reverse scan would cost ~10 lane shuffles a value on triton 3.6; time
        # sits in each thread's registers, so tl.flip moves nothing: the sm_90 SASS has no
        # more shuffles than without it). Until session 7 the chunk was re-read in reversed
        # row order instead, its discretization done twice: 13% (n 16) to 17% (n 64) slower
        # on an H100, as measured in the persistent variant tried then (docs/benchmarks.md). The
        # term g_t a_t h_{t-1} comes from the identity (W the gradient entering the chunk's
        # last step from later chunks)
        #   g_t a_t h_{t-1} = sum_{s=t..c-1} (C_s dy_s h_s - g_s dt_s u_s B_s) + W h_{c-1}.
        nu, ndt, nz, nB, nC, nreset, ndout = _load_chunk_dout(
            u_base, dt_base, z_base, B_base, C_base, seq_base, do_base, (c_hi - 1) * BLOCK_T + rows, offs_e,
            offs_n, E, N, L, su_l, sdt_l, sz_l, sB_l, sC_l, sseq_l, sdo_l, HAS_Z, HAS_SEQ)
        for cc in range(c_lo, c_hi):
            c = c_hi - 1 - (cc - c_lo)
            h0c = tl.load(scratch + (c - c_lo) * (BLOCK_E * BLOCK_N) + loc)
            # -- time order: states, output gate, dC and the C dy h half of the identity
            t = c * BLOCK_T + rows
            t_mask = t < L
            te_mask = t_mask[:, None] & e_mask[None, :]
            tn_mask = t_mask[:, None] & n_mask[None, :]
            t64 = t.to(tl.int64)
            u, dt_raw, z, Bt, Ct, reset, dout = nu, ndt, nz, nB, nC, nreset, ndout
            # prefetch the chunk before (chunk 0 again at the very end: valid addresses, unused)
            nu, ndt, nz, nB, nC, nreset, ndout = _load_chunk_dout(
                u_base, dt_base, z_base, B_base, C_base, seq_base, do_base, tl.maximum(c - 1, 0) * BLOCK_T + rows,
                offs_e, offs_n, E, N, L, su_l, sdt_l, sz_l, sB_l, sC_l, sseq_l, sdo_l, HAS_Z, HAS_SEQ)
            dt_pre, dt, dtu, dA, dBu = _discretize(u, dt_raw, Bt, reset, t, L, A2, bias, HAS_BIAS, SOFTPLUS,
                                                   HAS_SEQ)
            acum, hloc = tl.associative_scan((dA, dBu), axis=0, combine_fn=_state_combine)
            hs = acum * h0c[None, :, :] + hloc  # (c, e, n)
            if HAS_Z:
                y = tl.sum(hs * Ct[:, None, :], axis=2)
                if HAS_D:
                    y += Dv[None, :] * u
                sz = tl.sigmoid(z)
                dy = dout * (z * sz)
                dz = dout * y * sz * (1.0 + z * (1.0 - sz))
                tl.store(dz_ptr + out_base + t64[:, None] * E + offs_e[None, :],
                         dz.to(dz_ptr.dtype.element_ty), mask=te_mask)
            else:
                dy = dout
            if HAS_D:
                dD_acc += tl.sum(dy * u, axis=0)
            X = (dy[:, :, None] * Ct[:, None, :]) * hs  # C_s dy_s h_s, (c, e, n)
            dCt = tl.sum(hs * dy[:, :, None], axis=1)  # (c, n), this e-block's share
            if DBC_ATOMIC:  # relaxed: acq_rel makes every atomic wait for all earlier stores
                tl.atomic_add(dC_ptr + dBC_base + t64[:, None] * N + offs_n[None, :], dCt, mask=tn_mask,
                              sem="relaxed")
            else:
                tl.store(dC_ptr + dBC_base + t64[:, None] * N + offs_n[None, :], dCt, mask=tn_mask)
            h_last = _last_row(hs, rows, BLOCK_T)
            Pdt = tl.cumsum(dt, axis=0)  # sum_{t' <= t} dt, (c, e)
            dA_acc += tl.sum(X * Pdt[:, :, None], axis=0)
            Xn = tl.sum(X * A3, axis=2)  # (c, e)
            Xsuf = tl.sum(Xn, axis=0)[None, :] - tl.cumsum(Xn, axis=0) + Xn  # sum over s >= t
            ones = tl.full([BLOCK_T, BLOCK_E, BLOCK_N], 1.0, tl.float32)
            fa, p, gl = tl.associative_scan((tl.flip(dA, 0), ones, tl.flip(dy[:, :, None] * Ct[:, None, :], 0)),
                                            axis=0, combine_fn=_adjoint_combine)
            g = tl.flip(gl + p * W[None, :, :], 0)  # dL/dh_t, (c, e, n)
            K = W * h_last  # the W h_{c-1} term of the identity, (e, n)
            W = _first_row(dA * g, rows)  # a g at the chunk's first step: into the previous chunk
            Y = g * dBu  # g_s dt_s u_s B_s
            Yn = tl.sum(Y * A3, axis=2)  # (c, e)
            Ysuf = tl.sum(Yn, axis=0)[None, :] - tl.cumsum(Yn, axis=0) + Yn  # sum over s >= t
            dA_acc += K * tl.sum(dt, axis=0)[:, None] - tl.sum(Y * Pdt[:, :, None], axis=0)
            dBt = tl.sum(g * dtu[:, :, None], axis=1)  # (c, n)
            if DBC_ATOMIC:
                tl.atomic_add(dB_ptr + dBC_base + t64[:, None] * N + offs_n[None, :], dBt, mask=tn_mask,
                              sem="relaxed")
            else:
                tl.store(dB_ptr + dBC_base + t64[:, None] * N + offs_n[None, :], dBt, mask=tn_mask)
            gB = tl.sum(g * Bt[:, None, :], axis=2)  # (c, e)
            kA = tl.sum(K[None, :, :] * A3, axis=2)  # (1, e)
            ddt = (Xsuf - Ysuf + kA) + u * gB
            du = dt * gB
            if HAS_D:
                du += dy * Dv[None, :]
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(dt_pre)
            ddt = tl.where(te_mask, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=0)
            tl.store(du_ptr + out_base + t64[:, None] * E + offs_e[None, :],
                     du.to(du_ptr.dtype.element_ty), mask=te_mask)
            tl.store(ddt_ptr + out_base + t64[:, None] * E + offs_e[None, :],
                     ddt.to(ddt_ptr.dtype.element_ty), mask=te_mask)
        tl.debug_barrier()  # the next segment's pass 1 overwrites the scratch
    tl.store(dA_ptr + bid * E * N + en_off, dA_acc, mask=en_mask)
    tl.store(dh0_ptr + bid * E * N + en_off, W, mask=en_mask)
    tl.store(dD_ptr + bid * E + offs_e, dD_acc, mask=e_mask)
    tl.store(dbias_ptr + bid * E + offs_e, dbias_acc, mask=e_mask)
