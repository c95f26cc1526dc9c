"""The S4D mixer: the linear time-invariant SSM the Mamba paper starts from, in a gated block.

Letters: b batch, l length, d model width, e inner width (expand * d), n state dim, m modes
(n for S4D-Real; n/2 complex modes for S4D-Lin, whose conjugate pairs make up n real dims).

Block (our choice, in the style of the Mamba paper's S4 baseline: the gated block of H3 /
Mamba with the selective SSM replaced by an LTI one, and without the short conv, which is not
part of S4):
    x, z = in_proj(u)                    (b, l, e) each
    y    = S4D(x)  (+ D x skip)          e independent channels, one SSM each
    out  = out_proj(y * silu(z))         (b, l, d)

The SSM of channel c (ops/lti): continuous A_c diagonal (m modes), learned dt_c = exp(log_dt_c),
zero-order hold dA = exp(dt A), dB = (exp(dt A) - 1) / A with B = 1 (S4D folds B into C), and
the output weights W = C dB (times 2 for S4D-Lin: the conjugate half of the modes adds the same
real part). Inits (S4D paper, arXiv 2206.11893):
    S4D-Real  A_n = -(n + 1)               A_log = log(n + 1), C ~ N(0, 1) real
    S4D-Lin   A_n = -1/2 + i pi n          A_log = log(1/2), A_imag = pi n, C ~ CN(0, 1)
    dt log-uniform in [dt_min, dt_max], D = 1.
A = -exp(A_log) keeps the real part negative (a stable SSM) through training.

Two modes of the same layer: convolution (FFT, O(l log l)) for training and prefill, recurrence
(O(e n) per token) for one-token decoding steps. The cache dict holds {"ssm": (b, e, m) fp32}
for S4D-Real or {"ssm": (b, e, m, 2) fp32} for S4D-Lin (complex modes as real pairs), in
float64 for a float64 model.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.lti import discretize_zoh, lti_conv, lti_step

INITS = ("real", "lin")


class S4DMixer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        c = config.s4d
        d = config.d_model
        if c.init not in INITS:
            raise ValueError(f"s4d: init must be one of {INITS}, got {c.init!r}")
        if c.init == "lin" and c.d_state % 2:
            raise ValueError(f"s4d: S4D-Lin uses complex conjugate pairs, d_state must be even, got {c.d_state}")
        self.layer_idx = layer_idx
        self.d_inner = e = c.expand * d
        self.complex = c.init == "lin"
        self.modes = m = c.d_state // 2 if self.complex else c.d_state
        self.in_proj = nn.Linear(d, 2 * e, bias=False)
        log_dt = torch.rand(e) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)
        self.log_dt = nn.Parameter(log_dt)
        if self.complex:
            self.A_log = nn.Parameter(torch.full((e, m), math.log(0.5)))
            self.A_imag = nn.Parameter(math.pi * torch.arange(m, dtype=torch.float32).repeat(e, 1))
            self.C = nn.Parameter(torch.randn(e, m, 2) * math.sqrt(0.5))  # complex as real pairs
        else:
            self.A_log = nn.Parameter(torch.log(torch.arange(1, m + 1, dtype=torch.float32)).repeat(e, 1))
            self.C = nn.Parameter(torch.randn(e, m))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d, bias=False)
        for p in (self.log_dt, self.A_log, self.D) + ((self.A_imag,) if self.complex else ()):
            p._no_weight_decay = True

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(dtA, W), both (e, m): complex for S4D-Lin, real for S4D-Real; fp32 (fp64 for fp64 weights)."""
        real = torch.float64 if self.A_log.dtype == torch.float64 else torch.float32
        A = -torch.exp(self.A_log.to(real))
        C = self.C.to(real)
        if self.complex:
            A = torch.complex(A, self.A_imag.to(real))
            C = torch.view_as_complex(C.contiguous())
        dtA, dB = discretize_zoh(A, torch.exp(self.log_dt.to(real)))
        W = C * dB
        return dtA, (2 * W if self.complex else W)

    def allocate_state(self, batch_size: int, dtype=None, device=None) -> dict:
        # The state stays fp32 whatever the activation dtype (fp64 for an fp64 model).
        real = torch.float64 if self.A_log.dtype == torch.float64 else torch.float32
        shape = (batch_size, self.d_inner, self.modes) + ((2,) if self.complex else ())
        return {"ssm": torch.zeros(shape, dtype=real, device=device or self.A_log.device)}

    def _state_view(self, ssm: torch.Tensor) -> torch.Tensor:
        return torch.view_as_complex(ssm) if self.complex else ssm

    def forward(self, hidden: torch.Tensor, cache=None, seq_idx=None) -> torch.Tensor:
        """hidden (b, l, d) -> (b, l, d). With a cache: start from its state and leave the new one."""
        state = cache.layers[self.layer_idx] if cache is not None else None
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, l, e) each
        dtA, W = self.discrete()
        if state is not None and hidden.shape[1] == 1 and seq_idx is None:
            y = lti_step(x[:, 0], self._state_view(state["ssm"]), dtA, W, self.D)[:, None]  # (b, 1, e)
        else:
            s0 = self._state_view(state["ssm"]) if state is not None else None
            y, last = lti_conv(x, dtA, W, self.D, initial_state=s0, seq_idx=seq_idx,
                               return_final_state=state is not None)
            if state is not None:
                s0.copy_(last)
        return self.out_proj(y * F.silu(z))
