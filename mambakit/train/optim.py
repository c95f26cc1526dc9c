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
    """Multiplier of the peak learning rate for the optimizer step at index `step` (0-based: LambdaLR
    calls it with 0 for the first step). A plain object, so LambdaLR saves its fields.

    Warm-up: step index s < warmup trains at (s + 1) / warmup of the peak, so the warmup-th step
    (index warmup - 1) is the first at the full rate and no step trains at 0. Then a cosine from 1
    at index max(warmup - 1, 0) to `min_ratio` at index total - 1, the last step of the run; steps
    past it (a run extended without a longer schedule) stay at `min_ratio`. warmup 0 and 1 are the
    same schedule. When warmup >= total the run ends inside the warm-up, and a one-step run trains
    at the peak: there is no span to decay over. time_fraction (runs with a time limit, the task
    runner's): the cosine goes at least that far (the share of the time used), so a run stopped by
    its clock ends at the floor too.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int, time_fraction: float = 0.0) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        peak, last = max(self.warmup - 1, 0), self.total - 1
        if last <= peak:  # no cosine span: the peak until the end, min_ratio after it
            return 1.0 if step <= peak else self.min_ratio
        progress = min(1.0, max((step - peak) / (last - peak), time_fraction))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio))


def apply_config_on_resume(optimizer, scheduler, cfg, total_steps: int) -> list[str]:
    """After loading a checkpoint's optimizer and scheduler state, make this config govern from here.

    load_state_dict brings back the saved run's lr (base_lrs, initial_lr), weight decay, betas, eps
    and schedule (warm-up, min_lr_ratio), so a changed `--optim.lr` would otherwise be silently ignored
    while config.toml shows it. The moment estimates and the scheduler's position (last_epoch, the
    optimizer steps done) stay as saved; only the hyperparameters change. Returns
    "optim.KEY OLD -> NEW" for each value that changed (empty when resuming with the same config).
    cfg: OptimConfig. Groups as param_groups builds them: 0 decays, 1 never does.
    """
    groups = optimizer.param_groups
    saved = scheduler.lr_lambdas[0]  # a WarmupCosine holding the checkpoint's fields after load_state_dict
    old = {"optim.lr": scheduler.base_lrs[0], "optim.weight_decay": groups[0]["weight_decay"],
           "optim.betas": list(groups[0]["betas"]), "optim.eps": groups[0]["eps"],
           "optim.warmup_steps": saved.warmup, "optim.min_lr_ratio": saved.min_ratio}
    new = {"optim.lr": cfg.lr, "optim.weight_decay": cfg.weight_decay, "optim.betas": list(cfg.betas),
           "optim.eps": cfg.eps, "optim.warmup_steps": cfg.warmup_steps, "optim.min_lr_ratio": cfg.min_lr_ratio}
    scheduler.lr_lambdas = [WarmupCosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio) for _ in groups]
    scheduler.base_lrs = [cfg.lr for _ in groups]
    for i, (group, fn) in enumerate(zip(groups, scheduler.lr_lambdas)):
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * fn(scheduler.last_epoch)  # the expression LambdaLR itself uses
        group["betas"] = tuple(cfg.betas)
        group["eps"] = cfg.eps
        if i == 0:  # the no-decay group keeps 0: A_log, D, dt_bias, norms, embeddings are never decayed
            group["weight_decay"] = cfg.weight_decay
    scheduler._last_lr = [group["lr"] for group in groups]  # what get_last_lr() reports until the next step
    return [f"{k} {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k]]
