"""The language model: embedding -> residual blocks given by the layer pattern -> RMSNorm -> head.

Letters: b batch, l length, d model width, v vocabulary (padded to a multiple of 8 inside,
unpadded in the logits).

Each block is pre-norm: x = x + mixer(norm(x)), where the mixer is an SSM layer (`M`),
attention (`*`) or an MLP (`-`). The residual stream stays in fp32 when residual_in_fp32.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cache import InferenceCache
from .config import ModelConfig
from .layers import fused_decode
from .layers.norm import RMSNorm
from .ops.cpu_linear import linear_module
from .placement import resolve_device, resolve_dtype


def make_mixer(kind: str, config: ModelConfig, layer_idx: int) -> nn.Module:
    if kind == "M":
        if config.ssm_layer == "mamba1":
            from .layers.mamba1 import Mamba1Mixer
            return Mamba1Mixer(config, layer_idx)
        if config.ssm_layer == "mamba2":
            from .layers.mamba2 import Mamba2Mixer
            return Mamba2Mixer(config, layer_idx)
        from .layers.s4d import S4DMixer
        return S4DMixer(config, layer_idx)
    if kind == "*":
        from .layers.attention import Attention
        return Attention(config, layer_idx)
    from .layers.mlp import MLP
    return MLP(config, layer_idx)


class Block(nn.Module):
    def __init__(self, kind: str, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = make_mixer(kind, config, layer_idx)
        self.residual_in_fp32 = config.residual_in_fp32

    def forward(self, x: torch.Tensor, cache=None, seq_idx=None) -> torch.Tensor:
        if cache is not None and seq_idx is None and x.shape[1] == 1 and fused_decode.on_kernel_device(x):
            fused_step = getattr(self.mixer, "fused_step", None)
            # a decode step: the norm, projections and residual add fused (layers/fused_decode.py)
            out = fused_step(x, self.norm, cache) if fused_step is not None else None
            if out is not None:
                return out
        h = self.norm.normalize_residual(x)
        y = self.mixer(h, cache=cache, seq_idx=seq_idx)
        if y.dtype == x.dtype and y.shape == x.shape and not (torch.is_grad_enabled() and y.requires_grad):
            # Inference: add into the mixer's output, a fresh tensor of its last projection, rather
            # than allocate another (b, l, d) buffer (fresh pages cost more than the add itself).
            return y.add_(x)
        if torch.promote_types(x.dtype, y.dtype) == x.dtype:
            return x + y  # one mixed-dtype kernel (bf16 y into the fp32 residual), no cast kernel first
        return x + y.to(x.dtype)


class LM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"LM expects a ModelConfig, got {type(config).__name__}")
        self.config = config
        v, d = config.padded_vocab_size, config.d_model
        self.embedding = nn.Embedding(v, d)
        self.layers = nn.ModuleList(Block(kind, config, i) for i, kind in enumerate(config.layer_pattern))
        self.norm_f = RMSNorm(d, config.norm_eps)
        self.lm_head = nn.Linear(d, v, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        # Training memory: with this on, a forward that autograd records (and no cache) keeps only
        # each block's input and recomputes the block in the backward (torch.utils.checkpoint,
        # non-reentrant): activations of one block at a time instead of all, for about one more
        # forward of compute. A run-time choice, not part of the config or of saved checkpoints.
        self.activation_checkpointing = False

    def _init_weights(self) -> None:
        """As mamba_ssm: embeddings N(0, 0.02), biases 0 (except dt), output projections / sqrt(n_layer)."""
        cfg = self.config
        with torch.no_grad():
            nn.init.normal_(self.embedding.weight, std=cfg.initializer_range)
            nn.init.normal_(self.lm_head.weight, std=cfg.initializer_range)
            for module in self.modules():
                if isinstance(module, nn.Linear) and module.bias is not None \
                        and not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
            for name, p in self.named_parameters():
                if name.endswith(("out_proj.weight", "o_proj.weight", "down_proj.weight", "fc2.weight")):
                    p.div_(math.sqrt(cfg.n_layer))

    # --- inference cache ---------------------------------------------------------------------------
    def allocate_cache(self, batch_size: int, dtype=None, device=None) -> InferenceCache:
        """A fresh cache for `batch_size` sequences (states zero, no keys/values yet)."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        # A float dtype only: the CPU decode kernels and the states' in-place updates assume one.
        dtype, device = resolve_dtype(dtype), resolve_device(device)
        layers = []
        for block in self.layers:
            alloc = getattr(block.mixer, "allocate_state", None)
            layers.append(alloc(batch_size, dtype=dtype, device=device) if alloc else {})
        return InferenceCache(self.config, batch_size, layers)

    # --- forward --------------------------------------------------------------------------------------
    def check_inputs(self, input_ids: torch.Tensor, cache=None, seq_idx=None) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dtype not in (torch.int64, torch.int32):  # the types an embedding lookup takes
            raise ValueError(f"input_ids must hold token ids as torch.long (or torch.int32), got dtype "
                             f"{input_ids.dtype}; convert them with input_ids.long()")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-d (batch, length), got shape {tuple(input_ids.shape)}")
        b, l = input_ids.shape
        if b == 0 or l == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); expected at least one token")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got values in [{lo}, {hi}]")
        if cache is not None:
            if not isinstance(cache, InferenceCache):
                raise ValueError(f"cache must be an InferenceCache from model.allocate_cache, got {type(cache).__name__}")
            cache.check_compatible(self.config, b, input_ids.device)
        limit = self.config.max_seqlen
        total = l + (cache.seqlen_offset if cache is not None else 0)
        if limit is not None and total > limit:
            raise ValueError(f"sequence of {total} tokens is longer than this model's limit of {limit}")
        capacity = cache.capacity if cache is not None else None
        if capacity is not None and total > capacity:  # here, before any layer (a hybrid's SSM states) moves
            raise ValueError(f"{total} tokens exceed the static KV cache's capacity of {capacity} "
                             f"({cache.seqlen_offset} cached + {l} new); allocate the cache with a larger capacity")
        if seq_idx is not None:
            check_seq_idx(seq_idx, b, l)

    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None,
                seq_idx: torch.Tensor | None = None, validate: bool = True,
                last_only: bool = False) -> torch.Tensor:
        """input_ids (b, l) -> logits (b, l, vocab_size). With a cache: read it and advance it by l tokens.

        last_only: only the last position's logits, (b, 1, vocab_size). A prefill needs no more, and
        the full logits of a long prompt (l * vocab_size floats) would dwarf everything else it holds.
        """
        if validate:
            self.check_inputs(input_ids, cache, seq_idx)
        if cache is not None and seq_idx is not None:
            cache.open_documents_(seq_idx)
        x = self.embedding(input_ids)  # (b, l, d)
        if self.config.residual_in_fp32:
            x = x.float()
        if self.activation_checkpointing and cache is None and torch.is_grad_enabled():
            for block in self.layers:
                x = checkpoint(block, x, seq_idx=seq_idx, use_reentrant=False)
        else:
            for block in self.layers:
                x = block(x, cache=cache, seq_idx=seq_idx)
        if last_only:
            x = x[:, -1:]  # (b, 1, d)
        x = self.norm_f.normalize_residual(x)
        logits = linear_module(self.lm_head, x)  # (b, l, v padded); decoding on the CPU: the C loop
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
            if seq_idx is not None:
                cache.close_documents_(seq_idx, cache.seqlen_offset)
        v = self.config.vocab_size
        return logits if logits.shape[-1] == v else logits[..., :v]

    # --- checkpoints ------------------------------------------------------------------------------------
    def save(self, path, format: str = "native") -> None:
        from .convert import save
        save(self, path, format=format)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def check_seq_idx(seq_idx: torch.Tensor, b: int, l: int) -> None:
    if not isinstance(seq_idx, torch.Tensor) or seq_idx.shape != (b, l):
        shape = tuple(seq_idx.shape) if isinstance(seq_idx, torch.Tensor) else type(seq_idx).__name__
        raise ValueError(f"seq_idx must be a tensor of shape (batch, length) = {(b, l)}, got {shape}")
    if seq_idx.dtype.is_floating_point or seq_idx.dtype == torch.bool:
        raise ValueError(f"seq_idx must hold integer document ids, got dtype {seq_idx.dtype}")
    if l > 1 and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
        raise ValueError("seq_idx must be non-decreasing within each row (documents packed one after another)")
