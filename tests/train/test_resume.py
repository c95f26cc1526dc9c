"""Checkpoints: resume is bitwise exact after a real SIGKILL mid-run; a half-written checkpoint is
never taken; the newest complete one loads with mambakit.load; a corrupt one is a clear error.

No shape letters: the test compares whole state dicts.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mambakit
from mambakit.train import TrainConfig, Trainer, train
from mambakit.train import checkpoint as ckpt

REPO = Path(mambakit.__file__).resolve().parents[1]

# Runs the CLI in a child process whose checkpoint at step 15 stalls after writing everything but
# the manifest (so before the rename): the test SIGKILLs it there, mid-write.
CHILD = """
import sys, time
from pathlib import Path
from mambakit.train import checkpoint
from mambakit.cli import main

real = checkpoint.write_manifest
def stall(tmp, step):
    if step == 15:
        Path(sys.argv[2]).write_text("stalled")
        time.sleep(600)
    real(tmp, step)
checkpoint.write_manifest = stall
sys.exit(main(["train", sys.argv[1], "--train.progress", "false"]))
"""


def _weights(run: Path, step: int) -> dict:
    return load_file(str(ckpt.final_dir(run, step) / "model.safetensors"))


def _losses(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_resume_after_sigkill_is_bitwise_exact(tmp_path, corpus, tiny_config):
    sections = dict(train={"steps": 20, "eval_every": 5}, checkpoint={"every": 5, "keep_last": 2})
    straight = TrainConfig.from_toml(tiny_config(tmp_path / "a", corpus, **sections))
    train(straight)

    path = tiny_config(tmp_path / "b", corpus, **sections)
    run = Path(TrainConfig.from_toml(path).out_dir)
    marker = tmp_path / "stalled"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, str(script), path, str(marker)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"child exited early ({child.returncode}): {child.stdout.read().decode()[-2000:]}")
            if time.time() > deadline:
                pytest.fail("child never reached the checkpoint at step 15")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL

    # The half-written step 15 is a .tmp folder with weights but no manifest; it is never taken.
    half = ckpt.tmp_dir(run, 15)
    assert (half / "model.safetensors").exists() and not (half / "manifest.json").exists()
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [5, 10]
    assert ckpt.latest_checkpoint(run) == ckpt.final_dir(run, 10)
    loaded = mambakit.load(ckpt.final_dir(run, 10))
    assert torch.equal(loaded.embedding.weight, _weights(run, 10)["embedding.weight"])

    resumed = Trainer(TrainConfig.from_toml(path), resume="latest")
    assert resumed.step == 10 and resumed.samples == 40
    resumed.fit()
    resumed.close()
    assert not half.exists()  # the stale temporary folder was cleared by the next save of step 15

    a, b = _weights(straight_run := Path(straight.out_dir), 20), _weights(run, 20)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _losses(straight_run) == _losses(run)  # steps 1..10 from the killed run, 11..20 resumed
    opt_a = torch.load(ckpt.final_dir(straight_run, 20) / "optimizer.pt", weights_only=True)
    opt_b = torch.load(ckpt.final_dir(run, 20) / "optimizer.pt", weights_only=True)
    for name, state in opt_a["state"].items():
        assert torch.equal(state["exp_avg_sq"], opt_b["state"][name]["exp_avg_sq"]), name


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, corpus, tiny_config):
    path = tiny_config(tmp_path, corpus, train={"steps": 2, "eval_every": 0}, checkpoint={"every": 1})
    cfg = TrainConfig.from_toml(path)
    train(cfg)
    newest = ckpt.latest_checkpoint(cfg.out_dir)
    weights = newest / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(mambakit.CheckpointError, match=r"model\.safetensors: corrupt .*--resume PATH"):
        Trainer(TrainConfig.from_toml(path), resume="latest")
    (newest / "manifest.json").unlink()
    with pytest.raises(mambakit.CheckpointError, match="no manifest.json"):
        Trainer(TrainConfig.from_toml(path), resume=str(newest))
    # the CLI turns it into a one-line error and exit status 2
    from mambakit.cli import main
    assert main(["train", path, "--resume", str(newest)]) == 2


def test_resume_without_checkpoint_and_fresh_run_over_old(tmp_path, corpus, tiny_config):
    path = tiny_config(tmp_path, corpus, train={"steps": 1, "eval_every": 0})
    with pytest.raises(ValueError, match="no complete checkpoint"):
        Trainer(TrainConfig.from_toml(path), resume="latest")
    train(TrainConfig.from_toml(path))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        Trainer(TrainConfig.from_toml(path))


def test_resume_with_no_steps_left_is_an_error(tmp_path, corpus, tiny_config):
    # it used to exit 0 without training, after rewriting config.toml with the smaller train.steps
    path = tiny_config(tmp_path, corpus, train={"steps": 2, "eval_every": 0})
    train(TrainConfig.from_toml(path))
    run = Path(TrainConfig.from_toml(path).out_dir)
    before = (run / "config.toml").read_text()
    for steps in ("2", "1"):
        with pytest.raises(ValueError, match=f"is at step 2 and train.steps is {steps}: nothing to train"):
            Trainer(TrainConfig.from_toml(path, ["--train.steps", steps]), resume="latest")
    assert (run / "config.toml").read_text() == before


def test_a_save_removes_stale_temporary_folders_of_any_step(tmp_path):
    root = ckpt.checkpoints_root(tmp_path)
    (root / ".tmp-step-0000003").mkdir(parents=True)  # left by a crash at step 3
    (root / ".tmp-step-0000003" / "model.safetensors").write_bytes(b"half")
    tmp = ckpt.begin(tmp_path, 5)
    assert tmp.is_dir() and not any(tmp.iterdir())
    assert sorted(p.name for p in root.iterdir()) == [".tmp-step-0000005"]


def test_a_checkpoint_carries_the_runs_tokenizer(tmp_path, corpus, tiny_config):
    # A run on a tokenizer.json: its checkpoints hold the tokenizer, so `mambakit eval` / `generate`
    # on a checkpoint read text with it (they fell back to bytes, giving numbers of the wrong tokens).
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mambakit.eval.data import load_model
    from mambakit.tokenizers import HFTokenizer
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([f.read_text() for f in sorted(corpus.iterdir())], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    path = tiny_config(tmp_path, corpus, data={"tokenizer": str(tmp_path / "tok")},
                       train={"steps": 2, "eval_every": 0}, checkpoint={"every": 1})
    train(TrainConfig.from_toml(path))
    run = Path(TrainConfig.from_toml(path).out_dir)
    model, loaded, notes = load_model(ckpt.final_dir(run, 2), device="cpu")
    assert isinstance(loaded, HFTokenizer) and not notes
    assert loaded.vocab_size == model.config.vocab_size == tok.get_vocab_size()
    assert loaded.eos_token_id == tok.token_to_id("<|endoftext|>")
    text = "the state space model."
    assert loaded.encode(text, add_special_tokens=False) == tok.encode(text).ids
    ckpt.verify(ckpt.final_dir(run, 2))  # in the manifest: a resume checks it like the rest
    Trainer(TrainConfig.from_toml(path, ["--train.steps", "3"]), resume=str(ckpt.final_dir(run, 1))).close()
