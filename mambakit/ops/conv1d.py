"""Causal depthwise 1-d convolution (the short conv of Mamba blocks) and its one-step update.

Letters: b batch, l length, c channels, k kernel width.

x is (b, l, c), weight (c, k) with weight[:, -1] applied to the current token. The rolling state
(b, c, k) holds the last k inputs, newest last (the layout of mamba_ssm and transformers), so a
decode step shifts it left by one, writes the new input at the end and takes a dot product.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"unknown activation {activation!r}; expected None or 'silu'")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, initial_state: torch.Tensor | None = None,
                  seq_idx: torch.Tensor | None = None, return_final_state: bool = False):
    """y[t] = act(bias + sum_j weight[:, j] * x[t - (k-1) + j]), inputs before t=0 from initial_state.

    initial_state: (b, c, k) last inputs of an earlier call (zeros if None).
    seq_idx: (b, l) document ids; a tap never reads across a change of id (packed sequences).
    Returns y (b, l, c), and the new state (b, c, k) if return_final_state.
    """
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be (b, l, c), got shape {tuple(x.shape)}")
    b, l, c = x.shape
    if weight.dim() != 2 or weight.shape[0] != c:
        raise ValueError(f"causal_conv1d: weight must be ({c}, k), got {tuple(weight.shape)}")
    k = weight.shape[1]
    if initial_state is not None and initial_state.shape != (b, c, k):
        raise ValueError(f"causal_conv1d: initial_state must be {(b, c, k)}, got {tuple(initial_state.shape)}")
    _check_floats_and_bias("causal_conv1d", x, weight, bias, c)
    if seq_idx is not None:
        if tuple(seq_idx.shape) != (b, l):
            raise ValueError(f"causal_conv1d: seq_idx must be ({b}, {l}), got {tuple(seq_idx.shape)}")
        if seq_idx.is_floating_point() or seq_idx.is_complex() or seq_idx.dtype == torch.bool:
            raise ValueError(f"causal_conv1d: seq_idx must hold integer document ids, got {seq_idx.dtype}")
    if l == 0:  # nothing to convolve: the state goes through as it was (the paths below need a token)
        y = x.new_empty(b, 0, c)
        if not return_final_state:
            return y
        state = x.new_zeros(b, c, k) if initial_state is None else initial_state.to(x.dtype, copy=True)
        return y, state.contiguous()
    if initial_state is None:
        past = x.new_zeros(b, k - 1, c)
    else:
        past = initial_state[:, :, 1:].transpose(1, 2).to(x.dtype)
    w = weight.to(x.dtype)
    if seq_idx is not None:
        return _causal_conv1d_packed(x, w, bias, activation, past, seq_idx, return_final_state)
    # Sum of k shifted products: contiguous over c, cheaper than transposing for F.conv1d.
    # Accumulated in place into one buffer (bias first): each tap is one pass over (b, l, c).
    # Tap j reads s = k-1-j tokens back: x for outputs s.., the state's inputs for the first s
    # (no padded copy of x); every output gets its terms in the same order as the packed path.
    if bias is not None:
        y = torch.addcmul(bias.to(x.dtype), x, w[:, k - 1])  # (b, l, c)
    else:
        y = x * w[:, k - 1]
    for j in range(k - 1):
        s = k - 1 - j
        if s < l:
            y[:, s:].addcmul_(x[:, :l - s], w[:, j])
        m = min(s, l)
        y[:, :m].addcmul_(past[:, j:j + m], w[:, j])
    y = _activate_fresh(y, activation)
    if not return_final_state:
        return y
    final = torch.cat([past, x[:, -k:]], dim=1)[:, -k:].transpose(1, 2)  # (b, c, k)
    return y, final.contiguous()


def _check_floats_and_bias(op: str, x, weight, bias, c: int) -> None:
    """ValueError unless x and weight (and bias) are real floating tensors and bias is (c,): the
    torch op would otherwise broadcast a bias of another shape, or round the weights to x's ints."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating point tensor, got {t.dtype}")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"{op}: bias must be ({c},), got {tuple(bias.shape)}")


def _activate_fresh(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """_activate on a buffer of ours: in place when no autograd graph needs the pre-activation."""
    if activation is not None and not y.requires_grad:
        _activate_check(activation)
        return F.silu(y, inplace=True)
    return _activate(y, activation)


def _causal_conv1d_packed(x, w, bias, activation, past, seq_idx, return_final_state):
    """causal_conv1d with document ids: taps that would read across a change of id read zero."""
    b, l, c = x.shape
    k = w.shape[1]
    xpad = torch.cat([past, x], dim=1)  # (b, l + k - 1, c)
    # The state before t=0 belongs to the row's first document.
    ids = torch.cat([seq_idx[:, :1].expand(b, k - 1), seq_idx], dim=1)  # (b, l + k - 1)
    if bias is not None:
        y = torch.addcmul(bias.to(x.dtype), xpad[:, k - 1:], w[:, k - 1])  # (b, l, c)
    else:
        y = xpad[:, k - 1:] * w[:, k - 1]
    for j in range(k - 1):
        tap = xpad[:, j:j + l] * (ids[:, j:j + l] == seq_idx).unsqueeze(-1).to(x.dtype)
        y.addcmul_(tap, w[:, j])
    y = _activate_fresh(y, activation)
    if not return_final_state:
        return y
    final = xpad[:, -k:].transpose(1, 2)
    return y, final.contiguous()


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, activation: str | None = None) -> torch.Tensor:
    """One decode step. x: (b, c); conv_state: (b, c, k) updated in place. Returns y (b, c)."""
    if x.dim() != 2 or conv_state.dim() != 3 or conv_state.shape[:2] != x.shape or weight.dim() != 2 \
            or conv_state.shape[2] != weight.shape[1]:
        raise ValueError(f"causal_conv1d_update: x (b, c) and conv_state (b, c, k) disagree: "
                         f"{tuple(x.shape)} vs {tuple(conv_state.shape)} (weight {tuple(weight.shape)})")
    b, c, k = conv_state.shape
    if weight.shape[0] != c:
        raise ValueError(f"causal_conv1d_update: weight must be ({c}, {k}), got {tuple(weight.shape)}")
    _check_floats_and_bias("causal_conv1d_update", x, weight, bias, c)
    if conv_state.is_contiguous():
        # Shift left by one as a flat copy: rows are contiguous, and the slot this moves into
        # each row's end from the next row is overwritten by x below (two memcpys, cheaper than roll).
        flat = conv_state.view(-1)
        flat[:-1].copy_(flat[1:].clone())
    else:
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state.select(2, k - 1).copy_(x)
    w = weight.to(conv_state.dtype)
    if k <= 8:
        # A sum over a short innermost axis is slow in torch; a matvec with ones is not.
        y = torch.matmul(conv_state * w, conv_state.new_ones(k))  # (b, c)
    else:
        y = (conv_state * w).sum(-1)
    if bias is not None:
        y.add_(bias.to(y.dtype))
    if activation is not None:
        _activate_check(activation)
        y = F.silu(y, inplace=not y.requires_grad)
    return y.to(x.dtype)


def _activate_check(activation: str) -> None:
    if activation not in ("silu", "swish"):
        raise ValueError(f"unknown activation {activation!r}; expected None or 'silu'")
