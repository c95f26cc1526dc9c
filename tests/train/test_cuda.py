"""Training on a GPU: bf16 autocast with fp32 parameters, checkpoint and resume with CUDA RNG states.
Marked `cuda`; skipped without a GPU. No shape letters.
"""
from __future__ import annotations

import pytest
import torch

import mambakit
from mambakit.train import TrainConfig, Trainer, train
from mambakit.train import checkpoint as ckpt

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_training_on_cuda_resumes(tmp_path, corpus, tiny_config):
    path = tiny_config(tmp_path, corpus, train={"device": "cuda", "precision": "auto", "steps": 8, "eval_every": 4},
                       checkpoint={"every": 4})
    cfg = TrainConfig.from_toml(path)
    trainer = Trainer(cfg)
    assert trainer.model.embedding.weight.is_cuda and trainer.model.embedding.weight.dtype == torch.float32
    with trainer.autocast():  # auto on CUDA = bf16 autocast
        logits = trainer.model(torch.zeros(1, 8, dtype=torch.long, device="cuda"))
    assert logits.dtype == torch.bfloat16
    last = trainer.fit()
    trainer.close()
    assert last["step"] == 8 and last["val_loss"] < 5.545  # below a uniform guess over 256 bytes
    assert "cuda" in torch.load(ckpt.final_dir(cfg.out_dir, 8) / "rng-rank0.pt", weights_only=True)
    resumed = Trainer(TrainConfig.from_toml(path, ["--train.steps", "10"]), resume="latest")
    assert resumed.step == 8
    resumed.fit()
    resumed.close()
    model = mambakit.load(ckpt.latest_checkpoint(cfg.out_dir))
    assert all(torch.isfinite(p).all() for p in model.parameters())
