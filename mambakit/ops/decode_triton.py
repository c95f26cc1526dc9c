"""One fused Triton kernel for a Mamba-2 decode step: conv state shift + conv + SiLU + SSM
state update + output, for a batch of sequences, states updated in place.

Letters: b batch, c conv channels (e + 2 g n), e inner width (h p), h heads, p head dim,
n state dim, g groups, k conv width.

    xBC (b, c) = [x (e), B (g n), C (g n)] of the new token
    conv_state (b, c, k): the last k inputs, newest last      -> shifted, new input appended
    u = silu(sum_j conv_weight[:, j] * window[:, j] + conv_bias)   (b, c), split into x, B, C
    dt = clamp(softplus?(dt + dt_bias), dt_limit)                   (b, h)
    ssm_state (b, h, p, n) fp32 <- exp(dt A) ssm_state + dt x B^T
    y (b, h, p) = ssm_state C + D x, then * silu(z) if z is given

Two launches. The first, one program per (sequence, group), convolves B and C once per group
into a small fp32 buffer and shifts their conv state. The second, one program per (sequence,
head, block of 32 of p), does the rest for its slice; each channel's conv state has one owner,
so the in-place shifts never race with a reader. The step is memory-bound (the fp32 ssm_state
is read and written once). The first design, one program per (sequence, group) walking all its
heads, left most of the GPU idle at batch 1: 0.06 ms for 32 heads on an H100, and ~8 ms per
token for a 48-layer 1.3B model with CUDA graphs (benchmarks/results/gpu_generation-*.json).
With conv_done (a block's fused decode step: ops/gemv_triton.py's conv epilogue already made the
conv's output and shifted its state) only the second launch runs, without the conv.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .gemv_triton import gdc_launch_dependents, gdc_wait, pdl_launch
from .kernel_inputs import check_kernel_tensors


@triton.jit
def _conv_window(state_ptr, xbc_ptr, w_ptr, bias_ptr, ch, ch_mask, offs_k, K,
                 HAS_BIAS: tl.constexpr):
    """Shifted window (ch..., KP) of the conv state with the new input last, and silu(conv)."""
    kk = offs_k  # broadcast over the channel dims by the caller's shapes
    old = tl.load(state_ptr + ch * K + kk + 1, mask=ch_mask & (kk < K - 1), other=0.0).to(tl.float32)
    new = tl.load(xbc_ptr + ch, mask=ch_mask, other=0.0).to(tl.float32)
    win = tl.where(kk == K - 1, new, old)
    w = tl.load(w_ptr + ch * K + kk, mask=ch_mask & (kk < K), other=0.0).to(tl.float32)
    u = tl.sum(win * w, axis=-1)
    if HAS_BIAS:  # ch has a trailing size-1 axis: sum it away
        u += tl.sum(tl.load(bias_ptr + ch, mask=ch_mask, other=0.0).to(tl.float32), axis=-1)
    return win, u * tl.sigmoid(u)


@triton.jit
def _mamba2_decode_bc_kernel(xbc_ptr, conv_ptr, w_ptr, cbias_ptr, bc_ptr, C_CH, SX_B, K, H, G, P, N,
                             KP: tl.constexpr, NP: tl.constexpr, HAS_CBIAS: tl.constexpr):
    """Per (sequence, group): conv + SiLU of B and C, written to bc (b, g, 2, n) fp32, and the
    in-place shift of their conv state (one owner per channel, so no reader races it)."""
    pid_b = tl.program_id(0).to(tl.int64)
    gi = tl.program_id(1)
    e = H * P
    offs_k = tl.arange(0, KP)
    offs_n = tl.arange(0, NP)
    state_b = conv_ptr + pid_b * C_CH * K
    xbc_b = xbc_ptr + pid_b * SX_B
    ch_b = (e + gi * N + offs_n)[:, None]
    ch_c = (e + G * N + gi * N + offs_n)[:, None]
    nmask = (offs_n < N)[:, None]
    win_b, bv = _conv_window(state_b, xbc_b, w_ptr, cbias_ptr, ch_b, nmask, offs_k[None, :], K, HAS_CBIAS)
    win_c, cv = _conv_window(state_b, xbc_b, w_ptr, cbias_ptr, ch_c, nmask, offs_k[None, :], K, HAS_CBIAS)
    tl.debug_barrier()  # every thread has read the old window before any shifted one is stored
    kmask = nmask & (offs_k[None, :] < K)
    tl.store(state_b + ch_b * K + offs_k[None, :], win_b.to(conv_ptr.dtype.element_ty), mask=kmask)
    tl.store(state_b + ch_c * K + offs_k[None, :], win_c.to(conv_ptr.dtype.element_ty), mask=kmask)
    out = bc_ptr + (pid_b * G + gi) * 2 * N + offs_n
    tl.store(out, bv, mask=offs_n < N)
    tl.store(out + N, cv, mask=offs_n < N)


@triton.jit
def _mamba2_decode_kernel(
    xbc_ptr, dt_ptr, conv_ptr, ssm_ptr, w_ptr, cbias_ptr, a_ptr, d_ptr, dtb_ptr, z_ptr, y_ptr, bc_ptr,
    C_CH, SX_B, SDT_B, K, H, G, P, N, lo, hi,
    KP: tl.constexpr, PB: tl.constexpr, NP: tl.constexpr,
    HAS_CBIAS: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_DTB: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, A_IS_LOG: tl.constexpr = False, CONV: tl.constexpr = True,
    PDL: tl.constexpr = False,
):
    """Per (sequence and head, block of PB of the head dim): conv + SiLU of x (and the shift of
    its conv state), the SSM state update and y. B and C come from _mamba2_decode_bc_kernel.
    Without CONV, xBC is the conv's output already (ops/gemv_triton.py's conv epilogue made it):
    x, B and C are read from it and the conv state is not touched."""
    if PDL:  # programmatic dependent launch (ops/gemv_triton.py): the next kernel may start and
        gdc_launch_dependents()  # prefetch its weights
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_b = pid_bh // H
    hh = pid_bh % H
    gi = hh // (H // G)
    offs_k = tl.arange(0, KP)
    offs_n = tl.arange(0, NP)
    offs_p = tl.program_id(1) * PB + tl.arange(0, PB)
    pmask = offs_p < P
    nmask = offs_n < N
    state_b = conv_ptr + pid_b * C_CH * K
    xbc_b = xbc_ptr + pid_b * SX_B  # rows of in_proj's output: their own stride
    ch_x = (hh * P + offs_p)[:, None]  # (PB, 1)
    # The parameters and this program's slice of the SSM state are read before the PDL wait: the
    # kernel before (in_proj's) writes neither, so the state's 8-32 KB stream in during its tail
    a = tl.load(a_ptr + hh).to(tl.float32)
    if A_IS_LOG:  # A = -exp(A_log) here, not as two more kernels (and casts) per layer and token
        a = -tl.exp(a)
    smask = pmask[:, None] & nmask[None, :]
    s_ptrs = ssm_ptr + pid_bh * P * N + offs_p[:, None] * N + offs_n[None, :]
    st = tl.load(s_ptrs, mask=smask, other=0.0)
    if PDL:
        gdc_wait()  # xBC, dt and z (in_proj's outputs) are ready
    if CONV:
        bc = bc_ptr + (pid_b * G + gi) * 2 * N
        bv = tl.load(bc + offs_n, mask=nmask, other=0.0)
        cv = tl.load(bc + N + offs_n, mask=nmask, other=0.0)
        win_x, xv = _conv_window(state_b, xbc_b, w_ptr, cbias_ptr, ch_x, pmask[:, None], offs_k[None, :], K,
                                 HAS_CBIAS)  # xv (PB,)
    else:
        bv = tl.load(xbc_b + H * P + gi * N + offs_n, mask=nmask, other=0.0).to(tl.float32)
        cv = tl.load(xbc_b + H * P + (G + gi) * N + offs_n, mask=nmask, other=0.0).to(tl.float32)
        xv = tl.load(xbc_b + hh * P + offs_p, mask=pmask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * SDT_B + hh).to(tl.float32)
    if HAS_DTB:
        dt += tl.load(dtb_ptr + hh).to(tl.float32)
    if DT_SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    dt = tl.minimum(tl.maximum(dt, lo), hi)
    da = tl.exp(dt * a)
    st = st * da + (dt * xv)[:, None] * bv[None, :]
    tl.store(s_ptrs, st, mask=smask)
    y = tl.sum(st * cv[None, :], 1)  # (PB,)
    if HAS_D:
        if D_PER_P:
            y += tl.load(d_ptr + hh * P + offs_p, mask=pmask, other=0.0).to(tl.float32) * xv
        else:
            y += tl.load(d_ptr + hh).to(tl.float32) * xv
    yo = pid_bh * P + offs_p
    if HAS_Z:
        zz = tl.load(z_ptr + yo, mask=pmask, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    if CONV:
        tl.debug_barrier()  # the x window was read by every thread before the shifted one is stored
        tl.store(state_b + ch_x * K + offs_k[None, :], win_x.to(conv_ptr.dtype.element_ty),
                 mask=pmask[:, None] & (offs_k[None, :] < K))
    tl.store(y_ptr + yo, y.to(y_ptr.dtype.element_ty), mask=pmask)


def _check(name, t, shape):
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"mamba2_decode_step_triton: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def mamba2_decode_step_triton(xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, A, D, dt_bias,
                              dt_softplus, dt_limit, ngroups, headdim, z=None, a_is_log=False, conv_done=False):
    """One decode step for a batch (see the module docstring). Updates conv_state and
    ssm_state in place and returns y (b, h, p) in xBC's dtype.

    xBC (b, c); dt (b, h); conv_state (b, c, k) any float dtype; ssm_state (b, h, p, n) fp32,
    contiguous; conv_weight (c, k) or (c, 1, k); conv_bias (c,) or None; A (h,); D (h,), (h, p)
    or None; dt_bias (h,) or None; dt_limit (min, max); z (b, h, p), (b, h*p) or None.
    a_is_log: A holds A_log (A = -exp(A_log) is computed in the kernel). A, D and dt_bias may be in
    any float dtype (the parameters as they are): the kernel reads them in fp32.
    conv_done: xBC is already silu(conv(...)) of the new token and conv_state already shifted (the
    in_proj's fused conv epilogue did both): only the SSM part runs (one launch).
    """
    if xBC.dim() != 2:
        raise ValueError(f"mamba2_decode_step_triton: xBC must be (b, c), got {tuple(xBC.shape)}")
    b, c = xBC.shape
    if ssm_state.dim() != 4:
        raise ValueError(f"mamba2_decode_step_triton: ssm_state must be (b, h, p, n), got {tuple(ssm_state.shape)}")
    _, h, p, n = ssm_state.shape
    g = int(ngroups)
    if p != headdim or g < 1 or h % g or c != h * p + 2 * g * n:
        raise ValueError(f"mamba2_decode_step_triton: xBC width {c} must be h*p + 2*g*n = {h}*{headdim} + "
                         f"2*{g}*{n} with h % g == 0 (ssm_state {tuple(ssm_state.shape)}, headdim {headdim}, "
                         f"ngroups {ngroups})")
    if ssm_state.dtype != torch.float32 or not ssm_state.is_contiguous():
        raise ValueError(f"mamba2_decode_step_triton: ssm_state must be a contiguous float32 tensor "
                         f"(updated in place), got {ssm_state.dtype}")
    if conv_state.dim() != 3 or tuple(conv_state.shape[:2]) != (b, c) or not conv_state.is_contiguous():
        raise ValueError(f"mamba2_decode_step_triton: conv_state must be a contiguous (b, c, k) = ({b}, {c}, k) "
                         f"tensor (updated in place), got {tuple(conv_state.shape)}")
    k = conv_state.shape[2]
    w = conv_weight.reshape(conv_weight.shape[0], -1) if conv_weight.dim() == 3 else conv_weight
    _check("conv_weight", w, (c, k))
    _check("conv_bias", conv_bias, (c,))
    _check("dt", dt, (b, h))
    _check("A", A, (h,))
    _check("dt_bias", dt_bias, (h,))
    if D is not None and tuple(D.shape) not in ((h,), (h, p)):
        raise ValueError(f"mamba2_decode_step_triton: D must have shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
    if z is not None and tuple(z.shape) not in ((b, h, p), (b, h * p)):
        raise ValueError(f"mamba2_decode_step_triton: z must have shape ({b}, {h}, {p}) or ({b}, {h * p}), "
                         f"got {tuple(z.shape)}")
    check_kernel_tensors("mamba2_decode_step_triton",
                         dict(xBC=xBC, dt=dt, conv_state=conv_state, ssm_state=ssm_state, conv_weight=w,
                              conv_bias=conv_bias, A=A, D=D, dt_bias=dt_bias, z=z),
                         activations=("xBC", "dt", "conv_state", "z"))
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    y = torch.empty(b, h, p, device=xBC.device, dtype=xBC.dtype)
    # xBC and dt are column slices of in_proj's (b, o) output: read in place through their row strides
    # (at batch > 1 a copy of each cost 96 kernels, 0.17 ms, of a Mamba-2 1.3B step; session 15's profile)
    xc = xBC if xBC.stride(-1) == 1 else xBC.contiguous()
    dtc = dt if dt.stride(-1) == 1 else dt.contiguous()
    wc = w.contiguous()
    cb = conv_bias if conv_bias is not None else A
    kp, np_ = triton.next_power_of_2(k), triton.next_power_of_2(n)
    bc = ssm_state  # unread without the conv
    # PDL only where the kernel before is a fused GEMV (the conv_done path); the B/C kernel has none
    pdl = pdl_launch(xBC) if conv_done else {"PDL": False}
    if not conv_done:
        bc = torch.empty(b, g, 2, n, device=xBC.device, dtype=torch.float32)
        _mamba2_decode_bc_kernel[(b, g)](xc, conv_state, wc, cb, bc, c, xc.stride(0), k, h, g, p, n,
                                         KP=kp, NP=np_, HAS_CBIAS=conv_bias is not None, num_warps=4)
    # Head dim blocks of 32, or smaller (down to 8) until there are ~4 programs per SM of an H100:
    # at batch 1 a 64-head layer then runs 512 programs, not 128 (one per SM, each waiting on
    # its own 16 KB of state). Each program's (PB, n) slice of the fp32 state streams through once.
    pb = min(32, triton.next_power_of_2(p))
    while pb > 8 and b * h * triton.cdiv(p, pb) < 512:
        pb //= 2
    _mamba2_decode_kernel[(b * h, triton.cdiv(p, pb))](
        xc, dtc, conv_state, ssm_state, wc, cb,
        A.contiguous(), D.contiguous() if D is not None else A, dt_bias if dt_bias is not None else A,
        z.contiguous() if z is not None else xc, y, bc,
        c, xc.stride(0), dtc.stride(0), k, h, g, p, n, lo, hi,
        KP=kp, PB=pb, NP=np_,
        HAS_CBIAS=conv_bias is not None, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        HAS_DTB=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus), HAS_Z=z is not None,
        A_IS_LOG=bool(a_is_log), CONV=not conv_done, num_warps=4, **pdl)
    return y


__all__ = ["mamba2_decode_step_triton"]
