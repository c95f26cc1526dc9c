"""Mamba-2 SSD on the GPU: Triton forward and backward as one autograd.Function.

Letters: b batch, l length, h heads, p head dim, n state dim, g groups, c chunk length
(the kernels' CS), m sub-block length (BM, 64).

Plan (kernels in triton_fwd.py and triton_bwd.py):
  forward   1. chunk states (chunks, b*h, tiles): S[c] = x^T (B w), fp32, in parallel; also
                             the prepared dt, cumsum(dt A) and each chunk's decay.
            2. state pass   (blocks of p*n, b*h): E[c] = state entering chunk c, the final
                             state; the only serial loop, one fma per chunk.
            3. chunk scan   (chunks, b*h): y, with a (n, p) state in registers walking
                             64-row sub-blocks, so only diagonal 64x64 blocks are quadratic.
  backward  1-2. the same, plus Yl[c] = dy^T (C v) and the backward walk of the pass:
                 dS[c], d initial_state, decay sum(dS * E) for dA.
            3. C B^T per chunk and group (fp32), when heads share it.
            4. dx kernel    (chunks, b*h): dx, then ddt (through softplus and clamp), dA, dD,
                             d dt_bias partial sums from the decay derivative, collected from
                             the same fp32 (C B^T o L)(dy . x) terms on both of its sides.
            5. dB/dC kernel (chunks, b*g*splits): B and C gradients summed over heads.
The state stays fp32 in registers; E and dS are stored in bf16 for bf16 inputs (they are
matmul operands, as in mamba_ssm) and fp32 otherwise. Nothing of size (b, l, h, p, n) is
ever stored: a few states per chunk and head. The forward keeps nothing for the backward
but its inputs, and y before the gate when z is given (for dz).
CONFIG["state_impl"] selects the design of steps 1-2: "split" (the default: chunk states in
parallel, then a light serial pass) or "fused" (the first design: one serial kernel over the
chunks, triton_state_fused.py, kept for comparison). Both pass the same GPU tests; on an H100 at
1 x 65536 (g 1, bf16) split took 2.0 / 8.6 ms forward / forward+backward against fused's
3.1 / 11.9 ms (benchmarks/results/gpu_kernels-*-2026-11-23-run2.json).
CONFIG["scan_impl"] / ["dx_impl"]: "rows" (the default) runs the chunk scan (forward step 3) and
the dx kernel (backward step 4) as triton_rows.py's kernels, one program per (chunk, row block,
head), nothing carried between row blocks; "recur" runs the first design, one program per
(chunk, head) walking its rows (it hits 255 registers and spills on sm_90). On an H100 at
1 x 65536 rows took 1.35 / 6.5 ms forward / forward+backward against recur's 1.96 / 8.5
(docs/benchmarks.md, "the rows kernels"). Both stay tested.

Inputs are validated by reference.check_ssd_inputs (same rules as the CPU tiers).
seq_idx must be non-decreasing (packed documents); cu_seqlens (b == 1) is turned into it.
chunk_size only changes the blocking, not the result: any value is accepted and mapped to
a power of two in [16, 256].
"""
from __future__ import annotations

import math
import os

import torch

import triton

from ..kernel_inputs import check_kernel_tensors
from .reference import check_ssd_inputs
from .triton_bwd import _ssd_bwd_dbdc_kernel, _ssd_bwd_dx_kernel, _ssd_cb_kernel
from .triton_fwd import _ssd_chunk_state_kernel, _ssd_scan_kernel, _ssd_state_pass_kernel
from .triton_rows import _ssd_bwd_dx_finish_kernel, _ssd_bwd_dx_rows_kernel, _ssd_scan_rows_kernel

# Launch settings; benchmarks/gpu_kernels.py may override them to sweep.
CONFIG = {"state_warps": 8, "scan_warps": 8, "dx_warps": 8, "dbdc_warps": 8, "stages": 2,
          "bm_scan": 64, "bm_bwd": 64, "min_programs": 264, "pass_block": 512, "kb": 64, "scan_bp": 64,
          # "rows": the kernels of triton_rows.py, one program per (chunk, row block, head), nothing
          # carried between blocks; rows_bm / rows_bp their row / p blocks, rows_cb: the forward
          # reads C B^T computed once per group (when h > g) instead of recomputing it per head
          "scan_impl": "rows", "dx_impl": "rows", "rows_bm": 64, "rows_bp": 64, "rows_warps": 4,
          "rows_stages": 2, "rows_cb": True, "dx_rows_warps": 4, "dx_rows_bm": 64,
          "rows_heads_first": True,  # grid order of the rows kernels (triton_rows._row_and_head)
          # per-kernel pipeline depth of the dB/dC kernel; None: "stages"
          "dbdc_stages": None,
          # MAMBAKIT_SSD_STATE_IMPL lets a benchmark or a user pick the design without code
          "state_impl": os.environ.get("MAMBAKIT_SSD_STATE_IMPL", "split")}


def _p2(v: int, lo: int = 16) -> int:
    return max(lo, 1 << (int(v) - 1).bit_length())


def _chunk(chunk_size: int, l: int) -> int:
    cs = min(256, _p2(chunk_size))
    return max(16, min(cs, _p2(l)))


def _state_tiles(p: int, n: int) -> tuple[int, int]:
    """(p, n) tile of the chunk-state kernel: one matmul x^T (B w) of (BP, c) by (c, BN)."""
    return min(64, _p2(p)), min(64, _p2(n))


def _prec(dtype) -> str:
    # fp32 inputs get true fp32 products (the test oracle's precision), others tensor cores.
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "interp"
    return "ieee" if dtype == torch.float32 else "tf32"


def _state_pass_fused(x, B, dt, A, dt_bias, dt_softplus, dt_limit, seq, init, cs_len, e_dtype,
                      dy=None, C=None, dfinal=None, want_dinit=False):
    """The first design: one serial kernel per state tile (triton_state_fused.py)."""
    from .triton_state_fused import _ssd_state_kernel
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nchunk = triton.cdiv(l, cs_len)
    bp, bn = min(64, _p2(p)), min(64, _p2(n))
    while b * h * triton.cdiv(p, bp) * triton.cdiv(n, bn) < CONFIG["min_programs"] and max(bp, bn) > 16:
        if bn >= bp:
            bn //= 2
        else:
            bp //= 2
    nt_n = triton.cdiv(n, bn)
    ntile = triton.cdiv(p, bp) * nt_n
    f32 = dict(device=x.device, dtype=torch.float32)
    e = torch.empty(b, h, nchunk, p, n, device=x.device, dtype=e_dtype)
    final = torch.empty(b, h, p, n, **f32)
    dtp = torch.empty(b, h, nchunk * cs_len, **f32)
    csum = torch.empty_like(dtp)
    bwd = dy is not None
    ds, gdot, dinit = e, e, e
    if bwd:
        ds = torch.empty_like(e)
        gdot = torch.empty(b, h, ntile, nchunk, **f32)
        dinit = torch.empty(b, h, p, n, **f32) if want_dinit else final
    _ssd_state_kernel[(ntile, b * h)](
        x, B, dt, A, dt_bias if dt_bias is not None else final, seq if seq is not None else final,
        init if init is not None else final, e, final, dtp, csum,
        dy if bwd else x, C if bwd else B, dfinal if dfinal is not None else final, ds, gdot, dinit,
        l, h, g, p, n, nchunk, nt_n, ntile, float(dt_limit[0]), float(dt_limit[1]),
        CS=cs_len, BP=bp, BN=bn, HAS_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
        HAS_SEQ=seq is not None, HAS_INIT=init is not None, BWD=bwd, HAS_DFINAL=dfinal is not None,
        WANT_DINIT=bool(want_dinit and bwd), PREC=_prec(x.dtype), num_warps=4, num_stages=CONFIG["stages"])
    return dict(e=e, final=final, dtp=dtp, cs=csum, ds=ds, gdot=gdot, dinit=dinit, ntile=ntile)


def _state_pass(x, B, dt, A, dt_bias, dt_softplus, dt_limit, seq, init, cs_len, e_dtype,
                dy=None, C=None, dfinal=None, want_dinit=False):
    """Chunk states (parallel over chunks), then the recurrence over chunks (light, serial)."""
    if CONFIG["state_impl"] == "fused":
        return _state_pass_fused(x, B, dt, A, dt_bias, dt_softplus, dt_limit, seq, init, cs_len, e_dtype,
                                 dy, C, dfinal, want_dinit)
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nchunk = triton.cdiv(l, cs_len)
    bp, bn = _state_tiles(p, n)
    nt_n = triton.cdiv(n, bn)
    dev = x.device
    bwd = dy is not None
    f32 = dict(device=dev, dtype=torch.float32)
    s_loc = torch.empty(b, h, nchunk, p, n, **f32)
    yl = torch.empty_like(s_loc) if bwd else s_loc
    dtp = torch.empty(b, h, nchunk * cs_len, **f32)
    csum = torch.empty_like(dtp)
    decay = torch.empty(b, h, nchunk, **f32)
    prec = _prec(x.dtype)
    _ssd_chunk_state_kernel[(nchunk, b * h, triton.cdiv(p, bp) * nt_n)](
        x, B, dt, A, dt_bias if dt_bias is not None else A, seq if seq is not None else A, s_loc, dtp, csum, decay,
        dy if bwd else x, C if bwd else B, yl,
        l, h, g, p, n, nchunk, nt_n, float(dt_limit[0]), float(dt_limit[1]),
        CS=cs_len, BP=bp, BN=bn, KB=min(CONFIG["kb"], cs_len), HAS_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
        HAS_SEQ=seq is not None, BWD=bwd, PREC=prec, num_warps=CONFIG["state_warps"], num_stages=CONFIG["stages"])
    e = torch.empty(b, h, nchunk, p, n, device=dev, dtype=e_dtype)
    final = torch.empty(b, h, p, n, **f32)
    pn = p * n
    block = CONFIG["pass_block"]
    nblk = triton.cdiv(pn, block)
    if bwd:
        ds = torch.empty_like(e)
        gdot = torch.empty(b, h, nblk, nchunk, **f32)
        dinit = torch.empty(b, h, p, n, **f32) if want_dinit else final
    else:
        ds = gdot = dinit = e
    _ssd_state_pass_kernel[(nblk, b * h)](
        s_loc, decay, init if init is not None else final, e, final, yl,
        dfinal if dfinal is not None else final, ds, gdot, dinit, pn, nchunk, nblk,
        BLOCK=block, HAS_INIT=init is not None, BWD=bwd, HAS_DFINAL=dfinal is not None,
        WANT_DINIT=bool(want_dinit and bwd), PREC=prec, num_warps=4)
    return dict(e=e, final=final, dtp=dtp, cs=csum, ds=ds, gdot=gdot, dinit=dinit, ntile=nblk)


def _check_config() -> None:
    for key in ("scan_impl", "dx_impl"):
        if CONFIG[key] not in ("recur", "rows"):
            raise ValueError(f"ssd_triton: CONFIG[{key!r}] must be 'recur' or 'rows', got {CONFIG[key]!r}")
    if CONFIG["state_impl"] not in ("split", "fused"):
        raise ValueError(f"ssd_triton: CONFIG['state_impl'] must be 'split' or 'fused', got {CONFIG['state_impl']!r}")


def _fwd(x, dt, A, B, C, cs_len, D, z, dt_bias, dt_softplus, dt_limit, init, seq, keep_ypre):
    _check_config()
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    e_dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
    st = _state_pass(x, B, dt, A, dt_bias, dt_softplus, dt_limit, seq, init, cs_len, e_dtype)
    nchunk = triton.cdiv(l, cs_len)
    out = torch.empty_like(x)
    # dz needs y before the gate; nothing else is kept from the forward.
    write_ypre = keep_ypre and z is not None
    ypre = torch.empty_like(x) if write_ypre else out
    if CONFIG["scan_impl"] == "rows":
        bm = min(CONFIG["rows_bm"], cs_len)
        pb = min(_p2(p), CONFIG["rows_bp"])
        load_cb = bool(CONFIG["rows_cb"]) and h // g > 1
        cb = _cb(B, C, nchunk, cs_len, bm) if load_cb else x
        hf = bool(CONFIG["rows_heads_first"])
        rows = nchunk * (cs_len // bm)
        _ssd_scan_rows_kernel[(b * h if hf else rows, rows if hf else b * h, triton.cdiv(p, pb))](
            x, B, C, z if z is not None else x, D if D is not None else A, st["e"], st["dtp"], st["cs"],
            seq if seq is not None else A, cb, out, ypre,
            l, h, g, p, n, nchunk,
            CS=cs_len, BM=bm, PP=pb, NP=_p2(n), HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
            HAS_Z=z is not None, HAS_SEQ=seq is not None, WRITE_YPRE=write_ypre, LOAD_CB=load_cb,
            HEADS_FIRST=hf, PREC=_prec(x.dtype), num_warps=CONFIG["rows_warps"], num_stages=CONFIG["rows_stages"])
        return out, st["final"], (ypre if write_ypre else None)
    bm = min(CONFIG["bm_scan"], cs_len)
    pb = min(_p2(p), CONFIG["scan_bp"])
    _ssd_scan_kernel[(nchunk, b * h, triton.cdiv(p, pb))](
        x, B, C, z if z is not None else x, D if D is not None else A, st["e"], st["dtp"], st["cs"],
        seq if seq is not None else A, out, ypre,
        l, h, g, p, n, nchunk,
        CS=cs_len, BM=bm, PP=pb, NP=_p2(n), HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        HAS_Z=z is not None, HAS_SEQ=seq is not None, WRITE_YPRE=write_ypre, PREC=_prec(x.dtype),
        num_warps=CONFIG["scan_warps"], num_stages=CONFIG["stages"])
    return out, st["final"], (ypre if write_ypre else None)


def _cb(B, C, nchunk, cs_len, bm):
    """C B^T per chunk and group in fp32 (lower block triangle): (b, chunks, g, c, c)."""
    b, l, g, n = B.shape
    cb = torch.empty(b, nchunk, g, cs_len, cs_len, device=B.device, dtype=torch.float32)
    _ssd_cb_kernel[(nchunk, b * g, cs_len // bm)](
        B, C, cb, l, g, n, nchunk, CS=cs_len, BM=bm, NP=_p2(n), PREC=_prec(B.dtype),
        num_warps=4, num_stages=CONFIG["stages"])
    return cb


def _n_split(b: int, nchunk: int, g: int, hpg: int) -> int:
    """Split a group's heads over programs until there are enough of them."""
    split = 1
    while b * nchunk * g * split < CONFIG["min_programs"] and hpg % (split * 2) == 0:
        split *= 2
    return split


class SSDTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, init, seq, cs_len, dt_softplus, dt_limit):
        keep = any(ctx.needs_input_grad[:9])
        out, final, ypre = _fwd(x, dt, A, B, C, cs_len, D, z, dt_bias, dt_softplus, dt_limit,
                                init, seq, keep)
        if keep:
            ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, init, seq, ypre)
            ctx.cfg = (cs_len, dt_softplus, dt_limit)
        return out, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        x, dt, A, B, C, D, z, dt_bias, init, seq, ypre = ctx.saved_tensors
        cs_len, dt_softplus, dt_limit = ctx.cfg
        b, l, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        nchunk = triton.cdiv(l, cs_len)
        dz = dd_torch = dylo = None
        if dout is None:
            dout = torch.zeros_like(x)
        if z is not None:
            # y = y_pre * silu(z): the gate's gradient in plain torch (elementwise); dD from the
            # fp32 dy here, since the kernels see dy rounded to x's dtype.
            zf = z.float()
            sz = torch.sigmoid(zf)
            dof = dout.float()
            dz = (dof * ypre.float() * sz * (1 + zf * (1 - sz))).to(z.dtype)
            dyf = dof * zf * sz
            dy = dyf.to(x.dtype)
            if x.dtype != torch.float32:
                dylo = (dyf - dy.float()).to(x.dtype)
            if D is not None:
                dd_torch = (dyf * x.float()).sum((0, 1))
                dd_torch = dd_torch.sum(-1) if D.dim() == 1 else dd_torch
        else:
            dy = dout.to(x.dtype).contiguous()
        e_dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
        st = _state_pass(x, B, dt, A, dt_bias, dt_softplus, dt_limit, seq, init, cs_len, e_dtype,
                         dy=dy, C=C, dfinal=dfinal.contiguous() if dfinal is not None else None,
                         want_dinit=init is not None and ctx.needs_input_grad[8])
        dev = x.device
        bm = min(CONFIG["bm_bwd"], cs_len)
        bm_dbdc = bm
        if CONFIG["dx_impl"] == "rows":  # its own row block (the C B^T kernel's blocks follow it)
            bm = min(CONFIG["dx_rows_bm"], cs_len)
        pp, np_ = _p2(p), _p2(n)
        prec = _prec(x.dtype)
        # C B^T in fp32 (the dt and A gradients are sensitive to its rounding), computed once
        # per group when heads share it, else inside the dx kernel.
        load_cb = h // g > 1
        cb = x
        if load_cb:
            cb = _cb(B, C, nchunk, cs_len, bm)
        dx = torch.empty_like(x)
        ddt = torch.empty_like(dt)
        dcs = torch.empty_like(st["dtp"])
        ddtd = torch.empty_like(st["dtp"])
        da_part = torch.empty(b, nchunk, h, device=dev, dtype=torch.float32)
        dbias_part = torch.empty_like(da_part)
        want_dd = D is not None and z is None
        if CONFIG["dx_impl"] == "rows":
            nsub = cs_len // bm
            # d cs terms of row block k for the rows of blocks i >= k, and sum(v) per block
            part = torch.empty(b * h * nchunk * nsub * cs_len, device=dev, dtype=torch.float32)
            vsum = torch.empty(b * h * nchunk * nsub, device=dev, dtype=torch.float32)
            dd_part = torch.zeros(b, nchunk * nsub, h, p, device=dev, dtype=torch.float32) if want_dd else da_part
            hf = bool(CONFIG["rows_heads_first"])
            _ssd_bwd_dx_rows_kernel[(b * h, nchunk * nsub) if hf else (nchunk * nsub, b * h)](
                x, B, C, dy, dylo if dylo is not None else dy, cb, D if D is not None else A, st["e"], st["ds"],
                st["dtp"], st["cs"], seq if seq is not None else A, part, vsum, ddtd, dx, dd_part,
                l, h, g, p, n, nchunk,
                CS=cs_len, BM=bm, PP=pp, NP=np_, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
                WANT_DD=want_dd, HAS_SEQ=seq is not None, LOAD_CB=load_cb, HAS_DYLO=dylo is not None,
                HEADS_FIRST=hf, PREC=prec,
                num_warps=CONFIG["dx_rows_warps"], num_stages=CONFIG["stages"])
            _ssd_bwd_dx_finish_kernel[(nchunk, b * h)](
                part, vsum, st["gdot"], dcs, ddtd, st["dtp"], dt, A, dt_bias if dt_bias is not None else A,
                ddt, da_part, dbias_part, l, h, nchunk, st["ntile"], float(dt_limit[0]), float(dt_limit[1]),
                CS=cs_len, BM=bm, NTP=_p2(st["ntile"], 1), HAS_BIAS=dt_bias is not None,
                DT_SOFTPLUS=bool(dt_softplus), PREC=prec, num_warps=4)
        else:
            dd_part = torch.empty(b, nchunk, h, p, device=dev, dtype=torch.float32) if want_dd else da_part
            _ssd_bwd_dx_kernel[(nchunk, b * h)](
                x, B, C, dy, dylo if dylo is not None else dy, cb, D if D is not None else A, st["e"], st["ds"], st["gdot"], st["dtp"], st["cs"],
                dt, A, dt_bias if dt_bias is not None else A, seq if seq is not None else A, dcs, ddtd,
                dx, ddt, da_part, dbias_part, dd_part,
                l, h, g, p, n, nchunk, st["ntile"], float(dt_limit[0]), float(dt_limit[1]),
                CS=cs_len, BM=bm, PP=pp, NP=np_, NTP=_p2(st["ntile"], 1),
                HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, WANT_DD=want_dd,
                HAS_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus), HAS_SEQ=seq is not None,
                LOAD_CB=load_cb, HAS_DYLO=dylo is not None, PREC=prec, num_warps=CONFIG["dx_warps"], num_stages=CONFIG["stages"])
        hpg = h // g
        split = _n_split(b, nchunk, g, hpg)
        db = torch.empty(split, b, l, g, n, device=dev, dtype=torch.float32)
        dc = torch.empty_like(db)
        _ssd_bwd_dbdc_kernel[(nchunk, b * g * split)](
            x, B, C, dy, st["e"], st["ds"], st["dtp"], st["cs"], seq if seq is not None else A, db, dc,
            b, l, h, g, p, n, nchunk, hpg // split, split,
            CS=cs_len, BM=bm_dbdc, PP=pp, NP=np_, HAS_SEQ=seq is not None, PREC=prec,
            num_warps=CONFIG["dbdc_warps"],
            num_stages=CONFIG["stages"] if CONFIG["dbdc_stages"] is None else CONFIG["dbdc_stages"])
        dB = (db[0] if split == 1 else db.sum(0)).to(B.dtype)
        dC = (dc[0] if split == 1 else dc.sum(0)).to(C.dtype)
        dA = da_part.sum((0, 1)).to(A.dtype)
        dD = None
        if D is not None:
            if want_dd:
                dd_torch = dd_part.sum((0, 1))
                dd_torch = dd_torch.sum(-1) if D.dim() == 1 else dd_torch
            dD = dd_torch.to(D.dtype)
        dbias = dbias_part.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None
        dinit = st["dinit"] if (init is not None and ctx.needs_input_grad[8]) else None
        if dinit is not None:
            dinit = dinit.to(init.dtype)
        return dx, ddt, dA, dB, dC, dD, dz, dbias, dinit, None, None, None, None


def _seq_from_cu(cu_seqlens: torch.Tensor, b: int, l: int) -> torch.Tensor:
    if b != 1:
        raise ValueError(f"ssd_triton: cu_seqlens packs documents into one row, so b must be 1, got b = {b}")
    cu = cu_seqlens.to(device="cpu", dtype=torch.int64)
    if cu.dim() != 1 or cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != l or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"ssd_triton: cu_seqlens must be 1-d, start at 0, be non-decreasing and end at "
                         f"l = {l}, got {cu.tolist()}")
    lengths = (cu[1:] - cu[:-1])
    seq = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    return seq.view(1, l).to(device=cu_seqlens.device, dtype=torch.int32)


def ssd_triton(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
               dt_limit=(0.0, math.inf), initial_state=None, seq_idx=None, cu_seqlens=None):
    """SSD with Triton kernels. Same arguments and results as ops.ssd / ssd_chunked.

    x, z: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); D: (h,) or (h, p);
    dt_bias: (h,); initial_state: (b, h, p, n); seq_idx: (b, l) int, non-decreasing;
    cu_seqlens: (documents + 1,) offsets, an alternative to seq_idx when b == 1.
    Returns y (b, l, h, p) in x.dtype and the final state (b, h, p, n) fp32.
    """
    if cu_seqlens is not None:
        if seq_idx is not None:
            raise ValueError("ssd_triton: give seq_idx or cu_seqlens, not both")
        seq_idx = _seq_from_cu(cu_seqlens, x.shape[0], x.shape[1])
    check_ssd_inputs(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_limit=dt_limit,
                     initial_state=initial_state, seq_idx=seq_idx, chunk_size=chunk_size)
    check_kernel_tensors("ssd_triton", dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                                            initial_state=initial_state, seq_idx=seq_idx),
                         activations=("x", "dt", "A", "B", "C", "z"))
    l = x.shape[1]
    cs_len = _chunk(chunk_size, l)
    seq = seq_idx.to(torch.int32).contiguous() if seq_idx is not None else None

    def prep(t, dtype=None):
        if t is None:
            return None
        return (t if dtype is None else t.to(dtype)).contiguous()

    y, final = SSDTritonFn.apply(
        prep(x), prep(dt), prep(A), prep(B, x.dtype), prep(C, x.dtype), prep(D), prep(z, x.dtype),
        prep(dt_bias), prep(initial_state), seq, cs_len, bool(dt_softplus),
        (float(dt_limit[0]), float(dt_limit[1])))
    return y, final
