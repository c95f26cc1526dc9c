"""The MLP block of hybrid and Transformer models (the `-` of a layer pattern).

Letters: b batch, l length, d model width, f hidden width (mlp.hidden_size, default 4 d).

Activations:
  gelu   down(gelu(up(x)))                   exact (erf) GeLU, Megatron's default
  relu2  down(relu(up(x))^2)                 squared ReLU (Primer), NemotronH's default
  swiglu down(silu(gate(x)) * up(x))         gated, as Llama

Names follow transformers (up_proj, gate_proj, down_proj) so that NemotronH (up/down) and
Llama (gate/up/down) weights load by renaming only the prefix; down_proj is rescaled by
1/sqrt(n_layer) at init like every output projection. An MLP carries no state between calls.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.cpu_linear import linear_module
from . import fused_decode

ACTIVATIONS = ("gelu", "relu2", "swiglu")


class MLP(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        m = config.mlp
        if m.activation not in ACTIVATIONS:
            raise ValueError(f"mlp: activation must be one of {ACTIVATIONS}, got {m.activation!r}")
        d = config.d_model
        self.layer_idx = layer_idx
        self.hidden_size = f = m.hidden_size or 4 * d
        self.activation = m.activation
        if self.activation == "swiglu":
            self.gate_proj = nn.Linear(d, f, bias=m.bias)
        self.up_proj = nn.Linear(d, f, bias=m.bias)
        self.down_proj = nn.Linear(f, d, bias=m.bias)

    def forward(self, x: torch.Tensor, cache=None, seq_idx=None) -> torch.Tensor:
        """x (b, l, d) -> (b, l, d). Position-wise: cache and seq_idx do not matter."""
        h = linear_module(self.up_proj, x)  # (b, l, f); decoding on the CPU: the C loop
        if self.activation == "swiglu":
            h = F.silu(linear_module(self.gate_proj, x)) * h
        elif self.activation == "relu2":
            h = torch.square(F.relu(h))
        else:
            h = F.gelu(h)
        return linear_module(self.down_proj, h)

    def fused_step(self, x: torch.Tensor, norm, cache) -> torch.Tensor | None:
        """x + self(norm(x)) for one token, in place in the residual x (b, 1, d): up_proj with the
        block's norm before it and the activation after it (swiglu: gate_proj with the norm first,
        then up_proj with the norm before and silu(gate) * up after), down_proj with the residual add
        after it (layers/fused_decode.py). None when this layer cannot take that path."""
        projections = (self.up_proj, self.down_proj) + ((self.gate_proj,) if self.activation == "swiglu" else ())
        if not fused_decode.ready(x, norm, *projections):
            return None
        from ..ops.gemv_triton import fused_gemv
        xr = x.view(x.shape[0], -1)  # (b, d)
        normed = fused_decode.norm_arg(norm)
        glu_gate = None
        if self.activation == "swiglu":
            glu_gate = fused_gemv(xr, self.gate_proj.weight, self.gate_proj.bias, norm=normed)  # (b, f)
        h = fused_gemv(xr, self.up_proj.weight, self.up_proj.bias, norm=normed, activation=self.activation,
                       glu_gate=glu_gate)  # (b, f)
        fused_gemv(h, self.down_proj.weight, self.down_proj.bias, residual=xr)
        return x

    def allocate_state(self, batch_size: int, dtype=None, device=None) -> dict:
        return {}
