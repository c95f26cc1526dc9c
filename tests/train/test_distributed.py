"""Two CPU processes (gloo) under torchrun, DDP and FSDP2 (each also with activation checkpointing):
the same losses as one process with the same global batch (validation over 7 rows: 4 + 3, the same
rows as one process), and checkpoints saved by one strategy resumed by the other.

No shape letters: the test compares losses and whole state dicts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import mambakit
from mambakit.train import TrainConfig, train
from mambakit.train import checkpoint as ckpt

REPO = Path(mambakit.__file__).resolve().parents[1]

# One launch trains both strategies from scratch, then resumes each from the other's step-3
# checkpoint (importing torch twice per launch is most of the cost on a small CI machine).
WORKER = """
import sys
from mambakit.train import TrainConfig, Trainer
path, root = sys.argv[1], sys.argv[2]
def run(name, strategy, resume=None, extra=()):
    cfg = TrainConfig.from_toml(path, ["--out_dir", f"{root}/{name}", "--train.distributed", strategy,
                                       "--train.micro_batch_size", "1", *extra])
    trainer = Trainer(cfg, resume=resume)
    trainer.fit()
    return trainer
run("ddp", "ddp")
run("fsdp", "fsdp")
ckpt = ["--train.activation_checkpointing", "true"]  # blocks recomputed in the backward, under each wrapper
run("ddp_ckpt", "ddp", extra=ckpt)
run("fsdp_ckpt", "fsdp", extra=ckpt)
run("fsdp_from_ddp", "fsdp", resume=f"{root}/ddp/checkpoints/step-0000003")
run("ddp_from_fsdp", "ddp", resume=f"{root}/fsdp/checkpoints/step-0000003").close()
"""


def _metrics(run: Path) -> tuple[dict, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return ({r["step"]: r["loss"] for r in rows if "loss" in r},
            {r["step"]: r["val_loss"] for r in rows if "val_loss" in r})


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_ddp_and_fsdp2_match_one_process(tmp_path, corpus, tiny_config):
    path = tiny_config(tmp_path, corpus, train={"steps": 6, "batch_size": 4, "eval_every": 3, "eval_rows": 7},
                       checkpoint={"every": 3, "keep_last": 2})
    single = TrainConfig.from_toml(path, ["--out_dir", str(tmp_path / "single")])
    train(single)  # one process, micro-batch 4: no accumulation
    ref_loss, ref_val = _metrics(tmp_path / "single")
    ref_weights = load_file(str(ckpt.final_dir(tmp_path / "single", 6) / "model.safetensors"))

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), path, str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    for name, first in (("ddp", 1), ("fsdp", 1), ("fsdp_from_ddp", 4), ("ddp_from_fsdp", 4), ("ddp_ckpt", 1),
                        ("fsdp_ckpt", 1)):
        loss, val = _metrics(tmp_path / name)
        assert sorted(loss) == list(range(first, 7)), name
        for step, value in loss.items():
            assert abs(value - ref_loss[step]) < 1e-5, (name, step, value, ref_loss[step])
        for step, value in val.items():
            assert abs(value - ref_val[step]) < 1e-5, (name, step, value, ref_val[step])
        final = ckpt.final_dir(tmp_path / name, 6)
        weights = load_file(str(final / "model.safetensors"))
        assert weights.keys() == ref_weights.keys()
        for key in weights:
            torch.testing.assert_close(weights[key], ref_weights[key], atol=1e-5, rtol=0, msg=f"{name} {key}")
        assert (final / "rng-rank1.pt").exists()
        mambakit.load(final)  # the full, unsharded model in native format
