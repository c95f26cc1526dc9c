"""AdamW with the Mamba papers' weight-decay rule, and linear warm-up then cosine decay.

No shape letters: this file deals in parameters and scalars.

No weight decay on A_log, D, dt_bias (they are marked `_no_weight_decay = True` by the mixers), on
norm weights and biases (every parameter of fewer than 2 dimensions) and on the embedding, as in
mamba_ssm's training recipe: decay would pull the SSM's time constants and the norms' gains toward
zero, which is not regularization but a change of the model.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay. Call before FSDP replaces the parameters
    (their `_no_weight_decay` attribute does not survive sharding)."""
    names = set()
    for name, p in model.named_parameters():
        if getattr(p, "_no_weight_decay", False) or p.dim() < 2 or name.split(".")[0] == "embedding":
            names.add(name)
    return names


def param_groups(model: nn.Module, weight_decay: float, no_decay: set[str]) -> list[dict]:
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (keep if _strip(name) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def _strip(name: str) -> str:
    # DDP and torch.compile wrap the model under these prefixes; the rule is about the LM's own names.
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def build_optimizer(model: nn.Module, cfg, no_decay: set[str]) -> torch.optim.Optimizer:
    """cfg: OptimConfig."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, no_decay), lr=cfg.lr,
                             betas=tuple(cfg.betas), eps=cfg.eps)


class WarmupCosine:
    """Multiplier of the peak learning rate at a step: linear 0 -> 1 over `warmup` steps, then a
    cosine from 1 to `min_ratio` at `total` steps. A plain object, so LambdaLR saves its fields."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio))
