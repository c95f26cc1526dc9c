"""The Mamba-1 mixer (arXiv 2312.00752, Figure 3): in_proj -> causal conv -> SiLU -> selective SSM
(dt, B, C from the input) -> gate by SiLU(z) -> out_proj.

Letters: b batch, l length, d model width, e inner width (expand * d), n state dim,
r dt rank, k conv width.

Parameter names and shapes are those of mamba_ssm and transformers' MambaMixer, so their
checkpoints load without renaming inside the mixer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..cache import neg_exp_cached
from ..ops import cpu_kernels
from ..ops.cpu_linear import linear, linear_module
from . import fused_decode
from .init import dt_bias_init


class Mamba1Mixer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        c = config.mamba1
        d = config.d_model
        self.layer_idx = layer_idx
        self.d_inner = e = c.expand * d
        self.d_state = n = c.d_state
        self.d_conv = c.d_conv
        self.dt_rank = r = config.mamba1_dt_rank()
        self.in_proj = nn.Linear(d, 2 * e, bias=c.bias)
        self.conv1d = nn.Conv1d(e, e, c.d_conv, groups=e, padding=c.d_conv - 1, bias=c.conv_bias)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.out_proj = nn.Linear(e, d, bias=c.bias)
        # S4D-real: A = -(1, 2, ..., n) for every channel, stored as A_log in fp32.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        with torch.no_grad():
            std = r ** -0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(dt_bias_init(e, c.dt_min, c.dt_max, c.dt_init_floor))
        self.dt_proj.bias._no_reinit = True
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def allocate_state(self, batch_size: int, dtype=None, device=None) -> dict:
        dtype = dtype or self.in_proj.weight.dtype
        device = device or self.in_proj.weight.device
        return {"conv": torch.zeros(batch_size, self.d_inner, self.d_conv, dtype=dtype, device=device),
                "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, dtype=torch.float32, device=device)}

    def forward(self, hidden: torch.Tensor, cache=None, seq_idx=None) -> torch.Tensor:
        state = cache.layers[self.layer_idx] if cache is not None else None
        if state is not None and hidden.shape[1] == 1 and seq_idx is None:
            return self.step(hidden, state)
        # the projections go through linear_module: on the CPU oneDNN's GEMM (the module call elsewhere)
        x, z = linear_module(self.in_proj, hidden).chunk(2, dim=-1)  # (b, l, e) each
        conv_w = self.conv1d.weight.squeeze(1)  # (e, k)
        if state is None:
            x = ops.causal_conv1d(x, conv_w, self.conv1d.bias, "silu", seq_idx=seq_idx)
        else:
            x, conv_state = ops.causal_conv1d(x, conv_w, self.conv1d.bias, "silu", initial_state=state["conv"],
                                              seq_idx=seq_idx, return_final_state=True)
            state["conv"].copy_(conv_state)
        dt, B, C = torch.split(linear_module(self.x_proj, x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = linear(dt, self.dt_proj.weight)  # (b, l, e); the bias goes in as delta_bias, in fp32
        if self._cpu_kernels(hidden, seq_idx, None if state is None else state["ssm"]):
            # One compiled pass over the sequence (softplus, scan, skip, gate), the state advanced in
            # place and y written over x, which nothing reads after it: no fresh (b, l, e) pages.
            h = state["ssm"] if state is not None else x.new_zeros(x.shape[0], self.d_inner, self.d_state)
            y = cpu_kernels.selective_scan(x, dt, neg_exp_cached(self), B, C, h, D=self.D, z=z,
                                           delta_bias=self.dt_proj.bias, delta_softplus=True, out=x)
            return linear_module(self.out_proj, y)
        A = -torch.exp(self.A_log.float())  # (e, n)
        y, last = ops.selective_scan_fn(x, dt, A, B, C, D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                                     delta_softplus=True, initial_state=None if state is None else state["ssm"],
                                     seq_idx=seq_idx)
        if state is not None:
            state["ssm"].copy_(last)
        return linear_module(self.out_proj, y)

    def step(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """One token for every sequence of the batch: O(1) in the length. hidden (b, 1, d)."""
        which = ops.resolve_backend(None, hidden, "mamba1 decode step")
        if which == "triton":
            return self._step_triton(hidden, state)
        # The kernel reads the states through fp32 pointers: a cache of another dtype takes torch's path.
        if which == "chunked" and cpu_kernels.usable(hidden, self.in_proj.weight, self.A_log, state["conv"], state["ssm"]):
            return self._step_cpu_kernels(hidden, state)
        # In-place ops: at batch 1 the step is bound by the weights' bandwidth, and each extra op
        # adds its fixed cost 24 times a token. The projections go through linear_module, so that an
        # adapter or hook on them (as the prefill's module calls see) applies here too.
        x, z = linear_module(self.in_proj, hidden.squeeze(1)).chunk(2, dim=-1)  # (b, e)
        x = ops.causal_conv1d_update(x, state["conv"], self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")
        dt, B, C = torch.split(F.linear(x, self.x_proj.weight), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight, self.dt_proj.bias).float())  # (b, e)
        x = x.float()
        ssm = state["ssm"]
        dA = torch.mul(dt.unsqueeze(-1), neg_exp_cached(self)).exp_()  # (b, e, n)
        ssm.mul_(dA).addcmul_((dt * x).unsqueeze(-1), B.float().unsqueeze(1))  # += dt x B: (b, e, n)
        y = torch.bmm(ssm, C.float().unsqueeze(-1)).squeeze(-1).addcmul_(self.D.float(), x)  # (b, e)
        y = y.mul_(F.silu(z.float())).to(hidden.dtype)
        return linear_module(self.out_proj, y).unsqueeze(1)

    def _cpu_kernels(self, hidden: torch.Tensor, seq_idx=None, ssm_state=None) -> bool:
        """Whether the compiled CPU kernels (ops/cpu_kernels.py) run: fp32 CPU inference (the state
        too: the kernel writes it through an fp32 pointer), no document ids."""
        return (seq_idx is None and ops.resolve_backend(None, hidden, "selective_scan") == "chunked"
                and cpu_kernels.usable(hidden, self.in_proj.weight, self.A_log, ssm_state))

    def _step_cpu_kernels(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """step() as in_proj, one compiled call (conv + SiLU, x_proj, dt_proj, softplus, SSM update,
        C h + D x, gate; states in place) and out_proj. The two small projections inside the kernel:
        as torch calls each woke the thread pool for a few microseconds of work, 24 times a token.
        The parameters are read from the modules' dicts: each nn.Module attribute lookup costs about
        a microsecond here, and a step made ~25 of them (a parametrized weight is not in the dict:
        the general path below takes it)."""
        m = self._modules
        cv, xp, dp = m["conv1d"]._parameters, m["x_proj"]._parameters, m["dt_proj"]._parameters
        conv_w, xp_w, dp_w = cv.get("weight"), xp.get("weight"), dp.get("weight")
        xz = linear_module(m["in_proj"], hidden.squeeze(1))  # (b, 2e)
        if conv_w is None or xp_w is None or dp_w is None or not (
                conv_w.is_contiguous() and xp_w.is_contiguous() and dp_w.is_contiguous()):
            # a parametrized weight, or a transposed view loaded from a checkpoint
            return self._step_cpu_kernels_split(xz, state).unsqueeze(1)
        y = cpu_kernels.mamba1_step(xz, state["conv"], conv_w, cv.get("bias"), xp_w, dp_w, dp.get("bias"),
                                    neg_exp_cached(self), self._parameters["D"], state["ssm"])  # (b, e)
        return linear_module(m["out_proj"], y).unsqueeze(1)  # (b, 1, d)

    def _step_cpu_kernels_split(self, xz: torch.Tensor, state: dict) -> torch.Tensor:
        """The step after in_proj with the projections in torch: any weight layout."""
        e, r, n = self.d_inner, self.dt_rank, self.d_state
        x = cpu_kernels.conv_step(xz[:, :e], state["conv"], self.conv1d.weight, self.conv1d.bias)
        xdbl = F.linear(x, self.x_proj.weight)  # (b, r + 2n)
        dt = F.linear(xdbl[:, :r], self.dt_proj.weight)  # (b, e), the bias goes into the kernel
        x1 = x.unsqueeze(1)  # (b, 1, e)
        y = cpu_kernels.selective_scan(x1, dt.unsqueeze(1), neg_exp_cached(self), xdbl[:, None, r:r + n],
                                       xdbl[:, None, r + n:], state["ssm"], D=self.D, z=xz[:, None, e:],
                                       delta_bias=self.dt_proj.bias, delta_softplus=True, out=x1)  # (b, 1, e)
        return linear_module(self.out_proj, y.squeeze(1))  # (b, d)

    def _step_triton(self, hidden: torch.Tensor, state: dict) -> torch.Tensor:
        """step() as two fused kernels (conv shift + conv + SiLU + x_proj; dt_proj + softplus + SSM
        update + gated y), states in place, then out_proj."""
        x, z = self.in_proj(hidden.squeeze(1)).chunk(2, dim=-1)  # (b, e)
        y = ops.mamba1_decode_step(x, z, state["conv"], state["ssm"], self.conv1d.weight, self.conv1d.bias,
                                   self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias,
                                   self.A_log, self.D, self.dt_rank, a_is_log=True)  # (b, e)
        return self.out_proj(y).unsqueeze(1)

    def fused_step(self, x: torch.Tensor, norm, cache) -> torch.Tensor | None:
        """x + self(norm(x)) for one token, in place in the residual x (b, 1, d): in_proj with the
        block's norm before it, the fused step, out_proj with the residual add after it
        (layers/fused_decode.py). None when this layer cannot take that path."""
        if not fused_decode.ready(x, norm, self.in_proj, self.out_proj):
            return None
        from ..ops.gemv_triton import fused_gemv
        state = cache.layers[self.layer_idx]
        b = x.shape[0]
        xr = x.view(b, -1)  # (b, d)
        xz = fused_gemv(xr, self.in_proj.weight, self.in_proj.bias, norm=fused_decode.norm_arg(norm))
        xs, z = xz.chunk(2, dim=-1)  # (b, e)
        y = ops.mamba1_decode_step(xs, z, state["conv"], state["ssm"], self.conv1d.weight, self.conv1d.bias,
                                   self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias,
                                   self.A_log, self.D, self.dt_rank, a_is_log=True)  # (b, e)
        fused_gemv(y, self.out_proj.weight, self.out_proj.bias, residual=xr)
        return x


def rescale_out_proj_(module: nn.Module, n_layer: int) -> None:
    """GPT-2 style: out_proj.weight /= sqrt(n_layer) after its default init (Mamba's _init_weights)."""
    with torch.no_grad():
        module.out_proj.weight.div_(math.sqrt(n_layer))
