"""The one dispatch point for every op: pick the tier (reference, chunked, triton).

Letters: b batch, l length, e inner width, h heads, p head dim, n state dim,
g groups, k conv width, c chunk length.

`backend` per call, else the env var MAMBAKIT_BACKEND, else "auto": triton on CUDA
tensors when triton imports, chunked PyTorch otherwise. A fallback from triton to
torch on a CUDA tensor is announced once through `logging`.
"""
from __future__ import annotations

import functools
import logging
import os

import torch

from .conv1d import causal_conv1d, causal_conv1d_update
from .norm import rms_norm, gated_rms_norm

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


__all__ = ["selective_scan_fn", "ssd_fn", "causal_conv1d", "causal_conv1d_update", "rms_norm",
           "gated_rms_norm", "resolve_backend"]
