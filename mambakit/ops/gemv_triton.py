"""Fused matrix-vector products for the decode step: a block's norm, projection and the small op
after it in one Triton kernel (inference on CUDA, a few rows).

Letters: m rows (the decode batch, m <= MAX_ROWS), k input width, o output width, g norm groups,
c conv channels, w conv width.

    out = epilogue(round(prologue(x) @ W^T + bias))        round: to W's dtype, as F.linear does

prologue   None: x as it is (W's dtype)
           norm=(weight, eps): weight * rmsnorm(x.to(W.dtype)), as RMSNorm.normalize_residual
               (x: a block's residual stream, fp32 or the model's dtype)
           norm + gate=(z, group_size, before_gate): Mamba-2's gated norm of x with z, per group
epilogue   store; residual=r: r += out in place (the block's residual add; r (m, o));
           conv=(c0, state (m, c, w), weight (c, w), bias): columns c0..c0+c-1 feed a causal
               depthwise conv: their conv state is shifted in place and silu(conv) is stored;
           activation "gelu" (erf) or "relu2" (relu squared), or "swiglu" with glu_gate=g (m, o):
               silu(g) * out (the up projection of a SwiGLU MLP, g its gate projection's output)

Why. At batch 1 a decode step reads each weight once and does little else, so its time is the
weight bytes over the bandwidth plus every kernel's fixed cost. A Mamba-2 layer was 8 kernels a
token (norm, in_proj, B/C conv, SSM, gated norm, out_proj as cuBLAS split-K + its reduction, the
residual add: benchmarks/results/gpu_profile_decode-*session3*); with these it is 3 (in_proj with
the norm before and the conv after, the SSM step, out_proj with the gated norm before and the
residual add after).

How. Each program owns RB blocks of BO outputs, for every row, and streams their (RB BO, k) slab of
W in (BO, BK) tiles, each loaded one tile ahead of its use (across the blocks too), summing in fp32:
each weight byte is read once, whatever the number of rows.
The norm is a factor per row (and group), 1/rms(x), so it is applied to the sums at the end and
its statistics are gathered in the same loop: no pass over x before the weights start streaming
(with the tiles loaded one ahead, 0.9-3.7 us less a call than a first pass, without PDL, on an
H100: benchmarks/results/gpu_gemv-*session8*). So the norm's output
is not rounded to W's dtype before the product as the unfused kernels round it; every other
rounding (the product to W's dtype, the conv state, the activation, the residual) is theirs.
A conv column's state has one owner, the program of that column, so its in-place shift races no
reader. On sm_90+ the kernels launch with programmatic dependent launch (PDL): each lets the next
kernel start at once, and that one loads its first weight tile before it waits for this one's
outputs (griddepcontrol.wait), hiding a kernel's ramp-up behind the previous one's tail.
MAMBAKIT_PDL=0 turns that off. Tried and removed (commit 44caace has it): each program bringing
its whole weight slab into L2 before the wait (cp.async.bulk.prefetch.L2). It made every decode
step slower on an H100 (Mamba-2 1.3B, 1K: 1.643 against 1.583 ms without;
benchmarks/results/gpu_profile_decode-*session9*), on Mamba-2's out_proj alone too (1.669 against
1.583 ms: *session10-1-l2pf-out-proj-1k*).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:  # triton >= 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    _HAS_GDC = True
except ImportError:  # pragma: no cover - older triton: launched without PDL, these never run
    _HAS_GDC = False

    @triton.jit
    def gdc_launch_dependents():
        pass

    @triton.jit
    def gdc_wait():
        pass

from . import FUSED_GEMV_MAX_ROWS as MAX_ROWS

_ACTIVATIONS = {None: 0, "gelu": 1, "relu2": 2, "swiglu": 3}
_EPI_STORE, _EPI_RESIDUAL, _EPI_CONV = 0, 1, 2


@triton.jit
def _input_chunk(x_ptr, z_ptr, nw_ptr, offs_m, offs_k, kmask, mask, stride_xm, stride_zm, PRO: tl.constexpr,
                 BEFORE_GATE: tl.constexpr, WDT: tl.constexpr):
    """-> (u, v), each (MP, BK) fp32: u what the norm measures (x cast to W's dtype, times silu(z)
    for the gated norm), v what the product takes before the per-row 1/rms (u times the norm's
    weight, and silu(z) when the gate follows the norm)."""
    u = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask, other=0.0)
    u = u.to(WDT).to(tl.float32)
    v = u
    if PRO != 0:
        if PRO == 2:
            zz = tl.load(z_ptr + offs_m[:, None] * stride_zm + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
            if BEFORE_GATE:
                v = u * zz * tl.sigmoid(zz)
            else:
                u = u * zz * tl.sigmoid(zz)
                v = u
        v = v * tl.load(nw_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)[None, :]
    return u, v


@triton.jit
def _fused_gemv_kernel(x_ptr, z_ptr, nw_ptr, w_ptr, b_ptr, y_ptr, r_ptr, cs_ptr, cw_ptr, cb_ptr, g_ptr,
                       O, K, GS, C0, NCH, CW, eps, stride_xm, stride_zm,
                       M: tl.constexpr, MP: tl.constexpr, BO: tl.constexpr, BK: tl.constexpr, RB: tl.constexpr,
                       ONE_TILE: tl.constexpr, GP: tl.constexpr, WP: tl.constexpr, PRO: tl.constexpr,
                       BEFORE_GATE: tl.constexpr, HAS_BIAS: tl.constexpr, EPI: tl.constexpr, ACT: tl.constexpr,
                       HAS_CB: tl.constexpr, PDL: tl.constexpr):
    WDT = w_ptr.dtype.element_ty
    if PDL:  # let the next kernel start now: it only prefetches its weights until we are done
        gdc_launch_dependents()
    o_first = tl.program_id(0) * (BO * RB)  # this program's RB blocks of BO outputs, one after another
    offs_r = tl.arange(0, BO)
    offs_m = tl.arange(0, MP)  # the rows: all of them, as every row reads the same weights
    mmask = offs_m < M
    offs_g = tl.arange(0, GP)
    # Weight tiles are loaded one ahead of their use (a hand-made two-stage pipeline, which runs on
    # across the row blocks); the first before waiting on the previous kernel, since weights are
    # never written while decoding.
    offs_k = tl.arange(0, BK)
    w_next = tl.load(w_ptr + (o_first + offs_r).to(tl.int64)[:, None] * K + offs_k[None, :],
                     mask=((o_first + offs_r) < O)[:, None] & (offs_k < K)[None, :], other=0.0)
    if PDL:
        gdc_wait()  # the previous kernel's outputs (x, z, the residual, conv states) are ready
    if ONE_TILE:  # k fits one tile: the input is read and prepared once for all row blocks
        u1, v1 = _input_chunk(x_ptr, z_ptr, nw_ptr, offs_m, offs_k, offs_k < K, mmask[:, None] & (offs_k < K)[None, :],
                              stride_xm, stride_zm, PRO, BEFORE_GATE, WDT)
    ss = tl.zeros((MP, GP), dtype=tl.float32)  # the norm's sums of squares, per row and group
    rstd = tl.full((MP, GP), 1.0, tl.float32)
    for rb in tl.static_range(RB):
        offs_o = o_first + rb * BO + offs_r
        omask = offs_o < O
        w_rows = w_ptr + offs_o.to(tl.int64)[:, None] * K
        if MP == 1 and GP == 1:
            acc2 = tl.zeros((BO, BK), dtype=tl.float32)  # summed over k once, after the loop
        else:
            accg = tl.zeros((MP, GP, BO), dtype=tl.float32)
            if MP > 1:  # several rows: their products too are summed elementwise, reduced once a group
                acc3 = tl.zeros((MP, BO, BK), dtype=tl.float32)
        for k0 in range(0, K, BK):
            w = w_next.to(tl.float32)
            offs_k = k0 + tl.arange(0, BK)
            kmask = offs_k < K
            if rb == RB - 1:
                offs_n = offs_k + BK
                w_next = tl.load(w_rows + offs_n[None, :], mask=omask[:, None] & (offs_n < K)[None, :], other=0.0)
            else:  # after this block's last tile comes the next block's first
                wrap = k0 + BK >= K
                rows_n = offs_o + tl.where(wrap, BO, 0)
                offs_n = tl.where(wrap, 0, k0 + BK) + tl.arange(0, BK)
                w_next = tl.load(w_ptr + rows_n.to(tl.int64)[:, None] * K + offs_n[None, :],
                                 mask=(rows_n < O)[:, None] & (offs_n < K)[None, :], other=0.0)
            if ONE_TILE:
                u, v = u1, v1
            else:
                u, v = _input_chunk(x_ptr, z_ptr, nw_ptr, offs_m, offs_k, kmask, mmask[:, None] & kmask[None, :],
                                    stride_xm, stride_zm, PRO, BEFORE_GATE, WDT)
            in_g = offs_g[None, :] == k0 // GS  # (1, GP): this tile's group (GS is a multiple of BK)
            if PRO != 0 and rb == 0:  # the norm's statistics are the row's: gathered once
                ss += tl.where(in_g, tl.sum(u * u, 1)[:, None], 0.0)
            if MP == 1 and GP == 1:
                acc2 += w * v
            elif MP == 1:
                part = tl.sum(w[None, :, :] * v[:, None, :], 2)  # (MP, BO)
                accg += tl.where(in_g[:, :, None], part[:, None, :], 0.0)
            else:
                acc3 += w[None, :, :] * v[:, None, :]
                if GP > 1:
                    if (k0 + BK) % GS == 0:  # the group's last tile: its sums set aside for its own 1/rms
                        accg += tl.where(in_g[:, :, None], tl.sum(acc3, 2)[:, None, :], 0.0)
                        acc3 = tl.zeros((MP, BO, BK), dtype=tl.float32)
        # The norm is a factor per row and group, 1/rms, applied to the sums: the norm's output is
        # not rounded to W's dtype before the product as the unfused kernels round it (closer to exact)
        if PRO != 0 and rb == 0:
            rstd = 1.0 / tl.sqrt(ss / GS + eps)  # (MP, GP)
        if MP == 1 and GP == 1:
            acc = tl.sum(acc2, 1)[None, :] * rstd  # (1, BO)
        elif GP == 1:
            acc = tl.sum(acc3, 2) * rstd  # (MP, BO)
        else:
            acc = tl.sum(accg * rstd[:, :, None], 1)  # (MP, BO)
        _epilogue(acc, offs_m, mmask, offs_o, omask, O, b_ptr, y_ptr, r_ptr, cs_ptr, cw_ptr, cb_ptr, g_ptr,
                  C0, NCH, CW, MP, WP, HAS_BIAS, EPI, ACT, HAS_CB, WDT)


@triton.jit
def _epilogue(acc, offs_m, mmask, offs_o, omask, O, b_ptr, y_ptr, r_ptr, cs_ptr, cw_ptr, cb_ptr, g_ptr,
              C0, NCH, CW, MP: tl.constexpr, WP: tl.constexpr, HAS_BIAS: tl.constexpr, EPI: tl.constexpr,
              ACT: tl.constexpr, HAS_CB: tl.constexpr, WDT: tl.constexpr):
    """Bias, rounding to W's dtype, then the epilogue op and the store of one block of outputs."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_o, mask=omask, other=0.0).to(tl.float32)[None, :]
    out = acc.to(WDT).to(tl.float32)  # (MP, BO): F.linear's output
    om = mmask[:, None] & omask[None, :]
    if EPI == 1:  # the residual add, in the residual's dtype
        r_ptrs = r_ptr + offs_m[:, None] * O + offs_o[None, :]
        res = tl.load(r_ptrs, mask=om, other=0.0).to(tl.float32)
        tl.store(r_ptrs, (res + out).to(r_ptr.dtype.element_ty), mask=om)
    else:
        if ACT == 1:
            out = (0.5 * out * (1.0 + tl.erf(out * 0.7071067811865476))).to(WDT).to(tl.float32)
        if ACT == 2:
            out = tl.maximum(out, 0.0)
            out = (out * out).to(WDT).to(tl.float32)
        if ACT == 3:  # F.silu(gate) * up, each rounded as the two torch ops round it
            gv = tl.load(g_ptr + offs_m[:, None] * O + offs_o[None, :], mask=om, other=0.0).to(tl.float32)
            out = ((gv * tl.sigmoid(gv)).to(WDT).to(tl.float32) * out).to(WDT).to(tl.float32)
        if EPI == 2:  # columns C0.. are conv inputs: shift their state, store silu(conv) instead
            ch = offs_o - C0
            is_ch = (ch >= 0) & (ch < NCH) & omask
            offs_w = tl.arange(0, WP)
            cm = (mmask[:, None] & is_ch[None, :])[:, :, None]  # (MP, BO, 1)
            s_ptrs = cs_ptr + (offs_m[:, None, None] * NCH + ch[None, :, None]) * CW + offs_w[None, None, :]
            old = tl.load(s_ptrs + 1, mask=cm & (offs_w < CW - 1)[None, None, :], other=0.0).to(tl.float32)
            new = out.to(cs_ptr.dtype.element_ty).to(tl.float32)
            win = tl.where((offs_w == CW - 1)[None, None, :], new[:, :, None], old)  # (MP, BO, WP)
            cwt = tl.load(cw_ptr + ch[:, None] * CW + offs_w[None, :], mask=is_ch[:, None] & (offs_w < CW)[None, :],
                          other=0.0).to(tl.float32)
            cv = tl.sum(win * cwt[None, :, :], 2)  # (MP, BO)
            if HAS_CB:
                cv += tl.load(cb_ptr + ch, mask=is_ch, other=0.0).to(tl.float32)[None, :]
            cv = cv * tl.sigmoid(cv)
            out = tl.where(is_ch[None, :], cv, out)
            tl.debug_barrier()  # every thread has read the old window before a shifted one is stored
            tl.store(s_ptrs, win.to(cs_ptr.dtype.element_ty), mask=cm & (offs_w < CW)[None, None, :])
        tl.store(y_ptr + offs_m[:, None] * O + offs_o[None, :], out.to(y_ptr.dtype.element_ty), mask=om)


def default_config(o: int, k: int, m: int = 1, *, prologue: int = 0, conv: bool = False) -> tuple[int, ...]:
    """(BO, BK, warps) of a call with m rows; prologue 0 none, 1 norm, 2 gated norm (Mamba-2's
    out_proj); conv: the conv epilogue (Mamba-2's in_proj).

    One row: the best or within 3% of it in an H100 sweep of 16 configs at batch 1
    (benchmarks/results/gpu_gemv-*-session10-1*): tiles of 1024 weights on 2 warps for the wide
    projections with k 2048 (Mamba-2's in_proj, the MLP's up: 16.97 and 14.26 us, against 18.23 and 16.76
    at session 8's (4, 1024, 4)), tiles of 16K weights on 8 warps for 2048 outputs (out_proj, the MLP's
    down, attention's o: 9.43, 12.73 and 4.41 us against 10.06, 13.25 and 4.88); not swept below 2048
    outputs: (2, 2048, 4), which spreads attention's k and v (512 outputs) over 256 programs.

    Several rows: every program reads all m rows of x beside its 2 BO bytes of weights per k (4m
    bytes per k from the fp32 residual stream ahead of a norm, 2m from a bf16 input), so in_proj's and
    up's one-row tiles, with BO 2, read x from L2 4x the weights' bytes at 4 rows. Swept on an H100
    (benchmarks/results/gpu_gemv-*-session14-b4-sweep*: 32 configs at 4 rows; *-session14-rows24*: 5
    at 2 and 4), in us, one-row tiles -> these: in_proj 27.2 -> 19.2 at 2 rows, 37.3 -> 29.1 at 4;
    the MLP's up 22.7 -> 18.1 and 33.1 -> 20.1; out_proj 15.2 -> 11.9 at 2 rows; down 18.6 -> 17.1
    and attention's o 7.5 -> 6.5 at 4 rows (out_proj keeps its one-row tile there: 15.1-15.4 against
    24.6 for (4, 512, 4); the sweep logs label the default by o and k only). Rows 3 take 4's. Whole
    steps at batch 4: Mamba-2 1.3B at 1K 3.247 -> 2.856 ms, the hybrid at 64K 3.597 -> 3.065
    (*-session14-b4-prof*). Mamba-1's projections (d 2048: in_proj 8192 x 2048, out_proj 2048 x 4096,
    without conv or gate) take the forms' tiles unmeasured. With several rows the launcher also
    shrinks BK to keep their sums in registers."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        bo, bk, warps = 32, 128, 4  # the interpreter runs programs one after another: few and large
    elif m == 2 and o >= 4096:
        bo, bk, warps = 4, 256, 2
    elif m == 2 and o >= 2048:
        bo, bk, warps = (8, 2048, 8) if k >= 8192 and prologue == 0 else (4, 512, 4)
    elif m > 2 and o >= 4096:
        bo, bk, warps = (4, 256, 2) if conv else (16, 256, 4)
    elif m > 2 and o >= 2048 and prologue == 0:
        bo, bk, warps = 4, 512, 4
    elif o >= 4096:
        bo, bk, warps = 2, 512, 2
    elif o >= 2048:  # one row; or 3-4 behind a norm (out_proj's gated one, attention's q): one-row tiles won
        bo, bk, warps = 8, 2048, 8
    else:
        bo, bk, warps = 2, 2048, 4
    bk = max(16, min(triton.next_power_of_2(k), bk))
    return bo, bk, warps


@functools.lru_cache(maxsize=None)
def _pdl_device(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_launch(t: torch.Tensor) -> dict:
    """A kernel's launch arguments for programmatic dependent launch: {"PDL": True, "launch_pdl":
    True} on CUDA sm_90+ with a triton that has GDC, unless MAMBAKIT_PDL=0; else {"PDL": False}.
    The kernel takes PDL as a constexpr (its gdc_launch_dependents / gdc_wait)."""
    on = (_HAS_GDC and t.is_cuda and os.environ.get("MAMBAKIT_PDL", "1") != "0"
          and os.environ.get("TRITON_INTERPRET") != "1" and _pdl_device(t.device.index or 0))
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


def _full_config(config) -> tuple[int, int, int, int]:
    """(BO, BK, warps) or (BO, BK, warps, RB) -> (BO, BK, warps, RB); RB 1 if not given."""
    if len(config) not in (3, 4) or not all(isinstance(v, int) and v >= 1 for v in config):
        raise ValueError(f"fused_gemv: config must be (BO, BK, warps) or (BO, BK, warps, RB) of positive ints, "
                         f"got {config!r}")
    return tuple(config) + (1,) * (4 - len(config))


def launch_config(o: int, k: int, m: int, config=None, group_size: int | None = None, *, prologue: int = 0,
                  conv: bool = False) -> tuple[int, int, int, int]:
    """(BO, BK, warps, RB) of a call with m rows: `config` or default_config's, RB at most the blocks
    there are, and BK shrunk to keep m rows' products (summed elementwise, m x BO x BK) within 64 fp32
    a thread, then to divide the norm's group size (group_size: k for a plain norm; None: no norm)."""
    bo, bk, warps, rb = _full_config(config or default_config(o, k, m, prologue=prologue, conv=conv))
    rb = max(1, min(rb, triton.cdiv(o, bo)))
    mp = triton.next_power_of_2(m)
    if mp > 1:
        bk = max(16, min(bk, 64 * 32 * warps // (mp * bo)))
    if group_size is not None:
        bk = _bk_for_groups(bk, group_size)
    return bo, bk, warps, rb


def _bk_for_groups(bk: int, gs: int) -> int:
    while bk > 16 and gs % bk:
        bk //= 2
    return bk


def fused_gemv(x, weight, bias=None, *, norm=None, gate=None, residual=None, conv=None, activation=None,
               glu_gate=None, config=None) -> torch.Tensor:
    """See the module docstring. x (m, k) with unit stride along k; weight (o, k); bias (o,).

    norm (norm_weight (k,), eps); gate (z (m, k), group_size, before_gate), with norm;
    residual (m, o), updated in place and returned; conv (c0, conv_state (m, c, w) contiguous,
    conv_weight (c, w), conv_bias (c,) or None); activation None, "gelu", "relu2" or "swiglu" (with
    glu_gate (m, o) contiguous, in weight's dtype).
    config (BO, BK, warps) or (BO, BK, warps, RB) overrides default_config (benchmarks sweep it):
    BO outputs a block, BK inputs a weight tile, RB blocks a program, streamed one after another.
    Returns (m, o) in weight's dtype, or residual.
    """
    m, k = x.shape if x.dim() == 2 else (0, -1)
    o = weight.shape[0]
    if not (1 <= m <= MAX_ROWS and x.stride(-1) == 1 and weight.dim() == 2 and weight.shape[1] == k
            and weight.is_contiguous() and weight.dtype in (torch.float32, torch.bfloat16, torch.float16)):
        raise ValueError(f"fused_gemv: x must be (m <= {MAX_ROWS}, k) with unit stride and weight a contiguous "
                         f"float (o, k) matrix; got x {tuple(x.shape)} and weight {tuple(weight.shape)} "
                         f"{weight.dtype}")
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"fused_gemv: bias must be ({o},), got {tuple(bias.shape)}")
    if gate is not None and norm is None:
        raise ValueError("fused_gemv: gate needs norm (the gated norm is a norm)")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"fused_gemv: activation must be one of {list(_ACTIVATIONS)}, got {activation!r}")
    if sum(v is not None for v in (residual, conv, activation)) > 1:
        raise ValueError("fused_gemv: residual, conv and activation are exclusive epilogues")
    if (activation == "swiglu") != (glu_gate is not None) or (glu_gate is not None and (
            tuple(glu_gate.shape) != (m, o) or not glu_gate.is_contiguous())):
        raise ValueError(f"fused_gemv: activation 'swiglu' takes glu_gate, a contiguous ({m}, {o}) tensor (the "
                         f"gate projection's output), and nothing else does; got activation {activation!r}, glu_gate "
                         f"{None if glu_gate is None else tuple(glu_gate.shape)}")
    pro, gs, gp, z, stride_z, before_gate = 0, k, 1, x, 0, False
    nw, eps = x, 0.0
    if norm is not None:
        nw, eps = norm
        if tuple(nw.shape) != (k,):
            raise ValueError(f"fused_gemv: the norm's weight must be ({k},), got {tuple(nw.shape)}")
        pro = 1
        if gate is not None:
            z, gs, before_gate = gate
            if z.shape != x.shape or z.stride(-1) != 1 or k % gs or gs % 16:
                raise ValueError(f"fused_gemv: z must have x's shape {tuple(x.shape)} with unit stride, and the "
                                 f"group size ({gs}) divide {k} and be a multiple of 16")
            pro, stride_z = 2, z.stride(0)
            gp = triton.next_power_of_2(k // gs)
    bo, bk, warps, rb = launch_config(o, k, m, config, gs if norm is not None else None, prologue=pro,
                                      conv=conv is not None)
    epi, r, cs, cw, cb, c0, nch, cwid = _EPI_STORE, x, x, x, None, 0, 0, 1
    if residual is not None:
        if tuple(residual.shape) != (m, o) or not residual.is_contiguous():
            raise ValueError(f"fused_gemv: residual must be a contiguous ({m}, {o}) tensor, got "
                             f"{tuple(residual.shape)}")
        if residual.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            # programs would read x while others add into it: a race on the GPU (not in the interpreter)
            raise ValueError("fused_gemv: residual shares memory with x; pass a separate input")
        epi, r = _EPI_RESIDUAL, residual
    if conv is not None:
        c0, cs, cw, cb = conv
        nch, cwid = cs.shape[1], cs.shape[2]
        if cs.dim() != 3 or cs.shape[0] != m or not cs.is_contiguous() or c0 + nch > o \
                or tuple(cw.shape) != (nch, cwid) or not cw.is_contiguous():
            raise ValueError(f"fused_gemv: conv state must be a contiguous (m={m}, c, w) tensor with c0 + c <= {o} "
                             f"and the conv weight (c, w) contiguous; got c0 {c0}, state {tuple(cs.shape)}, "
                             f"weight {tuple(cw.shape)}")
        epi = _EPI_CONV
    y = residual if residual is not None else torch.empty(m, o, device=x.device, dtype=weight.dtype)
    pdl = pdl_launch(x)
    # Every row in each program, so each weight tile is loaded once and used m times. One program a
    # row, the programs of a tile adjacent on the grid so that L2 would serve the repeats, took 3x batch
    # 1's time at batch 4 (H100: benchmarks/results/gpu_gemv-*session11*); summed across threads at
    # each tile, 2-3x (*session10-1*).
    _fused_gemv_kernel[(triton.cdiv(o, bo * rb),)](
        x, z, nw, weight, bias if bias is not None else weight, y, r, cs, cw, cb if cb is not None else cw,
        glu_gate if glu_gate is not None else x,
        o, k, gs, c0, nch, cwid, float(eps), x.stride(0), stride_z,
        M=m, MP=triton.next_power_of_2(m), BO=bo, BK=bk, RB=rb, ONE_TILE=k <= bk, GP=gp,
        WP=triton.next_power_of_2(cwid), PRO=pro,
        BEFORE_GATE=bool(before_gate), HAS_BIAS=bias is not None, EPI=epi, ACT=_ACTIVATIONS[activation],
        HAS_CB=cb is not None, num_warps=warps, **pdl)
    return y


__all__ = ["fused_gemv", "default_config", "launch_config", "pdl_launch", "gdc_wait", "gdc_launch_dependents",
           "MAX_ROWS"]
