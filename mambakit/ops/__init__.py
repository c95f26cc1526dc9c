"""The one dispatch point for every op: pick the tier (reference, chunked, triton).

Letters: b batch, l length, e inner width, h heads, p head dim, n state dim,
g groups, k conv width, c chunk length (conv channels in the conv and decode ops), r dt rank.

`backend` per call, else the env var MAMBAKIT_BACKEND, else "auto": triton on CUDA
tensors when triton imports, chunked PyTorch otherwise. A fallback from triton to
torch on a CUDA tensor is announced once through `logging`.
"""
from __future__ import annotations

import functools
import logging
import os

import torch

from . import cpu_kernels
from .conv1d import causal_conv1d as _causal_conv1d_torch
from .conv1d import causal_conv1d_update
from .norm import gated_rms_norm as _gated_rms_norm_torch
from .norm import rms_norm

logger = logging.getLogger("mambakit")

BACKENDS = ("auto", "torch", "chunked", "reference", "triton")


@functools.lru_cache(maxsize=None)
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logger.warning(message)


# Decode batches up to this many rows run a block's step through the fused GEMV (ops/gemv_triton.py,
# layers/fused_decode.py); beyond it the rows share each weight read better as a matmul: cuBLAS.
FUSED_GEMV_MAX_ROWS = 4


def resolve_backend(backend: str | None, tensor: torch.Tensor, op: str) -> str:
    """Return one of "reference", "chunked", "triton" for this call."""
    choice = (backend or os.environ.get("MAMBAKIT_BACKEND") or "auto").lower()
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r} for {op}; expected one of {BACKENDS}")
    if choice == "torch":
        choice = "chunked"
    if choice == "auto":
        if tensor.is_cuda and _triton_available() and tensor.dtype != torch.float64:
            return "triton"  # the kernels compute in fp32 at most: float64 stays on the chunked path
        if tensor.is_cuda:
            _warn_once(f"mambakit: triton is not importable, {op} runs the chunked PyTorch path on CUDA (slower)")
        return "chunked"
    if choice == "triton" and not (tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise ValueError(f"backend 'triton' for {op} needs CUDA tensors (or TRITON_INTERPRET=1)")
    return choice


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, seq_idx=None, backend: str | None = None):
    """Mamba-1 selective scan. See ops/selective_scan/README.md.

    u, delta, z: (b, l, e); A: (e, n); B, C: (b, l, n); D, delta_bias: (e,);
    initial_state: (b, e, n); seq_idx: (b, l) int. Returns y (b, l, e), final_state (b, e, n) fp32 (float64 for float64).
    """
    which = resolve_backend(backend, u, "selective_scan")
    if which == "reference":
        from .selective_scan.reference import selective_scan_ref as fn
    elif which == "triton":
        try:
            from .selective_scan.triton import selective_scan_triton as fn
        except ImportError:
            _warn_once("mambakit: no triton selective scan available, using the chunked path")
            from .selective_scan.chunked import selective_scan_chunked as fn
    else:
        from .selective_scan.chunked import selective_scan_chunked as fn
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
              initial_state=initial_state, seq_idx=seq_idx)


def ssd_fn(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
        dt_limit=(0.0, float("inf")), initial_state=None, seq_idx=None, backend: str | None = None):
    """Mamba-2 state space duality (SSD). See ops/ssd/README.md.

    x, z: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); D: (h,) or (h, p);
    dt_bias: (h,); initial_state: (b, h, p, n); seq_idx: (b, l) int.
    Returns y (b, l, h, p), final_state (b, h, p, n) in fp32 (float64 for float64 inputs).
    """
    which = resolve_backend(backend, x, "ssd")
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
                  initial_state=initial_state, seq_idx=seq_idx)
    if which == "reference":
        from .ssd.reference import ssd_ref
        return ssd_ref(x, dt, A, B, C, **kwargs)
    if which == "triton":
        try:
            from .ssd.triton import ssd_triton
            return ssd_triton(x, dt, A, B, C, chunk_size=chunk_size, **kwargs)
        except ImportError:
            _warn_once("mambakit: no triton SSD available, using the chunked path")
    from .ssd.chunked import ssd_chunked
    return ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, **kwargs)


def _conv_seq_fits(x, weight, bias, activation, initial_state) -> bool:
    """Whether cpu_kernels.conv_seq takes this conv: well-formed fp32 CPU inference inputs (anything
    else goes to the torch op, which also says what is wrong with bad shapes)."""
    if x.dim() != 3 or weight.dim() != 2 or x.stride(-1) != 1 or activation not in (None, "silu", "swish"):
        return False
    b, _, c = x.shape
    k = weight.shape[1]
    return (weight.shape[0] == c and c > 0 and 1 <= k <= 16 and (bias is None or tuple(bias.shape) == (c,))
            and (initial_state is None or tuple(initial_state.shape) == (b, c, k))
            and cpu_kernels.usable(x, weight, bias, initial_state))


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, seq_idx=None,
                  return_final_state=False, backend: str | None = None):
    """Causal depthwise conv1d (+ SiLU), see ops/conv1d.py. x (b, l, c), weight (c, k), bias (c,);
    initial_state (b, c, k); seq_idx (b, l). Returns y (b, l, c) [, final state (b, c, k)].
    """
    which = resolve_backend(backend, x, "causal_conv1d")
    if which == "chunked" and seq_idx is None and _conv_seq_fits(x, weight, bias, activation, initial_state):
        # fp32 CPU inference: one compiled pass (2.3x the torch op's speed, a 1024-token Mamba-1
        # layer with 2 threads: benchmarks/cpu_scan.py)
        state = None
        if initial_state is not None:
            state = initial_state.clone(memory_format=torch.contiguous_format)  # one copy, replaced in place
        elif return_final_state:
            state = x.new_zeros(x.shape[0], x.shape[2], weight.shape[1])
        y = cpu_kernels.conv_seq(x, weight, bias, activation is not None, state=state)
        return (y, state) if return_final_state else y
    if which != "triton":
        return _causal_conv1d_torch(x, weight, bias, activation, initial_state=initial_state, seq_idx=seq_idx,
                                    return_final_state=return_final_state)
    from .conv1d_triton import causal_conv1d_triton
    if initial_state is None and not return_final_state:
        return causal_conv1d_triton(x, weight, bias, activation, seq_idx=seq_idx)
    # The kernel starts from zeros: prepend the state's last k-1 inputs (the same document as the
    # row's first token, as the torch op) and drop their outputs.
    if x.dim() != 3 or weight.dim() != 2:
        raise ValueError(f"causal_conv1d: x must be (b, l, c) and weight (c, k), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    b, l, c = x.shape
    k = weight.shape[1]
    if initial_state is None:
        past = x.new_zeros(b, k - 1, c)
    else:
        if tuple(initial_state.shape) != (b, c, k):
            raise ValueError(f"causal_conv1d: initial_state must be {(b, c, k)}, got {tuple(initial_state.shape)}")
        past = initial_state[:, :, 1:].transpose(1, 2).to(x.dtype)  # (b, k - 1, c)
    xpad = torch.cat([past, x], dim=1)  # (b, k - 1 + l, c)
    ids = None
    if seq_idx is not None:
        if tuple(seq_idx.shape) != (b, l):
            raise ValueError(f"causal_conv1d: seq_idx must be ({b}, {l}), got {tuple(seq_idx.shape)}")
        ids = torch.cat([seq_idx[:, :1].expand(b, k - 1), seq_idx], dim=1)  # (b, k - 1 + l)
    y = causal_conv1d_triton(xpad, weight, bias, activation, seq_idx=ids)[:, k - 1:]  # (b, l, c)
    if not return_final_state:
        return y
    if xpad.shape[1] < k:  # only when l == 0
        xpad = torch.cat([xpad.new_zeros(b, k - xpad.shape[1], c), xpad], dim=1)
    return y, xpad[:, -k:].transpose(1, 2).contiguous()  # (b, c, k)


def gated_rms_norm(x, z, weight, eps=1e-5, group_size=None, norm_before_gate=False, backend: str | None = None):
    """Mamba-2's norm rmsnorm(x * silu(z)) per group, times weight (see ops/norm.py). x, z (..., e)."""
    if resolve_backend(backend, x, "gated_rms_norm") == "triton":
        from .norm_triton import gated_rms_norm_triton
        return gated_rms_norm_triton(x, z, weight, eps, group_size=group_size, norm_before_gate=norm_before_gate)
    return _gated_rms_norm_torch(x, z, weight, eps, group_size=group_size, norm_before_gate=norm_before_gate)


def mamba2_decode_step(xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, A, D, dt_bias, dt_softplus,
                       dt_limit, ngroups, headdim, z=None, a_is_log=False, conv_done=False):
    """The fused Triton decode step of Mamba-2 (ops/decode_triton.py): conv_state (b, c, k) and
    ssm_state (b, h, p, n) fp32 updated in place, returns y (b, h, p). Layers call it when
    resolve_backend(...) gives "triton"; the torch tier of the step is Mamba2Mixer.step itself.
    conv_done: xBC is the conv's output already (ops/gemv_triton.py's conv epilogue).
    """
    from .decode_triton import mamba2_decode_step_triton
    return mamba2_decode_step_triton(xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, A, D, dt_bias,
                                     dt_softplus, dt_limit, ngroups, headdim, z=z, a_is_log=a_is_log,
                                     conv_done=conv_done)


def mamba1_decode_step(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                       dt_proj_bias, A, D, dt_rank, a_is_log=False):
    """The fused Triton decode step of Mamba-1 (ops/decode_mamba1_triton.py): conv_state (b, e, k)
    and ssm_state (b, e, n) fp32 updated in place, returns y (b, e) already gated by silu(z).
    Layers call it when resolve_backend(...) gives "triton"; the torch tier is Mamba1Mixer.step.
    """
    from .decode_mamba1_triton import mamba1_decode_step_triton
    return mamba1_decode_step_triton(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                                     dt_proj_weight, dt_proj_bias, A, D, dt_rank, a_is_log=a_is_log)


__all__ = ["selective_scan_fn", "ssd_fn", "causal_conv1d", "causal_conv1d_update", "rms_norm",
           "gated_rms_norm", "mamba2_decode_step", "mamba1_decode_step", "resolve_backend"]
