"""Triton kernels of the Mamba-1 selective scan: the forward and the helpers both backwards share.

Letters: b batch, l length, e inner width, n state dim, c chunk length (BLOCK_T).

One program owns (one batch row, BLOCK_E channels) and walks the whole length in
chunks of BLOCK_T steps. Per chunk it reads u, delta, z (c, e) and B, C (c, n) once,
discretizes on chip, scans the (c, e, n) tile with `tl.associative_scan` along the
time axis and carries the (e, n) fp32 state to the next chunk in registers. The
expanded state (b, l, e, n) never reaches HBM.

The forward also stores the state at the start of every segment of `seg_len` steps
(b, l / seg_len, e, n) for the backward, which recomputes instead of storing:
triton_bwd_chunk.py (the default) and triton_bwd_seg.py (the segment-parallel variant).

Layout note: the tile heuristics keep BLOCK_E * BLOCK_N >= 32 * num_warps, so that
Triton's default layout gives the time axis neither lanes nor warps: both scans then
run inside each thread's registers (sequential, no shuffles).
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _softplus(x):
    # log(1 + exp(x)) without overflow for large x
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _state_combine(a_early, b_early, a_late, b_late):
    # Composition of h -> a h + b maps, earlier one first.
    return a_early * a_late, a_late * b_early + b_late


@triton.jit
def _adjoint_combine(fa_late, p_late, g_late, fa_early, p_early, g_early):
    # Reverse scan (the accumulated window is later in time). A window [i..j] is
    # (a_i, prod_{s=i+1..j} a_s, g_i as if g_{j+1} = 0) because g_t is fed by
    # a_{t+1}: the window's first decay multiplies whatever comes before it.
    return fa_early, p_early * (fa_late * p_late), g_early + p_early * (fa_late * g_late)


@triton.jit
def _load_chunk(u_base, dt_base, z_base, B_base, C_base, seq_base, t, offs_e, offs_n, E, N, L,
                su_l, sdt_l, sz_l, sB_l, sC_l, sseq_l,
                HAS_Z: tl.constexpr, HAS_SEQ: tl.constexpr):
    """Read one chunk's inputs, (c, e) and (c, n) tiles, upcast to fp32."""
    t_mask = t < L
    te_mask = t_mask[:, None] & (offs_e < E)[None, :]
    tn_mask = t_mask[:, None] & (offs_n < N)[None, :]
    t64 = t.to(tl.int64)
    u = tl.load(u_base + t64[:, None] * su_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
    dt = tl.load(dt_base + t64[:, None] * sdt_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
    Bt = tl.load(B_base + t64[:, None] * sB_l + offs_n[None, :], mask=tn_mask, other=0.0).to(tl.float32)
    Ct = tl.load(C_base + t64[:, None] * sC_l + offs_n[None, :], mask=tn_mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_base + t64[:, None] * sz_l + offs_e[None, :], mask=te_mask, other=0.0).to(tl.float32)
    else:
        z = u
    if HAS_SEQ:
        s_cur = tl.load(seq_base + t64 * sseq_l, mask=t_mask, other=0)
        s_prev = tl.load(seq_base + (t64 - 1) * sseq_l, mask=t_mask & (t > 0), other=0)
        reset = (s_cur != s_prev) & (t > 0) & t_mask
    else:
        reset = t < 0
    return u, dt, z, Bt, Ct, reset


@triton.jit
def _load_chunk_dout(u_base, dt_base, z_base, B_base, C_base, seq_base, do_base, t, offs_e, offs_n, E, N, L,
                     su_l, sdt_l, sz_l, sB_l, sC_l, sseq_l, sdo_l,
                     HAS_Z: tl.constexpr, HAS_SEQ: tl.constexpr):
    """_load_chunk plus the chunk's output gradient dy (c, e)."""
    u, dt, z, Bt, Ct, reset = _load_chunk(u_base, dt_base, z_base, B_base, C_base, seq_base, t, offs_e, offs_n,
                                          E, N, L, su_l, sdt_l, sz_l, sB_l, sC_l, sseq_l, HAS_Z, HAS_SEQ)
    te_mask = (t < L)[:, None] & (offs_e < E)[None, :]
    dout = tl.load(do_base + t.to(tl.int64)[:, None] * sdo_l + offs_e[None, :], mask=te_mask,
                   other=0.0).to(tl.float32)
    return u, dt, z, Bt, Ct, reset, dout


@triton.jit
def _discretize(u, dt_raw, Bt, reset, t, L, A2, bias,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr):
    """dt, dA = exp(dt A) and dBu = dt u B for one chunk; padded rows leave the state alone."""
    t_mask = t < L
    dt_pre = dt_raw
    if HAS_BIAS:
        dt_pre = dt_pre + bias[None, :]
    if SOFTPLUS:
        dt = _softplus(dt_pre)
    else:
        dt = dt_pre
    dt = tl.where(t_mask[:, None], dt, 0.0)  # (c, e); padded rows: a = exp(0) = 1 carries the state
    dA = tl.exp2(dt[:, :, None] * A2)  # (c, e, n); A2 is (1, e, n)
    if HAS_SEQ:  # a = 0 where seq_idx changes: the state restarts
        dA = tl.where(reset[:, None, None], 0.0, dA)
    dtu = dt * u
    dBu = dtu[:, :, None] * Bt[:, None, :]  # (c, e, n)
    return dt_pre, dt, dtu, dA, dBu


@triton.jit
def _state_offsets(BLOCK_N: tl.constexpr, VEC: tl.constexpr, NAT: tl.constexpr):
    """The n index, permuted so that exactly VEC neighbours are contiguous in memory.

    The (1, e, n) load of A then vectorizes VEC wide and Triton lays out VEC states per
    thread (NAT: elements per 16-byte load). The state index is only a label, so any
    permutation used consistently for A, B, C and the states gives the same result.
    """
    r = tl.arange(0, BLOCK_N)
    if VEC < NAT and VEC < BLOCK_N:
        r = ((r // VEC) ^ 1) * VEC + r % VEC
    return r


@triton.jit
def _last_row(x, rows, BLOCK_T: tl.constexpr):
    return tl.sum(tl.where((rows == BLOCK_T - 1)[:, None, None], x, 0.0), axis=0)


@triton.jit
def _first_row(x, rows):
    return tl.sum(tl.where((rows == 0)[:, None, None], x, 0.0), axis=0)


# Lengths and segment counts vary per call: specializing on them (== 1, % 16) would only
# multiply compilations.
@triton.jit(do_not_specialize=["L", "chunks_per_seg", "n_seg"])
def selective_scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seq_ptr,
    y_ptr, hT_ptr, ckpt_ptr,
    L, E, N, chunks_per_seg, n_seg,
    su_b, su_l, sdt_b, sdt_l, sB_b, sB_l, sC_b, sC_l, sz_b, sz_l, sy_b, sy_l, sseq_b, sseq_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_SEQ: tl.constexpr, SAVE_CKPT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr,
    VEC: tl.constexpr,
):
    pid_e = tl.program_id(0)
    bid = tl.program_id(1).to(tl.int64)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_n = _state_offsets(BLOCK_N, VEC, 128 // A_ptr.dtype.element_ty.primitive_bitwidth)
    rows = tl.arange(0, BLOCK_T)
    e_mask = offs_e < E
    en_mask = e_mask[:, None] & (offs_n < N)[None, :]
    en_off = offs_e[:, None] * N + offs_n[None, :]  # (e, n) offsets into (.., e, n) tensors

    # A is read as a (1, e, n) tile: this load anchors the layout of every (c, e, n) tile
    # (VEC states per thread, then e, then time in registers; see _state_offsets).
    if EVEN_N:  # a mask along n would stop the load (and the layout) from vectorizing
        A3 = tl.load(A_ptr + en_off[None, :, :], mask=e_mask[None, :, None], other=0.0).to(tl.float32)
    else:
        A3 = tl.load(A_ptr + en_off[None, :, :], mask=en_mask[None, :, :], other=0.0).to(tl.float32)
    A2 = A3 * LOG2E  # exp(x A) = exp2(x A log2e)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_E], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + bid * E * N + en_off, mask=en_mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)

    u_base = u_ptr + bid * su_b
    dt_base = dt_ptr + bid * sdt_b
    z_base = z_ptr + bid * sz_b
    B_base = B_ptr + bid * sB_b
    C_base = C_ptr + bid * sC_b
    y_base = y_ptr + bid * sy_b
    seq_base = seq_ptr + bid * sseq_b

    n_chunks = tl.cdiv(L, BLOCK_T)
    # Software pipelining by hand: the next chunk's loads are issued before this
    # chunk's arithmetic, so their latency hides behind it.
    nu, ndt, nz, nB, nC, nreset = _load_chunk(u_base, dt_base, z_base, B_base, C_base, seq_base, rows,
                                              offs_e, offs_n, E, N, L, su_l, sdt_l, sz_l, sB_l, sC_l,
                                              sseq_l, HAS_Z, HAS_SEQ)
    for c in range(0, n_chunks):
        u, dt_raw, z, Bt, Ct, reset = nu, ndt, nz, nB, nC, nreset
        t = c * BLOCK_T + rows
        nu, ndt, nz, nB, nC, nreset = _load_chunk(u_base, dt_base, z_base, B_base, C_base, seq_base,
                                                  t + BLOCK_T, offs_e, offs_n, E, N, L, su_l, sdt_l,
                                                  sz_l, sB_l, sC_l, sseq_l, HAS_Z, HAS_SEQ)
        if SAVE_CKPT:
            if c % chunks_per_seg == 0:
                seg = c // chunks_per_seg
                tl.store(ckpt_ptr + (bid * n_seg + seg) * E * N + en_off, h, mask=en_mask)
        dt_pre, dt, dtu, dA, dBu = _discretize(u, dt_raw, Bt, reset, t, L, A2, bias, HAS_BIAS, SOFTPLUS,
                                               HAS_SEQ)
        acum, hloc = tl.associative_scan((dA, dBu), axis=0, combine_fn=_state_combine)
        hs = acum * h[None, :, :] + hloc  # (c, e, n): h_t for every step of the chunk
        y = tl.sum(hs * Ct[:, None, :], axis=2)  # (c, e)
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            y = y * (z * tl.sigmoid(z))
        t_mask = t < L
        tl.store(y_base + t.to(tl.int64)[:, None] * sy_l + offs_e[None, :],
                 y.to(y_ptr.dtype.element_ty), mask=t_mask[:, None] & e_mask[None, :])
        h = _last_row(hs, rows, BLOCK_T)
    tl.store(hT_ptr + bid * E * N + en_off, h, mask=en_mask)
