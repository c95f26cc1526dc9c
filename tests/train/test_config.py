"""TrainConfig: TOML, overrides, key checking with suggestions, model resolution. No shape letters."""
from __future__ import annotations

import pytest

from mambakit.train.config import TrainConfig, parse_overrides


def test_toml_and_overrides(tmp_path, corpus, tiny_config):
    path = tiny_config(tmp_path, corpus)
    cfg = TrainConfig.from_toml(path, ["--train.steps", "11", "--optim.lr=1e-3", "--optim.betas", "[0.8, 0.9]",
                                       "--model.mamba2.chunk_size", "16"])
    assert cfg.train.steps == 11 and cfg.optim.lr == 1e-3 and cfg.optim.betas == [0.8, 0.9]
    mc = cfg.model_config(vocab_size=256)
    assert mc.mamba2.chunk_size == 16 and mc.mamba2.d_state == 16  # the preset's other fields survive
    assert mc.vocab_size == 256
    deeper = TrainConfig.from_toml(path, ["--model.n_layer", "3"]).model_config(vocab_size=256)
    assert deeper.layer_pattern == "MMM" and deeper.d_model == 64
    again = tmp_path / "again.toml"
    again.write_text(cfg.to_toml())
    assert TrainConfig.from_toml(again).to_dict() == cfg.to_dict()


def test_parse_overrides_types():
    got = parse_overrides(["--train.compile", "true", "--data.path", "/x/y z", "--seed", "3"])
    assert got == {"train.compile": True, "data.path": "/x/y z", "seed": 3}
    with pytest.raises(ValueError, match="has no value"):
        parse_overrides(["--train.steps"])


@pytest.mark.parametrize("override, bad, suggestion", [
    (["--train.step", "5"], "train.step", "train.steps"),
    (["--optim.learning_rat", "0.1"], "optim.learning_rat", None),
    (["--model.mamba2.d_stat", "8"], "model.mamba2.d_stat", "model.mamba2.d_state"),
    (["--checkpoint.keep", "3"], "checkpoint.keep", "checkpoint.keep_last"),
    (["--outdir", "x"], "outdir", "out_dir"),
])
def test_unknown_key_suggests_nearest(tmp_path, corpus, tiny_config, override, bad, suggestion):
    with pytest.raises(ValueError, match=f"unknown config key '{bad}'") as err:
        TrainConfig.from_toml(tiny_config(tmp_path, corpus), override)
    if suggestion:
        assert f"did you mean '{suggestion}'" in str(err.value)


def test_unknown_key_in_file(tmp_path, corpus, tiny_config):
    path = tiny_config(tmp_path, corpus, train={"sequence_len": 32})
    with pytest.raises(ValueError, match="'train.sequence_len'; did you mean 'train.seq_len'"):
        TrainConfig.from_toml(path)


@pytest.mark.parametrize("override, match", [
    (["--train.steps", "0"], "train.steps must be a positive integer"),
    (["--train.precision", "fp8"], "train.precision must be one of"),
    (["--train.distributed", "zero"], "train.distributed must be one of"),
    (["--optim.betas", "[0.9]"], "optim.betas"),
    (["--data.val_fraction", "1.5"], "data.val_fraction"),
    # types: a command-line "no" was read as true, ".txt" split into characters, "abc" a TypeError
    (["--data.pack", "no"], "data.pack must be true or false, got 'no'"),
    (["--train.compile", "no"], "train.compile must be true or false"),
    (["--data.extensions", ".txt"], r"data.extensions must be a list of strings .*got '.txt'"),
    (["--optim.min_lr_ratio", "abc"], "optim.min_lr_ratio must be a finite number, got 'abc'"),
    (["--optim.lr", "true"], "optim.lr must be a finite number, got True"),
    (["--optim.lr", "inf"], "optim.lr must be a finite number"),
    (["--optim.betas", "0.9"], "optim.betas must be a list of numbers, got 0.9"),
    (["--optim.eps", "-1"], "optim.eps must be > 0"),
    (["--data.path", "5"], "data.path must be a string or a list of strings, got 5"),
    (["--data.task_params", "5"], "data.task_params must be a table"),
    (["--model", "5"], r"\[model\] must be a table of keys"),
])
def test_bad_values(tmp_path, corpus, tiny_config, override, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_toml(tiny_config(tmp_path, corpus), override)


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        TrainConfig.from_toml(tmp_path / "nope.toml")


def test_model_vocab_too_small(tmp_path, corpus, tiny_config):
    cfg = TrainConfig.from_toml(tiny_config(tmp_path, corpus), ["--model.vocab_size", "100"])
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        cfg.model_config(vocab_size=256)


def test_out_dir_that_is_a_file(tmp_path, corpus, tiny_config):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="out_dir .*afile' is a file"):
        TrainConfig.from_toml(tiny_config(tmp_path, corpus), ["--out_dir", str(tmp_path / "afile")])
