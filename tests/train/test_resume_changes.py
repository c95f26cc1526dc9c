"""Resuming with a changed config: batch size, optimizer values, data settings, an older checkpoint,
the wall-time clock, the model. Each change either takes effect as documented or is refused by name.

No shape letters: these tests compare positions, scalars and folder names.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from mambakit.train import TrainConfig, Trainer, train
from mambakit.train import checkpoint as ckpt
from mambakit.train.data import PackedRows, RowSampler
from mambakit.train.optim import WarmupCosine


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_with_another_batch_size_goes_on_at_the_next_sample(tmp_path, corpus, tiny_config, monkeypatch):
    # The data position is the samples consumed: 3 steps of 4 then 2 steps of 8 read samples 0..27 of
    # the run's order exactly once (it used to restart at step * new batch = 24, skipping 12..23).
    read = []
    real = PackedRows.batch

    def record(self, rows):
        if self.start == 0:  # the training split starts at token 0, validation at the cut
            read.extend(rows)
        return real(self, rows)
    monkeypatch.setattr(PackedRows, "batch", record)
    path = tiny_config(tmp_path, corpus, train={"steps": 3, "batch_size": 4, "eval_every": 0},
                       checkpoint={"every": 3})
    train(TrainConfig.from_toml(path))
    resumed = Trainer(TrainConfig.from_toml(path, ["--train.steps", "5", "--train.batch_size", "8"]), resume="latest")
    assert resumed.samples == 12
    resumed.fit()
    resumed.close()
    n_rows, seed = len(resumed.data.train), resumed.cfg.seed
    assert n_rows > 28  # one epoch holds them all: no row may come twice
    assert read == RowSampler(n_rows, seed).rows(0, 28) and len(set(read)) == 28
    saved = torch.load(ckpt.final_dir(resumed.run_dir, 5) / "trainer.pt", weights_only=True)
    assert saved["samples"] == 28


def test_resume_applies_changed_optimizer_values(tmp_path, corpus, tiny_config, capsys):
    optim = {"lr": 3e-3, "warmup_steps": 0, "min_lr_ratio": 0.5, "weight_decay": 0.1, "betas": [0.9, 0.95]}
    path = tiny_config(tmp_path, corpus, optim=optim, train={"steps": 2, "eval_every": 0}, checkpoint={"every": 2})
    train(TrainConfig.from_toml(path))
    capsys.readouterr()
    new = ["--train.steps", "4", "--optim.lr", "1e-3", "--optim.weight_decay", "0.02",
           "--optim.betas", "[0.8, 0.99]", "--optim.eps", "1e-6"]
    t = Trainer(TrainConfig.from_toml(path, new), resume="latest")
    out = capsys.readouterr().out
    for change in ("optim.lr 0.003 -> 0.001", "optim.weight_decay 0.1 -> 0.02",
                   "optim.betas [0.9, 0.95] -> [0.8, 0.99]", "optim.eps 1e-08 -> 1e-06"):
        assert change in out, out
    fn = WarmupCosine(0, 4, 0.5)
    decay, keep = t.optimizer.param_groups
    assert t.scheduler.base_lrs == [1e-3, 1e-3]
    for group in (decay, keep):
        assert group["initial_lr"] == 1e-3 and group["lr"] == pytest.approx(1e-3 * fn(2))
        assert tuple(group["betas"]) == (0.8, 0.99) and group["eps"] == 1e-6
    assert decay["weight_decay"] == 0.02 and keep["weight_decay"] == 0.0  # no decay on A_log, norms, ...
    assert all(int(s["step"]) == 2 for s in t.optimizer.state.values())  # the moments are kept
    t.fit()
    t.close()
    lrs = {r["step"]: r["lr"] for r in _rows(t.run_dir) if "lr" in r}
    assert lrs[1] == pytest.approx(3e-3) and lrs[3] == pytest.approx(1e-3 * fn(2))
    assert lrs[4] == pytest.approx(0.5e-3)  # the last step ends the new schedule at lr * min_lr_ratio


def test_resume_refuses_a_change_of_the_split_or_the_order(tmp_path, corpus, tiny_config):
    path = tiny_config(tmp_path, corpus, train={"steps": 2, "eval_every": 0}, checkpoint={"every": 2})
    train(TrainConfig.from_toml(path))
    run = Path(TrainConfig.from_toml(path).out_dir)
    before = (run / "config.toml").read_text()
    for override, named in ((["--data.val_fraction", "0.3"], "data.val_fraction 0.1 -> 0.3"),
                            (["--train.seq_len", "16"], "train.seq_len 32 -> 16"),
                            (["--seed", "5", "--data.val_fraction", "0.2"],
                             "seed 0 -> 5, data.val_fraction 0.1 -> 0.2")):
        cfg = TrainConfig.from_toml(path, ["--train.steps", "3"] + override)
        refusal = re.escape(named) + r" \(checkpoint -> this config\) would change the split.*another out_dir"
        with pytest.raises(ValueError, match=refusal):
            Trainer(cfg, resume="latest")
    assert (run / "config.toml").read_text() == before
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]


def test_resume_warns_about_other_data_and_pack(tmp_path, corpus, tiny_config, caplog):
    path = tiny_config(tmp_path, corpus, train={"steps": 2, "eval_every": 0}, checkpoint={"every": 2})
    train(TrainConfig.from_toml(path))
    more = shutil.copytree(corpus, tmp_path / "more")
    (more / "extra.txt").write_text("more text to go on with. " * 40)
    with caplog.at_level(logging.WARNING, logger="mambakit.train"):
        Trainer(TrainConfig.from_toml(path, ["--train.steps", "3", "--data.path", str(more),
                                             "--data.pack", "false"]), resume="latest").close()
    text = caplog.text
    assert "different data" in text and f"data.path {str(corpus)!r} -> {str(more)!r}" in text
    assert "data.pack True -> False" in text


def test_resume_from_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path, corpus, tiny_config, capsys):
    path = tiny_config(tmp_path, corpus, train={"steps": 4, "eval_every": 0}, checkpoint={"every": 1, "keep_last": 3})
    train(TrainConfig.from_toml(path))
    run = Path(TrainConfig.from_toml(path).out_dir)
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 3, 4]
    t = Trainer(TrainConfig.from_toml(path, ["--train.steps", "3", "--optim.lr", "1e-3"]),
                resume=str(ckpt.final_dir(run, 2)))
    t.fit()
    t.close()
    aside = ckpt.checkpoints_root(run) / "abandoned-after-step-0000002"
    assert "moved them to" in capsys.readouterr().out
    # --resume now takes the new branch's step 3, not the abandoned step 4
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 3]
    assert ckpt.latest_checkpoint(run) == ckpt.final_dir(run, 3)
    assert sorted(p.name for p in aside.iterdir()) == ["metrics.jsonl", "step-0000003", "step-0000004"]
    ckpt.verify(aside / "step-0000004")  # moved whole
    assert max(r["step"] for r in _rows(aside)) == 4 and max(r["step"] for r in _rows(run)) == 3
    new3 = torch.load(ckpt.final_dir(run, 3) / "trainer.pt", weights_only=True)
    assert new3["config"]["optim"]["lr"] == 1e-3


def test_set_aside_names_and_pruning(tmp_path):
    root = ckpt.checkpoints_root(tmp_path)
    for step in (1, 2, 3, 4):
        ckpt.final_dir(tmp_path, step).mkdir(parents=True)
    assert ckpt.set_aside_newer(tmp_path, 4) == (None, [])
    first, steps = ckpt.set_aside_newer(tmp_path, 2)
    assert first == root / "abandoned-after-step-0000002" and steps == [3, 4]
    ckpt.final_dir(tmp_path, 3).mkdir()
    second, _ = ckpt.set_aside_newer(tmp_path, 2)  # a second abandoned branch from the same step
    assert second == root / "abandoned-after-step-0000002-2" and (second / "step-0000003").is_dir()
    ckpt.begin(tmp_path, 3)
    ckpt.commit(tmp_path, 3, keep_last=1)  # keep_last counts and prunes the run's own step-* folders only
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3]
    assert (first / "step-0000004").is_dir() and (second / "step-0000003").is_dir()


def test_elapsed_time_goes_on_after_a_resume(tmp_path, corpus, tiny_config):
    path = tiny_config(tmp_path, corpus, train={"steps": 2, "eval_every": 0}, checkpoint={"every": 2})
    train(TrainConfig.from_toml(path))
    run = Path(TrainConfig.from_toml(path).out_dir)
    saved = torch.load(ckpt.final_dir(run, 2) / "trainer.pt", weights_only=True)["elapsed_s"]
    elapsed = {r["step"]: r["elapsed_s"] for r in _rows(run) if "elapsed_s" in r}
    assert saved >= elapsed[2] > elapsed[1] > 0
    t = Trainer(TrainConfig.from_toml(path, ["--train.steps", "4"]), resume="latest")
    assert t.elapsed_before == saved
    t.fit()
    t.close()
    elapsed = {r["step"]: r["elapsed_s"] for r in _rows(run) if "elapsed_s" in r}
    assert elapsed[4] > elapsed[3] >= saved


def test_resume_with_another_model_names_the_fields(tmp_path, corpus, tiny_config):
    path = tiny_config(tmp_path, corpus, train={"steps": 1, "eval_every": 0})
    train(TrainConfig.from_toml(path))
    cfg = TrainConfig.from_toml(path, ["--train.steps", "2", "--model.n_layer", "3", "--model.mamba2.d_state", "32"])
    with pytest.raises(ValueError, match=re.escape("model.mamba2.d_state 16 -> 32, model.n_layer 2 -> 3")):
        Trainer(cfg, resume="latest")
