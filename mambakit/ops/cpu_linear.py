"""The projections of fp32 CPU inference: F.linear on the machine's fastest path.

Letters: m rows of x, in / out the weight's widths.

A decode step multiplies a few rows by each weight: torch's BLAS read those weights at about half
the machine's streaming rate, so up to LINEAR_MAX_ROWS rows go to the C loop of cpu_kernels
(linear_rows: each weight row read once for all rows). More rows (prefill, batches) go to oneDNN's
GEMM, a torch op the CPU wheels carry (onednn_linear; off with MAMBAKIT_ONEDNN=0). linear_module
is how the layers call an nn.Linear through these, keeping the module call wherever a hook,
autograd or another device needs it.
"""
from __future__ import annotations

import os

import torch
import torch.nn.modules.module as _module_globals

from . import cpu_kernels
from .cpu_kernels import _empty, _ptr, plain_inference, usable


# Rows of x up to which linear() runs the C loop: with more, the BLAS behind F.linear reuses each
# weight better than the loop's 4-row blocks (benchmarks/cpu_matvec.py: at 8 rows the loop was
# 1.02x F.linear with 1 thread, 1.59x with 2; at 16 rows 0.75x and 1.24x).
LINEAR_MAX_ROWS = 4


def linear(x, weight, bias=None, threads: int | None = None, max_rows: int = LINEAR_MAX_ROWS) -> torch.Tensor:
    """F.linear(x, weight, bias) on the CPU's fastest path: x (..., in) with at most max_rows rows runs
    the C loop (weight (out, in) read once at the machine's streaming rate, see linear_rows); more rows
    of fp32 inference run oneDNN's GEMM (onednn_linear); anything else (autograd, another dtype or
    device, a non-contiguous weight, a bias of another shape, more than one thread asked of a build
    without OpenMP) runs F.linear."""
    rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    threads = threads or torch.get_num_threads()
    if rows > max_rows:
        return onednn_linear(x, weight, bias)
    if (not x.is_cpu or not 0 < rows or weight.dim() != 2 or weight.shape[1] != x.shape[-1]
            or not weight.is_contiguous()
            or (bias is not None and (bias.shape != weight.shape[:1] or not bias.is_contiguous()))
            or not usable(x, weight, bias) or (not cpu_kernels._openmp and threads > 1)):
        return torch.nn.functional.linear(x, weight, bias)
    x2 = x.reshape(rows, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = _empty(*x.shape[:-1], weight.shape[0])
    cpu_kernels._lib.linear_rows(rows, weight.shape[0], weight.shape[1], _ptr(x2), x2.stride(0), _ptr(weight), _ptr(bias),
                                 _ptr(y), weight.shape[0], threads)
    return y


def onednn_linear(x, weight, bias=None) -> torch.Tensor:
    """F.linear(x, weight, bias) through oneDNN's GEMM for fp32 CPU inference, else F.linear itself.

    torch's CPU wheels run F.linear on MKL's sgemm; oneDNN, bundled with the same wheels, was
    1.12-1.74x faster at mamba-130m's projections (5 to 1024 rows) and its LM head on this project's
    AMD EPYC (AVX-512), 2 threads (benchmarks/cpu_gemm.py, results/cpu_gemm-*-session15-*). Results
    differ from F.linear by rounding only (another summation order). Off with MAMBAKIT_ONEDNN=0 or
    torch.backends.mkldnn.enabled = False."""
    if (_onednn_linear is None or weight.dim() != 2 or x.dim() < 2 or weight.shape[1] != x.shape[-1]
            or x.numel() * weight.shape[0] < ONEDNN_MIN_MACS
            or (bias is not None and (bias.shape != weight.shape[:1] or not bias.is_contiguous()))
            or not plain_inference(x, weight, bias) or not _onednn_on()):
        return torch.nn.functional.linear(x, weight, bias)  # (oneDNN reads a bias as if contiguous)
    return _onednn_linear(x, weight, bias, "none", [], "")


# Products below this many multiply-adds stay on F.linear: oneDNN's fixed cost a call (~25 us here)
# lost at the demo's widths (8 x 64 -> 256: 32.6 us against MKL's 10.3; 256 x 64 -> 256 about even,
# 5 x 768 -> 3072 1.44x faster on oneDNN), and each new shape costs it a primitive (~1 ms, once).
ONEDNN_MIN_MACS = 1 << 22
_onednn_linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_onednn_state = None  # None: not checked yet; then whether the op exists, runs and agrees with F.linear


def _onednn_on() -> bool:
    global _onednn_state
    if os.environ.get("MAMBAKIT_ONEDNN", "on").lower() in ("0", "off", "false", "no") \
            or not torch.backends.mkldnn.enabled:
        return False
    if _onednn_state is None:
        try:  # a torch built without oneDNN, or one whose private op changed, keeps F.linear
            # fixed values (not the caller's random stream), fp32 whatever the default dtype
            a = torch.linspace(-1, 1, 9 * 24, dtype=torch.float32, device="cpu").view(9, 24)
            w = torch.linspace(1, -2, 5 * 24, dtype=torch.float32, device="cpu").view(5, 24)
            bias = torch.arange(5, dtype=torch.float32, device="cpu")
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                _onednn_state = torch.backends.mkldnn.is_available() and torch.allclose(
                    _onednn_linear(a, w, bias, "none", [], ""), torch.nn.functional.linear(a, w, bias), atol=1e-5)
        except Exception:  # noqa: BLE001 - any failure of a private op means: do not use it
            _onednn_state = False
    return _onednn_state


def linear_module(module, x) -> torch.Tensor:
    """module(x) for an nn.Linear through linear() (the C loop when decoding); any other module, or
    one with forward hooks (adapters, probes, global hooks) or a patched forward, is called as it is,
    and so is every call on another device (the GPU's training and decoding keep their module call)
    and every call autograd records (a module's backward hooks then fire as they would)."""
    if x.is_cpu and is_plain_linear(module) and not (torch.is_grad_enabled() and (
            x.requires_grad or module.weight.requires_grad)):
        return linear(x, module.weight, module.bias)
    return module(x)


def is_plain_linear(module) -> bool:
    """An nn.Linear whose call is F.linear and nothing else: no forward hooks of its own or global
    ones (adapters, probes), no forward patched on the instance (offloading hooks). Only such a
    module may be bypassed by a kernel that reads its weight directly."""
    return (type(module) is torch.nn.Linear and not (module._forward_hooks or module._forward_pre_hooks)
            and "forward" not in module.__dict__
            and not (_module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks))
