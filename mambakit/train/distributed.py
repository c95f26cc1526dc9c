"""torch.distributed for the trainer: process group from torchrun's environment, DDP or FSDP2
wrapping, reductions, and full (unsharded) state dicts for checkpoints.

No shape letters: this file moves whole tensors between processes.

One process (no torchrun) is world size 1: every helper here is then a no-op, so the trainer has
one code path. On the CPU the backend is gloo, on CUDA nccl.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _timeout_s() -> float:
    """Seconds a collective may wait: MAMBAKIT_DIST_TIMEOUT, else an hour."""
    raw = os.environ.get("MAMBAKIT_DIST_TIMEOUT", "3600")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ValueError(f"MAMBAKIT_DIST_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


def setup(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1), pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA GPU is visible; use 'cpu' or 'auto'")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        # Ranks wait at a barrier while rank 0 tokenizes the corpus, minutes for a large one: longer
        # than NCCL's default timeout (10 min) would allow.
        timeout = datetime.timedelta(seconds=_timeout_s())
        if dev.type == "cuda":  # naming the device binds NCCL to it (no guessing the rank's GPU at the first barrier)
            dist.init_process_group(backend="nccl", device_id=dev, timeout=timeout)
        else:
            dist.init_process_group(backend="gloo", timeout=timeout)
    return DistInfo(rank, world, local_rank, dev)


def cleanup(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def wrap(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    """The module to call for training steps. DDP wraps; FSDP2 shards `model` in place (each block,
    then the root holding embedding, final norm and head) and returns it."""
    if info.world == 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard
    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
    return model


def set_grad_sync(module: nn.Module, enabled: bool):
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of a step."""
    import contextlib
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if hasattr(module, "no_sync") and not enabled:  # DDP
        return module.no_sync()
    return contextlib.nullcontext()


def full_norm(norm) -> float:
    """clip_grad_norm_ returns a DTensor under FSDP2; the number is the same on every rank."""
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def full_state(model: nn.Module, optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts keyed by parameter name, on the CPU. A collective
    under FSDP2: every rank calls it; with world > 1 only rank 0 receives the tensors."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    return get_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_state(model: nn.Module, optimizer, model_state: dict, optim_state: dict) -> None:
    """Every rank passes the full state read from the checkpoint; FSDP2 keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import set_state_dict
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=_options())
