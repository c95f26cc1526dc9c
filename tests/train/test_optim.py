"""Weight-decay groups and the warm-up + cosine schedule. No shape letters."""
from __future__ import annotations

import math

import pytest
import torch

from mambakit import LM, ModelConfig
from mambakit.train.config import OptimConfig
from mambakit.train.optim import WarmupCosine, build_optimizer, build_scheduler, no_decay_names


def test_no_weight_decay_on_ssm_params_norms_biases_embeddings():
    model = LM(ModelConfig.from_preset("mamba2-tiny", tie_embeddings=False))
    names = no_decay_names(model)
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1), names)
    decay = {id(p) for p in opt.param_groups[0]["params"]}
    by_name = dict(model.named_parameters())
    for name in ("layers.0.mixer.A_log", "layers.0.mixer.D", "layers.0.mixer.dt_bias", "layers.0.norm.weight",
                 "layers.1.mixer.norm.weight", "layers.0.mixer.conv1d.bias", "norm_f.weight", "embedding.weight"):
        assert name in names and id(by_name[name]) not in decay, name
    for name in ("layers.0.mixer.in_proj.weight", "layers.0.mixer.out_proj.weight", "layers.0.mixer.conv1d.weight",
                 "lm_head.weight"):
        assert id(by_name[name]) in decay, name
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == len(by_name)


def test_marked_parameter_gets_no_decay():
    model = LM(ModelConfig.from_preset("mamba2-tiny"))
    model.layers[0].mixer.in_proj.weight._no_weight_decay = True
    assert "layers.0.mixer.in_proj.weight" in no_decay_names(model)


def test_warmup_then_cosine():
    f = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    values = [f(s) for s in range(25)]
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == pytest.approx(1.0) and values[20] == pytest.approx(0.1) and values[24] == pytest.approx(0.1)
    assert values[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(values[4:], values[5:]))
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = build_scheduler(opt, OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1), 20)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(values[:6])
