"""Weight-decay groups and the warm-up + cosine schedule. No shape letters."""
from __future__ import annotations

import math

import pytest
import torch

from mambakit import LM, ModelConfig
from mambakit.train.config import OptimConfig
from mambakit.train.optim import (WarmupCosine, apply_config_on_resume, build_optimizer, build_scheduler,
                                  no_decay_names)


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
    # index s is the (s+1)-th optimizer step: the 4th step (index 3) is the first at the peak, the
    # 20th and last (index 19) ends at min_ratio, and steps past the schedule stay there
    f = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    values = [f(s) for s in range(25)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[19] == pytest.approx(0.1) and values[24] == pytest.approx(0.1) and values[18] > 0.1
    assert values[11] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # half way: (11-3)/16
    assert all(a > b for a, b in zip(values[3:19], values[4:20]))
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = build_scheduler(opt, OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1), 20)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(values[:20])


@pytest.mark.parametrize("warmup", [0, 1, 2])
def test_the_steps_a_short_run_trains_at(warmup):
    # 6 steps: the last one trains at lr * min_lr_ratio (it was 0.232 with warm-up 2), the warm-up's
    # last step at the peak, and warm-up 0 and 1 both start at the peak
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=2.0)
    sched = build_scheduler(opt, OptimConfig(lr=2.0, warmup_steps=warmup, min_lr_ratio=0.1), 6)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[-1] == pytest.approx(0.2) and max(seen) == pytest.approx(2.0)
    assert seen[max(warmup - 1, 0)] == pytest.approx(2.0)
    assert seen[:warmup] == pytest.approx([2.0 * (k + 1) / warmup for k in range(warmup)])


def test_degenerate_schedules():
    assert [WarmupCosine(0, 1, 0.1)(s) for s in (0, 1)] == [1.0, 0.1]  # one step: at the peak
    assert [WarmupCosine(4, 3, 0.1)(s) for s in range(3)] == pytest.approx([0.25, 0.5, 0.75])  # ends in warm-up


def test_resume_mid_warmup_goes_on_from_the_saved_step_with_the_new_values():
    # 3 steps of a 4-step warm-up, saved; resumed with another lr, warm-up and min_lr_ratio: the 4th
    # step trains at the new schedule's index 3, on the same groups, and every change is reported
    # (warm-up and min_lr_ratio used to be applied without a word)
    model = torch.nn.Linear(4, 4)
    old_cfg = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1, weight_decay=0.1)
    opt = build_optimizer(model, old_cfg, {"bias"})
    sched = build_scheduler(opt, old_cfg, 10)
    for _ in range(3):
        opt.step()
        sched.step()
    opt_state, sched_state = opt.state_dict(), sched.state_dict()

    new_cfg = OptimConfig(lr=0.5, warmup_steps=2, min_lr_ratio=0.2, weight_decay=0.1)
    opt = build_optimizer(model, new_cfg, {"bias"})
    sched = build_scheduler(opt, new_cfg, 10)
    opt.load_state_dict(opt_state)
    sched.load_state_dict(sched_state)
    groups = opt.param_groups
    changed = apply_config_on_resume(opt, sched, new_cfg, 10)
    assert changed == ["optim.lr 1.0 -> 0.5", "optim.warmup_steps 4 -> 2", "optim.min_lr_ratio 0.1 -> 0.2"]
    assert opt.param_groups is groups and sched.last_epoch == 3
    f = WarmupCosine(2, 10, 0.2)
    seen = []
    for _ in range(7):
        seen.extend(g["lr"] for g in opt.param_groups)
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5 * f(s) for s in range(3, 10) for _ in range(2)])
    assert seen[-1] == pytest.approx(0.1)  # the last step ends the new schedule at lr * min_lr_ratio
