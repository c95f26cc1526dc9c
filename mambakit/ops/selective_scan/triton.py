"""Mamba-1 selective scan on the GPU: Triton forward and backward in one autograd.Function.

Letters: b batch, l length, e inner width, n state dim, c chunk length.

    u, delta, z: (b, l, e); A: (e, n); B, C: (b, l, n); D, delta_bias: (e,);
    initial_state: (b, e, n); seq_idx: (b, l) ints, non-decreasing per row.
    Returns y (b, l, e) in u's dtype and final_state (b, e, n) fp32.

delta += delta_bias; delta = softplus(delta) if asked; h_t = exp(delta_t A) h_{t-1} +
delta_t B_t u_t (h reset to zero where seq_idx changes); y_t = C_t . h_t + D u_t;
y *= silu(z). The forward kernel is in triton_kernels.py; this file checks inputs, picks
tile sizes and launches. Two backward kernels (BWD_VARIANTS), picked by `_config_bwd`
["VARIANT"] or the env var MAMBAKIT_SS_BWD, "chunk" the default until timed (issue 7):
  chunk  triton_bwd_chunk.py: one program per (b, e-block) walks the whole length, (e, n)
         over the threads. dB and dC as one fp32 (b, l, n) partial per channel block,
         (b, e / BLOCK_E, l, n), summed here by torch (deterministic); DBC_ATOMIC=True
         selects the old path (fp32 atomics into one (b, l, n) buffer).
  seg    triton_bwd_seg.py: programs over (b, e-block, group of segments), n a loop, time in
         each thread; the forward then checkpoints every SEG_CHUNKS * BLOCK_T steps.
"""
from __future__ import annotations

import math
import os

import torch

from ..kernel_inputs import check_kernel_tensors
from .triton_bwd_chunk import selective_scan_bwd_kernel
from .triton_kernels import selective_scan_fwd_kernel

BWD_VARIANTS = ("chunk", "seg")  # the default first; "seg": triton_bwd_seg.py (issue 7)

MAX_D_STATE = 256
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def seg_config(n: int, e: int) -> dict:
    """Tiles of the "seg" backward: one warp of BLOCK_E channels, BLOCK_T steps in each
    thread, segments of SEG_CHUNKS chunks (the forward's checkpoint interval)."""
    # registers do not depend on n (it is a loop); longer segments at large n keep the
    # checkpoints (b, l / (SEG_CHUNKS * BLOCK_T), e, n) fp32 small
    return dict(VARIANT="seg", BLOCK_T=8, BLOCK_E=64, SEG_CHUNKS=4 if n <= 16 else 8, num_warps=1)


def default_config(n: int, e: int, backward: bool, variant: str | None = None) -> dict:
    """Tile sizes for a (c, e, n) chunk tile (picked from the H100 sweep in
    benchmarks/gpu_selective_scan.py; docs/benchmarks.md).

    VEC states sit in each thread (sums over n are then VEC-1 adds plus a short shuffle
    tree) and BLOCK_E * BLOCK_N / VEC = 32 * num_warps threads cover (e, n) exactly, so
    the time axis gets neither lanes nor warps and both scans run in registers. BLOCK_T
    is 16 forward; backward (more live tiles) it gives a thread 16 values of a tile.
    """
    if backward:
        variant = variant or os.environ.get("MAMBAKIT_SS_BWD", BWD_VARIANTS[0])
        if variant not in BWD_VARIANTS:
            raise ValueError(f"selective_scan_triton: backward variant {variant!r}, expected one of {BWD_VARIANTS}")
        if variant == "seg":
            return seg_config(n, e)
    bn = _next_pow2(n)
    warps = 4
    vec = 1 if bn == 1 else (2 if bn <= 16 else 4)
    be = max(1, (32 * warps * vec) // bn)
    if backward:
        bt = 8 if bn < 4 else 16 // vec
        cfg = dict(BLOCK_T=bt, BLOCK_E=be, BLOCK_N=bn, VEC=vec, num_warps=warps, DBC_ATOMIC=False)
        if bn == 16:
            # ptxas gives the n 16 tile 228 registers (one program of 4 warps an SM's quarter);
            # capped at 168 (20 spilled) fwd+bwd took 1.539 ms against 2.119 uncapped at b 4,
            # l 2048, e 1536, fp32, H100 (benchmarks/results/gpu_selective_scan-*-2026-12-07-session8.json)
            cfg["MAXNREG"] = 168
        return cfg
    bt = 16 if 4 <= bn <= 64 else 8  # n >= 128 at 16 spills registers
    return dict(BLOCK_T=bt, BLOCK_E=be, BLOCK_N=bn, VEC=vec, num_warps=warps)


def _check(name, x, shape, dtypes=_FLOAT_DTYPES):
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"selective_scan_triton: {name} must be a tensor of shape {shape}, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"selective_scan_triton: {name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    if x.dtype not in dtypes:
        raise ValueError(f"selective_scan_triton: {name} has dtype {x.dtype}, expected one of {dtypes}")


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _validate(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx):
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"selective_scan_triton: u must be a (b, l, e) tensor, got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
    b, l, e = u.shape
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != e:
        raise ValueError(f"selective_scan_triton: A must be (e, n) = ({e}, n), got "
                         f"{tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__}")
    n = A.shape[1]
    if not 1 <= n <= MAX_D_STATE:
        raise ValueError(f"selective_scan_triton: d_state n={n}, expected 1 <= n <= {MAX_D_STATE}")
    if l < 1:
        raise ValueError("selective_scan_triton: length l must be >= 1")
    _check("u", u, (b, l, e))
    _check("delta", delta, (b, l, e))
    _check("B", B, (b, l, n))
    _check("C", C, (b, l, n))
    if D is not None:
        _check("D", D, (e,))
    if z is not None:
        _check("z", z, (b, l, e))
    if delta_bias is not None:
        _check("delta_bias", delta_bias, (e,))
    if initial_state is not None:
        _check("initial_state", initial_state, (b, e, n))
    if seq_idx is not None:
        _check("seq_idx", seq_idx, (b, l), (torch.int32, torch.int64, torch.int16, torch.uint8))
    check_kernel_tensors("selective_scan_triton",
                         dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                              initial_state=initial_state, seq_idx=seq_idx))  # dtypes: _check above
    return b, l, e, n


def _seg_fits(u, delta, z, B, C, l, e, n) -> bool:
    """The seg backward offsets rows within a batch row in int32 (fewer registers)."""
    strides = [u.stride(1), delta.stride(1), B.stride(1), C.stride(1), e, n] + ([z.stride(1)] if z is not None else [])
    return l * max(strides) < 2 ** 31


class SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, delta_softplus,
                config_fwd, config_bwd):
        b, l, e, n = u.shape[0], u.shape[1], u.shape[2], A.shape[1]
        u, delta, B, C = map(_last_dim_contiguous, (u, delta, B, C))
        z = _last_dim_contiguous(z) if z is not None else None
        A = A.contiguous()
        D = D.contiguous() if D is not None else None
        delta_bias = delta_bias.contiguous() if delta_bias is not None else None
        initial_state = initial_state.contiguous() if initial_state is not None else None
        cf = dict(config_fwd or default_config(n, e, backward=False))
        cb = dict(config_bwd or default_config(n, e, backward=True))
        save = any(ctx.needs_input_grad[:9])
        ctx.set_materialize_grads(False)
        # Checkpoint every seg_len steps; seg_len ~ sqrt(l * c) balances checkpoints
        # (l / seg_len states) against the backward's scratch (seg_len / c states).
        if cb.get("VARIANT", "chunk") == "seg" and not _seg_fits(u, delta, z, B, C, l, e, n):
            cb = default_config(n, e, backward=True, variant="chunk")  # its int32 row offsets would overflow
        if cb.get("VARIANT", "chunk") == "seg":  # segments are the backward's parallel unit
            seg_len = cb["SEG_CHUNKS"] * cb["BLOCK_T"]
            if seg_len % cf["BLOCK_T"]:  # checkpoints at segment starts: a forward chunk must not straddle one
                cf = dict(cf, BLOCK_T=math.gcd(seg_len, cf["BLOCK_T"]))
        else:
            bt_max = max(cf["BLOCK_T"], cb["BLOCK_T"])
            n_chunks = math.ceil(l / bt_max)
            seg_len = bt_max * _next_pow2(max(1, math.isqrt(n_chunks)))
        n_seg = math.ceil(l / seg_len)

        y = torch.empty((b, l, e), device=u.device, dtype=u.dtype)
        hT = torch.empty((b, e, n), device=u.device, dtype=torch.float32)
        ckpt = torch.empty((b, n_seg, e, n), device=u.device, dtype=torch.float32) if save else hT
        dummy = u
        zz = z if z is not None else dummy
        seq = seq_idx if seq_idx is not None else dummy
        grid = (triton_cdiv(e, cf["BLOCK_E"]), b)
        selective_scan_fwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else dummy, zz,
            delta_bias if delta_bias is not None else dummy,
            initial_state if initial_state is not None else dummy, seq,
            y, hT, ckpt,
            l, e, n, seg_len // cf["BLOCK_T"], n_seg,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1),
            C.stride(0), C.stride(1), zz.stride(0), zz.stride(1), y.stride(0), y.stride(1),
            seq.stride(0), seq.stride(1),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_H0=initial_state is not None, HAS_SEQ=seq_idx is not None,
            SAVE_CKPT=save, BLOCK_T=cf["BLOCK_T"], BLOCK_E=cf["BLOCK_E"], BLOCK_N=cf["BLOCK_N"],
            EVEN_N=n == cf["BLOCK_N"], VEC=cf["VEC"], num_warps=cf["num_warps"],
        )
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, ckpt)
            ctx.meta = (bool(delta_softplus), seg_len, n_seg, cb)
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, ckpt = ctx.saved_tensors
        softplus, seg_len, n_seg, cb = ctx.meta
        b, l, e = u.shape
        n = A.shape[1]
        dev = u.device
        dy = _last_dim_contiguous(dy) if dy is not None else torch.zeros_like(u)
        if cb.get("VARIANT", "chunk") == "seg":
            from .triton_bwd_seg import seg_backward
            grads = seg_backward(u, delta, A, B, C, D, z, delta_bias, seq_idx, ckpt, dy, dhT, softplus, n_seg, cb)
            return _select_grads(ctx, grads, u, A, B, C, D, z, delta_bias, initial_state)
        grid = (triton_cdiv(e, cb["BLOCK_E"]), b)
        cps = seg_len // cb["BLOCK_T"]
        scratch = torch.empty((b, grid[0], cps, cb["BLOCK_E"] * cb["BLOCK_N"]), device=dev, dtype=torch.float32)
        du = torch.empty((b, l, e), device=dev, dtype=u.dtype)
        ddelta = torch.empty((b, l, e), device=dev, dtype=delta.dtype)
        dz = torch.empty((b, l, e), device=dev, dtype=z.dtype) if z is not None else du
        atomic = bool(cb.get("DBC_ATOMIC", False))
        if atomic:
            dB = torch.zeros((b, l, n), device=dev, dtype=torch.float32)
            dC = torch.zeros((b, l, n), device=dev, dtype=torch.float32)
        else:  # every (b, block, t < l, n) slot is written by its one program
            dB = torch.empty((b, grid[0], l, n), device=dev, dtype=torch.float32)  # (b, e / BLOCK_E, l, n)
            dC = torch.empty((b, grid[0], l, n), device=dev, dtype=torch.float32)
        dA = torch.empty((b, e, n), device=dev, dtype=torch.float32)
        dD = torch.empty((b, e), device=dev, dtype=torch.float32)
        dbias = torch.empty((b, e), device=dev, dtype=torch.float32)
        dh0 = torch.empty((b, e, n), device=dev, dtype=torch.float32)
        dummy = u
        zz = z if z is not None else dummy
        seq = seq_idx if seq_idx is not None else dummy
        selective_scan_bwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else dummy, zz,
            delta_bias if delta_bias is not None else dummy, seq, ckpt, dy,
            dhT if dhT is not None else dummy, scratch,
            du, ddelta, dz, dB, dC, dA, dD, dbias, dh0,
            l, e, n, cps, n_seg,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1),
            C.stride(0), C.stride(1), zz.stride(0), zz.stride(1), seq.stride(0), seq.stride(1),
            dy.stride(0), dy.stride(1),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            HAS_SEQ=seq_idx is not None, HAS_DHT=dhT is not None,
            BLOCK_T=cb["BLOCK_T"], BLOCK_E=cb["BLOCK_E"], BLOCK_N=cb["BLOCK_N"],
            EVEN_N=n == cb["BLOCK_N"], VEC=cb["VEC"], DBC_ATOMIC=atomic, num_warps=cb["num_warps"],
            **({"maxnreg": cb["MAXNREG"]} if cb.get("MAXNREG") else {}),  # a register cap: more programs an SM
        )
        if not atomic:
            dB = dB.sum(1) if ctx.needs_input_grad[3] else None  # (b, l, n)
            dC = dC.sum(1) if ctx.needs_input_grad[4] else None
        return _select_grads(ctx, (du, ddelta, dA.sum(0), dB, dC, dD.sum(0), dz, dbias.sum(0), dh0),
                             u, A, B, C, D, z, delta_bias, initial_state)


def _select_grads(ctx, grads, u, A, B, C, D, z, delta_bias, initial_state):
    """The autograd tuple from fp32 sums (dA (e, n), dB, dC (b, l, n), dD, dbias (e,))."""
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = grads
    need = ctx.needs_input_grad
    return (
        du if need[0] else None,
        ddelta if need[1] else None,
        dA.to(A.dtype) if need[2] else None,
        dB.to(B.dtype) if need[3] else None,
        dC.to(C.dtype) if need[4] else None,
        dD.to(D.dtype) if D is not None and need[5] else None,
        dz if z is not None and need[6] else None,
        dbias.to(delta_bias.dtype) if delta_bias is not None and need[7] else None,
        dh0.to(initial_state.dtype) if initial_state is not None and need[8] else None,
        None, None, None, None,
    )


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None, seq_idx=None, *, _config_fwd=None, _config_bwd=None):
    """Selective scan (see the module docstring). Returns (y (b, l, e), final_state (b, e, n) fp32).

    `_config_fwd` / `_config_bwd` override the tile sizes (benchmarks sweep them).
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    return SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx,
                                     delta_softplus, _config_fwd, _config_bwd)
