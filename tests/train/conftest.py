"""Fixtures for the training tests: a small deterministic corpus and a tiny config.

No shape letters here.

Torch runs one thread in these tests: on a shared 2-core machine two OpenMP threads spin against
each other and a tiny model's step gets 50x slower, and one thread keeps every run deterministic.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

WORDS = ("state space model selective scan chunk head group token sequence length the a of to in "
         "is and mamba duality matrix kernel gate norm conv").split()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_corpus(folder: Path, n_docs: int = 24, seed: int = 0) -> Path:
    """n_docs text files of made-up sentences, 200 to 1500 bytes each (about 20 KB in all)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(40, 250))]
        lines = [" ".join(words[j:j + 12]) + "." for j in range(0, len(words), 12)]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def tiny_config():
    """make_config(tmp, corpus, **sections) -> path of a TOML file (a fixture, so tests need no imports)."""
    return make_config


def make_config(tmp: Path, corpus: Path, **sections) -> str:
    """A TOML config for mamba2-tiny on the corpus; `sections` replace keys, e.g. train={"steps": 4}."""
    base = {
        "": {"out_dir": str(tmp / "run"), "seed": 0},
        "model": {"preset": "mamba2-tiny"},
        "data": {"path": str(corpus), "cache_dir": str(tmp / "cache"), "val_fraction": 0.1},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"steps": 6, "batch_size": 4, "seq_len": 32, "eval_every": 3, "eval_rows": 8,
                  "threads": 1, "progress": False, "device": "cpu"},
        "checkpoint": {"every": 3, "keep_last": 2},
    }
    for name, values in sections.items():
        base["" if name == "top" else name].update(values)
    from mambakit.train.config import dump_toml
    flat = dict(base.pop(""))
    flat.update(base)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "config.toml"
    path.write_text(dump_toml(flat))
    return str(path)
