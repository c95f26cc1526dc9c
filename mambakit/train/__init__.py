"""Training: TOML config, data packed from text, AdamW + warm-up/cosine, exact-resume checkpoints,
DDP or FSDP2 under torchrun. See docs/training.md.

No shape letters here; see trainer.py and data.py.
"""
from .config import TrainConfig
from .trainer import Trainer, train

__all__ = ["Trainer", "TrainConfig", "train"]
