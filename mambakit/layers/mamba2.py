"""The Mamba-2 mixer (arXiv 2405.21060, Figure 6): one in_proj to [z, x, B, C, dt], causal conv over
xBC, SiLU, SSD (multi-head, B/C shared by groups), gated RMSNorm with z, out_proj.

Letters: b batch, l length, d model width, e inner width (expand * d), h heads, p head dim
(e = h * p), n state dim, g groups, c = e + 2 g n conv channels, k conv width.

Parameter names and shapes follow mamba_ssm's Mamba2 and transformers' Mamba2Mixer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..cache import neg_exp_cached
from ..ops import cpu_kernels
from ..ops.cpu_linear import linear_module
from . import fused_decode
from .init import dt_bias_init


class Mamba2Mixer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        c = config.mamba2
        d = config.d_model
        self.layer_idx = layer_idx
        self.d_inner = e = c.expand * d
        self.headdim = c.headdim
        self.nheads = h = e // c.headdim
        self.ngroups = g = c.ngroups
        self.d_state = n = c.d_state
        self.d_conv = c.d_conv
        self.chunk_size = c.chunk_size
        self.dt_limit = tuple(c.dt_limit)
        self.norm_before_gate = c.norm_before_gate
        self.eps = config.norm_eps
        self.conv_dim = e + 2 * g * n
        self.in_proj = nn.Linear(d, 2 * e + 2 * g * n + h, bias=c.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, c.d_conv, groups=self.conv_dim,
                                padding=c.d_conv - 1, bias=c.conv_bias)
        self.dt_bias = nn.Parameter(dt_bias_init(h, c.dt_min, c.dt_max, c.dt_init_floor))
        lo, hi = c.A_init_range
        self.A_log = nn.Parameter(torch.log(torch.empty(h).uniform_(lo, hi)))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = _GatedNormWeight(e)
        self.out_proj = nn.Linear(e, d, bias=c.bias)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.dt_bias._no_reinit = True

    def allocate_state(self, batch_size: int, dtype=None, device=None) -> dict:
        dtype = dtype or self.in_proj.weight.dtype
        device = device or self.in_proj.weight.device
        return {"conv": torch.zeros(batch_size, self.conv_dim, self.d_conv, dtype=dtype, device=device),
                "ssm": torch.zeros(batch_size, self.nheads, self.headdim, self.d_state,
                                   dtype=torch.float32, device=device)}

    def _split(self, zxbcdt: torch.Tensor):
        e, h = self.d_inner, self.nheads
        return torch.split(zxbcdt, [e, self.conv_dim, h], dim=-1)

    def _gate_norm_out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = ops.gated_rms_norm(y, z, self.norm.weight, self.eps, group_size=self.d_inner // self.ngroups,
                               norm_before_gate=self.norm_before_gate)
        return linear_module(self.out_proj, y)  # on the CPU the C loop when decoding; elsewhere the module call

    def forward(self, hidden: torch.Tensor, cache=None, seq_idx=None) -> torch.Tensor:
        state = cache.layers[self.layer_idx] if cache is not None else None
        if state is not None and hidden.shape[1] == 1 and seq_idx is None:
            return self.step(hidden, state)
        b, l, _ = hidden.shape
        e, h, p, g, n = self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state
        z, xBC, dt = self._split(linear_module(self.in_proj, hidden))  # (b, l, e), (b, l, c), (b, l, h)
        conv_w = self.conv1d.weight.squeeze(1)  # (c, k)
        if state is None:
            xBC = ops.causal_conv1d(xBC, conv_w, self.conv1d.bias, "silu", seq_idx=seq_idx)
        else:
            xBC, conv_state = ops.causal_conv1d(xBC, conv_w, self.conv1d.bias, "silu", initial_state=state["conv"],
                                                seq_idx=seq_idx, return_final_state=True)
            state["conv"].copy_(conv_state)
        x, B, C = torch.split(xBC, [e, g * n, g * n], dim=-1)
        y, last = ops.ssd_fn(x.reshape(b, l, h, p), dt, -torch.exp(self.A_log.float()), B.reshape(b, l, g, n),
                          C.reshape(b, l, g, n), chunk_size=self.chunk_size, D=self.D.float(),
                          dt_bias=self.dt_bias.float(), dt_softplus=True, dt_limit=self.dt_limit,
                          initial_state=None if state is None else state["ssm"], seq_idx=seq_idx)
        if state is not None:
            state["ssm"].copy_(last)
        y = y.reshape(b, l, e)  # fresh: ours to overwrite
        norm_w = self.norm.weight
        if y.is_contiguous() and cpu_kernels.usable(y, z, norm_w):  # fp32 CPU inference: one pass, in place
            y = cpu_kernels.gated_norm_(y, z, norm_w, self.eps, e // g, self.norm_before_gate)
            return linear_module(self.out_proj, y)
        return self._gate_norm_out(y, z)

    def step(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """One token for every sequence of the batch: O(1) in the length. hidden (b, 1, d)."""
        which = ops.resolve_backend(None, hidden, "mamba2 decode step")
        if which == "triton":
            return self._step_triton(hidden, state)
        # The kernel reads the states through fp32 pointers: a cache of another dtype takes torch's path.
        if which == "chunked" and cpu_kernels.usable(hidden, self.in_proj.weight, self.A_log, state["conv"], state["ssm"]):
            return self._step_cpu_kernels(hidden, state)
        b = hidden.shape[0]
        e, h, p, g, n = self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state
        rep = h // g
        # In-place ops and views instead of copies: at batch 1 the step is bound by the weights'
        # bandwidth, and each extra op adds its fixed cost per layer. The projections go through
        # linear_module, so that an adapter or hook on them applies here as in the prefill.
        zxbcdt = linear_module(self.in_proj, hidden.squeeze(1))
        z, xBC, dt = self._split(zxbcdt)  # (b, e), (b, c), (b, h)
        xBC = ops.causal_conv1d_update(xBC, state["conv"], self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")
        x, B, C = torch.split(xBC, [e, g * n, g * n], dim=-1)
        x = x.reshape(b, h, p).float()
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (b, h)
        if self.dt_limit != (0.0, float("inf")):  # softplus is >= 0: the default limits change nothing
            dt = dt.clamp(*self.dt_limit)
        dA = torch.mul(dt, neg_exp_cached(self)).exp_()  # (b, h)
        # Heads of one group share B and C: broadcast over the group's heads instead of copying.
        ssm = state["ssm"].view(b, g, rep, p, n)
        ssm.mul_(dA.view(b, g, rep, 1, 1)).addcmul_((dt.unsqueeze(-1) * x).view(b, g, rep, p, 1),
                                                     B.float().view(b, g, 1, 1, n))
        y = torch.matmul(ssm.view(b, g, rep * p, n), C.float().view(b, g, n, 1)).view(b, h, p)
        y = y.addcmul_(self.D.float()[:, None], x).view(b, e).to(hidden.dtype)  # (b, e)
        return self._gate_norm_out(y, z).unsqueeze(1)

    def _step_cpu_kernels(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """step() as in_proj, one compiled call (conv + SiLU, dt, SSM update, C h + D x, the gated
        norm; states in place) and out_proj: three calls instead of ~30 small ops. The parameters
        are read from the modules' dicts, as in Mamba1Mixer._step_cpu_kernels (why: there)."""
        m, own = self._modules, self._parameters
        cv = m["conv1d"]._parameters
        conv_w, norm_w = cv.get("weight"), m["norm"]._parameters.get("weight")
        zxbcdt = linear_module(m["in_proj"], hidden.squeeze(1))  # (b, 2e + 2gn + h)
        if conv_w is None or norm_w is None or not conv_w.is_contiguous():
            # parametrized, or a transposed view from a checkpoint
            z, xBC, dt = self._split(zxbcdt)
            xBC = cpu_kernels.conv_step(xBC, state["conv"], self.conv1d.weight, self.conv1d.bias)
            e, gn = self.d_inner, self.ngroups * self.d_state
            y = cpu_kernels.ssd_step(xBC[:, :e], dt, neg_exp_cached(self), xBC[:, e:e + gn], xBC[:, e + gn:],
                                     state["ssm"], D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                                     dt_limit=self.dt_limit)  # (b, e)
            return self._gate_norm_out(y, z).unsqueeze(1)
        y = cpu_kernels.mamba2_step(zxbcdt, state["conv"], conv_w, cv.get("bias"), own["dt_bias"], self.dt_limit,
                                    neg_exp_cached(self), own["D"], state["ssm"], self.ngroups, norm_w, self.eps,
                                    self.d_inner // self.ngroups, self.norm_before_gate)  # (b, e)
        return linear_module(m["out_proj"], y).unsqueeze(1)  # (b, 1, d)

    def _step_triton(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """step() as one fused kernel (conv shift + conv + SiLU + SSM update + y, states in place),
        then the gated norm and out_proj. The z gate goes through the norm, not the kernel."""
        z, xBC, dt = self._split(self.in_proj(hidden.squeeze(1)))  # (b, e), (b, c), (b, h)
        y = ops.mamba2_decode_step(xBC, dt, state["conv"], state["ssm"], self.conv1d.weight, self.conv1d.bias,
                                   self.A_log, self.D, self.dt_bias, True, self.dt_limit, self.ngroups,
                                   self.headdim, a_is_log=True)  # (b, h, p) in xBC's dtype
        return self._gate_norm_out(y.reshape(hidden.shape[0], self.d_inner), z).unsqueeze(1)

    def fused_step(self, x: torch.Tensor, norm, cache) -> torch.Tensor | None:
        """x + self(norm(x)) for one token, in place in the residual x (b, 1, d), as three kernels:
        in_proj with the block's norm before it and the conv after it, the SSM step, out_proj with
        the gated norm before it and the residual add after it (layers/fused_decode.py). None when
        this layer cannot take that path."""
        if not fused_decode.ready(x, norm, self.in_proj, self.out_proj):
            return None
        conv_w = self.conv1d.weight.squeeze(1)  # (c, k)
        gs = self.d_inner // self.ngroups
        if not (conv_w.is_contiguous() and self.norm.weight.dtype == norm.weight.dtype and gs % 16 == 0):
            return None
        from ..ops.gemv_triton import fused_gemv
        state = cache.layers[self.layer_idx]
        b, e = x.shape[0], self.d_inner
        xr = x.view(b, -1)  # (b, d)
        zxbcdt = fused_gemv(xr, self.in_proj.weight, self.in_proj.bias, norm=fused_decode.norm_arg(norm),
                            conv=(e, state["conv"], conv_w, self.conv1d.bias))  # xBC already convolved
        z, xBC, dt = self._split(zxbcdt)  # (b, e), (b, c), (b, h)
        y = ops.mamba2_decode_step(xBC, dt, state["conv"], state["ssm"], conv_w, self.conv1d.bias, self.A_log,
                                   self.D, self.dt_bias, True, self.dt_limit, self.ngroups, self.headdim,
                                   a_is_log=True, conv_done=True)  # (b, h, p)
        fused_gemv(y.view(b, e), self.out_proj.weight, self.out_proj.bias, residual=xr,
                   norm=(self.norm.weight, self.eps), gate=(z, gs, self.norm_before_gate))
        return x


class _GatedNormWeight(nn.Module):
    """Holds `norm.weight` so the parameter names match mamba_ssm and transformers."""

    def __init__(self, e: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(e))
