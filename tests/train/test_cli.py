"""`mambakit train` and `mambakit plot` end to end. No shape letters."""
from __future__ import annotations

import builtins
import json
import math
from pathlib import Path

import pytest

import mambakit
from mambakit.cli import main
from mambakit.commands.train import split_resume
from mambakit.train import checkpoint as ckpt


def test_train_resume_and_plot(tmp_path, corpus, tiny_config, capsys):
    path = tiny_config(tmp_path, corpus, train={"steps": 3, "eval_every": 2}, checkpoint={"every": 2})
    assert main(["train", path, "--train.steps", "2"]) == 0
    run = tmp_path / "run"
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    # --resume after the overrides, a longer run: continues at step 2
    assert main(["train", path, "--train.steps", "3", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "step-0000002" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s"} <= set(rows[1])
    assert any("val_loss" in r and "val_ppl" in r for r in rows)
    model = mambakit.load(ckpt.latest_checkpoint(run))
    assert model.config.vocab_size == 256

    pytest.importorskip("matplotlib")
    assert main(["plot", str(run), "--out", str(tmp_path / "png")]) == 0
    for name in ("loss.png", "lr.png"):
        png = tmp_path / "png" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(tmp_path, corpus, tiny_config, capsys):
    path = tiny_config(tmp_path, corpus)
    assert main(["train", path, "--optim.lrate", "1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
    assert main(["train", path, "--data.path", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", path, "--train.seq_len", "100000"]) == 2
    assert "larger than the data" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err


def test_print_config_and_resume_parsing(tmp_path, corpus, tiny_config, capsys):
    path = tiny_config(tmp_path, corpus)
    assert main(["train", path, "--print-config", "--optim.lr", "0.5"]) == 0
    assert "lr = 0.5" in capsys.readouterr().out
    assert split_resume(["--a", "1", "--resume"], None) == (["--a", "1"], "latest")
    assert split_resume(["--resume", "/x/step-1", "--a", "1"], None) == (["--a", "1"], "/x/step-1")


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0, "lr": 0.1}) + "\n")
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    from mambakit.train.plot import plot_run
    with pytest.raises(ValueError, match="needs matplotlib: pip install"):
        plot_run(tmp_path)
    assert not Path(tmp_path / "loss.png").exists()


def test_train_on_a_synthetic_task(tmp_path, tiny_config):
    path = tiny_config(tmp_path, tmp_path, data={"path": "", "task": "mqar",
                                                 "task_params": {"vocab_size": 64, "length": 32, "num_pairs": 4}},
                       train={"steps": 2, "eval_every": 0})
    assert main(["train", path]) == 0
    model = mambakit.load(ckpt.latest_checkpoint(tmp_path / "run"))
    assert model.config.vocab_size == 64


def test_non_finite_metrics_read_back_as_numbers(tmp_path):
    from mambakit.train.metrics import MetricsLog, read_metrics
    log = MetricsLog(tmp_path, True)
    log.write({"step": 1, "loss": 2.0, "lr": 0.1, "grad_norm": 1.0})
    log.write({"step": 2, "loss": float("nan"), "lr": 0.1, "grad_norm": float("inf")})
    log.write({"step": 2, "val_loss": float("-inf"), "val_ppl": float("nan")})
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():  # strict JSON: no NaN literal
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    rows = read_metrics(tmp_path)
    assert rows[0] == {"step": 1, "loss": 2.0, "lr": 0.1, "grad_norm": 1.0}
    assert math.isnan(rows[1]["loss"]) and rows[1]["grad_norm"] == math.inf
    assert rows[2]["val_loss"] == -math.inf and math.isnan(rows[2]["val_ppl"])
    pytest.importorskip("matplotlib")
    from mambakit.train.plot import plot_run
    assert [p.name for p in plot_run(tmp_path)] == ["loss.png", "lr.png"]


def test_activation_checkpointing_trains_the_same(tmp_path, corpus, tiny_config):
    # train.activation_checkpointing recomputes each block in the backward: the same losses, step by step
    losses = {}
    for flag in ("false", "true"):
        path = tiny_config(tmp_path / flag, corpus, train={"steps": 3, "eval_every": 0}, checkpoint={"every": 0})
        assert main(["train", path, "--train.activation_checkpointing", flag]) == 0
        rows = [json.loads(line) for line in (tmp_path / flag / "run" / "metrics.jsonl").read_text().splitlines()]
        losses[flag] = [r["loss"] for r in rows if "loss" in r]
    assert len(losses["true"]) == 3
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5)
    from mambakit.train.config import TrainConfig
    from mambakit.train.trainer import Trainer
    fresh = tiny_config(tmp_path / "fresh", corpus, train={"activation_checkpointing": True})
    trainer = Trainer(TrainConfig.from_toml(fresh))
    assert trainer.model.activation_checkpointing is True  # the key reaches the model


def test_convert_of_a_training_checkpoint_leaves_the_training_state(tmp_path, corpus, tiny_config, capsys):
    # `mambakit convert` of checkpoints/step-N: the model and any tokenizer files, not the optimizer,
    # trainer and RNG state nor a manifest the converted folder would no longer match
    path = tiny_config(tmp_path, corpus, train={"steps": 1, "eval_every": 0}, checkpoint={"every": 0})
    assert main(["train", path]) == 0
    step = ckpt.final_dir(tmp_path / "run", 1)
    assert {"optimizer.pt", "trainer.pt", "manifest.json", "rng-rank0.pt"} <= {p.name for p in step.iterdir()}
    (step / "README.md").write_text("notes")  # a file of the user's: carried as before
    capsys.readouterr()
    assert main(["convert", str(step), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    err = capsys.readouterr().err
    assert "left out" in err and "optimizer.pt" in err
    mambakit.load(tmp_path / "out")
